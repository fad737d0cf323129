"""A tus client that behaves like tus-js-client when things go wrong, and checks as it goes.

tus-js-client resumes an upload from ``HEAD``; it retries network errors, 5xx, 409 and
423 after 0, 1, 3 and 5 s (the count starts again once the offset moves); any other 4xx
on ``HEAD`` makes it start over with a new upload, which for us is a failure. Every
answer passes through ``Client.check``: a 5xx nobody asked for and a hang are recorded
in the campaign's result.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .report import Result
from .server import Server
from .wire import Conn, Hang, Header, Reply

TUS_VERSION = "1.0.0"
OCTET = "application/offset+octet-stream"
RETRY_DELAYS = (0.0, 1.0, 3.0, 5.0)  # tus-js-client's defaults
RETRY_STATUSES = frozenset({409, 423})


def tus(*extra: Header) -> list[Header]:
    return [("Tus-Resumable", TUS_VERSION), *extra]


def patch_head(upload_id: str, offset: int, size: int, *extra: Header, host: str) -> bytes:
    """The request head of a PATCH of ``size`` bytes at ``offset`` (body to follow)."""
    lines = [
        f"PATCH /files/{upload_id} HTTP/1.1",
        f"Host: {host}",
        f"Tus-Resumable: {TUS_VERSION}",
        f"Upload-Offset: {offset}",
        f"Content-Type: {OCTET}",
        f"Content-Length: {size}",
    ]
    head = "\r\n".join(lines).encode() + b"\r\n"
    for name, value in extra:
        head += (name if isinstance(name, bytes) else name.encode()) + b": "
        head += (value if isinstance(value, bytes) else value.encode()) + b"\r\n"
    return head + b"\r\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: object) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(str(path), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


@dataclass
class Client:
    server: Server
    result: Result
    timeout: float = 30.0
    allowed_5xx: frozenset[int] = frozenset()

    def check(self, reply: Reply, what: str) -> Reply:
        if (
            reply.status is not None
            and reply.status >= 500
            and reply.status not in self.allowed_5xx
        ):
            self.result.server_error(f"{what}: {reply}")
        return reply

    def call(
        self,
        method: str,
        target: str,
        headers: Sequence[Header] = (),
        body: bytes = b"",
        *,
        what: str,
    ) -> Reply | None:
        """One request on a fresh connection; None after a network error or a hang
        (a hang is recorded)."""
        try:
            with Conn(self.server.port, timeout=self.timeout) as conn:
                return self.check(conn.request(method, target, headers, body), what)
        except Hang as error:
            self.result.hang(f"{what}: {error}")
        except OSError:
            pass  # a network error: the server is restarting, or a worker died
        return None

    def create(self, length: int | None, *extra: Header, what: str = "POST") -> str | None:
        """A new upload's id, or None (the problem recorded)."""
        size: list[Header] = (
            [("Upload-Defer-Length", "1")] if length is None else [("Upload-Length", str(length))]
        )
        reply = self.call("POST", "/files/", tus(*size, *extra), what=what)
        if reply is None or reply.status != 201:
            self.result.problem(f"{what}: creation answered {reply}")
            return None
        location = reply.header("Location") or ""
        prefix = self.server.endpoint
        if not location.startswith(prefix) or len(location) != len(prefix) + 32:
            self.result.problem(f"{what}: unexpected Location {location!r}")
            return None
        return location[len(prefix) :]

    def head(self, upload_id: str, *, what: str = "HEAD") -> Reply | None:
        return self.call("HEAD", f"/files/{upload_id}", tus(), what=what)

    def resume_offset(self, upload_id: str, *, what: str) -> int | None:
        """HEAD the way tus-js-client resumes: retry network errors, 423 and 5xx after
        0, 1, 3, 5 s. The offset, or None when it gave up (recorded as a problem)."""
        last: Reply | None = None
        for delay in (*RETRY_DELAYS, None):
            last = self.head(upload_id, what=what)
            if last is not None and last.status == 200:
                if last.offset is None:
                    self.result.problem(f"{what}: HEAD without Upload-Offset")
                    return None
                return last.offset
            if (
                last is not None
                and last.status is not None
                and 400 <= last.status < 500
                and last.status != 423
            ):
                # tus-js-client would throw the upload away and start over.
                self.result.problem(f"{what}: HEAD answered {last}: a client would start over")
                return None
            if delay is None:
                break
            time.sleep(delay)
        self.result.problem(f"{what}: HEAD still failing after tus-js-client's retries: {last}")
        return None

    def finish(self, upload_id: str, data: bytes, *, what: str) -> bool:
        """Resume from HEAD and send the rest in one PATCH (tus-js-client's default),
        retrying like tus-js-client until the upload is complete."""
        attempt = 0
        offset_before = -1
        for _ in range(20):  # bounded: each round either moves the offset or uses a retry
            offset = self.resume_offset(upload_id, what=f"{what} resume")
            if offset is None:
                return False
            if offset > len(data):
                self.result.mismatch(
                    f"{what}: HEAD offset {offset} past the {len(data)} bytes sent"
                )
                return False
            if offset == len(data):
                return True
            if offset > offset_before:
                attempt = 0  # progress: tus-js-client starts its delays again
            offset_before = offset
            reply = self.call(
                "PATCH",
                f"/files/{upload_id}",
                tus(("Upload-Offset", str(offset)), ("Content-Type", OCTET)),
                data[offset:],
                what=f"{what} PATCH",
            )
            if reply is not None and reply.status == 204:
                if reply.offset != len(data):
                    self.result.mismatch(f"{what}: 204 with Upload-Offset {reply.offset}")
                    return False
                return True
            if (
                reply is not None
                and reply.status is not None
                and reply.status < 500
                and reply.status not in RETRY_STATUSES
            ):
                self.result.problem(f"{what}: PATCH at {offset} answered {reply}")
                return False
            if attempt >= len(RETRY_DELAYS):
                self.result.problem(f"{what}: PATCH still failing after retries: {reply}")
                return False
            time.sleep(RETRY_DELAYS[attempt])
            attempt += 1
        self.result.problem(f"{what}: no end after 20 rounds")
        return False

    def verify(self, upload_id: str, data: bytes, *, what: str) -> bool:
        """HEAD says complete, and the stored bytes have the sha256 of ``data``."""
        reply = self.head(upload_id, what=f"{what} verify")
        if reply is None or reply.status != 200 or reply.offset != len(data):
            self.result.mismatch(
                f"{what}: HEAD after completion: {reply} offset {reply and reply.offset}"
            )
            return False
        if reply.header("Upload-Length") != str(len(data)):
            self.result.mismatch(f"{what}: Upload-Length {reply.header('Upload-Length')}")
            return False
        stored = file_sha256(self.server.data_file(upload_id))
        if stored != sha256(data):
            self.result.mismatch(f"{what}: stored sha256 {stored} != sent {sha256(data)}")
            return False
        self.result.count(verified=1)
        return True

    def stored_prefix_ok(self, upload_id: str, data: bytes, offset: int) -> bool:
        """The data file holds exactly ``offset`` bytes, and they are ``data[:offset]``."""
        path = self.server.data_file(upload_id)
        try:
            stored = path.read_bytes()
        except FileNotFoundError:
            return False
        return len(stored) == offset and stored == data[:offset]
