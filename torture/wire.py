"""A small raw HTTP/1.1 client: requests sent byte for byte as given, keep-alive, and
every read bounded in time.

http.client and requests refuse to send most of what the hostile campaign needs
(duplicate framing headers, raw NUL, broken chunking), and hide the difference between
"the server answered" and "the server closed". Here a reply with ``status`` None means
the connection ended (FIN or RST) before a status line.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import select
import socket
import struct
import termios
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

HOST = "127.0.0.1"
KiB = 1024
MiB = 1024 * KiB
IO_TIMEOUT = 30.0
MAX_HEAD = 256 * KiB
MAX_BODY = 4 * MiB  # replies are short; a longer one is read and cut
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?")

Header = tuple[str | bytes, str | bytes]


class Hang(TimeoutError):
    """The server neither answered nor closed within the time allowed."""


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def build_request(
    method: str | bytes,
    target: str | bytes,
    headers: Sequence[Header],
    *,
    host: str | bytes | None,
) -> bytes:
    """The request line and header block, ending in CRLF CRLF; ``host`` None: no Host."""
    lines = [b" ".join((_b(method), _b(target), b"HTTP/1.1"))]
    if host is not None:
        lines.append(b"Host: " + _b(host))
    lines.extend(_b(name) + b": " + _b(value) for name, value in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass
class Reply:
    status: int | None  # None: closed or reset without a status line
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)  # names lower-cased
    body: bytes = b""
    closed: bool = False  # the connection can't carry another request

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    def all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]

    @property
    def offset(self) -> int | None:
        value = self.header("Upload-Offset")
        return int(value) if value is not None and value.isdigit() else None

    def __str__(self) -> str:
        if self.status is None:
            return "connection closed without an answer"
        text = self.body[:160].decode("utf-8", "replace").strip()
        return f"{self.status} {self.reason}" + (f" ({text})" if text else "")


class Conn:
    """One client connection to 127.0.0.1:``port``."""

    def __init__(
        self, port: int, *, timeout: float = IO_TIMEOUT, source: str | None = None
    ) -> None:
        """``source``: another loopback address to connect from (127.x.y.z), so that the
        server sees another client; the traffic still goes to 127.0.0.1 only."""
        self.port = port
        self.timeout = timeout
        self.sock = socket.create_connection(
            (HOST, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        self.closed = False

    def __enter__(self) -> Conn:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def host(self) -> str:
        return f"{HOST}:{self.port}"

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()

    def abort(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()

    def half_close(self) -> None:
        """FIN our sending side, keep reading."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def send(self, data: bytes | memoryview) -> None:
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def send_watching(self, data: bytes, *, timeout: float | None = None) -> int:
        """Send ``data`` unless the server answers (or closes) first, as a client that
        reads while it writes does; the number of bytes sent."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Hang(f"sent only {sent} of {len(view)} bytes in the time allowed")
            readable, writable, _ = select.select([self.sock], [self.sock], [], remaining)
            if readable:
                break  # an early answer, or the end of the connection
            if writable:
                self.sock.settimeout(remaining)
                try:
                    sent += self.sock.send(view[sent : sent + 256 * KiB])
                except (BrokenPipeError, ConnectionResetError):
                    break
        return sent

    def unsent(self) -> int:
        """Bytes in our send queue the peer's kernel hasn't acknowledged (Linux SIOCOUTQ)."""
        raw = fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
        return int(struct.unpack("i", raw)[0])

    def wait_delivered(self, timeout: float = 20.0) -> bool:
        """Wait (bounded) until the server's kernel has every byte we sent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.unsent() == 0:
                    return True
            except OSError:
                return False
            time.sleep(0.002)
        return False

    def request(
        self,
        method: str | bytes,
        target: str | bytes,
        headers: Sequence[Header] = (),
        body: bytes = b"",
        *,
        timeout: float | None = None,
    ) -> Reply:
        """Send one request (Host and, for a body, Content-Length added) and read the reply."""
        extra: list[Header] = list(headers)
        if body and not any(_b(name).lower() == b"content-length" for name, _ in extra):
            extra.append(("Content-Length", str(len(body))))
        payload = build_request(method, target, extra, host=self.host) + body
        self.send(payload)
        return self.read_reply(head=_b(method).upper() == b"HEAD", timeout=timeout)

    def read_reply(self, *, head: bool = False, timeout: float | None = None) -> Reply:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > MAX_HEAD or not self._recv(deadline):
                self.closed = True
                return Reply(None, closed=True)
        raw_head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = raw_head.split(b"\r\n")
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            self.closed = True
            return Reply(None, reason=lines[0][:100].decode("latin-1"), closed=True)
        status = int(match.group(1))
        reply = Reply(status, (match.group(2) or b"").decode("latin-1"))
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            reply.headers.append(
                (name.strip().lower().decode("latin-1"), value.strip().decode("latin-1"))
            )
        connection = (reply.header("connection") or "").lower()
        reply.closed = "close" in connection
        if head or status in (204, 304) or 100 <= status < 200:
            pass
        elif "chunked" in (reply.header("transfer-encoding") or "").lower():
            reply.body = self._read_chunked(deadline)
        elif (length := reply.header("content-length")) is not None and length.isdigit():
            reply.body = self._read_exact(int(length), deadline)
        else:
            while self._recv(deadline):
                if len(self._buf) > MAX_BODY:
                    break
            reply.body, self._buf = self._buf[:MAX_BODY], b""
            reply.closed = True
        if reply.closed:
            self.closed = True
        return reply

    def _recv(self, deadline: float) -> bool:
        """Append what arrives to the buffer; False at EOF or reset."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Hang(f"no answer within the time allowed (got {self._buf[:120]!r})")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(256 * KiB)
        except TimeoutError:
            raise Hang(f"no answer within the time allowed (got {self._buf[:120]!r})") from None
        except OSError:  # reset
            return False
        if not data:
            return False
        self._buf += data
        return True

    def _read_exact(self, size: int, deadline: float) -> bytes:
        while len(self._buf) < size:
            if not self._recv(deadline):
                self.closed = True
                break
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def _read_chunked(self, deadline: float) -> bytes:
        out = b""
        while True:
            while b"\r\n" not in self._buf:
                if not self._recv(deadline):
                    self.closed = True
                    return out
            line, self._buf = self._buf.split(b"\r\n", 1)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while b"\r\n\r\n" not in b"\r\n" + self._buf:
                    if not self._recv(deadline):
                        break
                _, _, self._buf = (b"\r\n" + self._buf).partition(b"\r\n\r\n")
                return out
            out += self._read_exact(size + 2, deadline)[:size]
