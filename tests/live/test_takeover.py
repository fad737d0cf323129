"""Lock takeover, read timeouts and graceful shutdown against a real gunicorn.

Times are printed (run with -s), never asserted: the suite must not depend on the
machine's speed. What is asserted is the outcome: who gets the upload, and that the
offset equals the bytes that arrived.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable

from tests.live.conftest import (
    OFFSET_OCTET_STREAM,
    KiB,
    LiveServer,
    build_request,
    connect,
    head_upload,
    http_request,
    patch_upload,
    random_bytes,
    read_response_head,
    sha256_bytes,
    sha256_file,
    start_server,
    tus_headers,
    upload_id,
    wait_until_delivered,
)

SIZE = 512 * KiB


def stalled_patch(
    server: LiveServer, url: str, data: bytes, sent: int
) -> contextlib.closing[socket.socket]:
    """Start a PATCH announcing all of ``data``, send ``sent`` bytes, then go silent
    with the connection open: a half-open client."""
    sock = connect(server.port)
    headers = tus_headers(
        Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM, Content_Length=str(len(data))
    )
    path = "/files/" + upload_id(url)
    sock.sendall(build_request("PATCH", path, list(headers.items()), port=server.port))
    sock.sendall(data[:sent])
    wait_until_delivered(sock)
    return contextlib.closing(sock)


def test_stalled_patch_is_taken_over_by_head(live_server: LiveServer) -> None:
    data = random_bytes(SIZE, seed=91)
    url = live_server.create_upload(SIZE)
    with stalled_patch(live_server, url, data, SIZE // 3) as sock:
        time.sleep(0.2)  # the server is now blocked reading the stalled body
        started = time.monotonic()
        response = http_request("HEAD", url, tus_headers())
        took = time.monotonic() - started
        print(f"\ntakeover: HEAD answered {response.status} after {took * 1000:.0f} ms")
        assert response.status == 200
        assert response.header("Upload-Offset") == str(SIZE // 3)
        # The stalled client is told where it stands, if it still listens, with an
        # answer the shipped clients retry (README: who ends a body).
        answer = read_response_head(sock, timeout=10)
        assert answer.status == 503
        assert answer.header("Retry-After") == "1"
        assert answer.header("Upload-Offset") == str(SIZE // 3)
    response = patch_upload(url, SIZE // 3, data[SIZE // 3 :])
    assert response.status == 204
    assert sha256_file(live_server.data_file(url)) == sha256_bytes(data)


def test_streaming_patch_keeps_its_upload(server_factory: Callable[..., LiveServer]) -> None:
    """A client still sending is not interrupted: the newcomer gets 423."""
    server = server_factory(UPLOADSVC_LOCK_TIMEOUT="1.5")
    data = random_bytes(SIZE, seed=92)
    url = server.create_upload(SIZE)
    with stalled_patch(server, url, data, 1024) as sock:

        def trickle() -> None:  # 256 bytes every 0.1 s for about 3 s, then the rest
            for step in range(30):
                start = 1024 + step * 256
                sock.sendall(data[start : start + 256])
                time.sleep(0.1)
            sock.sendall(data[1024 + 30 * 256 :])

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            time.sleep(0.3)
            response = http_request("HEAD", url, tus_headers())
            assert response.status == 423
        finally:
            sender.join(timeout=30)
        answer = read_response_head(sock, timeout=30)
        assert answer.status == 204
    assert sha256_file(server.data_file(url)) == sha256_bytes(data)


def test_read_timeout_ends_a_silent_body(server_factory: Callable[..., LiveServer]) -> None:
    server = server_factory(UPLOADSVC_READ_TIMEOUT="1")
    data = random_bytes(SIZE, seed=93)
    url = server.create_upload(SIZE)
    with stalled_patch(server, url, data, 1000) as sock:
        started = time.monotonic()
        answer = read_response_head(sock, timeout=20)
        print(f"\nread timeout: body ended after {time.monotonic() - started:.2f} s")
        assert answer.status == 503
        assert answer.header("Retry-After") == "1"
        assert answer.header("Upload-Offset") == "1000"
    assert head_upload(url).header("Upload-Offset") == "1000"


def test_sigterm_keeps_bytes_and_offset(server_factory: Callable[..., LiveServer]) -> None:
    server = server_factory()
    data = random_bytes(SIZE, seed=94)
    urls = [server.create_upload(SIZE) for _ in range(3)]
    sockets = []
    try:
        for index, url in enumerate(urls):
            sockets.append(stalled_patch(server, url, data, 10_000 * (index + 1)).__enter__())
        time.sleep(0.3)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=30)
        print(f"\nSIGTERM with 3 PATCHes in flight: stopped in {time.monotonic() - started:.2f} s")
        for index, sock in enumerate(sockets):  # each told to retry, and where it stands
            answer = read_response_head(sock, timeout=10)
            assert (answer.status, answer.header("Retry-After")) == (503, "1"), answer.head
            assert answer.header("Upload-Offset") == str(10_000 * (index + 1))
    finally:
        for sock in sockets:
            sock.close()
    restarted = start_server(server.base_dir, server.env)
    try:
        for index, url in enumerate(urls):
            moved = f"{restarted.endpoint}{upload_id(url)}"
            response = head_upload(moved)
            assert response.header("Upload-Offset") == str(10_000 * (index + 1))
            offset = 10_000 * (index + 1)
            assert patch_upload(moved, offset, data[offset:]).status == 204
            assert sha256_file(restarted.data_file(url)) == sha256_bytes(data)
    finally:
        restarted.stop()
    assert "Traceback" not in restarted.log_text()
