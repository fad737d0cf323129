"""The hostile campaign's model of a lane's uploads (the bytes stored, the length, gone
or not), the requests it sends, the header values they are built from, and the canary
that the Upload-Concat URLs point at."""

from __future__ import annotations

import base64
import random
import re
import socket
import threading
from dataclasses import dataclass, field

from ...tus import OCTET

HEX_ID = re.compile(r"[0-9a-f]{32}")
# Put after line breaks in request targets: a log line must never start with it.
FORGED = "torture-forged"


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
