"""A PATCH whose client vanishes half-way keeps exactly the bytes that arrived."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest

from .conftest import (
    OFFSET_OCTET_STREAM,
    TUS_VERSION,
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

SIZE = 4 * MiB
HALF = SIZE // 2
SEEDS = {"shutdown": 11, "close": 12, "rst": 13}


@pytest.mark.parametrize("close_mode", ["shutdown", "close", "rst"])
def test_patch_cut_off_half_way_keeps_exactly_what_arrived(
    live_server: LiveServer, close_mode: str
) -> None:
    data = random_bytes(SIZE, seed=SEEDS[close_mode])
    url = live_server.create_upload(SIZE)
    request_head = build_request(
        "PATCH",
        urlsplit(url).path,
        [
            ("Tus-Resumable", TUS_VERSION),
            ("Upload-Offset", "0"),
            ("Content-Type", OFFSET_OCTET_STREAM),
            ("Content-Length", str(SIZE)),
        ],
        port=live_server.port,
    )
    sock = connect(live_server.port)
    try:
        sock.sendall(request_head + data[:HALF])
        # Every byte is in the server's kernel before we go: a RST would drop the rest.
        wait_until_delivered(sock)
        if close_mode == "shutdown":
            # FIN, then listen: an answer, if any, must not be a 5xx and carries the offset.
            sock.shutdown(socket.SHUT_WR)
            answer = read_response_head(sock)
            if answer.status is not None:
                assert answer.status < 500, answer.head
                offset = answer.header("Upload-Offset")
                assert offset in (None, str(HALF)), answer.head
        elif close_mode == "rst":
            abort_connection(sock)
    finally:
        sock.close()

    # One HEAD: it waits for the dropped PATCH to release the upload (423 only if it can't).
    head = head_upload(url)
    assert head.status == 200, head
    assert head.header("Upload-Offset") == str(HALF)
    assert head.header("Upload-Length") == str(SIZE)

    rest = patch_upload(url, HALF, data[HALF:])
    assert rest.status == 204, rest
    assert rest.header("Upload-Offset") == str(SIZE)
    assert sha256_file(live_server.data_file(url)) == sha256_bytes(data)
