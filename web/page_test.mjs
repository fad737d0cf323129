// Drives the upload page (GET / with UPLOADSVC_WEB_UI=1) in headless Chromium, as a
// person would: pick files, pause, resume, reload the tab mid-upload, pick the file
// again, download it from the completed list. Run by tests/live/test_page.py.
//
// Usage: node page_test.mjs '<json spec>'
//   spec: executablePath, userDataDir, pageUrl, files (paths; files[0] is the big one
//         the steps act on), screenshotDir, timeoutSeconds, mode ("full" | "simple"),
//         throttle (upload bytes/s while pausing and reloading), pauseAt, reloadAt
//         (percent of files[0]); mode "signal" uploads files[0] throttled and, at
//         signal.atPercent, sends signal.name to signal.pid (a gunicorn reload), then
//         waits for the page to finish on its own; mode "refused" picks files[0]
//         and reports the text of its row, its status, its bar (aria-valuenow, the
//         fill's width) and its detail line once the page shows it failed
//
// The last stdout line is the JSON result ({"ok": true|false, ...}); exit status 0 iff ok.
// The system's Chromium only: never `playwright install`.

import path from 'node:path'

import { launchChromium } from './chromium.mjs'

const spec = JSON.parse(process.argv[2] ?? '{}')
const TIMEOUT_MS = (spec.timeoutSeconds ?? 120) * 1000
const STEP_MS = Math.min(60000, TIMEOUT_MS)
const BIG = path.basename(spec.files[0])


const observed = {
  console: [], // {type, text}
  pageErrors: [],
  failedRequests: [], // {method, url, error}
  requests: [], // tus requests the page made: {phase, method, url, offset}
  answers: [], // their responses: {method, status}
  screenshots: [],
}
let phase = 'first visit'

function finish(result) {
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(result.ok ? 0 : 1))
}

const watchdog = setTimeout(() => {
  finish({ ok: false, error: `watchdog: no result within ${TIMEOUT_MS / 1000} s`, ...observed })
}, TIMEOUT_MS + 30000)

async function headOffset(url) {
  // The server's offset; HEAD waits for the upload's lock, so a request the browser just
  // broke off has been recorded by then (bounded retries while it answers 423).
  for (let attempt = 0; attempt < 40; attempt++) {
    const res = await fetch(url, {
      method: 'HEAD',
      headers: { 'Tus-Resumable': '1.0.0' },
      signal: AbortSignal.timeout(10000),
    })
    if (res.status !== 423) return Number(res.headers.get('upload-offset'))
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
  throw new Error(`HEAD ${url} stayed 423`)
}

async function screenshot(page, name) {
  const file = path.join(spec.screenshotDir, name)
  await page.screenshot({ path: file, fullPage: true, timeout: 20000 })
  observed.screenshots.push(file)
}

const row = (name) => `#queue li.item[data-name="${name}"]`

async function waitForStatus(page, name, status) {
  await page.waitForFunction(
    ([selector, wanted]) => {
      const status = document.querySelector(selector)?.dataset.status
      if (status === 'error') throw new Error(document.querySelector(selector).textContent)
      return status === wanted
    },
    [row(name), status],
    { timeout: STEP_MS, polling: 50 },
  )
}

async function waitForPercent(page, name, percent) {
  await page.waitForFunction(
    ([selector, wanted]) =>
      Number(document.querySelector(`${selector} .bar`)?.getAttribute('aria-valuenow')) >= wanted,
    [row(name), percent],
    { timeout: STEP_MS, polling: 25 },
  )
}

async function throttle(cdp, bytesPerSecond) {
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: bytesPerSecond > 0 ? bytesPerSecond : -1,
  })
}

async function completedLink(page, name) {
  const link = page.locator('#completed tbody a', { hasText: name }).first()
  await link.waitFor({ timeout: STEP_MS })
  const cells = await link.locator('xpath=ancestor::tr').locator('td').allTextContents()
  return { href: await link.evaluate((a) => a.href), cells }
}

async function fullRun(page, cdp) {
  // Pick every file at once; slow the upload down so there is time to act mid-way.
  await throttle(cdp, spec.throttle)
  await page.setInputFiles('#file', spec.files)
  await waitForPercent(page, BIG, spec.pauseAt)
  await page.locator(`${row(BIG)} button`, { hasText: 'Pause' }).click()
  await waitForStatus(page, BIG, 'paused')
  const url = await page.locator(row(BIG)).getAttribute('data-url')
  const paused = await headOffset(url)
  await page.waitForTimeout(700)
  const pausedLater = await headOffset(url)
  await screenshot(page, '1-paused.png')

  await page.locator(`${row(BIG)} button`, { hasText: 'Resume' }).click()
  await waitForStatus(page, BIG, 'uploading')
  await waitForPercent(page, BIG, spec.reloadAt)

  // The tab goes away mid-upload (the request in flight is cut), and comes back.
  phase = 'after reload'
  await page.reload({ waitUntil: 'load' })
  const beforeResume = await headOffset(url)
  const unfinished = page.locator('#unfinished li', { hasText: BIG })
  await unfinished.waitFor({ timeout: STEP_MS })
  const unfinishedText = await unfinished.textContent()
  await screenshot(page, '2-reloaded.png')

  await throttle(cdp, 0)
  await page.setInputFiles('#file', spec.files[0])
  await waitForStatus(page, BIG, 'done')
  const resumedFrom = Number(await page.locator(row(BIG)).getAttribute('data-resumed-from'))
  const link = await completedLink(page, BIG)
  const others = []
  for (const file of spec.files.slice(1)) others.push(await completedLink(page, path.basename(file)))
  await page.waitForFunction(() => document.querySelector('#unfinished-section').hidden, null, {
    timeout: STEP_MS,
  })
  await screenshot(page, '3-done.png')
  return { url, paused, pausedLater, beforeResume, resumedFrom, unfinishedText, link, others }
}

async function signalRun(page, cdp) {
  // Nobody touches the page after picking the file: it must get through the signal.
  await throttle(cdp, spec.throttle)
  await page.setInputFiles('#file', spec.files[0])
  await waitForPercent(page, BIG, spec.signal.atPercent)
  process.kill(spec.signal.pid, spec.signal.name)
  await waitForStatus(page, BIG, 'done')
  const url = await page.locator(row(BIG)).getAttribute('data-url')
  await screenshot(page, 'done.png')
  return { url, signalled: true }
}

async function simpleRun(page) {
  await page.setInputFiles('#file', spec.files)
  for (const file of spec.files) await waitForStatus(page, path.basename(file), 'done')
  const url = await page.locator(row(BIG)).getAttribute('data-url')
  const link = await completedLink(page, BIG)
  await screenshot(page, 'done.png')
  const listed = await page.locator('#completed tbody a').allTextContents()
  // The download link as the browser follows it (its cookies, no added headers).
  const fetched = await page.evaluate(async (href) => {
    const res = await fetch(href, { credentials: 'same-origin' })
    const body = await res.arrayBuffer()
    const digest = await crypto.subtle.digest('SHA-256', body)
    const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('')
    return { status: res.status, sha256: hex }
  }, link.href)
  return { url, link, listed, fetched }
}

// Mode "refused": files[0] is one the server must refuse; the row's error text.
async function refusedRun(page) {
  await page.setInputFiles('#file', spec.files[0])
  await page.waitForFunction(
    (selector) => document.querySelector(selector)?.dataset.status === 'error',
    row(BIG),
    { timeout: STEP_MS, polling: 50 },
  )
  const text = await page.locator(row(BIG)).textContent()
  // What the row's bar claims once the page shows the failure.
  const bar = await page.locator(`${row(BIG)} .bar`).evaluate((node) => ({
    valueNow: node.getAttribute('aria-valuenow'),
    fillWidth: node.querySelector('.fill').style.width,
  }))
  const detail = await page.locator(`${row(BIG)} .detail`).textContent()
  const status = await page.locator(`${row(BIG)} .status`).textContent()
  await screenshot(page, 'refused.png')
  return { text, bar, detail, status }
}

async function main() {
  const context = await launchChromium(spec)
  try {
    context.setDefaultTimeout(STEP_MS)
    const page = context.pages()[0] ?? (await context.newPage())
    page.on('console', (msg) => observed.console.push({ type: msg.type(), text: msg.text() }))
    page.on('pageerror', (err) => observed.pageErrors.push(String(err)))
    page.on('requestfailed', (req) =>
      observed.failedRequests.push({
        phase,
        method: req.method(),
        url: req.url(),
        error: req.failure()?.errorText ?? null,
      }),
    )
    page.on('request', (req) => {
      if (!new URL(req.url()).pathname.includes('/files/')) return
      observed.requests.push({
        phase,
        method: req.method(),
        url: req.url(),
        offset: req.headers()['upload-offset'] ?? null,
      })
    })
    page.on('response', (res) => {
      if (!new URL(res.url()).pathname.includes('/files/')) return
      observed.answers.push({ method: res.request().method(), status: res.status() })
    })
    await page.goto(spec.pageUrl, { waitUntil: 'load' })
    const ready = await page.evaluate(() => typeof tus !== 'undefined' && tus.isSupported)
    if (!ready) throw new Error('tus-js-client did not load in the page')
    const cdp = await context.newCDPSession(page)
    await cdp.send('Network.enable')
    const runs = {
      simple: () => simpleRun(page),
      signal: () => signalRun(page, cdp),
      refused: () => refusedRun(page),
    }
    const result = await (runs[spec.mode] ?? (() => fullRun(page, cdp)))()
    return { ok: true, ...result }
  } catch (err) {
    const pages = context.pages()
    if (pages.length > 0) await screenshot(pages[0], 'error.png').catch(() => {})
    throw err
  } finally {
    await context.close().catch(() => {})
  }
}

main()
  .then((result) => {
    clearTimeout(watchdog)
    finish({ ...result, ...observed })
  })
  .catch((err) => {
    clearTimeout(watchdog)
    finish({ ok: false, error: String(err?.stack ?? err).slice(0, 3000), ...observed })
  })
