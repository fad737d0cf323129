import { chromium } from 'playwright-core'

// Debian's Chromium as the browser tests launch it (web/page_test.mjs, web/admin_test.mjs,
// tests/js/browser_test.mjs): headless, and kept off the network. Without these flags it
// reaches for updates, sync and QUIC and stalls on a machine without them.
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
]

// A fresh headless Chromium with its own profile (spec.userDataDir) at spec.executablePath.
export function launchChromium(spec, viewport = { width: 1000, height: 760 }) {
  return chromium.launchPersistentContext(spec.userDataDir, {
    executablePath: spec.executablePath,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport,
    timeout: 60000,
  })
}
