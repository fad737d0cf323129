// Drives the operator view (/admin) in headless Chromium while real uploads run, as an
// operator would watch it: signs in with the token, waits for the live feed, then
// checks what the feed shows. Run by tests/live/test_admin_live.py, which starts the
// uploads once this script says {"event": "live"}.
//
// Usage: node admin_test.mjs '<json spec>'
//   spec: executablePath, userDataDir, adminUrl, token, screenshotDir, timeoutSeconds,
//         moving (filename of an upload whose progress must move while it streams),
//         stalled (filename of an upload that must show as stalled),
//         completed (filename of an upload that must appear among the completions),
//         failed, terminated (optional: filenames the failures and terminations must list)
//
// Each stdout line is JSON; the last is the result ({"ok": true|false, ...}), exit 0 iff ok.
// The system's Chromium only: never `playwright install`.

import path from 'node:path'

import { launchChromium } from './chromium.mjs'

const spec = JSON.parse(process.argv[2] ?? '{}')
const TIMEOUT_MS = (spec.timeoutSeconds ?? 90) * 1000


const observed = { console: [], pageErrors: [], screenshots: [], progress: [], steps: [] }

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`)
}

function finish(result) {
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(result.ok ? 0 : 1))
}

setTimeout(() => finish({ ok: false, error: 'watchdog', ...observed }), TIMEOUT_MS + 30000)

async function screenshot(page, name) {
  const file = path.join(spec.screenshotDir, name)
  await page.screenshot({ path: file, fullPage: true, timeout: 20000 })
  observed.screenshots.push(file)
}

// The in-flight row of the upload named `name`, as the page shows it now.
function rowState(page, name) {
  return page.evaluate((wanted) => {
    for (const row of document.querySelectorAll('#in-flight tbody tr')) {
      if (row.querySelector('.name span')?.textContent !== wanted) continue
      const bar = row.querySelector('progress')
      return {
        value: Number(bar.value),
        max: Number(bar.max),
        state: row.querySelector('.state').textContent,
        stalled: row.classList.contains('stalled'),
      }
    }
    return null
  }, name)
}

async function main() {
  const browser = await launchChromium(spec)
  try {
    const page = await browser.newPage()
    page.setDefaultTimeout(TIMEOUT_MS)
    page.on('console', (m) => observed.console.push({ type: m.type(), text: m.text() }))
    page.on('pageerror', (e) => observed.pageErrors.push(String(e)))

    // Without the token: the sign-in form (401), then in with it.
    const first = await page.goto(spec.adminUrl)
    observed.steps.push({ step: 'first visit', status: first.status() })
    await page.fill('#token', spec.token)
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')])
    await page.waitForSelector('#live[data-state="live"]')
    observed.steps.push({ step: 'live' })
    emit({ event: 'live' })

    // Progress moves: the bar of a body that is still streaming grows, fed by the
    // reports its worker writes to the registry while the PATCH runs.
    await page.waitForFunction(
      (name) => [...document.querySelectorAll('#in-flight tbody tr')].some(
        (row) => row.querySelector('.name span')?.textContent === name &&
          Number(row.querySelector('progress').value) > 0),
      spec.moving,
    )
    const before = await rowState(page, spec.moving)
    await page.waitForFunction(
      ([name, value]) => [...document.querySelectorAll('#in-flight tbody tr')].some(
        (row) => row.querySelector('.name span')?.textContent === name &&
          Number(row.querySelector('progress').value) > value),
      [spec.moving, before.value],
    )
    const after = await rowState(page, spec.moving)
    observed.progress.push(before, after)
    await screenshot(page, '1-progress.png')

    // A stalled upload is marked.
    await page.waitForFunction(
      (name) => [...document.querySelectorAll('#in-flight tbody tr.stalled')].some(
        (row) => row.querySelector('.name span')?.textContent === name),
      spec.stalled,
    )
    const stalled = await rowState(page, spec.stalled)
    observed.steps.push({ step: 'stalled', row: stalled })
    if (!stalled?.stalled) throw new Error(`${spec.stalled} is not the stalled one: ${JSON.stringify(stalled)}`)
    await screenshot(page, '2-stalled.png')

    // A completion appears, and its row leaves the uploads in flight.
    await page.waitForFunction(
      (name) => [...document.querySelectorAll('#completions li .name')].some((n) => n.textContent === name),
      spec.completed,
    )
    observed.steps.push({ step: 'completed', inFlight: await rowState(page, spec.completed) })
    // Failures and terminations come through the feed as well.
    for (const [list, name] of [['#failures', spec.failed], ['#terminations', spec.terminated]]) {
      if (!name) continue
      await page.waitForFunction(
        ([selector, wanted]) => [...document.querySelectorAll(`${selector} li .name`)].some((n) => n.textContent === wanted),
        [list, name],
      )
      observed.steps.push({ step: list.slice(1), name })
    }
    const moving = await rowState(page, spec.moving)
    observed.progress.push(moving)
    const chart = await page.evaluate(() =>
      [...document.querySelectorAll('#chart rect')].map((r) => Number(r.dataset.count)).reduce((a, b) => a + b, 0))
    observed.steps.push({ step: 'chart', bytes: chart })
    await screenshot(page, '3-completed.png')
    finish({ ok: true, ...observed })
  } finally {
    await browser.close().catch(() => {})
  }
}

main().catch((error) => finish({ ok: false, error: String(error?.stack ?? error), ...observed }))
