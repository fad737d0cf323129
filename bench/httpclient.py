"""The benchmark's load generator: HTTP/1.1 over raw sockets, bodies sent with sendfile.

Deliberately thin, so the client costs far less than any server it measures: requests are
formatted once, large bodies go from a file in /dev/shm to the socket with sendfile
(no copy through Python), and responses are parsed only as far as status and headers.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

TUS = "1.0.0"
OCTET = "application/offset+octet-stream"
RECV = 256 * 1024


class HTTPError(Exception):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class Connection:
    """One kept-alive connection; reconnects when the server closed it."""

    def __init__(self, host: str, port: int, *, timeout: float = 120.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def connect(self) -> socket.socket:
        if self.sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = sock
            self.buf = b""
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request_head(
        self, method: str, target: str, headers: Iterable[tuple[str, str]] = ()
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send(self, data: bytes) -> None:
        self.connect().sendall(data)

    def sendfile(self, fd: int, offset: int, count: int) -> None:
        """``count`` bytes of the file ``fd`` from ``offset``, kernel to kernel."""
        sock = self.connect()
        sock.setblocking(True)  # os.sendfile wants a blocking socket
        try:
            end = offset + count
            while offset < end:
                sent = os.sendfile(sock.fileno(), fd, offset, end - offset)
                if sent == 0:
                    raise HTTPError("sendfile: nothing sent (file too short?)")
                offset += sent
        finally:
            sock.settimeout(self.timeout)

    def response(self, *, head: bool = False) -> Response:
        """Read one response; its body is read by Content-Length (none for HEAD)."""
        sock = self.connect()
        while b"\r\n\r\n" not in self.buf:
            data = sock.recv(RECV)
            if not data:
                self.close()
                raise HTTPError(f"connection closed before a response: {self.buf[:200]!r}")
            self.buf += data
        raw, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if not head and "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._chunked_body(sock)  # Node's http server frames even empty bodies
        else:
            size = 0 if head else int(headers.get("content-length", "0"))
            self._fill(sock, size)
            body, self.buf = self.buf[:size], self.buf[size:]
        response = Response(int(status_line.split()[1]), headers, body)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return response

    def _fill(self, sock: socket.socket, size: int) -> None:
        while len(self.buf) < size:
            data = sock.recv(RECV)
            if not data:
                raise HTTPError("connection closed inside a response body")
            self.buf += data

    def _line(self, sock: socket.socket) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill(sock, len(self.buf) + 1)
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _chunked_body(self, sock: socket.socket) -> bytes:
        body = b""
        while size := int(self._line(sock).split(b";", 1)[0], 16):
            self._fill(sock, size + 2)
            body, self.buf = body + self.buf[:size], self.buf[size + 2 :]
        while self._line(sock):  # trailers, up to the empty line
            pass
        return body

    def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        self.send(self.request_head(method, target, headers) + body)
        return self.response(head=method == "HEAD")


def path_of(location: str) -> str:
    """An absolute or relative Location as a request target."""
    return urlsplit(location).path


def tus(*extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("Tus-Resumable", TUS), *extra]


def create(conn: Connection, files_path: str, length: int) -> str:
    """POST an upload of ``length`` bytes; its path."""
    response = conn.request("POST", files_path, tus(("Upload-Length", str(length))))
    location = response.header("Location")
    if response.status != 201 or not location:
        raise HTTPError(f"create: {response.status} {response.body[:200]!r}")
    return path_of(location)


def patch_headers(offset: int, length: int | None) -> list[tuple[str, str]]:
    framing = (
        ("Transfer-Encoding", "chunked") if length is None else ("Content-Length", str(length))
    )
    return tus(("Upload-Offset", str(offset)), ("Content-Type", OCTET), framing)


def expect_offset(response: Response, status: int, offset: int, what: str) -> None:
    got = response.header("Upload-Offset")
    if response.status != status or got != str(offset):
        raise HTTPError(
            f"{what}: {response.status} Upload-Offset {got}, expected {status} {offset}:"
            f" {response.body[:200]!r}"
        )
