"""Reads don't queue behind writes, on a real gunicorn and SQLite file: with another
connection holding SQLite's write transaction, downloads, HEADs, /metrics, /healthz and
the page's list answer at once (before this, each waited out the 30 s busy timeout)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from tests.live.conftest import LiveServer, http_request, tus_headers, upload_id

PROMPT = 2.0  # seconds; the busy timeout a write-locked read would wait is 30


def test_reads_answer_while_a_writer_holds_sqlite(
    server_factory: Callable[..., LiveServer],
) -> None:
    server = server_factory(UPLOADSVC_WEB_UI="1")
    url = server.create_upload(3, body=b"abc")
    unknown = f"{server.endpoint}0123456789abcdef0123456789abcdef"
    lock = sqlite3.connect(server.data_dir / "uploadsvc.db", isolation_level=None, timeout=0)
    try:
        lock.execute("BEGIN IMMEDIATE")
        lock.execute("UPDATE uploads SET upload_metadata = upload_metadata")
        reads = [
            ("GET", url, {}, 200),
            ("HEAD", url, tus_headers(), 200),
            ("HEAD", unknown, tus_headers(), 404),
            ("GET", unknown, {}, 404),
            ("GET", f"{server.origin}/metrics", {}, 200),
            ("GET", f"{server.origin}/healthz", {}, 200),
            ("GET", f"{server.origin}/api/uploads", {}, 200),
        ]
        for method, target, headers, status in reads:
            started = time.monotonic()
            response = http_request(method, target, headers, timeout=PROMPT + 3)
            elapsed = time.monotonic() - started
            assert (response.status, method, target) == (status, method, target)
            assert elapsed < PROMPT, f"{method} {target} waited {elapsed:.2f} s for the writer"
            if target == f"{server.origin}/api/uploads":
                assert upload_id(url) in response.body.decode()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
