"""A grant's quota raced by 32 parallel creations against a live gunicorn (2 workers,
SQLite and PostgreSQL): never exceeded, and the usage row says exactly what exists."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from .conftest import LiveServer, http_request, tus_headers
from .test_grants_live import grant_list, grants_server, new_grant

pytestmark = pytest.mark.live

RACERS = 32


def race(server: LiveServer, token: str, length: int) -> list[int]:
    """RACERS creations released at once; their statuses."""
    statuses: list[int] = []
    start = threading.Barrier(RACERS)
    headers = {**tus_headers(Upload_Length=str(length)), "Authorization": f"Bearer {token}"}

    def one() -> None:
        start.wait(timeout=30)
        statuses.append(http_request("POST", server.endpoint, headers).status)

    threads = [threading.Thread(target=one) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return statuses


def test_32_parallel_creations_never_pass_a_grants_quota(
    server_factory: Callable[..., LiveServer],
) -> None:
    server = grants_server(server_factory)
    by_files = new_grant(server, "--max-files", "10")
    by_bytes = new_grant(server, "--max-bytes", "7000")

    statuses = race(server, by_files["token"], 1)
    assert sorted(statuses) == [201] * 10 + [413] * 22, statuses
    statuses = race(server, by_bytes["token"], 1000)
    assert sorted(statuses) == [201] * 7 + [413] * 25, statuses

    used = grant_list(server)
    assert (used[by_files["id"]]["used_files"], used[by_files["id"]]["used_bytes"]) == (10, 10)
    assert (used[by_bytes["id"]]["used_files"], used[by_bytes["id"]]["used_bytes"]) == (7, 7000)
    assert "database is locked" not in server.log_text()
