// Headless Chromium (playwright-core, the system's chromium) runs tests/js/page/index.html,
// which uploads a file cross-origin with tus-js-client, pauses, resumes and finishes.
// Driven by tests/live/test_browser.py.
//
// Usage: node browser_test.mjs '<json spec>'
//   spec: executablePath, userDataDir, pageUrl (with endpoint/chunkSize/pauseAt and
//         optionally protocol in the query), filePath, screenshotDir, timeoutSeconds;
//         without pauseAt (or 0) the upload runs to its end without a pause
//
// The last stdout line is the JSON result ({"ok": true|false, ...}); exit status 0 iff ok.

import path from 'node:path'

import { launchChromium } from '../../web/chromium.mjs'

const spec = JSON.parse(process.argv[2] ?? '{}')
const TIMEOUT_MS = (spec.timeoutSeconds ?? 120) * 1000
const STEP_MS = Math.min(60000, TIMEOUT_MS)


function finish(result) {
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(result.ok ? 0 : 1))
}

const watchdog = setTimeout(() => {
  finish({ ok: false, error: `watchdog: no result within ${TIMEOUT_MS / 1000} s`, ...observed })
}, TIMEOUT_MS + 30000)

const observed = {
  console: [], // {type, text}
  pageErrors: [],
  failedRequests: [], // {method, url, error}
  responses: [], // responses from the upload server's origin, with their CORS headers
  screenshots: [],
}

async function headOffset(url) {
  // The upload's offset as the server reports it (bounded retries while it is locked).
  for (let attempt = 0; attempt < 20; attempt++) {
    const res = await fetch(url, {
      method: 'HEAD',
      headers: { 'Tus-Resumable': '1.0.0' },
      signal: AbortSignal.timeout(10000),
    })
    if (res.status !== 423) {
      return { status: res.status, offset: res.headers.get('upload-offset') }
    }
    await new Promise((r) => setTimeout(r, 250))
  }
  return { status: 423, offset: null }
}

async function screenshot(page, name) {
  const file = path.join(spec.screenshotDir, name)
  await page.screenshot({ path: file, fullPage: true, timeout: 20000 })
  observed.screenshots.push(file)
}

const readState = (page) => page.evaluate(() => structuredClone(window.uploadState))

async function waitForStatus(page, wanted) {
  await page.waitForFunction(
    (statuses) => statuses.includes(window.uploadState?.status),
    [...wanted, 'error'],
    { timeout: STEP_MS, polling: 50 },
  )
  return readState(page)
}

async function main() {
  const endpointOrigin = new URL(new URL(spec.pageUrl).searchParams.get('endpoint')).origin
  const context = await launchChromium(spec, { width: 1100, height: 800 })
  try {
    context.setDefaultTimeout(STEP_MS)
    const page = context.pages()[0] ?? (await context.newPage())
    page.on('console', (msg) => observed.console.push({ type: msg.type(), text: msg.text() }))
    page.on('pageerror', (err) => observed.pageErrors.push(String(err)))
    page.on('requestfailed', (req) =>
      observed.failedRequests.push({
        method: req.method(),
        url: req.url(),
        error: req.failure()?.errorText ?? null,
      }),
    )
    page.on('response', (res) => {
      if (new URL(res.url()).origin !== endpointOrigin) return
      const headers = res.headers()
      observed.responses.push({
        method: res.request().method(),
        url: res.url(),
        status: res.status(),
        allowOrigin: headers['access-control-allow-origin'] ?? null,
        exposeHeaders: headers['access-control-expose-headers'] ?? null,
      })
    })

    await page.goto(spec.pageUrl, { waitUntil: 'load' })
    const supported = await page.evaluate(() => typeof tus !== 'undefined' && tus.isSupported)
    if (!supported) throw new Error('tus-js-client did not load in the page (or is unsupported)')

    await page.setInputFiles('#file', spec.filePath)
    await page.click('#start')

    if (!Number(new URL(spec.pageUrl).searchParams.get('pauseAt'))) {
      const done = await waitForStatus(page, ['done'])
      await screenshot(page, 'done.png')
      return {
        ok: done.status === 'done',
        error: done.status === 'done' ? null : `upload ended as ${done.status}: ${done.error}`,
        done,
      }
    }

    // The page pauses itself once pauseAt of the file went out.
    const paused = await waitForStatus(page, ['paused', 'done'])
    if (paused.status !== 'paused') {
      await screenshot(page, 'unexpected.png')
      return { ok: false, error: `expected a pause, page is ${paused.status}`, paused }
    }
    const server = paused.url ? await headOffset(paused.url) : null
    // Paused means paused: nothing moves for a while.
    await page.waitForTimeout(500)
    const stillPaused = await readState(page)
    await screenshot(page, 'paused.png')

    await page.click('#resume')
    const done = await waitForStatus(page, ['done'])
    await screenshot(page, 'done.png')
    return {
      ok: done.status === 'done',
      error: done.status === 'done' ? null : `upload ended as ${done.status}: ${done.error}`,
      paused,
      serverWhilePaused: server,
      stillPaused,
      done,
    }
  } catch (err) {
    const pages = context.pages()
    if (pages.length > 0) {
      await screenshot(pages[0], 'error.png').catch(() => {})
    }
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
