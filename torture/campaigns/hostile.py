"""6. Hostile input: ten thousand generated requests against a stateful model.

Several lanes run at once, each on keep-alive connections with uploads of its own. Each
lane keeps a model of its uploads: the exact bytes stored, the length (or none yet) and
whether they were terminated. A step is either a valid tus request, whose answer the
model predicts exactly, or a hostile one: a valid request mutated with every method and
X-HTTP-Method-Override, missing, empty, negative, huge, non-numeric and non-ASCII header
values, duplicate and oversized headers, bodies shorter or longer than Content-Length,
broken chunked framing, ids with ``..``, ``%2e%2e%2f``, absolute paths, NUL, 4,000
characters and look-alike characters, Upload-Concat finals naming other hosts,
X-Forwarded-* from an untrusted client, and metadata that tries to put header lines into
Content-Disposition.

After every step that touched a modelled upload, HEAD (and the data file) must show it
unchanged, or changed exactly as the answer said (a 204, or an answer carrying the
``Upload-Offset`` of a body that broke off) and only with bytes that were sent. Never a
5xx; never a traceback; no outbound connection (a canary listens on the loopback ports
the Upload-Concat URLs name); no file outside the data dir; downloads never carry an
injected header line; and a clean upload still works at the end.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import socket
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ..context import Context, run_all, running
from ..report import Result, timed
from ..server import REPO_ROOT, Server
from ..tus import OCTET, Client
from ..wire import Conn, Hang, KiB, MiB, Reply, build_request

NAME = "hostile"
REQUEST_TIMEOUT = 15.0
CHECK_EVERY = 250  # steps between full checks of a lane's uploads against the model


@dataclass(frozen=True)
class Params:
    requests: int = 14_000  # about three in four are hostile
    lanes: int = 4
    max_size: int = MiB  # UPLOADSVC_MAX_SIZE, so "too large" is reachable
    budget: float = 420.0


FULL = Params()
FAST = Params(requests=1_200, budget=90.0)

HEX_ID = re.compile(r"[0-9a-f]{32}")
# One disposition, one quoted ASCII name without quotes, separators or ";", and at
# most one percent-encoded filename*: a name can't add a parameter or a path.
DISPOSITION = re.compile(
    r"(inline|attachment); filename=\"[^\"\\/;\x00-\x1f\x7f]+\""
    r"(; filename\*=UTF-8''[A-Za-z0-9%._~-]+)?"
)
INJECTED = ("set-cookie", "x-injected", "refresh")
# Put after line breaks in request targets: a log line must never start with it.
FORGED = "torture-forged"
# The methods /metrics may name; any other counts as "other" (bounded label values).
METRIC_METHODS = {"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS", "PUT", "other"}
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


# --------------------------------------------------------------------------- the model


@dataclass
class Upload:
    id: str
    length: int | None
    data: bytearray = field(default_factory=bytearray)
    gone: bool = False
    exact: bool = True  # False for a final upload: its bytes are the server's to compute

    @property
    def offset(self) -> int:
        return len(self.data)

    @property
    def complete(self) -> bool:
        return self.length is not None and self.offset >= self.length


@dataclass
class Req:
    what: str
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    data: bytes = b""  # the body bytes the server may legitimately store, in order
    host: bytes | None = None  # None: the normal Host header
    no_host: bool = False
    half_close: bool = False  # FIN once sent: a body shorter than announced
    reuse: bool = True  # the connection may carry another request afterwards
    well_formed: bool = True  # valid HTTP/1.1: it must get an answer
    hostile: bool = True

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def methods(self) -> set[bytes]:
        """Every method this request could be taken for (override included)."""
        found = {self.method.upper()}
        for key, value in self.headers:
            if key.lower() == b"x-http-method-override":
                found.add(value.strip().upper())
        return found


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# Metadata values that are valid tus but try to become header lines or paths on download.
NASTY_NAMES = [
    b'evil"\r\nSet-Cookie: torture=1',
    b"a\r\n\r\n<script>alert(1)</script>",
    b"x\nRefresh: 0; url=http://evil.invalid/",
    b"../../../../etc/passwd",
    b"..\\..\\windows\\win.ini",
    b"\x00null\x00.txt",
    "\uff46\uff49\uff4c\uff45\uff0e\uff54\uff58\uff54".encode(),
    "na\u00efve r\u00e9sum\u00e9.pdf".encode(),
    "\u202egnp.exe".encode(),
    b"x" * 1000,
    # Fullwidth quote and slash: NFKD made them ASCII after cleaning (issue 13).
    "\uff02; filename=\uff02../../evil.html".encode(),
    "a\uff0f\uff3c\uff02b".encode(),
    "x\u2215y\u2044z;w".encode(),
    b"\xff\xfe not utf-8",
    b"",
    b"report.pdf",
]
NASTY_TYPES = [
    b"text/html",
    b"text/html; charset=utf-7",
    b"image/svg+xml",
    b"application/javascript",
    b"text/plain\r\nX-Injected: 1",
    b"image/png",
    b"text/plain; charset=utf-7",
    b"application/pdf",
]


def nasty_metadata(rng: random.Random) -> str:
    pairs = []
    if rng.random() < 0.8:
        pairs.append(f"filename {b64(rng.choice(NASTY_NAMES))}")
    if rng.random() < 0.6:
        pairs.append(f"filetype {b64(rng.choice(NASTY_TYPES))}")
    if rng.random() < 0.2:
        pairs.append("empty")
    rng.shuffle(pairs)
    return ",".join(pairs)


NUMBERS = [
    "",
    "-1",
    "-0",
    "+1",
    " 1",
    "1 ",
    "1.0",
    "1e3",
    "0x10",
    "abc",
    "1_000",
    "10 10",
    "1,2",
    "\u0661\u0662",  # Arabic-Indic digits: int() takes them, HTTP doesn't
    "\uff11",  # fullwidth
    "\uff15",
    "NaN",
    "Infinity",
    "null",
    "9" * 40,
    "9" * 70,
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "0" * 60,
    "0" * 100,
    "00",
]
TUS_RESUMABLE = [
    *(["1.0.0"] * 12),
    None,
    "",
    "0.2.2",
    "1.0.0, 0.2.2",
    "1.0.0 ",
    "\uff11.0.0",
    "1.0",
    "1.0.0.0",
    "v1.0.0",
]
CONTENT_TYPES = [
    *([OCTET] * 6),
    None,
    "",
    "text/plain",
    OCTET + "; charset=utf-8",
    OCTET.upper(),
    OCTET + " \u00fc",
    "multipart/form-data; boundary=x",
    OCTET + ", text/plain",
    "application/offset+octet-streamx",
]
OVERRIDES = [
    "DELETE",
    "PATCH",
    "HEAD",
    "GET",
    "POST",
    "OPTIONS",
    "PUT",
    "FOO",
    "",
    "delete",
    " PATCH ",
    "PATCH, DELETE",
    "TRACE",
]
METHODS = [b"GET", b"HEAD", b"POST", b"PATCH", b"DELETE", b"OPTIONS", b"PUT", b"TRACE"]
ODD_METHODS = [b"CONNECT", b"PROPFIND", b"patch", b"Delete", b"FOO", b"M" * 30, b"G\x00T", b"GET "]
BAD_METADATA = [
    "",
    " ",
    ",",
    "filename",
    "filename !!!not-base64",
    "filename ZmlsZS50eHQ",
    "a YQ==,a Yg==",
    "a YQ==,",
    "k YQ== extra",
    "\u043a\u043b\u044e\u0447 YQ==",
    "a\x01 YQ==",
    "x " + "A" * 9000,
    "k " + b64(bytes(6000)),
    ",".join(f"k{i} YQ==" for i in range(600)),
    "a,b,c",
    "\u00ff 4pyT",
]
BAD_CHECKSUMS = [
    "",
    "sha1",
    "sha1 ",
    "sha1 !!!",
    "sha1 " + b64(bytes(20)),
    "sha1 2jmj7l5rSw0yVb/vlWAYkK/YBwk= extra",
    "SHA1 2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
    "md5 1B2M2Y8AsgTpgAmY7PhCfg==",
    "sha256 47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
    "crc32 AAAA",
    "sha1 " + "A" * 5000,
]


class Canary:
    """A loopback listener the Upload-Concat URLs point at: the server must never call."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.calls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.calls += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


# --------------------------------------------------------------------------- generation


class Generator:
    def __init__(self, rng: random.Random, server: Server, canary: int, marker: str) -> None:
        self.rng = rng
        self.port = server.port
        self.canary = canary
        self.marker = marker  # a name that must never appear as a file anywhere

    def number(self, good: int | None) -> str:
        if good is not None and self.rng.random() < 0.4:
            return str(good)
        return self.rng.choice(NUMBERS)

    def target(self, upload_id: str | None) -> tuple[bytes, bool]:
        """A hostile request target; (target, well_formed)."""
        rng = self.rng
        some = upload_id or rng.randbytes(16).hex()
        lookalike = (
            some[:5] + rng.choice(["\u0430", "\u0435", "\uff10", "\uff46", "\u0131"]) + some[6:]
        )
        choices: list[tuple[str | bytes, bool]] = [
            (f"/files/{some}", True),
            (f"/files/{some.upper()}", True),
            (f"/files/{some}/", True),
            (f"/files/{some}/extra", True),
            (f"/files/{some}?x=1&y=%00", True),
            (f"/files/{some}%00", True),
            (f"/files/{some}%2F..%2F..%2Fuploadsvc.db", True),
            (f"/files/{some}.lock", True),
            (f"/files/{quote(lookalike)}", True),
            (f"/files/{lookalike}".encode(), False),
            ("/files/..", True),
            ("/files/../etc/passwd", True),
            ("/files/%2e%2e%2f", True),
            ("/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd", True),
            (f"/files/..%2f..%2f..%2f..%2ftmp%2f{self.marker}", True),
            (f"/files/%2e%2e/%2e%2e/{self.marker}", True),
            ("/files//etc/passwd", True),
            ("/files/%2Fetc%2Fpasswd", True),
            ("//files//", True),
            ("/files/C:%5Cwindows%5Cwin.ini", True),
            ("/files/%00", True),
            (b"/files/\x00" + some.encode(), False),
            ("/files/" + "a" * 4000, True),
            ("/files/" + "%00" * 32, True),
            ("/files/" + "b" * 9000, False),  # over gunicorn's request line limit
            ("/files/locks", True),
            ("/files/uploadsvc.db", True),
            (f"http://evil.invalid/files/{some}", True),  # absolute form
            ("*", True),
            ("/etc/passwd", True),
            ("/files/%ff%fe", True),
            ("/files/\u00fc".encode(), False),
            ("/metrics/../files/", True),
            # Decoded into the request's log line: must stay on it (issue 13).
            (f"/files/{some}%0a{FORGED}%0d%0aINFO%20{FORGED}", True),
            (f"/files/%1b[2K%1b[1G{FORGED}%c2%85{FORGED}%e2%80%a8{FORGED}", True),
            (f"/files/?q=%0a{FORGED}", True),
        ]
        value, ok = rng.choice(choices)
        return (value.encode() if isinstance(value, str) else value), ok

    def concat(self, ids: list[str]) -> str:
        rng = self.rng
        own = rng.choice(ids) if ids else rng.randbytes(16).hex()
        here = f"http://127.0.0.1:{self.port}"
        there = f"127.0.0.1:{self.canary}"
        return rng.choice(
            [
                "partial",
                "final;",
                "final; ",
                "bogus",
                f"final;/files/{own}",
                f"final;/files/{own} /files/{own}",
                f"final;{here}/files/{own}",
                f"final;http://{there}/files/{own}",
                f"final;http://localhost:{self.canary}/files/{own}",
                f"final;//{there}/files/{own}",
                f"final;http://127.0.0.1:{self.port}@{there}/files/{own}",
                f"final;http://{there}#@127.0.0.1:{self.port}/files/{own}",
                f"final;http://{there}/files/../files/{own}",
                f"final;http://[::1]:{self.canary}/files/{own}",
                f"final;ftp://{there}/files/{own}",
                "final;file:///etc/passwd",
                f"final;{here}/files/{own}?next=http://{there}/",
                f"final;http://{there}/files/{own} {here}/files/{own}",
                "final;" + " ".join(f"/files/{own}" for _ in range(300)),
                # Forms urllib refuses with ValueError (they were 500s).
                f"final;http://[zz]/files/{own}",
                f"final;http://[::1/files/{own}",
                f"final;http://127.0.0.1:99999/files/{own}",
                f"final;http://127.0.0.1:-1/files/{own}",
                f"final;http://[127.0.0.1]/files/{own}",
                f"final;http://\uff4c\uff4f\uff43\uff41\uff4c/files/{own}",
            ]
        )

    def forwarded(self) -> list[tuple[bytes, bytes]]:
        rng = self.rng
        options = [
            (b"X-Forwarded-Host", b"evil.invalid"),
            (b"X-Forwarded-Host", f"127.0.0.1:{self.canary}".encode()),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Proto", b"javascript"),
            (b"X-Forwarded-Prefix", b"/evil"),
            (b"X-Forwarded-Prefix", b"//evil.invalid"),
            (b"X-Forwarded-For", b"203.0.113.9"),
            (b"X-Forwarded-Port", b"1"),
            (b"Forwarded", b"for=203.0.113.9;host=evil.invalid;proto=https"),
            (b"X-Original-URL", b"/files/../etc/passwd"),
            (b"X-Real-IP", b"203.0.113.9"),
        ]
        return rng.sample(options, rng.randint(1, 4))

    def framing(self, req: Req, data: bytes) -> None:
        """Give ``req`` a body: well framed mostly, broken on purpose otherwise.

        A broken body ends with FIN: a server rightly waits for the rest of a message
        that may still come (a silent client is the read timeout's business), but once
        the client has closed its side it must answer or close promptly."""
        rng = self.rng
        mode = rng.choice(
            [
                "none",
                "exact",
                "exact",
                "exact",
                "exact",
                "short",
                "longer",
                "chunked",
                "chunked",
                "chunked-broken",
                "bad-length",
                "cl-te",
                "te-other",
            ]
        )
        if mode == "none":
            return
        if mode == "exact":
            req.headers.append((b"Content-Length", str(len(data)).encode()))
            req.body = req.data = data
        elif mode == "short":
            announced = len(data) + rng.choice([1, 10, 100_000])
            cut = data[: rng.randint(0, len(data))]
            req.headers.append((b"Content-Length", str(announced).encode()))
            req.body = req.data = cut
            req.half_close, req.reuse, req.well_formed = True, False, False
            req.what += f" short {len(cut)}/{announced}"
        elif mode == "longer":
            extra = rng.choice([b"x", b"GET / HTTP/1.1\r\n\r\n", rng.randbytes(100)])
            req.headers.append((b"Content-Length", str(len(data)).encode()))
            req.body, req.data = data + extra, data
            req.half_close, req.reuse, req.well_formed = True, False, False
            req.what += " longer than Content-Length"
        elif mode == "chunked":
            pieces = _split(rng, data)
            req.headers.append((b"Transfer-Encoding", b"chunked"))
            ext = rng.choice([b"", b";a=b", b';q="x"'])
            trailer = rng.choice([b"", b"X-Trailer: 1\r\n"])
            req.body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in pieces if p)
            req.body += b"0\r\n" + trailer + b"\r\n"
            req.data = data
            req.what += " chunked"
        elif mode == "chunked-broken":
            pieces = [p for p in _split(rng, data) if p] or [b"x"]
            kind = rng.choice(["size", "crlf", "truncated", "huge", "ext", "lf", "trailer"])
            req.headers.append((b"Transfer-Encoding", b"chunked"))
            good = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces[:-1])
            last = pieces[-1]
            req.data = b"".join(pieces)
            if kind == "size":
                req.body = good + b"zz\r\n" + last + b"\r\n0\r\n\r\n"
            elif kind == "crlf":
                req.body = good + b"%x\r\n%sXX0\r\n\r\n" % (len(last), last)
            elif kind == "truncated":
                req.body = good + b"%x\r\n%s" % (len(last) + 50, last)
                req.half_close = True
            elif kind == "huge":
                req.body = good + b"ffffffffffffffffff\r\n" + last
                req.half_close = True
            elif kind == "ext":
                req.body = good + b"%x;\x01bad\r\n%s\r\n0\r\n\r\n" % (len(last), last)
            elif kind == "lf":
                req.body = good + b"%x\n%s\n0\n\n" % (len(last), last)
            else:
                req.body = good + b"%x\r\n%s\r\n0\r\nContent-Length: 5\r\n\r\n" % (len(last), last)
            req.half_close, req.reuse, req.well_formed = True, False, False
            req.what += f" chunked broken ({kind})"
        elif mode == "bad-length":
            value = rng.choice(
                [b"-1", b"abc", b"1, 2", b"", b"0x10", "\u0661".encode(), b"+5", b" 5 "]
            )
            req.headers.append((b"Content-Length", value))
            # " 5 " is a valid length: HTTP strips the whitespace around a field value
            # (RFC 9110 section 5.5), so these bytes may be taken as the body.
            req.body = req.data = data[:5]
            req.half_close, req.reuse, req.well_formed = True, False, False
            req.what += f" Content-Length {value!r}"
        elif mode == "cl-te":
            req.headers.append((b"Content-Length", str(len(data)).encode()))
            req.headers.append((b"Transfer-Encoding", b"chunked"))
            req.body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"
            req.half_close, req.reuse, req.well_formed = True, False, False
            req.what += " Content-Length and chunked"
        else:
            req.headers.append(
                (
                    b"Transfer-Encoding",
                    rng.choice([b"gzip", b"gzip, chunked", b"chunked, chunked", b"identity"]),
                )
            )
            req.body = data
            req.half_close, req.reuse, req.well_formed = True, False, False
            req.what += " odd Transfer-Encoding"

    def hostile(self, ups: list[Upload]) -> Req:
        rng = self.rng
        up = rng.choice(ups) if ups and rng.random() < 0.85 else None
        ids = [u.id for u in ups]
        base = rng.choice(["POST", "PATCH", "PATCH", "HEAD", "DELETE", "GET", "OPTIONS"])
        method = base.encode()
        if rng.random() < 0.15:
            method = rng.choice(METHODS)
        elif rng.random() < 0.05:
            method = rng.choice(ODD_METHODS)
        target = (
            b"/files/"
            if base in ("POST", "OPTIONS")
            else f"/files/{up.id if up else ids[0] if ids else 'x'}".encode()
        )
        well_formed = method in METHODS
        if rng.random() < 0.2:
            target, ok = self.target(up.id if up else None)
            well_formed = well_formed and ok
        headers: list[tuple[bytes, bytes]] = []

        def put(name: str, value: str | bytes | None) -> None:
            if value is not None:
                headers.append(
                    (name.encode(), value if isinstance(value, bytes) else value.encode())
                )

        put("Tus-Resumable", rng.choice(TUS_RESUMABLE))
        offset = up.offset if up else None
        if base == "POST":
            roll = rng.random()
            if roll < 0.4:
                put("Upload-Length", self.number(rng.randint(0, 64 * KiB)))
            elif roll < 0.6:
                put("Upload-Defer-Length", rng.choice(["1", "0", "2", "", "yes", "1 "]))
            elif roll < 0.75:
                put("Upload-Length", self.number(100))
                put("Upload-Defer-Length", "1")
            if rng.random() < 0.3:
                put("Upload-Concat", self.concat(ids))
        if base == "PATCH" or rng.random() < 0.1:
            put("Upload-Offset", self.number(offset))
            if up is not None and up.length is None and rng.random() < 0.3:
                put("Upload-Length", self.number(up.offset + rng.randint(0, 4 * KiB)))
        if base in ("PATCH", "POST") or rng.random() < 0.1:
            put("Content-Type", rng.choice(CONTENT_TYPES))
        if rng.random() < 0.3:
            put(
                "Upload-Metadata",
                nasty_metadata(rng) if rng.random() < 0.5 else rng.choice(BAD_METADATA),
            )
        data = rng.randbytes(rng.choice([0, 1, 7, 100, 2 * KiB, 20 * KiB]))
        if rng.random() < 0.05:
            # A body the server refuses before reading it, still coming when the answer
            # does: the answer must say the connection closes (see send()).
            data = rng.randbytes(2 * MiB)
        if rng.random() < 0.15:
            good = "sha1 " + b64(hashlib.sha1(data).digest())
            put("Upload-Checksum", rng.choice([good, good, *BAD_CHECKSUMS]))
        if rng.random() < 0.15:
            put("X-HTTP-Method-Override", rng.choice(OVERRIDES))
        if rng.random() < 0.15:
            headers.extend(self.forwarded())
        req = Req(f"{method.decode('latin-1')[:12]} {target[:60]!r}", method, target, headers)
        req.well_formed = well_formed
        if rng.random() < 0.5:
            self.framing(req, data)
        self.mutate_headers(req)
        req.what += (
            " "
            + repr([(k.decode("latin-1"), v[:40].decode("latin-1")) for k, v in req.headers])[:400]
        )
        return req

    def mutate_headers(self, req: Req) -> None:
        rng = self.rng
        if req.headers and rng.random() < 0.08:  # one header twice, maybe with another value
            name, value = rng.choice(req.headers)
            req.headers.append((name, rng.choice([value, b"", b"1", b"0", b"-1"])))
        if rng.random() < 0.03:
            req.headers.append((b"X-Big", b"v" * rng.choice([17 * KiB, 64 * KiB])))
            req.well_formed, req.reuse = False, False
        if rng.random() < 0.02:
            req.headers.extend(
                (f"X-Many-{i}".encode(), b"1") for i in range(rng.choice([101, 300]))
            )
            req.well_formed, req.reuse = False, False
        if req.headers and rng.random() < 0.05:  # raw bytes in a value
            index = rng.randrange(len(req.headers))
            name, value = req.headers[index]
            junk = rng.choice(
                [b"\x00", b"\x01", b"\x7f", b"\xff", "\u00e9".encode(), b"\r", b"\n", b"\t"]
            )
            req.headers[index] = (name, value + junk + b"x")
            req.well_formed, req.reuse = False, False
        if rng.random() < 0.03:
            roll = rng.random()
            if roll < 0.3:
                req.no_host = True
            elif roll < 0.6:
                req.host = rng.choice([b"evil.invalid", b"xn--", b"[zz]", b"a..b"])
            else:
                req.headers.append((b"Host", b"evil.invalid"))
            req.well_formed, req.reuse = False, False


def unknown_coding(req: Req) -> bool:
    codings = [v.strip().lower() for k, v in req.headers if k.lower() == b"transfer-encoding"]
    return bool(codings) and codings != [b"chunked"]


def _split(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 4))))
    pieces, last = [], 0
    for cut in cuts:
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    return pieces


# --------------------------------------------------------------------------- a lane


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


def _listing(root: Path) -> set[str]:
    try:
        return set(os.listdir(root))
    except OSError:
        return set()


def run(ctx: Context, params: Params | None = None) -> Result:
    params = params or (FAST if ctx.fast else FULL)
    result = Result(NAME)
    rng = ctx.rng(NAME)
    marker = f"torture-pwned-{ctx.seed}"
    statuses: Counter[str] = Counter()
    checks = explained = unannounced = early_keepalive = 0
    canary = Canary()
    try:
        with (
            timed(result),
            running(ctx, result, NAME, UPLOADSVC_MAX_SIZE=str(params.max_size)) as server,
        ):
            watched = {
                "repo": REPO_ROOT,
                "server dir": server.base_dir,
                "work dir": ctx.work_dir,
                "/tmp": Path("/tmp"),
            }
            before = {name: _listing(path) for name, path in watched.items()}
            campaign = Hostile(server, result, canary, marker)
            steps = params.requests // params.lanes
            lanes = [
                Lane(campaign, i, random.Random(rng.getrandbits(64)), steps)
                for i in range(params.lanes)
            ]
            run_all(
                result,
                [lane.run for lane in lanes],
                parallel=params.lanes,
                budget=params.budget,
                what=NAME,
            )
            campaign.stop.set()
            checks = sum(lane.checks for lane in lanes)
            unannounced = sum(lane.unannounced_closes for lane in lanes)
            early_keepalive = sum(lane.early_keepalive for lane in lanes)
            explained = sum(lane.explained for lane in lanes)
            for lane in lanes:
                statuses.update(lane.statuses)
                if lane.conn is not None:
                    lane.conn.close()
            # A clean upload still works.
            client = Client(server, result)
            data = rng.randbytes(MiB - 3)
            upload_id = client.create(len(data), what="clean upload")
            if upload_id is not None and client.finish(upload_id, data, what="clean upload"):
                client.verify(upload_id, data, what="clean upload")
            for name, path in watched.items():
                new = {
                    n
                    for n in _listing(path) - before[name]
                    if marker in n or name in ("repo", "server dir")
                }
                new -= {
                    "__pycache__",
                    ".pytest_cache",
                    ".ruff_cache",
                    ".mypy_cache",
                    "torture-results",
                }
                if new:
                    result.mismatch(f"new entries in {name} {path}: {sorted(new)[:10]}")
            check_data_dir(server, result)
            check_log_lines(server, result)
            check_metric_labels(server, result)
            for found in Path("/tmp").glob(f"**/{marker}*"):
                result.mismatch(f"a hostile path made {found}")
    finally:
        canary.close()
    if canary.calls:
        result.mismatch(f"the server connected out {canary.calls} times (Upload-Concat URLs)")
    result.figures["answers"] = dict(sorted(statuses.items(), key=lambda kv: -kv[1]))
    result.figures["outbound_connections"] = canary.calls
    result.figures["model_checks"] = checks
    result.figures["changes_explained"] = explained
    result.figures["keepalive_closed_unannounced"] = unannounced
    result.figures["early_answers_saying_keepalive"] = early_keepalive
    return result


def check_data_dir(server: Server, result: Result) -> None:
    """Only upload files, lock files and SQLite's own files inside the data dir."""
    for path in server.data_dir.rglob("*"):
        rel = path.relative_to(server.data_dir)
        parts = rel.parts
        if parts[0] == "files" and len(parts) == 2 and HEX_ID.fullmatch(parts[1]):
            continue
        if (
            parts[0] == "locks"
            and len(parts) == 2
            and re.fullmatch(r"[0-9A-Za-z]{8,64}\.(lock|release)", parts[1])
        ):
            continue
        if len(parts) == 1 and (
            parts[0] in ("files", "locks", "migrate.lock") or parts[0].startswith("uploadsvc.db")
        ):
            continue
        result.mismatch(f"unexpected file in the data dir: {rel}")


def check_log_lines(server: Server, result: Result) -> None:
    """What the client sent after a line break stays on its request's line: every log
    line naming FORGED is a record of uploadsvc (``LEVEL logger [id] ...``) or of
    gunicorn (``[time] [pid] [LEVEL] ...``)."""
    forged = 0
    for line in server.log_text().splitlines():
        if FORGED not in line:
            continue
        forged += 1
        if not re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ \[|\[\d{4}-", line):
            result.mismatch(f"a forged log line: {line[:200]!r}")
    result.figures["log_lines_with_forging_attempts"] = forged


def check_metric_labels(server: Server, result: Result) -> None:
    """Made-up methods add no series: /metrics names only known methods and "other"."""
    reply = Client(server, result).call("GET", "/metrics", what="GET /metrics")
    if reply is None or reply.status != 200:
        result.problem(f"GET /metrics: {reply}")
        return
    methods = set(re.findall(r'method="([^"]*)"', reply.body.decode("utf-8", "replace")))
    if methods - METRIC_METHODS:
        result.mismatch(f"/metrics names made-up methods: {sorted(methods - METRIC_METHODS)[:10]}")
    result.figures["metric_series"] = reply.body.count(b"\n")
