"""read_body against gunicorn's own HTTP/1 parser over a real loopback connection.

In-process: the test plays the client on one end of a TCP connection and gunicorn's
RequestParser reads the other, exactly as a gthread worker does (``wsgi.create``
builds the environ). This pins the gunicorn layout the socket path depends on (if a
gunicorn upgrade changes it, ``test_socket_path_is_taken`` fails instead of uploads
quietly getting slower), and checks what matters for keep-alive: after a body, the
parser finds the next request exactly where it starts.
"""

from __future__ import annotations

import contextlib
import io
import random
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from gunicorn.config import Config  # type: ignore[import-untyped]
from gunicorn.http import wsgi  # type: ignore[import-untyped]
from gunicorn.http.parser import RequestParser  # type: ignore[import-untyped]

from uploadsvc import body
from uploadsvc.errors import BodyIncomplete

TIMEOUT = 10.0


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, server) ends of a loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        server, _ = listener.accept()
    server.settimeout(TIMEOUT)
    try:
        yield client, server
    finally:
        client.close()
        server.close()


class Conn:
    """The server side of one connection, as gunicorn's gthread worker sees it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.cfg = Config()
        self.parser = RequestParser(self.cfg, sock, ("127.0.0.1", 1))

    def next_request(self) -> tuple[Any, dict[str, Any]]:
        """Parse the next request (draining the previous body, as gunicorn does)."""
        req = next(self.parser)
        _, environ = wsgi.create(req, self.sock, ("127.0.0.1", 1), ("127.0.0.1", 2), self.cfg)
        return req, environ

    def keeps_alive(self) -> bool:
        """What gthread's _keepalive_after asks before reusing the connection."""
        return bool(self.parser.finish_body())


def head(method: str, *headers: str) -> bytes:
    lines = [f"{method} /files/x HTTP/1.1", "Host: test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def sized(data: bytes, method: str = "PATCH") -> bytes:
    return head(method, f"Content-Length: {len(data)}") + data


def chunked(pieces: list[bytes], tail: bytes = b"0\r\n\r\n") -> bytes:
    framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return head("PATCH", "Transfer-Encoding: chunked") + framed + tail


def read_all(environ: dict[str, Any]) -> tuple[bytes, BodyIncomplete | None]:
    got = bytearray()
    try:
        for block in body.read_body(environ):
            assert isinstance(block, bytes)
            got += block
    except BodyIncomplete as error:
        return bytes(got), error
    return bytes(got), None


def send_later(
    sock: socket.socket, payload: bytes, *, seed: int = 0, then_close: bool = False
) -> threading.Thread:
    """Send ``payload`` from a thread in writes of random sizes (big bodies don't fit
    in the socket buffers, so the test can't send them before reading); then shut the
    sending side if ``then_close``."""

    def run() -> None:
        rng = random.Random(seed)
        pos = 0
        while pos < len(payload):
            step = rng.choice([1, 2, 7, 100, 4096, 65536, 300_000])
            with contextlib.suppress(OSError):
                sock.sendall(payload[pos : pos + step])
            pos += step
        if then_close:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def assert_read_then_next_request(
    pair: tuple[socket.socket, socket.socket], request: bytes, data: bytes, *, seed: int
) -> None:
    """``request``, sent in random writes with a HEAD behind it, reads as ``data``; the
    connection stays alive and the HEAD is found where it starts."""
    client, server = pair
    sender = send_later(client, request + head("HEAD"), seed=seed)
    conn = Conn(server)
    _, environ = conn.next_request()
    assert read_all(environ) == (data, None)
    assert conn.keeps_alive()
    req, _ = conn.next_request()
    assert req.method == "HEAD"
    sender.join(TIMEOUT)


def test_socket_path_is_taken(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    client.sendall(sized(b"x" * 10) + chunked([b"y" * 10]))
    conn = Conn(server)
    _, environ = conn.next_request()
    source = body._gunicorn(environ)
    assert source is not None, "gunicorn's body layout changed: the socket path is off"
    assert read_all(environ) == (b"x" * 10, None)
    _, environ = conn.next_request()
    assert body._gunicorn(environ) is not None
    assert read_all(environ) == (b"y" * 10, None)


def test_generic_path_without_gunicorn() -> None:
    environ = {"wsgi.input": io.BytesIO(b"abc" * 1000), "CONTENT_LENGTH": "3000"}
    assert body._gunicorn(environ) is None
    assert read_all(environ) == (b"abc" * 1000, None)
    short = {"wsgi.input": io.BytesIO(b"abc"), "CONTENT_LENGTH": "10"}
    data, error = read_all(short)
    assert data == b"abc"
    assert error is not None


def test_keep_alive_sized_bodies_and_pipelining(pair: tuple[socket.socket, socket.socket]) -> None:
    """Several requests in one write: headers, whole bodies and the next request's
    start all reach gunicorn's buffer together."""
    client, server = pair
    first, second = random.Random(1).randbytes(5000), random.Random(2).randbytes(70_000)
    client.sendall(sized(first) + head("HEAD") + sized(second) + head("HEAD"))
    conn = Conn(server)
    for expected_method, expected_body in [
        ("PATCH", first),
        ("HEAD", b""),
        ("PATCH", second),
        ("HEAD", b""),
    ]:
        req, environ = conn.next_request()
        assert req.method == expected_method
        assert read_all(environ) == (expected_body, None)
        assert conn.keeps_alive()


@pytest.mark.parametrize("size", [1, 8191, 8192, 100_000, 3 * 1024 * 1024 + 17])
def test_sized_body_in_random_writes(pair: tuple[socket.socket, socket.socket], size: int) -> None:
    data = random.Random(size).randbytes(size)
    assert_read_then_next_request(pair, sized(data), data, seed=size)


def test_consumer_stopping_early_leaves_gunicorn_the_exact_rest(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    data = random.Random(3).randbytes(3 * 1024 * 1024)
    sender = send_later(client, sized(data) + head("HEAD"))
    conn = Conn(server)
    _, environ = conn.next_request()
    blocks = body.read_body(environ)
    got = next(blocks)
    blocks.close()
    assert data.startswith(got)
    # gunicorn drains exactly the rest of the body, then finds the next request.
    req, _ = conn.next_request()
    assert req.method == "HEAD"
    sender.join(TIMEOUT)


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_sized_body_cut_short_keeps_exact_bytes(
    pair: tuple[socket.socket, socket.socket], how: str
) -> None:
    client, server = pair
    data = random.Random(4).randbytes(100_000)
    client.sendall(head("PATCH", "Content-Length: 1000000") + data)
    conn = Conn(server)
    _, environ = conn.next_request()
    blocks = body.read_body(environ)
    got = bytearray(next(blocks))  # the socket path is reading before the cut
    while len(got) < len(data):
        got += next(blocks)
    if how == "rst":
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
    else:
        client.shutdown(socket.SHUT_WR)
    with pytest.raises(BodyIncomplete):
        for block in blocks:
            got += block
    assert bytes(got) == data
    assert not conn.keeps_alive()


def test_chunked_with_extensions_trailers_and_pipelining(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    pieces = [b"a" * 5, b"b" * 70_000, b"c"]
    framed = b"5;name=value\r\naaaaa\r\n" + b'%X ; q="x\\"y"\r\n' % 70_000 + pieces[1]
    framed += b"\r\n1\r\nc\r\n0;last\r\nX-Checksum: abc\r\nX-More:  two words \r\n\r\n"
    request = head("PATCH", "Transfer-Encoding: chunked") + framed
    client.sendall(request + sized(b"next") + head("HEAD"))
    conn = Conn(server)
    req, environ = conn.next_request()
    assert body._gunicorn(environ) is not None
    assert read_all(environ) == (b"".join(pieces), None)
    assert conn.keeps_alive()
    assert not req.should_close()  # the answer may say keep-alive
    _, environ = conn.next_request()
    assert read_all(environ) == (b"next", None)
    req, _ = conn.next_request()
    assert req.method == "HEAD"


def test_chunked_stopping_early_closes_the_connection(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    data = random.Random(5).randbytes(3 * 1024 * 1024)
    sender = send_later(client, chunked([data[i : i + 65536] for i in range(0, len(data), 65536)]))
    conn = Conn(server)
    req, environ = conn.next_request()
    blocks = body.read_body(environ)
    next(blocks)
    blocks.close()
    # Where the body ends is unknown now: gunicorn must not read on, and the answer
    # must say so (Connection: close), not promise a keep-alive it won't keep.
    assert not conn.keeps_alive()
    assert req.should_close()
    server.close()  # as gunicorn does: the sender's writes now fail
    sender.join(TIMEOUT)
    assert not sender.is_alive()


BROKEN_CHUNKED = {
    "size not hex": b"5\r\naaaaa\r\nzz\r\n",
    "no size": b"5\r\naaaaa\r\n\r\n",
    "space before size": b"5\r\naaaaa\r\n 1\r\nb\r\n0\r\n\r\n",
    "data longer than size": b"5\r\naaaaaX\r\n0\r\n\r\n",
    "bare LF after data": b"5\r\naaaaa\n0\r\n\r\n",
    "bad extension": b"5;=x\r\naaaaa\r\n0\r\n\r\n",
    "bare CR in extension": b"5;a=\rb\r\naaaaa\r\n0\r\n\r\n",
    "forbidden trailer": b"5\r\naaaaa\r\n0\r\nContent-Length: 5\r\n\r\n",
    "folded trailer": b"5\r\naaaaa\r\n0\r\nX-A: b\r\n c\r\n\r\n",
    "trailer without colon": b"5\r\naaaaa\r\n0\r\nX-A\r\n\r\n",
    "size line too long": b"5\r\naaaaa\r\n1" + b";a=b" * 5000 + b"\r\nb\r\n0\r\n\r\n",
    "cut in data": b"5\r\naaaaa\r\n10\r\nbbb",
    "cut in size line": b"5\r\naaaaa\r\n1",
    "cut before trailers end": b"5\r\naaaaa\r\n0\r\nX-A: b\r\n",
    "cut after last chunk": b"5\r\naaaaa\r\n0\r\n",
}


@pytest.mark.parametrize("framing", BROKEN_CHUNKED.values(), ids=BROKEN_CHUNKED.keys())
def test_broken_chunked_framing(pair: tuple[socket.socket, socket.socket], framing: bytes) -> None:
    """Every data byte before the break is delivered, then BodyIncomplete; the
    connection is not reused. gunicorn's own reader agrees on all of it."""
    client, server = pair
    request = head("PATCH", "Transfer-Encoding: chunked") + framing
    client.sendall(request)
    client.shutdown(socket.SHUT_WR)
    conn = Conn(server)
    _, environ = conn.next_request()
    data, error = read_all(environ)
    assert error is not None
    assert b"aaaaa".startswith(data[:5]) and set(data[5:]) <= {ord("b")}
    assert not conn.keeps_alive()
    assert (data, True) == gunicorn_decodes(request, step=1)


def gunicorn_decodes(request: bytes, step: int = 100_000) -> tuple[bytes, bool]:
    """What gunicorn's own ChunkedReader makes of ``request``: (data, failed). Reads of
    ``step`` bytes: with 1, every byte it decoded before an error comes out."""
    a, b = socket.socketpair()
    with a, b:
        sender = send_later(a, request, then_close=True)
        parser = RequestParser(Config(), b, ("127.0.0.1", 1))
        req = next(parser)
        got = bytearray()
        try:
            for block in iter(lambda: req.body.reader.read(step), b""):
                got += block
        except Exception:
            return bytes(got), True
        finally:
            sender.join(TIMEOUT)
        return bytes(got), False


def random_framing(rng: random.Random, data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while pos < len(data):
        size = rng.choice([1, 2, 100, 4096, 65536, 200_000, rng.randrange(1, 300_000)])
        piece = data[pos : pos + size]
        pos += len(piece)
        digits = b"%x" % len(piece) if rng.random() < 0.5 else b"%X" % len(piece)
        if rng.random() < 0.2:
            digits = b"00" + digits
        ext = rng.choice([b"", b"", b";a", b";a=b", b' ;n="q\\"x"', b"\t;k=v;z"])
        out += digits + ext + b"\r\n" + piece + b"\r\n"
    out += rng.choice([b"0\r\n\r\n", b"0;e=1\r\n\r\n", b"0\r\nX-T: 1\r\nY:\r\n\r\n"])
    return bytes(out)


@pytest.mark.parametrize("seed", range(6))
def test_chunked_matches_gunicorn_on_random_framing(
    pair: tuple[socket.socket, socket.socket], seed: int
) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.choice([0, 1, 1000, 2_500_000]))
    request = head("PATCH", "Transfer-Encoding: chunked") + random_framing(rng, data)
    assert_read_then_next_request(pair, request, data, seed=seed)
    assert gunicorn_decodes(request) == (data, False)
