"""Slow clients can't take the server: a header deadline, a minimum body rate, and a cap
on one client's uploads in flight (README "Slow clients"), each against real gunicorn
with the shipped gunicorn.conf.py and real sockets.

Every loop is bounded in count and time; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.live.conftest import (
    OFFSET_OCTET_STREAM,
    TUS_VERSION,
    LiveServer,
    RawResponse,
    build_request,
    connect,
    head_upload,
    http_request,
    patch_upload,
    random_bytes,
    read_response_head,
    sha256_bytes,
    sha256_file,
    tus_headers,
    upload_id,
)
from tests.live.test_nginx import nginx_in_front

pytestmark = pytest.mark.live

# What the server answers when it ends a body itself (transfers.ANSWERS): a retryable 503.
SERVER_CUT = (503,)


def _patch_head(port: int, path: str, offset: int, length: int, *extra: tuple[str, str]) -> bytes:
    headers = [
        ("Tus-Resumable", TUS_VERSION),
        ("Upload-Offset", str(offset)),
        ("Content-Type", OFFSET_OCTET_STREAM),
        ("Content-Length", str(length)),
        *extra,
    ]
    return build_request("PATCH", path, headers, port=port)


def _answered(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


# --------------------------------------------------------------------------- header deadline


def test_half_sent_heads_hold_no_thread_and_are_closed_at_the_deadline(
    server_factory: Callable[..., LiveServer],
) -> None:
    # 2 workers x 2 threads: on the stock gthread worker, 4 such sockets stop the server.
    server = server_factory(UPLOADSVC_THREADS="2", UPLOADSVC_HEADER_TIMEOUT="3")
    head = _patch_head(server.port, "/files/" + "0" * 32, 0, 10)
    socks = [connect(server.port, timeout=10) for _ in range(24)]
    try:
        for sock in socks:
            sock.sendall(head[:30])
        started = time.monotonic()
        answers = 0
        for step in range(5):  # a byte now and then from every socket, for ~2.5 s
            for sock in socks:
                sock.sendall(head[30 + step : 31 + step])
            response = http_request("OPTIONS", server.endpoint, timeout=5)
            assert response.status == 204
            answers += 1
            time.sleep(max(0.0, started + 0.5 * (step + 1) - time.monotonic()))
        assert answers == 5
        # Past the deadline (3 s after the accept; swept within a second): 408, closed.
        for sock in socks:
            answer = read_response_head(sock, timeout=10)
            assert answer.status == 408, answer
            assert sock.recv(100) == b""
    finally:
        for sock in socks:
            sock.close()
    assert http_request("OPTIONS", server.endpoint, timeout=5).status == 204


def test_heads_in_pieces_and_kept_alive_connections(live_server: LiveServer) -> None:
    port = live_server.port
    options = build_request("OPTIONS", "/files/", [("Tus-Resumable", TUS_VERSION)], port=port)
    with connect(port, timeout=10) as sock:
        # A head in pieces, each its own read, inside the deadline: answered.
        for piece in (options[:5], options[5:20], options[20:]):
            sock.sendall(piece)
            time.sleep(0.2)
        assert read_response_head(sock, timeout=10).status == 204
        # Kept alive: one whole request and half the next in one send.
        sock.sendall(options + options[:25])
        first = _read_heads(sock, 1)
        assert first == [204]
        sock.sendall(options[25:])
        assert _read_heads(sock, 1) == [204]
        # Pipelined, both whole.
        sock.sendall(options + options)
        assert _read_heads(sock, 2) == [204, 204]


def _read_heads(sock: socket.socket, count: int, timeout: float = 10) -> list[int]:
    """Read ``count`` bodiless responses (OPTIONS answers carry no body)."""
    deadline = time.monotonic() + timeout
    buf = b""
    for _ in range(200):
        if buf.count(b"\r\n\r\n") >= count or time.monotonic() > deadline:
            break
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    heads = buf.split(b"\r\n\r\n")[:count]
    return [int(head.split(b" ", 2)[1]) for head in heads if head.startswith(b"HTTP/1.1 ")]


@pytest.mark.parametrize("when", ["after-idling", "at-once"])
def test_kept_alive_connection_sending_half_its_next_head_is_closed(
    server_factory: Callable[..., LiveServer], when: str
) -> None:
    """After idling (the main loop waits for it) or with the first request (the thread
    that answers reads it, waiting for the rest a moment, then hands it back)."""
    server = server_factory(UPLOADSVC_HEADER_TIMEOUT="1")
    port = server.port
    options = build_request("OPTIONS", "/files/", [("Tus-Resumable", TUS_VERSION)], port=port)
    with connect(port, timeout=10) as sock:
        if when == "at-once":
            sock.sendall(options + options[:10])
            assert read_response_head(sock, timeout=10).status == 204
        else:
            sock.sendall(options)
            assert read_response_head(sock, timeout=10).status == 204
            time.sleep(1.5)  # idle on a kept-alive connection: the deadline hasn't started
            sock.sendall(options[:10])
        began = time.monotonic()
        answer = read_response_head(sock, timeout=10)
        assert answer.status == 408, answer
        assert time.monotonic() - began < 5


def test_oversized_heads_are_refused_at_once(live_server: LiveServer) -> None:
    with connect(live_server.port, timeout=10) as sock:
        sock.sendall(b"OPTIONS /files/ HTTP/1.1\r\n" + b"X-Pad: " + b"a" * (70 * 1024))
        answer = read_response_head(sock, timeout=5)
        assert answer.status == 431, answer
    # A request line past gunicorn's limit goes to gunicorn, which refuses it: no wait
    # for the rest of a head that can't be taken anyway.
    with connect(live_server.port, timeout=10) as sock:
        sock.sendall(b"GET /" + b"a" * 5000)
        answer = read_response_head(sock, timeout=5)
        assert answer.status == 414, answer


# --------------------------------------------------------------------------- minimum rate

RATE_SETTINGS = {
    "UPLOADSVC_MIN_RATE": "1000",
    "UPLOADSVC_MIN_RATE_WINDOW": "1",
    "UPLOADSVC_MIN_RATE_GRACE": "0.5",
}


@contextlib.contextmanager
def _rate_limited(
    how: str, server_factory: Callable[..., LiveServer], tmp_path: Path
) -> Iterator[tuple[LiveServer, str]]:
    """The server, and the origin clients use: itself or the shipped nginx in front."""
    if how == "direct":
        server = server_factory(**RATE_SETTINGS)
        yield server, server.origin
        return
    server = server_factory(UPLOADSVC_PROXY_HOPS="1", **RATE_SETTINGS)
    with nginx_in_front(server, tmp_path / "nginx") as origin:
        yield server, origin + "/uploads"


@pytest.mark.parametrize("how", ["direct", "nginx"])
def test_trickled_body_ends_with_its_bytes_kept_and_the_client_resumes(
    how: str, server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    with _rate_limited(how, server_factory, tmp_path) as (server, base):
        data = random_bytes(20_000, seed=1301)
        response = http_request("POST", f"{base}/files/", tus_headers(Upload_Length=str(len(data))))
        assert response.status == 201
        url = response.header("Location") or ""
        parts = urlsplit(url)
        port = parts.port or 0
        with connect(port, timeout=20) as sock:
            sock.sendall(_patch_head(port, parts.path, 0, len(data)) + data[:3000])
            sent = 3000
            answer: RawResponse | None = None
            for _ in range(150):  # a byte every 0.1 s (10 B/s) for at most 15 s
                if _answered(sock, 0.1):
                    answer = read_response_head(sock, timeout=10)
                    break
                sock.sendall(data[sent : sent + 1])
                sent += 1
        assert answer is not None, "the trickled body was never ended"
        assert answer.status in SERVER_CUT, answer
        offset = int(answer.header("Upload-Offset") or -1)
        # Every byte that came is kept (at most the last one or two in flight through
        # nginx may not have reached the server).
        assert sent - 2 <= offset <= sent, (offset, sent)
        assert int(head_upload(url).header("Upload-Offset") or -1) == offset
        assert "slower than 1000 B/s" in server.log_text()
        metrics = http_request("GET", f"{server.origin}/metrics").body.decode()
        assert 'uploadsvc_stopped_bodies_total{reason="too_slow"} 1.0' in metrics
        response = patch_upload(url, offset, data[offset:])
        assert response.status == 204, response
        assert sha256_file(server.data_file(upload_id(url))) == sha256_bytes(data)


def test_a_body_at_a_steady_honest_pace_is_kept(
    server_factory: Callable[..., LiveServer],
) -> None:
    server = server_factory(**RATE_SETTINGS)
    data = random_bytes(12_000, seed=1302)
    url = server.create_upload(len(data))
    path = urlsplit(url).path
    with connect(server.port, timeout=20) as sock:
        sock.sendall(_patch_head(server.port, path, 0, len(data)))
        for index in range(0, len(data), 400):  # 4,000 B/s, four times the minimum
            sock.sendall(data[index : index + 400])
            time.sleep(0.1)
        assert read_response_head(sock, timeout=10).status == 204
    assert sha256_file(server.data_file(url)) == sha256_bytes(data)


# --------------------------------------------------------------------------- per-client cap


@pytest.mark.parametrize("same_address", [True, False], ids=["one-address", "five-addresses"])
def test_per_client_cap(server_factory: Callable[..., LiveServer], same_address: bool) -> None:
    # Behind one proxy hop, the address is X-Forwarded-For's: five of them from one
    # socket address are five clients; one of them five times is one client.
    server = server_factory(UPLOADSVC_MAX_UPLOADS_PER_CLIENT="1", UPLOADSVC_PROXY_HOPS="1")
    size = 10_000
    datas = [random_bytes(size, seed=1310 + index) for index in range(5)]
    urls = [server.create_upload(size) for _ in datas]
    socks = []
    try:
        for index, url in enumerate(urls):
            address = "10.0.0.1" if same_address else f"10.0.0.{index + 1}"
            sock = connect(server.port, timeout=20)
            socks.append(sock)
            head = _patch_head(
                server.port, urlsplit(url).path, 0, size, ("X-Forwarded-For", address)
            )
            sock.sendall(head + datas[index][:100])
        time.sleep(1.0)  # every body is in flight, or refused
        refused = []
        for index, sock in enumerate(socks):
            if _answered(sock, 0.5):
                answer = read_response_head(sock, timeout=10)
                assert answer.status == 503, answer
                assert int(answer.header("Retry-After") or 0) > 0
                refused.append(index)
        if same_address:
            # One slot per worker, two workers: at most two go on, the rest wait outside.
            assert len(refused) >= 3, refused
        else:
            assert refused == []
        for index, sock in enumerate(socks):
            if index not in refused:
                sock.sendall(datas[index][100:])
                assert read_response_head(sock, timeout=20).status == 204
    finally:
        for sock in socks:
            sock.close()
    # With the others done, the refused ones go on.
    for index in refused:
        response = patch_upload(urls[index], 0, datas[index])
        assert response.status == 204, response
    for url, data in zip(urls, datas, strict=True):
        assert sha256_file(server.data_file(url)) == sha256_bytes(data)
