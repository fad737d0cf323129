"""Chunked PATCH bodies (no Content-Length), keep-alive, and creation-with-upload."""

from __future__ import annotations

import http.client
import random
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from .conftest import (
    HOST,
    IO_TIMEOUT,
    OFFSET_OCTET_STREAM,
    TUS_VERSION,
    KiB,
    LiveServer,
    MiB,
    build_request,
    connect,
    exchange_on,
    head_upload,
    http_request,
    patch_upload,
    random_bytes,
    sha256_bytes,
    sha256_file,
    tus_headers,
)

pytestmark = pytest.mark.live


def odd_pieces(data: bytes, seed: int) -> list[bytes]:
    """Split ``data`` into odd-sized pieces: 1 byte, primes, sizes around 64 KiB, ..."""
    rng = random.Random(seed)
    sizes = [1, 3, 4093, 65537, 65535, 7, 131071]
    pieces = []
    pos = 0
    for i in range(len(data)):  # bounded: every piece takes at least one byte
        if pos >= len(data):
            break
        size = sizes[i] if i < len(sizes) else rng.randrange(1, 300_000) | 1
        pieces.append(data[pos : pos + size])
        pos += size
    return pieces


def test_chunked_patch_with_http_client(live_server: LiveServer) -> None:
    data = random_bytes(3 * MiB + 12345, seed=31)
    pieces = odd_pieces(data, seed=32)
    url = live_server.create_upload(len(data))

    def body() -> Iterator[bytes]:
        yield from pieces

    resp = http_request(
        "PATCH",
        url,
        tus_headers(Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM),
        body(),
        encode_chunked=True,
    )
    assert resp.status == 204, resp
    assert resp.header("Upload-Offset") == str(len(data))
    head = head_upload(url)
    assert head.header("Upload-Offset") == str(len(data))
    assert sha256_file(live_server.data_file(url)) == sha256_bytes(data)


def test_chunked_patch_over_raw_socket_in_odd_writes(live_server: LiveServer) -> None:
    """Chunk framing split across writes at awkward places, chunk extensions, a trailer."""
    data = random_bytes(2 * MiB + 777, seed=41)
    pieces = odd_pieces(data, seed=42)
    url = live_server.create_upload(len(data))
    encoded = b"".join(
        (b"%X;ext=%d\r\n" % (len(p), i) if i % 5 == 0 else b"%x\r\n" % len(p)) + p + b"\r\n"
        for i, p in enumerate(pieces)
    )
    encoded += b"0\r\nX-Trailer: yes\r\n\r\n"
    request_head = build_request(
        "PATCH",
        urlsplit(url).path,
        [
            ("Tus-Resumable", TUS_VERSION),
            ("Upload-Offset", "0"),
            ("Content-Type", OFFSET_OCTET_STREAM),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
        ],
        port=live_server.port,
    )
    with connect(live_server.port) as sock:
        # Send the framing in writes of odd sizes that cut through sizes and CRLFs.
        rng = random.Random(43)
        payload = request_head + encoded
        pos = 0
        for _ in range(len(payload)):
            if pos >= len(payload):
                break
            step = rng.choice([1, 2, 5, 17, 1000, 65521, 200_003])
            sock.sendall(payload[pos : pos + step])
            pos += step
        answer = exchange_on(sock, b"")
    assert answer.status == 204, answer.head
    assert answer.header("Upload-Offset") == str(len(data))
    assert sha256_file(live_server.data_file(url)) == sha256_bytes(data)


def test_keep_alive_connection_chunked_then_sized_then_head(live_server: LiveServer) -> None:
    """Several requests on one connection: the body reader must stop exactly at each end."""
    data = random_bytes(3 * MiB + 5, seed=51)
    first, second = data[: MiB + 333], data[MiB + 333 :]
    url = live_server.create_upload(len(data))
    path = urlsplit(url).path
    conn = http.client.HTTPConnection(HOST, live_server.port, timeout=IO_TIMEOUT)
    try:
        headers = tus_headers(Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM)
        conn.request("PATCH", path, body=iter(odd_pieces(first, 52)), headers=headers)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 204
        assert resp.getheader("Upload-Offset") == str(len(first))

        headers = tus_headers(Upload_Offset=str(len(first)), Content_Type=OFFSET_OCTET_STREAM)
        conn.request("PATCH", path, body=second, headers=headers)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 204
        assert resp.getheader("Upload-Offset") == str(len(data))

        conn.request("HEAD", path, headers=tus_headers())
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        assert resp.getheader("Upload-Offset") == str(len(data))
    finally:
        conn.close()
    assert sha256_file(live_server.data_file(url)) == sha256_bytes(data)


@pytest.mark.parametrize("first_part", [0, 1, 256 * KiB + 1, 2 * MiB], ids=str)
def test_creation_with_upload(live_server: LiveServer, first_part: int) -> None:
    data = random_bytes(2 * MiB, seed=60 + first_part)
    resp = live_server.create(len(data), body=data[:first_part])
    assert resp.status == 201, resp
    url = resp.header("Location")
    assert url is not None
    assert live_server.upload_url_re().fullmatch(url), url
    assert resp.header("Upload-Offset") == str(first_part)

    if first_part < len(data):
        rest = patch_upload(url, first_part, data[first_part:])
        assert rest.status == 204, rest
        assert rest.header("Upload-Offset") == str(len(data))
    head = head_upload(url)
    assert head.status == 200, head
    assert head.header("Upload-Offset") == str(len(data))
    assert sha256_file(live_server.data_file(url)) == sha256_bytes(data)
