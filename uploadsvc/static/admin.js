// The operator view, kept live: /admin/events (server-sent events) moves the progress
// bars, adds and removes uploads and redraws the chart; a one-second tick ages the
// "last byte" column and marks uploads stalled. The page works without it (rendered whole).
'use strict'

const main = document.getElementById('admin')
const STALL_AFTER_MS = Number(main.dataset.stallAfter) * 1000
// The server's clock, not the browser's, says how long ago a byte came.
const skew = Date.parse(main.dataset.now.replace(/\+00:00$/, 'Z')) - Date.now()
const serverNow = () => Date.now() + skew
const MAX_LISTED = 20

function size(count) {
  if (count === null || count === undefined || count === '') return '?'
  let value = Number(count)
  for (const unit of ['B', 'KiB', 'MiB', 'GiB', 'TiB']) {
    if (value < 1024 || unit === 'TiB') return unit === 'B' ? `${value.toFixed(0)} B` : `${value.toFixed(1)} ${unit}`
    value /= 1024
  }
}

function ago(ms) {
  const seconds = Math.max(Math.floor(ms / 1000), 0)
  if (seconds < 120) return `${seconds} s`
  if (seconds < 7200) return `${Math.floor(seconds / 60)} min`
  return `${Math.floor(seconds / 3600)} h`
}

const parseTime = (text) => Date.parse(/[Z+]/.test(text.slice(19)) ? text : `${text}Z`)
const table = document.querySelector('#in-flight tbody')
const rowOf = (id) => table.querySelector(`tr[data-id="${CSS.escape(id)}"]`)

function cell(className, text) {
  const td = document.createElement('td')
  td.className = className
  if (text !== undefined) td.textContent = text
  return td
}

// Uploads that finished, were terminated or expired: a late event never brings them back.
const ended = new Set()

function addRow(upload) {
  let row = rowOf(upload.id)
  if (row || ended.has(upload.id)) return row
  row = document.createElement('tr')
  row.dataset.id = upload.id
  row.dataset.length = upload.length ?? ''
  row.dataset.position = upload.position ?? upload.offset ?? 0
  row.dataset.lastByte = upload.last_byte_at ?? new Date(serverNow()).toISOString()
  row.dataset.rate = upload.rate ?? 0
  row.dataset.streaming = upload.streaming ? '1' : '0'
  const name = cell('name')
  const span = document.createElement('span')
  span.title = upload.id
  span.textContent = upload.filename || upload.id.slice(0, 12)
  name.append(span)
  const progress = cell('progress')
  progress.append(document.createElement('progress'), document.createElement('span'))
  progress.lastChild.className = 'bytes'
  row.append(name, progress, cell('rate'), cell('ago'), cell('state'))
  table.prepend(row)
  draw(row)
  return row
}

function draw(row) {
  const length = row.dataset.length === '' ? null : Number(row.dataset.length)
  const position = Number(row.dataset.position)
  const bar = row.querySelector('progress')
  bar.max = length || 1
  bar.value = length ? position : 0
  row.querySelector('.bytes').textContent = `${size(position)} / ${size(length)}`
  row.querySelector('.rate').textContent = `${size(row.dataset.rate)}/s`
  age(row)
}

function age(row) {
  const idle = serverNow() - parseTime(row.dataset.lastByte)
  const stalled = idle >= STALL_AFTER_MS
  row.classList.toggle('stalled', stalled)
  row.querySelector('.ago').textContent = `${ago(idle)} ago`
  row.querySelector('.state').textContent = stalled
    ? 'stalled'
    : row.dataset.streaming === '1' ? 'receiving' : 'waiting'
}

// Bytes held by unfinished uploads: those listed here, plus the idle ones not listed.
const heldBase = Number(main.dataset.heldBase)

function counts() {
  const rows = table.querySelectorAll('tr')
  const listed = [...rows].reduce((sum, row) => sum + Number(row.dataset.position), 0)
  document.getElementById('held').textContent = size(heldBase + listed)
  document.getElementById('in-flight-count').textContent = rows.length
  document.getElementById('stalled-count').textContent = table.querySelectorAll('tr.stalled').length
  document.getElementById('in-flight-empty').hidden = rows.length > 0
}

function progressed(event) {
  const row = rowOf(event.id) || addRow({ id: event.id, ...event })
  if (!row) return
  const before = Number(row.dataset.position)
  const beforeAt = parseTime(row.dataset.lastByte)
  const at = parseTime(event.last_byte_at)
  if (event.position < before && event.streaming) return // an older report
  row.dataset.position = event.position
  row.dataset.lastByte = event.last_byte_at
  row.dataset.streaming = event.streaming ? '1' : '0'
  // Between bodies (a client sending chunk after chunk) the rate is what moved.
  row.dataset.rate = event.streaming || at <= beforeAt
    ? event.rate
    : Math.round(((event.position - before) * 1000) / (at - beforeAt))
  draw(row)
}

function listed(listId, upload, reason) {
  const list = document.getElementById(listId)
  const key = `${upload.id ?? ''}|${reason ?? ''}|${upload.at}`
  if ([...list.children].some((li) => li.dataset.key === key)) return
  const li = document.createElement('li')
  li.dataset.key = key
  li.dataset.id = upload.id ?? ''
  if (reason) {
    li.dataset.reason = reason
    const span = document.createElement('span')
    span.className = 'reason'
    span.textContent = reason
    li.append(span, ' ')
  }
  const name = document.createElement('span')
  name.className = 'name'
  name.textContent = upload.filename || (upload.id ?? '').slice(0, 12)
  const when = document.createElement('time')
  when.dataset.at = upload.at
  when.textContent = `${ago(serverNow() - parseTime(upload.at))} ago`
  li.append(name, ' ')
  if (upload.size !== null && upload.size !== undefined) li.append(size(upload.size), ' ')
  li.append(when)
  if (upload.detail) {
    const detail = document.createElement('span')
    detail.className = 'detail'
    detail.textContent = ` ${upload.detail}`
    li.append(detail)
  }
  list.prepend(li)
  while (list.children.length > MAX_LISTED) list.lastChild.remove()
}

function endedIn(listId, reason) {
  return (event) => {
    ended.add(event.upload.id)
    rowOf(event.upload.id)?.remove()
    listed(listId, event.upload, reason)
    counts()
  }
}

const chart = document.getElementById('chart')
function minute(event) {
  const at = parseTime(event.minute)
  let bar = [...chart.children].find((rect) => parseTime(rect.dataset.minute) === at)
  if (!bar) {
    const last = chart.lastElementChild
    if (last && parseTime(last.dataset.minute) > at) return
    // A new minute: every bar moves one to the left.
    bar = chart.firstElementChild.cloneNode(true)
    chart.firstElementChild.remove()
    bar.dataset.minute = event.minute
    chart.append(bar)
  }
  bar.dataset.count = event.received
  const bars = [...chart.children]
  const top = Math.max(1, ...bars.map((rect) => Number(rect.dataset.count)))
  const height = Number(chart.getAttribute('height'))
  const width = Number(chart.getAttribute('width')) / bars.length
  bars.forEach((rect, index) => {
    const h = (height * Number(rect.dataset.count)) / top
    rect.setAttribute('x', (index * width).toFixed(1))
    rect.setAttribute('y', (height - h).toFixed(1))
    rect.setAttribute('height', h.toFixed(1))
    rect.querySelector('title').textContent = `${rect.dataset.minute.slice(11, 16)} UTC: ${size(rect.dataset.count)}`
  })
  document.getElementById('chart-top').textContent = size(top)
}

const handlers = {
  created: (event) => { addRow(event.upload); counts() },
  progress: (event) => { progressed(event); counts() },
  finished: endedIn('completions'),
  terminated: endedIn('terminations'),
  expired: endedIn('failures', 'expired'),
  failed: (event) => listed('failures', event.upload, event.upload.reason),
  minute,
  reload: () => window.location.reload(),
}

const live = document.getElementById('live')
function connect() {
  const source = new EventSource(main.dataset.events)
  source.onopen = () => { live.dataset.state = 'live'; live.textContent = 'live' }
  // EventSource reconnects by itself after the stream's retry:, unless the server
  // refused it (401, 403, 503): then try again later ourselves.
  source.onerror = () => {
    live.dataset.state = 'reconnecting'
    live.textContent = 'reconnecting…'
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 5000)
  }
  for (const [type, handle] of Object.entries(handlers)) {
    source.addEventListener(type, (message) => handle(JSON.parse(message.data)))
  }
}

setInterval(() => {
  table.querySelectorAll('tr').forEach(age)
  document.querySelectorAll('time[data-at]').forEach((when) => {
    when.textContent = `${ago(serverNow() - parseTime(when.dataset.at))} ago`
  })
  counts()
}, 1000)
counts()
connect()
