"""The socket body path under a real gunicorn: keep-alive, read-ahead, pipelining, drops.

uploadsvc reads PATCH bodies from gunicorn's socket directly (uploadsvc/body.py). These
tests aim at the seams of that: body bytes gunicorn already buffered with the headers,
several requests in one write, the next request right behind a body, and a body that
breaks off. Every upload is checked byte for byte against what was sent.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest

from .conftest import (
    OFFSET_OCTET_STREAM,
    TUS_VERSION,
    KiB,
    LiveServer,
    MiB,
    abort_connection,
    build_request,
    connect,
    head_upload,
    patch_upload,
    random_bytes,
    read_response_head,
    sha256_bytes,
    sha256_file,
    wait_until_delivered,
)

pytestmark = pytest.mark.live


def patch_head(server: LiveServer, url: str, offset: int, length: int | None) -> bytes:
    """A PATCH's request line and headers; ``length`` None: chunked."""
    headers = [
        ("Tus-Resumable", TUS_VERSION),
        ("Upload-Offset", str(offset)),
        ("Content-Type", OFFSET_OCTET_STREAM),
    ]
    if length is None:
        headers.append(("Transfer-Encoding", "chunked"))
    else:
        headers.append(("Content-Length", str(length)))
    return build_request("PATCH", urlsplit(url).path, headers, port=server.port)


def head_request(server: LiveServer, url: str) -> bytes:
    return build_request(
        "HEAD", urlsplit(url).path, [("Tus-Resumable", TUS_VERSION)], port=server.port
    )


def chunk_framing(data: bytes, size: int) -> bytes:
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


class Responses:
    """Reads responses one after the other off a kept-alive connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(64 * KiB)
        assert data, f"connection closed; unparsed: {self.buf[:300]!r}"
        self.buf += data

    def next(self, *, head: bool = False) -> tuple[int, dict[str, str]]:
        """The next response's status and headers (lower-cased); its body is skipped
        (none for a HEAD request)."""
        for _ in range(10_000):
            if b"\r\n\r\n" in self.buf:
                break
            self._fill()
        raw, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        size = 0 if head else int(headers.get("content-length", "0"))
        for _ in range(10_000):
            if len(self.buf) >= size:
                break
            self._fill()
        self.buf = self.buf[size:]
        return int(status_line.split()[1]), headers


def test_patch_head_patch_on_one_connection(live_server: LiveServer) -> None:
    """Three requests on one kept-alive socket, each sent after the previous answer."""
    data = random_bytes(5 * MiB + 3, seed=101)
    first, second = data[: 3 * MiB + 1], data[3 * MiB + 1 :]
    url = live_server.create_upload(len(data))
    with connect(live_server.port) as sock:
        responses = Responses(sock)
        sock.sendall(patch_head(live_server, url, 0, len(first)))
        sock.sendall(first)
        status, headers = responses.next()
        assert (status, headers.get("upload-offset")) == (204, str(len(first)))
        assert headers.get("connection", "keep-alive").lower() != "close"

        sock.sendall(head_request(live_server, url))
        status, headers = responses.next(head=True)
        assert (status, headers.get("upload-offset")) == (200, str(len(first)))

        sock.sendall(patch_head(live_server, url, len(first), len(second)) + second)
        status, headers = responses.next()
        assert (status, headers.get("upload-offset")) == (204, str(len(data)))
    assert sha256_file(live_server.data_file(url)) == sha256_bytes(data)


@pytest.mark.parametrize("in_first_packet", [1, 1000, 64 * KiB, 2 * MiB], ids=str)
def test_body_bytes_sent_with_the_headers(live_server: LiveServer, in_first_packet: int) -> None:
    """The first body bytes share a write with the headers (gunicorn reads them ahead
    while parsing the headers); the rest follows once they have surely arrived."""
    data = random_bytes(3 * MiB + 5, seed=in_first_packet)
    url = live_server.create_upload(len(data))
    with connect(live_server.port) as sock:
        sock.sendall(patch_head(live_server, url, 0, len(data)) + data[:in_first_packet])
        wait_until_delivered(sock)
        sock.sendall(data[in_first_packet:])
        status, headers = Responses(sock).next()
    assert (status, headers.get("upload-offset")) == (204, str(len(data)))
    assert sha256_file(live_server.data_file(url)) == sha256_bytes(data)


@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
def test_pipelined_requests(live_server: LiveServer, chunked: bool) -> None:
    """PATCH, HEAD, PATCH, HEAD in a single write: each body ends exactly where the next
    request starts, whatever gunicorn or the body reader read ahead."""
    data = random_bytes(MiB + 7, seed=102 + chunked)
    first, second = data[:300_001], data[300_001:]
    url = live_server.create_upload(len(data))

    def patch(offset: int, part: bytes) -> bytes:
        if chunked:
            return patch_head(live_server, url, offset, None) + chunk_framing(part, 65_521)
        return patch_head(live_server, url, offset, len(part)) + part

    payload = patch(0, first) + head_request(live_server, url)
    payload += patch(len(first), second) + head_request(live_server, url)
    with connect(live_server.port) as sock:
        sock.sendall(payload)
        responses = Responses(sock)
        assert responses.next()[0] == 204
        status, headers = responses.next(head=True)
        assert (status, headers.get("upload-offset")) == (200, str(len(first)))
        status, headers = responses.next()
        assert (status, headers.get("upload-offset")) == (204, str(len(data)))
        status, headers = responses.next(head=True)
        assert (status, headers.get("upload-offset")) == (200, str(len(data)))
    assert sha256_file(live_server.data_file(url)) == sha256_bytes(data)


@pytest.mark.parametrize("close_mode", ["fin", "rst"])
@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
def test_body_cut_short_keeps_exact_bytes(
    live_server: LiveServer, close_mode: str, chunked: bool
) -> None:
    """The body breaks off at an odd place (part of it sent with the headers): exactly
    the bytes that arrived are kept, and the upload resumes from there."""
    size = 4 * MiB
    data = random_bytes(size, seed=103 + 2 * chunked + (close_mode == "rst"))
    sent = 2 * MiB + 12_345
    url = live_server.create_upload(size)
    if chunked:
        # Whole chunks only: a chunk cut in the middle keeps its first part too, but
        # how much of it is a matter of timing.
        body = chunk_framing(data[:sent], 12_345)[: -len(b"0\r\n\r\n")]
        request = patch_head(live_server, url, 0, None)
    else:
        body = data[:sent]
        request = patch_head(live_server, url, 0, size)
    sock = connect(live_server.port)
    try:
        sock.sendall(request + body[:5000])
        wait_until_delivered(sock)
        sock.sendall(body[5000:])
        # Every byte is in the server's kernel before we go: a RST would drop the rest.
        wait_until_delivered(sock)
        if close_mode == "fin":
            sock.shutdown(socket.SHUT_WR)
            answer = read_response_head(sock)
            if answer.status is not None:
                assert answer.status < 500, answer.head
                assert answer.header("Upload-Offset") in (None, str(sent)), answer.head
        else:
            abort_connection(sock)
    finally:
        sock.close()

    head = head_upload(url)
    assert head.status == 200, head
    assert head.header("Upload-Offset") == str(sent)
    rest = patch_upload(url, sent, data[sent:])
    assert rest.status == 204, rest
    assert sha256_file(live_server.data_file(url)) == sha256_bytes(data)
