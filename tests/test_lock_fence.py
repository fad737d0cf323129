"""A PATCH whose PostgreSQL lock connection dies mid-body: the lock went with it and
another host may hold it now, so the PATCH records nothing and deletes nothing, and
answers 503 (the shipped clients retry, asking HEAD where to resume); the next holder
reconciles. Real PostgreSQL; the connection is killed with pg_terminate_backend."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import OCTET, TUS, service
from tests.pg import PostgresServer
from tests.test_postgres_locker import kill_lock_holder
from tests.test_views import create, head
from uploadsvc import close_app, create_app, db
from uploadsvc.locking.postgres import PostgresLocker
from uploadsvc.models import Upload


@pytest.fixture
def pg_app(data_dir: Path, postgres: PostgresServer) -> Iterator[tuple[Flask, str]]:
    with postgres.database() as url:
        app = create_app({"DATA_DIR": str(data_dir), "DATABASE_URL": url, "LOCK_TIMEOUT": "0.2"})
        app.testing = True
        yield app, url
        close_app(app)


class Body(io.RawIOBase):
    """A request body in pieces, running ``between`` after the first one."""

    def __init__(self, pieces: list[bytes], between: Callable[[], None]) -> None:
        self.pieces = pieces
        self.between = between
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.reads == 1:
            self.between()
        self.reads += 1
        if not self.pieces:
            return 0
        piece = self.pieces.pop(0)
        buffer[: len(piece)] = piece
        return len(piece)


def test_lock_lost_mid_patch_records_nothing(
    pg_app: tuple[Flask, str], postgres: PostgresServer, data_dir: Path
) -> None:
    app, url = pg_app
    client: FlaskClient = app.test_client()
    location = create(client, 6)
    upload_id = location.rsplit("/", 1)[1]
    other_host_held = []

    def lose_the_lock() -> None:
        assert kill_lock_holder(postgres, upload_id) == 1
        other = PostgresLocker(db.libpq_conninfo(url))
        try:
            with other.hold(upload_id, timeout=2):  # another host could write it now
                other_host_held.append(True)
        finally:
            other.close()

    response = client.patch(
        location,
        headers={**TUS, "Content-Type": OCTET, "Upload-Offset": "0"},
        environ_overrides={
            "wsgi.input": Body([b"abc", b"def"], lose_the_lock),
            "CONTENT_LENGTH": "6",
        },
    )
    assert other_host_held == [True]
    assert response.status_code == 503
    assert "Upload-Offset" not in response.headers  # unknown: HEAD asks the new holder
    with service(app).sessions.begin() as session:
        assert session.get_one(Upload, upload_id).offset == 0  # nothing recorded
    # The next holder reconciles the row with the bytes that were made durable.
    assert head(client, location).headers["Upload-Offset"] == "6"
    assert (data_dir / "files" / upload_id).read_bytes() == b"abcdef"
