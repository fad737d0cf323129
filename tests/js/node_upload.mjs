// tus-js-client under Node, driven by tests/live/test_js_client.py.
//
// Usage: node node_upload.mjs '<json spec>'
//
// Every line written to stdout is one JSON object. Progress milestones are
// {"event": ...} lines; the last line is the result: {"ok": true, ...} or
// {"ok": false, "error": ...}. The exit status is 0 only for ok results.
//
// Modes (spec.mode):
//   upload        one upload of spec.path (source "file", "buffer" or "stream"),
//                 optional chunkSize, deferred length, parallelUploads,
//                 uploadDataDuringCreation; spec.rate limits each PATCH body (bytes per
//                 second, file source); spec.headers are sent with every request;
//                 spec.signal {pid, name, atBytes} sends that
//                 signal to pid once, when the upload's progress reaches atBytes
//   abort-resume  upload at a limited rate, abort() once spec.abortAt bytes went out,
//                 then finish with a new Upload (spec.resumeVia: "uploadUrl" or "storage")
//   stall         start an upload that remembers its URL in a FileUrlStorage, stop
//                 feeding the PATCH body after spec.stallAt bytes, report
//                 {"event": "stalled"} once those bytes are in the kernel, then wait to
//                 be killed (SIGKILL by the test)
//   resume        a fresh process: findPreviousUploads() from spec.storagePath,
//                 resumeFromPreviousUpload() and finish

import fs from 'node:fs'
import { PassThrough, Readable, Transform } from 'node:stream'
import { FileUrlStorage, Upload, defaultOptions } from 'tus-js-client'

const spec = JSON.parse(process.argv[2] ?? '{}')
const WATCHDOG_MS = (spec.timeoutSeconds ?? 120) * 1000

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`)
}

function finish(result) {
  const code = result.ok ? 0 : 1
  // Exit only once the line is flushed (stdout may be a pipe).
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(code))
}

const watchdog = setTimeout(() => {
  finish({ ok: false, error: `watchdog: no result within ${WATCHDOG_MS / 1000} s` })
}, WATCHDOG_MS)

// --------------------------------------------------------------------- request log

// One entry per HTTP exchange tus-js-client completed: what it asked, what it got.
function makeRecorder() {
  const requests = []
  const retries = []
  const hooks = {
    onAfterResponse(req, res) {
      requests.push({
        method: req.getMethod(),
        url: req.getURL(),
        reqOffset: req.getHeader('Upload-Offset') ?? null,
        reqLength: req.getHeader('Upload-Length') ?? null,
        reqDeferLength: req.getHeader('Upload-Defer-Length') ?? null,
        reqConcat: req.getHeader('Upload-Concat') ?? null,
        reqComplete: req.getHeader('Upload-Complete') ?? null,
        reqInterop: req.getHeader('Upload-Draft-Interop-Version') ?? null,
        status: res.getStatus(),
        location: res.getHeader('Location') ?? null,
        offset: res.getHeader('Upload-Offset') ?? null,
        length: res.getHeader('Upload-Length') ?? null,
        complete: res.getHeader('Upload-Complete') ?? null,
        body: res.getStatus() >= 400 ? String(res.getBody() ?? '').slice(0, 300) : null,
      })
    },
    onShouldRetry(err, attempt, options) {
      const res = err.originalResponse
      retries.push({
        attempt,
        message: String(err.message ?? err).slice(0, 500),
        status: res ? res.getStatus() : null,
      })
      return defaultOptions.onShouldRetry(err, attempt, options)
    },
  }
  return { requests, retries, hooks }
}

// --------------------------------------------------------------------- sources

function openSource(kind, path) {
  if (kind === 'file') return fs.createReadStream(path)
  if (kind === 'buffer') return fs.readFileSync(path)
  if (kind === 'stream') {
    // A plain readable stream (not an fs.ReadStream): size unknown to tus-js-client.
    return fs.createReadStream(path, { highWaterMark: 64 * 1024 }).pipe(new PassThrough())
  }
  throw new Error(`unknown source kind ${kind}`)
}

// A fileReader that hands tus-js-client's file slices through `gate(stream, start)`,
// which returns the stream actually sent as the PATCH body.
function gatedFileReader(gate) {
  const inner = defaultOptions.fileReader
  return {
    async openFile(input, chunkSize) {
      const source = await inner.openFile(input, chunkSize)
      return {
        size: source.size,
        async slice(start, end) {
          const result = await source.slice(start, end)
          if (result.value instanceof Readable) {
            const gated = gate(result.value, start)
            gated.size = result.value.size
            result.value = gated
          }
          return result
        },
        close() {
          source.close()
        },
      }
    },
  }
}

// At most `bytesPerSecond` through each body.
function rateLimit(bytesPerSecond) {
  return (stream) => {
    const started = Date.now()
    let passed = 0
    const limiter = new Transform({
      transform(chunk, _enc, callback) {
        passed += chunk.length
        const due = started + (passed / bytesPerSecond) * 1000
        setTimeout(() => callback(null, chunk), Math.max(0, due - Date.now()))
      },
    })
    stream.on('error', (err) => limiter.destroy(err))
    return stream.pipe(limiter)
  }
}

// Let through bytes up to absolute offset `stallAt`, then hold the rest back forever.
function stallAt(limit, onStall) {
  return (stream, start) => {
    let position = start
    let stalled = false
    const gate = new Transform({
      transform(chunk, _enc, callback) {
        if (stalled) return // never call back: the body stops here
        const room = limit - position
        if (chunk.length < room) {
          position += chunk.length
          callback(null, chunk)
          return
        }
        stalled = true
        position = limit
        if (room > 0) this.push(chunk.subarray(0, room))
        onStall(gate)
      },
    })
    stream.on('error', (err) => gate.destroy(err))
    return stream.pipe(gate)
  }
}

// --------------------------------------------------------------------- running uploads

function baseOptions(recorder, extra) {
  return {
    endpoint: spec.endpoint,
    metadata: spec.metadata ?? {},
    headers: spec.headers ?? {},
    retryDelays: [0, 1000, 3000, 5000],
    // 'ietf-draft-03' or 'ietf-draft-05' (Resumable Uploads for HTTP); tus 1.0 by default.
    ...(spec.protocol ? { protocol: spec.protocol } : {}),
    ...recorder.hooks,
    ...extra,
  }
}

// Resolves with what happened once the upload succeeded; rejects on error.
function runUpload(file, options, { beforeStart } = {}) {
  return new Promise((resolve, reject) => {
    let maxProgress = 0
    let progressCalls = 0
    const upload = new Upload(file, {
      ...options,
      onProgress(sent, total) {
        progressCalls += 1
        maxProgress = Math.max(maxProgress, sent)
        options.onProgress?.(sent, total, upload)
      },
      onSuccess(payload) {
        resolve({
          url: upload.url,
          status: payload?.lastResponse?.getStatus() ?? null,
          maxProgress,
          progressCalls,
        })
      },
      onError(err) {
        reject(err)
      },
    })
    Promise.resolve(beforeStart ? beforeStart(upload) : null)
      .then(() => upload.start())
      .catch(reject)
  })
}

function describeError(err) {
  const res = err?.originalResponse
  const req = err?.originalRequest
  return {
    message: String(err?.message ?? err).slice(0, 2000),
    request: req ? { method: req.getMethod(), url: req.getURL() } : null,
    response: res
      ? {
          status: res.getStatus(),
          body: String(res.getBody() ?? '').slice(0, 500),
          offset: res.getHeader('Upload-Offset') ?? null,
        }
      : null,
  }
}

async function modeUpload() {
  const recorder = makeRecorder()
  const options = baseOptions(recorder, {
    chunkSize: spec.chunkSize ?? Number.POSITIVE_INFINITY,
    uploadLengthDeferred: Boolean(spec.deferred),
    uploadDataDuringCreation: Boolean(spec.dataDuringCreation),
    parallelUploads: spec.parallel ?? 1,
  })
  if (spec.rate) options.fileReader = gatedFileReader(rateLimit(spec.rate))
  let signalled = null
  if (spec.signal) {
    options.onProgress = (sent) => {
      if (signalled === null && sent >= spec.signal.atBytes) {
        signalled = sent
        process.kill(spec.signal.pid, spec.signal.name)
        emit({ event: 'signalled', at: sent })
      }
    }
  }
  let done
  try {
    done = await runUpload(openSource(spec.source ?? 'file', spec.path), options)
  } catch (err) {
    // A refusal, with what was asked and answered before it (the tests read both).
    return { ok: false, error: describeError(err), requests: recorder.requests }
  }
  return { ok: true, ...done, signalled, requests: recorder.requests, retries: recorder.retries }
}

async function modeAbortResume() {
  const size = fs.statSync(spec.path).size
  const chunkSize = spec.chunkSize ?? Number.POSITIVE_INFINITY
  const urlStorage = spec.storagePath ? new FileUrlStorage(spec.storagePath) : undefined

  // Phase 1: a rate-limited upload, aborted once abortAt bytes went out.
  const first = makeRecorder()
  let abortedAt = null
  let firstUrl = null
  const phase1 = new Promise((resolve, reject) => {
    const upload = new Upload(fs.createReadStream(spec.path), {
      ...baseOptions(first, { chunkSize, urlStorage }),
      fileReader: gatedFileReader(rateLimit(spec.rateBytesPerSecond)),
      onProgress(sent) {
        if (abortedAt === null && sent >= spec.abortAt) {
          abortedAt = sent
          firstUrl = upload.url
          upload.abort().then(resolve, reject)
        }
      },
      onSuccess() {
        reject(new Error(`phase 1 finished before it could be aborted (${size} bytes)`))
      },
      onError: reject,
    })
    upload.start()
  })
  await phase1
  emit({ event: 'aborted', at: abortedAt, url: firstUrl })

  // Phase 2: a new Upload object picks the upload up again.
  const second = makeRecorder()
  const options = baseOptions(second, { chunkSize, urlStorage })
  let previous = null
  if (spec.resumeVia === 'uploadUrl') {
    options.uploadUrl = firstUrl
  }
  const done = await runUpload(fs.createReadStream(spec.path), options, {
    async beforeStart(upload) {
      if (spec.resumeVia === 'storage') {
        const found = await upload.findPreviousUploads()
        previous = found.map((p) => ({ uploadUrl: p.uploadUrl, size: p.size }))
        if (found.length !== 1) throw new Error(`expected one previous upload, got ${found.length}`)
        upload.resumeFromPreviousUpload(found[0])
      }
    },
  })
  return {
    ok: true,
    ...done,
    size,
    abortedAt,
    firstUrl,
    previous,
    phase1: { requests: first.requests, retries: first.retries },
    phase2: { requests: second.requests, retries: second.retries },
  }
}

async function modeStall() {
  const recorder = makeRecorder()
  let patchRequest = null
  const onStall = (gate) => {
    // Report once every byte let through is out of Node's buffers (in the kernel).
    const started = Date.now()
    const check = () => {
      const pipes = gate._readableState?.pipes ?? []
      const buffered =
        gate.readableLength +
        pipes.reduce((n, s) => n + (s.writableLength ?? 0) + (s.readableLength ?? 0), 0)
      const req = patchRequest?.getUnderlyingObject()
      const pending = req ? req.writableLength : Number.POSITIVE_INFINITY
      if (buffered === 0 && pending === 0) {
        emit({ event: 'stalled', bytes: spec.stallAt, url: upload.url, requests: recorder.requests })
        return
      }
      if (Date.now() - started > 20000) {
        finish({ ok: false, error: `body bytes still buffered: ${buffered} + ${pending}` })
        return
      }
      setTimeout(check, 10)
    }
    check()
  }
  const upload = new Upload(fs.createReadStream(spec.path), {
    ...baseOptions(recorder, {
      chunkSize: spec.chunkSize ?? Number.POSITIVE_INFINITY,
      urlStorage: new FileUrlStorage(spec.storagePath),
    }),
    fileReader: gatedFileReader(stallAt(spec.stallAt, onStall)),
    onBeforeRequest(req) {
      if (req.getMethod() === 'PATCH') patchRequest = req
    },
    onSuccess() {
      finish({ ok: false, error: 'upload finished although its body was held back' })
    },
    onError(err) {
      finish({ ok: false, error: describeError(err), requests: recorder.requests })
    },
  })
  upload.start()
  return null // the test kills us; the watchdog bounds the wait
}

async function modeResume() {
  const recorder = makeRecorder()
  const options = baseOptions(recorder, {
    chunkSize: spec.chunkSize ?? Number.POSITIVE_INFINITY,
    urlStorage: new FileUrlStorage(spec.storagePath),
    removeFingerprintOnSuccess: true,
  })
  let previous = null
  const done = await runUpload(fs.createReadStream(spec.path), options, {
    async beforeStart(upload) {
      const found = await upload.findPreviousUploads()
      previous = found.map((p) => ({ uploadUrl: p.uploadUrl, size: p.size }))
      if (found.length !== 1) throw new Error(`expected one previous upload, got ${found.length}`)
      upload.resumeFromPreviousUpload(found[0])
    },
  })
  const left = await new FileUrlStorage(spec.storagePath).findAllUploads()
  return {
    ok: true,
    ...done,
    previous,
    storedAfterSuccess: left.length,
    requests: recorder.requests,
    retries: recorder.retries,
  }
}

const modes = {
  upload: modeUpload,
  'abort-resume': modeAbortResume,
  stall: modeStall,
  resume: modeResume,
}

async function main() {
  const mode = modes[spec.mode]
  if (!mode) throw new Error(`unknown mode ${JSON.stringify(spec.mode)}`)
  const result = await mode()
  if (result !== null) {
    clearTimeout(watchdog)
    finish(result)
  }
}

main().catch((err) => finish({ ok: false, error: describeError(err) }))
