"""registry.py's plain SQL held to the ORM models it shares the table with, on SQLite
and PostgreSQL: what one writes, the other reads the same (names of enums, naive UTC
datetimes in SQLAlchemy's text format on SQLite), a save writes only what changed, the
finish's compare-and-set wins once, and SQLite's writers take turns in the process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from uploadsvc import db
from uploadsvc.models import Concat, Upload, UploadPart, UploadRow, UploadState
from uploadsvc.registry import COLUMNS, Registry

NOW = datetime(2026, 12, 6, 22, 55, 25, 123, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str | None, tmp_path: Path) -> Iterator[Engine]:
    engine = db.make_engine(database_url or f"sqlite:///{tmp_path / 'uploadsvc.db'}")
    db.upgrade(engine, tmp_path / "migrate.lock")
    yield engine
    engine.dispose()


@pytest.fixture
def registry(engine: Engine) -> Iterator[Registry]:
    registry = Registry(engine)
    yield registry
    registry.close()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return db.make_sessionmaker(engine)


def new_row(upload_id: str = "a" * 32, **changes: object) -> UploadRow:
    row = UploadRow(
        id=upload_id,
        state=UploadState.ACTIVE,
        length=10,
        offset=0,
        upload_metadata="filename YS50eHQ=",
        verifying=False,
        created_at=NOW,
        updated_at=NOW,
        expires_at=NOW + timedelta(hours=1),
        concat=Concat.PARTIAL,
    )
    for name, value in changes.items():
        setattr(row, name, value)
    return row


def orm_values(row: Upload) -> tuple[object, ...]:
    return tuple(getattr(row, column) for column in COLUMNS)


def row_values(row: UploadRow) -> tuple[object, ...]:
    return tuple(getattr(row, column) for column in COLUMNS)


def test_the_columns_are_the_models() -> None:
    assert set(COLUMNS) == {column.name for column in Upload.__table__.columns}


def test_what_the_registry_writes_the_orm_reads(
    registry: Registry, sessions: sessionmaker[Session]
) -> None:
    row = new_row(state=UploadState.COMPLETED, completed_at=NOW, verifying=True)
    with registry.writing() as tx:
        tx.insert(row)
    with sessions() as session:
        stored = session.get(Upload, row.id)
        assert stored is not None
        assert orm_values(stored) == row_values(row)
        # The listing's and cleanup's queries compare datetimes in SQL.
        assert session.query(Upload).filter(Upload.expires_at > NOW).count() == 1
        assert (
            session.query(Upload).filter(Upload.expires_at > NOW + timedelta(days=1)).count() == 0
        )


def test_what_the_orm_writes_the_registry_reads(
    registry: Registry, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as session:
        session.add(
            Upload(
                id="b" * 32,
                state=UploadState.ACTIVE,
                length=None,
                offset=3,
                upload_metadata="",
                verifying=False,
                created_at=NOW,
                updated_at=NOW + timedelta(microseconds=1),
                expires_at=None,
                concat=Concat.FINAL,
            )
        )
        session.flush()
        session.add(UploadPart(final_id="b" * 32, position=0, partial_id="c" * 32))
        session.add(UploadPart(final_id="b" * 32, position=1, partial_id="a" * 32))
    with registry.reading() as tx:
        row = tx.get("b" * 32)
        assert tx.get("d" * 32) is None
        assert tx.parts("b" * 32) == ("c" * 32, "a" * 32)
    with sessions() as session:
        stored = session.get(Upload, "b" * 32)
        assert stored is not None and row is not None
        assert row_values(row) == orm_values(stored)


def test_a_save_writes_only_what_changed(
    registry: Registry, sessions: sessionmaker[Session]
) -> None:
    with registry.writing() as tx:
        tx.insert(new_row())
    with registry.writing() as tx:
        row = tx.get("a" * 32)
        assert row is not None
        # Meanwhile another writer (here: the ORM, on PostgreSQL in another connection)
        # changed a column this transaction doesn't touch.
        row.offset = 5
        tx.save(row)
    with sessions.begin() as session:
        stored = session.get(Upload, "a" * 32)
        assert stored is not None
        stored.upload_metadata = "changed"
    with registry.writing() as tx:
        row = tx.get("a" * 32)
        assert row is not None
        tx.save(row)  # nothing changed: no statement
        row.offset = 7
        row.upload_metadata = "changed"  # the same as stored: not written either way
        tx.save(row)
    with sessions() as session:
        stored = session.get(Upload, "a" * 32)
        assert stored is not None
        assert (stored.offset, stored.upload_metadata) == (7, "changed")


def test_the_finish_is_won_once(registry: Registry, sessions: sessionmaker[Session]) -> None:
    with registry.writing() as tx:
        tx.insert(new_row())
    with registry.writing() as tx:
        assert not tx.finish("a" * 32, NOW)  # not completed yet
        row = tx.get("a" * 32)
        assert row is not None
        row.state = UploadState.COMPLETED
        tx.save(row)
    with registry.writing() as tx:
        assert tx.finish("a" * 32, NOW)
    with registry.writing() as tx:
        assert not tx.finish("a" * 32, NOW + timedelta(seconds=1))
    with sessions() as session:
        stored = session.get(Upload, "a" * 32)
        assert stored is not None and stored.finished_at == NOW


def test_a_failed_write_rolls_back_and_raises_sqlalchemys_error(
    registry: Registry, sessions: sessionmaker[Session]
) -> None:
    with registry.writing() as tx:
        tx.insert(new_row())
    with pytest.raises(IntegrityError), registry.writing() as tx:
        tx.insert(new_row("e" * 32))
        tx.insert(new_row())  # the same id again
    with sessions() as session:
        assert session.get(Upload, "e" * 32) is None
    # The connection is usable again.
    with registry.writing() as tx:
        tx.insert(new_row("e" * 32))


def test_concurrent_writers_lose_nothing(registry: Registry) -> None:
    """Threads writing at once (SQLite: taking turns in the process; PostgreSQL: on
    connections of the pool, the row locked as the service's upload lock would) each
    see the last commit."""
    with registry.writing() as tx:
        for i in range(8):
            tx.insert(new_row(f"{i:032x}"))
    done: list[int] = []

    def write(i: int) -> None:
        for _ in range(20):
            with registry.writing() as tx:
                row = tx.get(f"{i % 4:032x}", for_update=True)  # two threads per row
                assert row is not None
                row.offset += 1
                tx.save(row)
            done.append(i)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(done) == 160
    with registry.reading() as tx:
        offsets = [row.offset for i in range(4) if (row := tx.get(f"{i:032x}")) is not None]
    assert offsets == [40] * 4
