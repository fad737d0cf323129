"""registry.py's plain SQL held to the ORM models it shares the table with, on SQLite
and PostgreSQL: what one writes, the other reads the same (names of enums, naive UTC
datetimes in SQLAlchemy's text format on SQLite), a save writes only what changed, the
finish's compare-and-set wins once, and SQLite's writers take turns in the process."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from uploadsvc import db, outbox
from uploadsvc.models import (
    OPEN_SCOPE,
    Concat,
    Event,
    EventState,
    Grant,
    QuotaUsage,
    Upload,
    UploadPart,
    UploadRow,
    UploadState,
    Verdict,
)
from uploadsvc.quota import Quota, QuotaExceeded
from uploadsvc.records import UploadInfo
from uploadsvc.registry import COLUMNS, MAX_IDLE_READERS, Registry

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


# -- what the other branches' rules put in the hot paths' transactions -------------------


def test_the_finish_sets_the_verdict_in_its_compare_and_set(
    registry: Registry, sessions: sessionmaker[Session]
) -> None:
    with registry.writing() as tx:
        tx.insert(new_row(state=UploadState.COMPLETED, completed_at=NOW, digest="sha-256=:x:"))
    with registry.writing() as tx:
        assert tx.finish("a" * 32, NOW, Verdict.REJECTED, "not a PNG")
    with registry.writing() as tx:  # lost: neither the time nor the verdict changes
        assert not tx.finish("a" * 32, NOW + timedelta(seconds=1), Verdict.OK, None)
    with sessions() as session:
        stored = session.get(Upload, "a" * 32)
        assert stored is not None
        assert (stored.finished_at, stored.verdict, stored.verdict_reason) == (
            NOW,
            Verdict.REJECTED,
            "not a PNG",
        )
    with registry.reading() as tx:
        row = tx.get("a" * 32)
        assert row is not None and (row.verdict, row.digest) == (Verdict.REJECTED, "sha-256=:x:")


def test_an_outbox_event_commits_with_its_block_only(
    registry: Registry, sessions: sessionmaker[Session]
) -> None:
    row = new_row()
    with registry.writing() as tx:
        tx.insert(row)
        event_id = outbox.record(tx, "post-create", UploadInfo.of(row), NOW)
    with pytest.raises(RuntimeError), registry.writing() as tx:
        tx.insert(new_row("e" * 32))
        outbox.record(tx, "post-create", UploadInfo.of(new_row("e" * 32)), NOW)
        raise RuntimeError("the change fails after its event was written")
    with sessions() as session:
        events = session.scalars(select(Event)).all()
        assert [(e.id, e.upload_id, e.state, e.attempts) for e in events] == [
            (event_id, row.id, EventState.PENDING, 0)
        ]
        assert (events[0].created_at, events[0].due_at) == (NOW, NOW)
        assert json.loads(events[0].payload)["upload"]["id"] == row.id


def test_quota_counts_in_the_registry_transaction(
    registry: Registry, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as session:
        session.merge(QuotaUsage(scope=OPEN_SCOPE, used_bytes=0, used_files=0))
        session.add(
            Grant(
                id="9" * 12,
                label="team",
                token_hash="0" * 64,
                max_bytes=15,
                max_files=None,
                types="",
                created_at=NOW,
            )
        )
        session.add(QuotaUsage(scope="9" * 12, used_bytes=0, used_files=0))
    quota = Quota(sessions, open_bytes=None, open_files=1)
    first = new_row(concat=None)
    with registry.writing() as tx:
        quota.on_create(tx, first)
        tx.insert(first)
    assert (first.quota_bytes, first.quota_files) == (10, 1)
    # A second file passes the open scope's one: refused, and its block rolled back.
    with pytest.raises(QuotaExceeded, match="allows 1 uploads"), registry.writing() as tx:
        second = new_row("e" * 32, concat=None)
        tx.insert(second)
        quota.on_create(tx, second)
    # A grant's limit is read in the statement: 10 of its 15 bytes, then 10 more.
    granted = new_row("f" * 32, concat=None, grant_id="9" * 12)
    with registry.writing() as tx:
        quota.on_create(tx, granted)
        tx.insert(granted)
    refused = pytest.raises(QuotaExceeded, match="grant 999999999999 \\('team'\\)")
    with refused, registry.writing() as tx:
        quota.on_create(tx, new_row("d" * 32, concat=None, grant_id="9" * 12))
    with sessions() as session:
        assert session.get(Upload, "e" * 32) is None
        usage = {u.scope: (u.used_bytes, u.used_files) for u in session.scalars(select(QuotaUsage))}
        assert usage == {OPEN_SCOPE: (10, 1), "9" * 12: (10, 1)}
        stored = session.get(Upload, "f" * 32)
        assert stored is not None and (stored.quota_bytes, stored.quota_files) == (10, 1)
    # Freed in a registry transaction too, and saved with the row.
    with registry.writing() as tx:
        row = tx.get("f" * 32)
        assert row is not None
        quota.release(tx, row)
        tx.save(row)
    with sessions() as session:
        usage_row = session.get(QuotaUsage, "9" * 12)
        assert usage_row is not None and (usage_row.used_bytes, usage_row.used_files) == (0, 0)
        stored = session.get(Upload, "f" * 32)
        assert stored is not None and (stored.quota_bytes, stored.quota_files) == (0, 0)


def test_many_reading_threads_keep_few_sqlite_connections(registry: Registry) -> None:
    """A worker runs a thousand threads (README "Capacity"): the connections kept for
    reading are bounded, not one per thread (three open files and a page cache each)."""
    if not registry.sqlite:
        pytest.skip("PostgreSQL reads through the engine's bounded pool")
    start = threading.Barrier(64)
    seen: list[object] = []

    def read() -> None:
        start.wait(timeout=10)
        seen.append(registry.get("0" * 32))

    threads = [threading.Thread(target=read) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert seen == [None] * 64
    assert len(registry._idle) <= MAX_IDLE_READERS


def test_a_reader_handed_back_after_close_is_closed(registry: Registry) -> None:
    """close() while a thread still reads: the connection it hands back after is
    closed, not kept idle in a registry that no one will close again."""
    if not registry.sqlite:
        pytest.skip("PostgreSQL reads through the engine's pool, which dispose() closes")
    reading, closed = threading.Event(), threading.Event()
    held: list[sqlite3.Connection] = []

    def read() -> None:
        with registry.reading() as transaction:
            held.append(transaction.cursor.connection)
            reading.set()
            closed.wait(timeout=10)

    thread = threading.Thread(target=read)
    thread.start()
    assert reading.wait(timeout=10)
    registry.close()
    closed.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert registry._idle == []
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        held[0].execute("SELECT 1")
