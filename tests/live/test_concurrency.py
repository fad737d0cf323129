"""Many PATCHes racing for one upload: exactly one wins, the data is never mixed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from .conftest import (
    OFFSET_OCTET_STREAM,
    TUS_VERSION,
    LiveServer,
    MiB,
    RawResponse,
    build_request,
    connect,
    exchange_on,
    head_upload,
    sha256_bytes,
    sha256_file,
)

pytestmark = pytest.mark.live

CLIENTS = 32
SIZE = MiB


def race(server: LiveServer, round_no: int) -> None:
    """CLIENTS connections PATCH one upload at offset 0 at once, each with its own body."""
    url = server.create_upload(SIZE)
    path = urlsplit(url).path
    bodies = [bytes([0x20 + 3 * i + round_no]) * SIZE for i in range(CLIENTS)]
    request_head = build_request(
        "PATCH",
        path,
        [
            ("Tus-Resumable", TUS_VERSION),
            ("Upload-Offset", "0"),
            ("Content-Type", OFFSET_OCTET_STREAM),
            ("Content-Length", str(SIZE)),
        ],
        port=server.port,
    )
    barrier = threading.Barrier(CLIENTS, timeout=30)

    def client(i: int) -> RawResponse:
        with connect(server.port) as sock:
            barrier.wait()
            return exchange_on(sock, request_head + bodies[i])

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        answers = list(pool.map(client, range(CLIENTS)))

    statuses = [a.status for a in answers]
    winners = [i for i, status in enumerate(statuses) if status == 204]
    assert len(winners) == 1, statuses
    assert all(status in (409, 423) for i, status in enumerate(statuses) if i != winners[0]), (
        statuses
    )
    winner = winners[0]
    assert answers[winner].header("Upload-Offset") == str(SIZE)

    head = head_upload(url)
    assert head.status == 200, head
    assert head.header("Upload-Offset") == str(SIZE)
    stored = server.data_file(url)
    stored_bytes = set(stored.read_bytes())
    assert stored_bytes == {bodies[winner][0]}, f"mixed data: {sorted(stored_bytes)}"
    assert sha256_file(stored) == sha256_bytes(bodies[winner])


@pytest.mark.parametrize("round_no", range(3))
def test_concurrent_patches_at_offset_zero(live_server: LiveServer, round_no: int) -> None:
    race(live_server, round_no)


def test_concurrent_patches_with_a_short_lock_timeout(
    server_factory: Callable[..., LiveServer],
) -> None:
    """Waiters give up quickly here (423), so the loser side has both kinds of refusals."""
    server = server_factory(UPLOADSVC_LOCK_TIMEOUT="0.05")
    for round_no in range(3, 5):
        race(server, round_no)
