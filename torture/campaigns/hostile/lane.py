"""One lane of the hostile campaign: its own keep-alive connections and uploads, each
answer checked against the model (and the data files against it every few steps)."""

from __future__ import annotations

import hashlib
import random
import re
import threading
import uuid
from collections import Counter

from ...report import Result
from ...server import Server
from ...tus import OCTET
from ...wire import Conn, Hang, KiB, Reply, build_request
from .generation import Generator, unknown_coding
from .model import HEX_ID, Canary, Req, Upload, b64, nasty_metadata

REQUEST_TIMEOUT = 15.0
CHECK_EVERY = 250  # steps between full checks of a lane's uploads against the model
# One disposition, one quoted ASCII name without quotes, separators or ";", and at
# most one percent-encoded filename*: a name can't add a parameter or a path.
DISPOSITION = re.compile(
    r"(inline|attachment); filename=\"[^\"\\/;\x00-\x1f\x7f]+\""
    r"(; filename\*=UTF-8''[A-Za-z0-9%._~-]+)?"
)
INJECTED = ("set-cookie", "x-injected", "refresh")
# Range headers on a completed upload of n >= 2 bytes, and the status each must get:
# one byte range 206 (416 past the end); anything else is ignored (RFC 9110): 200.
RANGES = [
    ("bytes=0-0", 206),
    ("bytes=-1", 206),
    ("bytes=1-", 206),
    ("bytes=999999999-", 416),
    ("bytes=0-0,1-1", 200),
    ("bytes=1-0", 200),
    ("bytes=abc", 200),
    ("bytes=", 200),
    ("items=0-1", 200),
    ("bytes=0-1,", 200),
]
INLINE_OK = re.compile(
    r"(image/(png|jpeg|gif|webp|avif)|video/(mp4|webm|ogg)|audio/(mpeg|ogg|wav|webm|flac)"
    r"|application/pdf|text/plain; charset=utf-8|application/octet-stream)"
)


class Lane:
    def __init__(self, campaign: Hostile, index: int, rng: random.Random, steps: int) -> None:
        self.c = campaign
        self.index = index
        self.rng = rng
        self.steps = steps
        self.server = campaign.server
        self.result = campaign.result
        self.gen = Generator(rng, self.server, campaign.canary.port, campaign.marker)
        self.uploads: dict[str, Upload] = {}
        self.conn: Conn | None = None
        self.statuses: Counter[str] = Counter()
        self.unannounced_closes = 0  # keep-alive answers followed by a close
        self.early_keepalive = 0  # answers before the body was sent that said keep-alive
        self.checks = 0  # uploads checked against the model after a hostile request
        self.explained = 0  # ... that had changed, as the answer said they would

    # -- transport ------------------------------------------------------------------

    def send(self, req: Req, *, retry: bool = False) -> Reply | None:
        host = f"127.0.0.1:{self.server.port}".encode()
        fresh = not req.reuse or req.half_close
        reused = False
        try:
            if fresh:
                conn = Conn(self.server.port, timeout=REQUEST_TIMEOUT)
            else:
                if self.conn is None or self.conn.closed:
                    self.conn = Conn(self.server.port, timeout=REQUEST_TIMEOUT)
                else:
                    reused = True
                conn = self.conn
        except OSError as error:
            self.result.problem(f"lane {self.index}: cannot connect: {error!r}")
            return None
        request_id = f"torture-{uuid.uuid4().hex}"
        headers = [*req.headers, (b"X-Request-ID", request_id.encode())]
        target_host = None if req.no_host else (req.host or host)
        payload = build_request(req.method, req.target, headers, host=target_host) + req.body
        reply: Reply | None
        try:
            sent = conn.send_watching(payload, timeout=REQUEST_TIMEOUT)
            if req.half_close:
                conn.half_close()
            reply = conn.read_reply(head=req.method == b"HEAD", timeout=REQUEST_TIMEOUT)
            if sent < len(payload):
                conn.closed = True  # the rest of our request would be read as the next one
                said = (reply.header("Connection") or "").lower()
                if reply.status is not None and said != "close":
                    # Answered before the body was read: the server drains it (gunicorn:
                    # 64 KiB at most) or closes. A proxy reusing the connection on the
                    # word of a keep-alive races that close (nginx: a 502).
                    self.early_keepalive += 1
                    self.result.mismatch(
                        f"{req.what}: {reply.status} before the body was sent said keep-alive"
                    )
        except Hang as error:
            self.result.hang(f"{req.what}: {error}")
            conn.close()
            # The server may still act on it: let it finish before the model looks.
            self.server.wait_finished(request_id, REQUEST_TIMEOUT)
            reply = None
        except OSError:
            reply = Reply(None, closed=True)
            conn.closed = True
        if fresh or conn.closed:
            conn.close()
            if conn is self.conn:
                self.conn = None
        if reply is not None and reply.status is None and reused:
            # A kept-alive connection the server closed although its last answer said
            # keep-alive. Clients retry such a request on a new connection; so do we.
            self.unannounced_closes += 1
            if not retry:
                return self.send(req, retry=True)
        if reply is not None:
            self.judge(req, reply)
        return reply

    def judge(self, req: Req, reply: Reply) -> None:
        """What every answer must be, whatever the request."""
        self.statuses[str(reply.status)] += 1
        if reply.status is None:
            if req.well_formed:
                self.result.problem(f"{req.what}: closed without an answer")
            return
        if reply.status == 501 and unknown_coding(req):
            # RFC 9112 section 6.1: a transfer coding the server doesn't know SHOULD get
            # 501. gunicorn answers so before the app sees the request.
            self.statuses["501 unknown transfer coding"] += 1
        elif reply.status >= 500:
            self.result.server_error(f"{req.what}: {reply}")
        for name, value in reply.headers:
            if name in INJECTED or "\r" in value or "\n" in value:
                self.result.mismatch(f"{req.what}: injected header {name}: {value[:80]!r}")
        location = reply.header("Location")
        if location is not None and reply.status == 201:
            path_ok = re.fullmatch(r"https?://[^/]+/files/[0-9a-f]{32}", location)
            ours = location.startswith(f"http://127.0.0.1:{self.server.port}/files/")
            if not path_ok or (not ours and req.host is None and not req.no_host):
                self.result.mismatch(f"{req.what}: Location {location!r} (X-Forwarded-* trusted?)")

    def call(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> Reply | None:
        """A valid request (not counted as hostile)."""
        hdrs = [(b"Tus-Resumable", b"1.0.0")] + [(k.encode(), v.encode()) for k, v in headers]
        if body or method in ("POST", "PATCH"):
            hdrs.append((b"Content-Length", str(len(body)).encode()))
        req = Req(
            f"valid {method} {target[:50]}",
            method.encode(),
            target.encode(),
            hdrs,
            body,
            body,
            hostile=False,
        )
        return self.send(req)

    # -- valid steps ----------------------------------------------------------------

    def live(self, *, tracked: bool = True) -> list[Upload]:
        return [u for u in self.uploads.values() if not u.gone and (u.exact or not tracked)]

    def create(self) -> None:
        rng = self.rng
        deferred = rng.random() < 0.25
        length = None if deferred else rng.randint(0, 24 * KiB)
        headers = [("Upload-Defer-Length", "1")] if deferred else [("Upload-Length", str(length))]
        if rng.random() < 0.5:
            headers.append(("Upload-Metadata", nasty_metadata(rng)))
        body = b""
        if rng.random() < 0.3:
            body = rng.randbytes(rng.randint(0, length if length is not None else 4 * KiB))
            headers.append(("Content-Type", OCTET))
        reply = self.call("POST", "/files/", headers, body)
        if reply is None or reply.status != 201:
            self.result.problem(f"lane {self.index}: valid POST {headers} answered {reply}")
            return
        upload_id = (reply.header("Location") or "").rsplit("/", 1)[-1]
        if not HEX_ID.fullmatch(upload_id):
            self.result.problem(f"lane {self.index}: Location {reply.header('Location')!r}")
            return
        if body and reply.offset != len(body):
            self.result.mismatch(f"creation-with-upload of {len(body)} B: offset {reply.offset}")
        self.uploads[upload_id] = Upload(upload_id, length, bytearray(body))

    def patch(self, up: Upload) -> None:
        rng = self.rng
        room = (up.length - up.offset) if up.length is not None else 8 * KiB
        data = rng.randbytes(rng.randint(0, min(room, 8 * KiB)))
        headers = [("Upload-Offset", str(up.offset)), ("Content-Type", OCTET)]
        declared = None
        if up.length is None and rng.random() < 0.4:
            declared = up.offset + len(data) + rng.choice([0, 0, rng.randint(1, 8 * KiB)])
            headers.append(("Upload-Length", str(declared)))
        if rng.random() < 0.3:
            headers.append(("Upload-Checksum", "sha256 " + b64(hashlib.sha256(data).digest())))
        reply = self.call("PATCH", f"/files/{up.id}", headers, data)
        if reply is None or reply.status != 204 or reply.offset != up.offset + len(data):
            self.result.problem(
                f"lane {self.index}: valid PATCH {up.id} {headers} answered {reply}"
            )
            self.resync(up)
            return
        up.data += data
        if declared is not None:
            up.length = declared

    def download(self, up: Upload) -> None:
        reply = self.call("GET", f"/files/{up.id}", [])
        if reply is None:
            return
        if not up.complete:
            if reply.status != 404:
                self.result.problem(f"GET of unfinished {up.id}: {reply}")
            return
        if reply.status != 200:
            self.result.problem(f"GET {up.id}: {reply}")
            return
        if up.exact and reply.body != bytes(up.data):
            self.result.mismatch(f"GET {up.id}: {len(reply.body)} B, not the {up.offset} B stored")
        disposition = reply.header("Content-Disposition") or ""
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in disposition):
            self.result.mismatch(f"GET {up.id}: control characters in {disposition!r}")
        if not DISPOSITION.fullmatch(disposition):
            self.result.mismatch(f"GET {up.id}: Content-Disposition {disposition!r}")
        if up.exact and up.offset >= 2:
            self.ranged_download(up)
        if reply.header("X-Content-Type-Options") != "nosniff":
            self.result.mismatch(f"GET {up.id}: no nosniff")
        if "sandbox" not in (reply.header("Content-Security-Policy") or ""):
            self.result.mismatch(f"GET {up.id}: no CSP sandbox")
        if not INLINE_OK.fullmatch(reply.header("Content-Type") or ""):
            self.result.mismatch(f"GET {up.id}: served as {reply.header('Content-Type')!r}")

    def ranged_download(self, up: Upload) -> None:
        value, status = self.rng.choice(RANGES)
        reply = self.call("GET", f"/files/{up.id}", [("Range", value)])
        if reply is None:
            return
        if reply.status != status:
            self.result.problem(f"GET {up.id} with Range {value!r}: {reply}, not {status}")
        elif status == 200 and reply.body != bytes(up.data):
            self.result.mismatch(f"GET {up.id} with Range {value!r}: not the whole body")

    def delete(self, up: Upload) -> None:
        reply = self.call("DELETE", f"/files/{up.id}", [])
        if reply is None or reply.status != 204:
            self.result.problem(f"DELETE {up.id}: {reply}")
        up.gone = True

    # -- checks ---------------------------------------------------------------------

    def head(self, up: Upload) -> Reply | None:
        return self.call("HEAD", f"/files/{up.id}", [])

    def check(self, up: Upload, req: Req | None = None, reply: Reply | None = None) -> None:
        """HEAD and the data file against the model; after ``req``, changes it explains
        are taken into the model, anything else is a mismatch."""
        after = f" after {req.what} answered {reply}" if req is not None else ""
        if req is not None:
            self.checks += 1
        head = self.head(up)
        if head is None:
            return
        if up.gone:
            if head.status not in (404, 410):
                self.result.mismatch(f"terminated {up.id} answers HEAD {head}{after}")
            return
        if head.status in (404, 410):
            if (
                req is not None
                and reply is not None
                and reply.status == 204
                and b"DELETE" in req.methods()
            ):
                up.gone = True
                return
            self.result.mismatch(f"{up.id} vanished (HEAD {head}){after}")
            up.gone = True
            return
        if head.status != 200:
            self.result.problem(f"HEAD {up.id}: {head}{after}")
            return
        if not up.exact:
            return
        offset = head.offset
        length_text = head.header("Upload-Length")
        length = int(length_text) if length_text and length_text.isdigit() else None
        if offset is None:
            self.result.mismatch(f"HEAD {up.id} without Upload-Offset{after}")
            return
        if offset != up.offset:
            if req is None or reply is None or reply.offset != offset or offset < up.offset:
                self.result.mismatch(f"{up.id}: offset {up.offset} -> {offset}{after}")
                self.resync(up)
                return
            appended = self.server.data_file(up.id).read_bytes()[up.offset : offset]
            if not req.data.startswith(appended):
                self.result.mismatch(f"{up.id}: stored bytes that were never sent{after}")
                self.resync(up)
                return
            up.data += appended
            self.explained += 1
        if length != up.length:
            declared = req.header(b"Upload-Length") if req is not None else None
            explained = (
                up.length is None
                and declared is not None
                and declared.strip() == str(length).encode()
                and reply is not None
                and reply.status is not None
                and (reply.status < 300 or reply.offset is not None)
            )
            if not explained:
                self.result.mismatch(f"{up.id}: length {up.length} -> {length}{after}")
            up.length = length

    def full_check(self) -> None:
        for up in self.live():
            self.check(up)
            if up.gone:
                continue
            stored = self.server.data_file(up.id).read_bytes()
            if stored != bytes(up.data):
                self.result.mismatch(f"{up.id}: data file ({len(stored)} B) differs from the model")
                self.resync(up)

    def resync(self, up: Upload) -> None:
        """After a reported mismatch, adopt what the server has, to go on finding more."""
        path = self.server.data_file(up.id)
        up.data = bytearray(path.read_bytes()) if path.exists() else bytearray()

    def adopt(self, req: Req, reply: Reply) -> None:
        """A hostile POST that created an upload: take it into the model."""
        upload_id = (reply.header("Location") or "").rsplit("/", 1)[-1]
        if not HEX_ID.fullmatch(upload_id) or upload_id in self.uploads:
            return
        head = self.call("HEAD", f"/files/{upload_id}", [])
        if head is None or head.status != 200:
            self.result.problem(f"created by {req.what}, then HEAD {head}")
            return
        final = (head.header("Upload-Concat") or "").startswith("final")
        length_text = head.header("Upload-Length")
        up = Upload(upload_id, int(length_text) if length_text and length_text.isdigit() else None)
        if final:
            up.exact = False
        else:
            stored = self.server.data_file(upload_id).read_bytes()
            if not req.data.startswith(stored) or head.offset != len(stored):
                self.result.mismatch(f"created by {req.what}: {len(stored)} B stored, not sent")
            up.data = bytearray(stored)
        self.uploads[upload_id] = up

    # -- the run --------------------------------------------------------------------

    def run(self) -> None:
        rng = self.rng
        for step in range(self.steps):
            if self.c.stop.is_set():
                return
            live = self.live()
            roll = rng.random()
            if roll < 0.07 or len(live) < 3:
                self.create()
            elif roll < 0.20:
                open_ups = [u for u in live if not u.complete]
                if open_ups:
                    self.patch(rng.choice(open_ups))
                else:
                    self.create()
            elif roll < 0.23:
                self.download(rng.choice(live))
            elif roll < 0.24 and len(live) > 5:
                self.delete(rng.choice(live))
            else:
                self.hostile_step(live)
            if step % CHECK_EVERY == CHECK_EVERY - 1:
                self.full_check()
        self.full_check()
        for up in self.live():
            if up.complete:
                self.download(up)

    def hostile_step(self, live: list[Upload]) -> None:
        req = self.gen.hostile(live + [u for u in self.uploads.values() if u.gone][-3:])
        self.result.count(faults=1)
        reply = self.send(req)
        if reply is None:
            return
        if reply.status == 201 and req.methods() & {b"POST"}:
            self.adopt(req, reply)
        raw = req.target + b" ".join(value for _, value in req.headers)
        for up in list(self.uploads.values()):
            if up.id.encode() in raw:
                self.check(up, req, reply)


class Hostile:
    def __init__(self, server: Server, result: Result, canary: Canary, marker: str) -> None:
        self.server = server
        self.result = result
        self.canary = canary
        self.marker = marker
        self.stop = threading.Event()
