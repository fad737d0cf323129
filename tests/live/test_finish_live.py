"""A chunked PATCH that completes an upload the hard way, on a real gunicorn: past the
length (413, kept up to it) or with its framing broken after the last byte. Each
finishes exactly once: one post-finish in the hook module's log (workers are other
processes) and one webhook delivery to a receiver on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import deliveries

from .conftest import LiveServer, build_request, exchange, head_upload, upload_id

pytestmark = pytest.mark.live

BODIES = {
    "past the length": b"5\r\naaaaa\r\n3\r\nbbb\r\n0\r\n\r\n",
    "size not hex after the last byte": b"5\r\naaaaa\r\nzz\r\n",
    "cut after the last chunk": b"5\r\naaaaa\r\n",
    "data longer than its size": b"5\r\naaaaaX\r\n0\r\n\r\n",
}


def finishes(events: Path, ident: str) -> tuple[int, int]:
    logged = events.read_text().splitlines() if events.exists() else []
    return logged.count(f"post-finish {ident}"), deliveries("post-finish", ident)


def settle(read: Callable[[], tuple[int, int]], want: tuple[int, int]) -> tuple[int, int]:
    """Wait (bounded) for the background deliveries to reach ``want``, then a little
    longer, so that a second one would have had its chance to show."""
    deadline = time.monotonic() + 20
    while read() < want and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    return read()


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_chunked_routes_into_complete_finish_once(
    server_factory: Callable[..., LiveServer], receiver: str, tmp_path: Path, body: bytes
) -> None:
    events = tmp_path / "events"
    server = server_factory(
        UPLOADSVC_HOOKS="tests.hookmods.finish_log:FinishLog",
        UPLOADSVC_WEBHOOK_URL=receiver,
        FINISH_EVENTS_FILE=str(events),
    )
    url = server.create_upload(5)
    ident = upload_id(url)
    request = build_request(
        "PATCH",
        urlsplit(url).path,
        [
            ("Tus-Resumable", "1.0.0"),
            ("Content-Type", "application/offset+octet-stream"),
            ("Upload-Offset", "0"),
            ("Transfer-Encoding", "chunked"),
        ],
        port=server.port,
    )
    response = exchange(server.port, request + body, half_close=True)
    if response.status is not None:
        assert response.header("Upload-Offset") == "5", response.head
    assert server.data_file(url).read_bytes() == b"aaaaa"
    assert settle(lambda: finishes(events, ident), (1, 1)) == (1, 1)
    assert head_upload(url).header("Upload-Offset") == "5"
    assert settle(lambda: finishes(events, ident), (1, 1)) == (1, 1)
