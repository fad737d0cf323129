"""Reads don't queue behind writes: with SQLite's write lock held by another connection,
downloads, HEADs (of known and unknown ids), /metrics, /healthz and the page's list
still answer at once, from read-only transactions (db.make_readers)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.conftest import TUS
from tests.test_views import create, patch
from uploadsvc import close_app, create_app, db

# Far below the busy timeout the readers would otherwise wait out.
PROMPT = 1.0


@pytest.fixture
def client(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlaskClient]:
    # A writer waiting for the lock gives up after 3 s instead of 30 (the test is bounded
    # even on code that makes reads wait for it).
    monkeypatch.setattr(db, "BUSY_TIMEOUT", 3.0)
    app = create_app({"DATA_DIR": str(data_dir), "WEB_UI": "1"})
    try:
        yield app.test_client()
    finally:
        close_app(app)


@pytest.fixture
def write_lock(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding SQLite's write transaction on the same file."""
    connection = sqlite3.connect(data_dir / "uploadsvc.db", isolation_level=None, timeout=0)
    try:
        yield connection
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        connection.close()


def test_reads_answer_while_a_writer_holds_the_lock(
    client: FlaskClient, write_lock: sqlite3.Connection
) -> None:
    done = create(client, 3)
    assert patch(client, done, b"abc").status_code == 204
    unknown = "/files/0123456789abcdef0123456789abcdef"
    write_lock.execute("BEGIN IMMEDIATE")
    write_lock.execute("UPDATE uploads SET upload_metadata = upload_metadata")
    reads = [
        ("GET", done, {}, 200),
        ("GET", done, {"Range": "bytes=1-1"}, 206),
        ("HEAD", done, TUS, 200),
        ("HEAD", unknown, TUS, 404),
        ("GET", unknown, {}, 404),
        ("GET", "/metrics", {}, 200),
        ("GET", "/healthz", {}, 200),
        ("GET", "/api/uploads", {}, 200),
        ("GET", "/api/uploads?limit=1&before=2999-01-01T00:00:00Z,ffffffff", {}, 200),
    ]
    for method, path, headers, status in reads:
        started = time.monotonic()
        response = client.open(path, method=method, headers=headers)
        elapsed = time.monotonic() - started
        response.close()
        assert (response.status_code, method, path) == (status, method, path)
        assert elapsed < PROMPT, f"{method} {path} waited {elapsed:.2f} s for the writer"
    assert write_lock.in_transaction  # still held: nobody waited it out
    write_lock.execute("ROLLBACK")
    # Writes still take the lock, and go on once it is free.
    assert create(client, 1)
