// The upload page. tus-js-client (window.tus, static/tus.min.js) speaks the protocol and
// remembers unfinished uploads in localStorage; this file is only the page around it.
//
// Every URL is relative to the page (files/, api/uploads), so the page works at / and
// behind a proxy's path prefix alike. Each file row carries data-status (starting,
// uploading, paused, error, done), data-url and data-resumed-from for scripts and tests.
;(function () {
  'use strict'

  const ENDPOINT = new URL('files/', document.baseURI).href
  const LIST_URL = new URL('api/uploads', document.baseURI).href
  const RETRY_DELAYS = [0, 1000, 3000, 5000]
  // One PATCH per file unless ?chunkSize=BYTES says otherwise (for proxies that cap
  // request bodies). Bytes that reach the server are kept even when a request breaks.
  const CHUNK_SIZE = positive(new URLSearchParams(window.location.search).get('chunkSize'))
  const RATE_WINDOW_MS = 5000
  // An upload link (flask grant create) carries its token in the fragment, #grant=...:
  // browsers never send a fragment to a server, so no proxy or access log sees it. The
  // page sends it as a bearer token on its tus requests and its list; download links
  // can't carry a header, so a same-site cookie on files/ carries it for them.
  const GRANT = new URLSearchParams(window.location.hash.slice(1)).get('grant')
  const AUTH_HEADERS = GRANT ? { Authorization: `Bearer ${GRANT}` } : {}

  const $ = (id) => document.getElementById(id)
  const app = $('app')
  const maxSize = positive(app.dataset.maxSize)
  const items = new Map() // "name/size/lastModified" -> item

  function positive(text) {
    const number = Number(text)
    return Number.isFinite(number) && number > 0 ? number : null
  }

  function formatBytes(count) {
    if (count < 1024) return `${count} B`
    const units = ['KiB', 'MiB', 'GiB', 'TiB']
    let value = count
    let unit = ''
    for (unit of units) {
      value /= 1024
      if (value < 1024) break
    }
    return `${value.toFixed(unit === 'GiB' || unit === 'TiB' ? 2 : 1)} ${unit}`
  }

  function formatSeconds(seconds) {
    const total = Math.max(0, Math.round(seconds))
    if (total < 60) return `${total} s`
    const minutes = Math.floor(total / 60)
    if (minutes < 60) return `${minutes} min ${total % 60} s`
    return `${Math.floor(minutes / 60)} h ${minutes % 60} min`
  }

  function formatDate(text) {
    const date = new Date(text)
    return Number.isNaN(date.getTime()) ? '' : date.toLocaleString()
  }

  // Build an element; children are nodes or text (never parsed as HTML).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag)
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === 'text') node.textContent = value
      else if (name.startsWith('on')) node.addEventListener(name.slice(2), value)
      else node.setAttribute(name, value)
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)))
    }
    return node
  }

  function notice(text) {
    const box = $('notice')
    box.textContent = text
    box.hidden = !text
  }

  function describeError(error) {
    const response = error && error.originalResponse
    if (response) {
      const body = (response.getBody() || '').trim().slice(0, 300)
      return `The server refused the upload (${response.getStatus()}${body ? `: ${body}` : ''}).`
    }
    if (error && error.originalRequest) {
      return 'The server could not be reached. Retry when the connection is back.'
    }
    return String((error && error.message) || error)
  }

  // ------------------------------------------------------------------ one file's upload

  function addFiles(files) {
    // Newest first on the page, each batch in the order it was picked.
    for (const file of [...files].reverse()) addFile(file)
    $('file').value = '' // picking the same file again must fire "change" again
  }

  function addFile(file) {
    const key = [file.name, file.size, file.lastModified].join('/')
    const existing = items.get(key)
    if (existing && ['starting', 'uploading', 'paused'].includes(existing.status)) {
      existing.row.scrollIntoView({ block: 'nearest' })
      return
    }
    if (existing) existing.row.remove()
    const item = makeItem(file)
    items.set(key, item)
    $('queue').prepend(item.row)
    $('queue-section').hidden = false
    if (maxSize && file.size > maxSize) {
      setStatus(item, 'error', `Too large: this server accepts up to ${formatBytes(maxSize)}.`)
      return
    }
    const metadata = { filename: file.name }
    if (file.type) metadata.filetype = file.type
    const options = {
      endpoint: ENDPOINT,
      headers: AUTH_HEADERS,
      retryDelays: RETRY_DELAYS,
      metadata,
      removeFingerprintOnSuccess: true,
      onProgress: (sent, total) => progressed(item, sent, total),
      onUploadUrlAvailable: () => {
        item.row.dataset.url = item.upload.url
        refreshUnfinished()
      },
      onAfterResponse: (request, response) => {
        // What the server has taken: the offset of each answer that accepted a request.
        // Bytes on the wire are not that: a refusal can come after all of them were sent.
        const status = response.getStatus()
        const accepted = response.getHeader('Upload-Offset')
        if (status >= 200 && status < 300 && accepted) item.accepted = Number(accepted)
        // A HEAD answers where an earlier upload of this file stopped.
        if (request.getMethod() === 'HEAD' && status === 200) {
          const offset = Number(response.getHeader('Upload-Offset'))
          if (item.resumedFrom === null && offset > 0) {
            item.resumedFrom = offset
            item.row.dataset.resumedFrom = String(offset)
          }
        }
      },
      onSuccess: () => {
        item.sent = file.size
        const continued = item.resumedFrom
          ? ` (continued from ${Math.floor((100 * item.resumedFrom) / file.size)} %)`
          : ''
        setStatus(item, 'done', `Uploaded${continued}.`)
        drawProgress(item)
        refreshCompleted()
        refreshUnfinished()
      },
      onError: (error) => {
        // Retrying helps after network trouble or a server error, not after a refusal.
        const status = error.originalResponse ? error.originalResponse.getStatus() : 0
        item.retryable = status === 0 || status >= 500 || status === 423 || status === 409
        if (status === 401) notice('This upload link is not valid (any more): ask whoever sent it for a new one.')
        setStatus(item, 'error', describeError(error))
        item.sent = item.accepted // the bar shows what the server took, not what was sent
        drawProgress(item)
      },
    }
    if (CHUNK_SIZE) options.chunkSize = CHUNK_SIZE
    item.upload = new tus.Upload(file, options)
    item.upload
      .findPreviousUploads()
      .then((previous) => {
        const newest = previous
          .filter((upload) => upload.uploadUrl)
          .sort((a, b) => Date.parse(b.creationTime) - Date.parse(a.creationTime))[0]
        if (newest) item.upload.resumeFromPreviousUpload(newest)
        start(item)
      })
      .catch((error) => setStatus(item, 'error', describeError(error)))
  }

  function makeItem(file) {
    const item = {
      file,
      upload: null,
      status: 'starting',
      sent: 0, // bytes sent (the bar while uploading)
      accepted: 0, // bytes the server's answers confirmed (the bar after a failure)
      resumedFrom: null,
      retryable: true,
      history: [],
      row: null,
      parts: {},
    }
    const parts = item.parts
    parts.status = el('span', { class: 'status', text: 'Starting…' })
    parts.fill = el('div', { class: 'fill' })
    parts.bar = el('div', { class: 'bar', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': '0' }, parts.fill)
    parts.detail = el('span', { class: 'detail', text: formatBytes(file.size) })
    parts.pause = el('button', { type: 'button', class: 'button', text: 'Pause', onclick: () => pause(item) })
    parts.resume = el('button', { type: 'button', class: 'button', text: 'Resume', onclick: () => start(item) })
    parts.retry = el('button', { type: 'button', class: 'button', text: 'Retry', onclick: () => start(item) })
    parts.link = el('a', { class: 'button', text: 'Download' })
    item.row = el(
      'li',
      { class: 'item', 'data-name': file.name, 'data-status': 'starting' },
      el('div', { class: 'line' }, el('span', { class: 'name', text: file.name }), parts.status),
      parts.bar,
      el('div', { class: 'line' }, parts.detail, el('span', { class: 'actions' }, parts.pause, parts.resume, parts.retry, parts.link)),
    )
    setStatus(item, 'starting', 'Starting…')
    return item
  }

  function start(item) {
    item.history = []
    setStatus(item, 'uploading', item.resumedFrom ? 'Continuing…' : 'Uploading…')
    item.upload.start()
  }

  function pause(item) {
    setStatus(item, 'paused', 'Paused.')
    item.upload.abort().catch(() => {})
    drawProgress(item)
  }

  function setStatus(item, status, text) {
    item.status = status
    item.row.dataset.status = status
    item.parts.status.textContent = text
    item.parts.status.className = `status ${status}`
    const { pause: pauseButton, resume, retry, link } = item.parts
    pauseButton.hidden = status !== 'uploading'
    resume.hidden = status !== 'paused'
    retry.hidden = status !== 'error' || !item.upload || !item.retryable
    link.hidden = status !== 'done'
    if (status === 'done' && item.upload && item.upload.url) link.href = item.upload.url
  }

  function progressed(item, sent, total) {
    if (item.status !== 'uploading') return // a late event after a pause
    item.sent = sent
    const now = performance.now()
    item.history.push([now, sent])
    while (item.history.length > 2 && now - item.history[0][0] > RATE_WINDOW_MS) {
      item.history.shift()
    }
    if (item.resumedFrom) {
      const percent = Math.floor((100 * item.resumedFrom) / total)
      item.parts.status.textContent = `Uploading… (continued from ${percent} %)`
    }
    drawProgress(item)
  }

  function drawProgress(item) {
    const total = item.file.size
    const done = item.status === 'done'
    // 100 % only once the server said the upload is complete: the last byte sent is
    // not that (the answer may still refuse it).
    const percent = done ? 100 : Math.min(99, total ? Math.floor((100 * item.sent) / total) : 0)
    item.parts.fill.style.width = `${percent}%`
    item.parts.bar.setAttribute('aria-valuenow', String(percent))
    let text = `${formatBytes(item.sent)} of ${formatBytes(total)} (${percent} %)`
    if (item.status === 'error') text += ' accepted by the server'
    const [first, last] = [item.history[0], item.history[item.history.length - 1]]
    if (item.status === 'uploading' && first && last && last[0] > first[0]) {
      const rate = ((last[1] - first[1]) * 1000) / (last[0] - first[0])
      if (rate > 0) {
        text += ` · ${formatBytes(Math.round(rate))}/s · about ${formatSeconds((total - item.sent) / rate)} left`
      }
    }
    item.parts.detail.textContent = text
  }

  // ------------------------------------------------- what the browser remembers, what's done

  function storedUploads() {
    const storage = tus.defaultOptions.urlStorage
    if (!storage || !storage.findAllUploads) return Promise.resolve([])
    // Keys hold the fingerprint, which ends with the endpoint: keep this server's.
    return storage
      .findAllUploads()
      .then((all) => all.filter((upload) => upload.urlStorageKey.includes(`-${ENDPOINT}::`) && upload.uploadUrl))
  }

  function refreshUnfinished() {
    storedUploads()
      .then((stored) => {
        const active = new Set([...items.values()].map((item) => item.upload && item.upload.url))
        const list = $('unfinished')
        list.replaceChildren()
        for (const upload of stored) {
          if (active.has(upload.uploadUrl)) continue
          const name = (upload.metadata && upload.metadata.filename) || 'unnamed file'
          const discard = el('button', {
            type: 'button',
            class: 'button',
            text: 'Discard',
            title: 'Delete the partial upload on the server and forget it',
            onclick: () => discardStored(upload),
          })
          list.append(
            el(
              'li',
              { class: 'item', 'data-name': name },
              el('div', { class: 'line' }, el('span', { class: 'name', text: name }), el('span', { class: 'actions' }, discard)),
              el('div', { class: 'line' }, el('span', { class: 'detail', text: `${formatBytes(upload.size || 0)} · started ${formatDate(upload.creationTime)}` })),
            ),
          )
        }
        $('unfinished-section').hidden = list.children.length === 0
      })
      .catch(() => {})
  }

  function discardStored(upload) {
    const forget = () => tus.defaultOptions.urlStorage.removeUpload(upload.urlStorageKey).then(refreshUnfinished)
    tus.Upload.terminate(upload.uploadUrl, { headers: AUTH_HEADERS, retryDelays: [0, 1000] }).then(forget, forget)
  }

  function refreshCompleted() {
    return fetch(LIST_URL, { cache: 'no-store', credentials: 'same-origin', headers: AUTH_HEADERS })
      .then((response) => {
        if (!response.ok) throw new Error(`the list answered ${response.status}`)
        return response.json()
      })
      .then((data) => {
        const body = $('completed').tBodies[0]
        body.replaceChildren()
        for (const upload of data.uploads) {
          const link = el('a', { href: upload.url, text: upload.filename || upload.id })
          body.append(
            el(
              'tr',
              { 'data-id': upload.id },
              el('td', {}, link),
              el('td', { class: 'num', text: formatBytes(upload.size) }),
              el('td', { text: formatDate(upload.completed_at) }),
            ),
          )
        }
        $('completed').hidden = data.uploads.length === 0
        $('completed-empty').hidden = data.uploads.length !== 0
      })
      .catch((error) => {
        $('completed-empty').textContent = `The list of completed uploads is unavailable (${error.message}).`
        $('completed-empty').hidden = false
      })
  }

  // ------------------------------------------------------------------ wiring

  function rememberGrant() {
    if (!GRANT) {
      if (app.dataset.auth === 'grants') notice('Uploading here needs an upload link: ask for one.')
      return
    }
    // For download links only (the server reads it on GET /files/<id>); a session
    // cookie, never sent cross-site, on the tus path alone.
    const path = new URL('files/', document.baseURI).pathname
    const secure = window.location.protocol === 'https:' ? '; Secure' : ''
    document.cookie = `uploadsvc_grant=${encodeURIComponent(GRANT)}; Path=${path}; SameSite=Strict${secure}`
  }

  function init() {
    rememberGrant()
    $('refresh').addEventListener('click', () => refreshCompleted())
    refreshCompleted()
    if (typeof tus === 'undefined') {
      $('drop').classList.add('disabled')
      $('file').disabled = true
      return
    }
    if (!tus.isSupported) {
      notice('This browser cannot upload here: it lacks XMLHttpRequest or Blob support.')
      $('file').disabled = true
      return
    }
    if (maxSize) $('limit').textContent = `Up to ${formatBytes(maxSize)} per file.`
    $('file').addEventListener('change', (event) => addFiles(event.target.files))
    const drop = $('drop')
    // Anywhere on the page: a file dropped outside the zone must not open in the tab.
    for (const type of ['dragenter', 'dragover']) {
      document.addEventListener(type, (event) => {
        event.preventDefault()
        drop.classList.add('over')
      })
    }
    document.addEventListener('dragleave', (event) => {
      if (!event.relatedTarget) drop.classList.remove('over')
    })
    document.addEventListener('drop', (event) => {
      event.preventDefault()
      drop.classList.remove('over')
      if (event.dataTransfer && event.dataTransfer.files.length) addFiles(event.dataTransfer.files)
    })
    refreshUnfinished()
  }

  init()
})()
