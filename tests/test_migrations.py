"""Alembic migrations: they build the schema the models describe, and keep the data.

Written against "0001", "0002" and "head" only, so every later migration is exercised
as it lands, with no change here.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from sqlalchemy import Engine, inspect, select, text

from uploadsvc import db, listing, outbox
from uploadsvc.delivery import Dispatcher
from uploadsvc.models import (
    ID_LENGTH,
    Base,
    Event,
    EventState,
    Upload,
    UploadPart,
    UploadState,
    Verdict,
)
from uploadsvc.records import UploadInfo
from uploadsvc.watching import Watching

FIRST = "0001"
CONCATENATION = "0002"
UPLOAD_ID = "0123456789abcdef0123456789abcdef"
TOMBSTONE_ID = "fedcba9876543210fedcba9876543210"


@pytest.fixture
def engine(tmp_path: Path, database_url: str | None) -> Iterator[Engine]:
    # SQLite, or a fresh PostgreSQL database (tests/conftest.py runs this module on both).
    engine = db.make_engine(database_url or f"sqlite:///{tmp_path / 'registry.db'}")
    yield engine
    engine.dispose()


def head() -> str:
    revision = ScriptDirectory(str(db.MIGRATIONS_DIR)).get_current_head()
    assert revision is not None
    return revision


def current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_upgrade_an_empty_database_to_head(engine: Engine) -> None:
    assert current(engine) is None
    command.upgrade(db.alembic_config(engine), "head")
    assert current(engine) == head()
    assert "uploads" in inspect(engine).get_table_names()


def test_models_and_migrations_agree(engine: Engine) -> None:
    command.upgrade(db.alembic_config(engine), "head")
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_upgrade_from_the_first_revision_keeps_the_data(engine: Engine) -> None:
    config = db.alembic_config(engine)
    command.upgrade(config, FIRST)
    assert current(engine) == FIRST
    # Raw SQL in the first revision's terms: the models may have moved on since.
    with engine.begin() as connection:
        connection.execute(
            text(
                'INSERT INTO uploads (id, state, length, "offset", upload_metadata, verifying,'
                " created_at, updated_at, expires_at, completed_at) VALUES"
                " (:id, :state, 100, 42, 'name bmFtZQ==', FALSE, '2026-01-01 12:00:00.000000',"
                " '2026-01-01 12:05:00.000000', '2026-01-02 12:05:00.000000', NULL)"
            ),
            [{"id": UPLOAD_ID, "state": "ACTIVE"}, {"id": TOMBSTONE_ID, "state": "TERMINATED"}],
        )

    command.upgrade(config, "head")
    assert current(engine) == head()
    sessions = db.make_sessionmaker(engine)
    with sessions.begin() as session:
        upload = session.get(Upload, UPLOAD_ID)
        tombstone = session.get(Upload, TOMBSTONE_ID)
    assert upload is not None
    assert tombstone is not None
    assert (upload.state, upload.length, upload.offset) == (UploadState.ACTIVE, 100, 42)
    assert upload.upload_metadata == "name bmFtZQ=="
    assert upload.verifying is False
    assert upload.created_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert upload.expires_at == datetime(2026, 1, 2, 12, 5, tzinfo=UTC)
    assert upload.completed_at is None
    assert tombstone.state is UploadState.TERMINATED


def test_upgrade_keeps_concatenations_and_takes_the_longest_ids(engine: Engine) -> None:
    """From the revision that brought concatenation: altering ``uploads`` (SQLite copies
    the table) must not cascade to the rows that refer to it."""
    config = db.alembic_config(engine)
    command.upgrade(config, CONCATENATION)
    with engine.begin() as connection:
        connection.execute(
            text(
                'INSERT INTO uploads (id, state, length, "offset", upload_metadata, verifying,'
                " created_at, updated_at, concat) VALUES (:id, 'ACTIVE', 1, 0, '', FALSE,"
                " '2026-01-01 12:00:00.000000', '2026-01-01 12:00:00.000000', :concat)"
            ),
            [{"id": UPLOAD_ID, "concat": "PARTIAL"}, {"id": TOMBSTONE_ID, "concat": "FINAL"}],
        )
        connection.execute(
            text(
                "INSERT INTO upload_parts (final_id, position, partial_id)"
                " VALUES (:final, 0, :partial)"
            ),
            {"final": TOMBSTONE_ID, "partial": UPLOAD_ID},
        )

    command.upgrade(config, "head")
    sessions = db.make_sessionmaker(engine)
    with sessions.begin() as session:
        parts = list(session.scalars(select(UploadPart)))
        assert [(p.final_id, p.position, p.partial_id) for p in parts] == [
            (TOMBSTONE_ID, 0, UPLOAD_ID)
        ]
        longest = "L" * ID_LENGTH
        now = datetime(2026, 1, 1, tzinfo=UTC)
        session.add(Upload(id=longest, length=1, created_at=now, updated_at=now))
        session.add(UploadPart(final_id=longest, position=0, partial_id=longest))
    with sessions.begin() as session:
        assert session.get(Upload, longest) is not None


def test_finished_at_takes_uploads_completed_before_it_as_finished(engine: Engine) -> None:
    """0004: a completed upload from before it counts as finished (when it completed),
    so no post-finish is replayed for it; unfinished ones stay due for nothing. Down
    and up again keeps the rows."""
    config = db.alembic_config(engine)
    command.upgrade(config, "0003")
    with engine.begin() as connection:
        connection.execute(
            text(
                'INSERT INTO uploads (id, state, length, "offset", upload_metadata, verifying,'
                " created_at, updated_at, completed_at) VALUES (:id, :state, 3, :offset, '',"
                " FALSE, '2026-01-01 12:00:00.000000', '2026-01-01 12:05:00.000000',"
                " :completed)"
            ),
            [
                {
                    "id": UPLOAD_ID,
                    "state": "COMPLETED",
                    "offset": 3,
                    "completed": "2026-01-01 12:04:00.000000",
                },
                {"id": TOMBSTONE_ID, "state": "ACTIVE", "offset": 1, "completed": None},
            ],
        )
    command.upgrade(config, "head")
    sessions = db.make_sessionmaker(engine)
    with sessions.begin() as session:
        done = session.get_one(Upload, UPLOAD_ID)
        active = session.get_one(Upload, TOMBSTONE_ID)
        assert done.finished_at == datetime(2026, 1, 1, 12, 4, tzinfo=UTC)
        assert active.finished_at is None
    command.downgrade(config, "0003")
    command.upgrade(config, "head")
    with sessions.begin() as session:
        assert session.get_one(Upload, UPLOAD_ID).state is UploadState.COMPLETED


def test_upgrade_is_idempotent(engine: Engine) -> None:
    config = db.alembic_config(engine)
    command.upgrade(config, "head")
    command.upgrade(config, "head")
    assert current(engine) == head()


# -- flask db ------------------------------------------------------------------------------


def test_flask_db_current_names_the_head(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["db", "current"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{head()} (head)"


def test_flask_db_upgrade(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{head()} (head)"


def test_flask_db_upgrade_refuses_an_unknown_revision(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["db", "upgrade", "nonesuch"])
    assert result.exit_code != 0


BEFORE_LISTING_INDEX = "0004"
STAMP = "2026-01-01 12:{:02d}:00.000000"


def test_listing_index_on_a_database_with_data(engine: Engine) -> None:
    """0005 indexes the page's list on a registry that already has completed uploads:
    the data stays, the list's query is served by the index (no sort of the table),
    and a downgrade takes the index away again."""
    config = db.alembic_config(engine)
    command.upgrade(config, BEFORE_LISTING_INDEX)
    with engine.begin() as connection:
        connection.execute(
            text(
                'INSERT INTO uploads (id, state, length, "offset", upload_metadata, verifying,'
                " created_at, updated_at, completed_at) VALUES (:id, :state, 1, 1, '', FALSE,"
                " '2026-01-01 12:00:00.000000', '2026-01-01 12:00:00.000000', :done)"
            ),
            [
                # As SQLAlchemy writes them (SQLite compares the text).
                {"id": f"{n:032x}", "state": "COMPLETED", "done": STAMP.format(n)}
                for n in range(30)
            ],
        )
    assert "ix_uploads_listing" not in _indexes(engine)
    command.upgrade(config, "head")
    assert "ix_uploads_listing" in _indexes(engine)
    readers = db.make_readers(engine)
    page = list(listing.recent_completed(readers, scan=10))
    assert [upload.id for upload in page] == [f"{n:032x}" for n in range(29, 19, -1)]
    rest = list(
        listing.recent_completed(readers, before=listing.parse_cursor(listing.cursor(page[-1])))
    )
    assert [upload.id for upload in rest] == [f"{n:032x}" for n in range(19, -1, -1)]
    if engine.dialect.name == "sqlite":
        query = listing.recent_completed_query(None, 10)
        with engine.connect() as connection:
            plan = " ".join(
                str(row[-1])
                for row in connection.execute(
                    text(
                        "EXPLAIN QUERY PLAN "
                        + str(query.compile(engine, compile_kwargs={"literal_binds": True}))
                    )
                )
            )
        assert "ix_uploads_listing" in plan and "TEMP B-TREE" not in plan, plan
    command.downgrade(config, BEFORE_LISTING_INDEX)
    assert "ix_uploads_listing" not in _indexes(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM uploads")).scalar() == 30


def _indexes(engine: Engine) -> set[str]:
    return {str(index["name"]) for index in inspect(engine).get_indexes("uploads")}


BEFORE_EVENTS = "0007"  # the revision 0008 follows


def test_events_outbox_on_a_database_with_data(engine: Engine) -> None:
    """0008 adds the events outbox to a registry holding uploads: they stay, the outbox
    starts empty and takes events (the dispatcher's claim query included), and a
    downgrade drops it and keeps the uploads."""
    config = db.alembic_config(engine)
    command.upgrade(config, BEFORE_EVENTS)
    with engine.begin() as connection:
        connection.execute(
            text(
                'INSERT INTO uploads (id, state, length, "offset", upload_metadata, verifying,'
                " created_at, updated_at, completed_at, finished_at) VALUES (:id, :state, 1,"
                " :offset, '', FALSE, '2026-01-01 12:00:00.000000',"
                " '2026-01-01 12:00:00.000000', :done, :done)"
            ),
            [
                {"id": UPLOAD_ID, "state": "ACTIVE", "offset": 0, "done": None},
                {
                    "id": TOMBSTONE_ID,
                    "state": "COMPLETED",
                    "offset": 1,
                    "done": "2026-01-01 12:01:00.000000",
                },
            ],
        )
    assert "events" not in inspect(engine).get_table_names()
    command.upgrade(config, "head")
    sessions = db.make_sessionmaker(engine)
    with sessions.begin() as session:
        assert session.scalars(select(Event)).all() == []
        done = session.get_one(Upload, TOMBSTONE_ID)
        assert done.state is UploadState.COMPLETED
        assert session.get_one(Upload, UPLOAD_ID).state is UploadState.ACTIVE
        outbox.record(session, "post-finish", UploadInfo.of(done), datetime.now(UTC))
    dispatcher = Dispatcher(sessions, "http://127.0.0.1:9/")
    assert dispatcher.pending() == 1
    assert dispatcher.deliver_due() == 1  # nothing listens on port 9: refused, still owed
    with sessions.begin() as session:
        (event,) = session.scalars(select(Event)).all()
        assert (event.state, event.attempts, event.upload_id) == (
            EventState.PENDING,
            1,
            TOMBSTONE_ID,
        )
    command.downgrade(config, BEFORE_EVENTS)
    assert "events" not in inspect(engine).get_table_names()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM uploads")).scalar() == 2
    command.upgrade(config, "head")
    assert "events" in inspect(engine).get_table_names()


def test_grants_migration_counts_what_is_there_and_keeps_it(engine: Engine) -> None:
    """0006 on a registry with uploads: they belong to no grant, and the live ones are
    counted into the shared quota as the quota counts them (length or offset, one file;
    a partial no file, a final no bytes); tombstones hold nothing. Down and up again
    keeps the rows."""
    config = db.alembic_config(engine)
    command.upgrade(config, "0005")
    rows = [
        # id, state, length, offset, concat
        ("a" * 32, "ACTIVE", 100, 10, None),
        ("b" * 32, "ACTIVE", None, 7, None),  # deferred: what it has
        ("c" * 32, "COMPLETED", 50, 50, None),
        ("d" * 32, "TERMINATED", 1000, 3, None),  # a tombstone holds nothing
        ("e" * 32, "COMPLETED", 20, 20, "PARTIAL"),
        ("f" * 32, "COMPLETED", 20, 20, "FINAL"),
    ]
    with engine.begin() as connection:
        connection.execute(
            text(
                'INSERT INTO uploads (id, state, length, "offset", upload_metadata, verifying,'
                " created_at, updated_at, concat) VALUES (:id, :state, :length, :offset, '',"
                " FALSE, '2026-01-01 12:00:00.000000', '2026-01-01 12:00:00.000000', :concat)"
            ),
            [
                {"id": i, "state": s, "length": n, "offset": o, "concat": c}
                for i, s, n, o, c in rows
            ],
        )
    command.upgrade(config, "head")
    for _ in range(2):  # and again after a downgrade
        with engine.connect() as connection:
            held = dict(
                (r[0], (r[1], r[2], r[3]))
                for r in connection.execute(
                    text("SELECT id, grant_id, quota_bytes, quota_files FROM uploads")
                )
            )
            usage = connection.execute(
                text("SELECT scope, used_bytes, used_files FROM quota_usage")
            ).all()
        assert held == {
            "a" * 32: (None, 100, 1),
            "b" * 32: (None, 7, 1),
            "c" * 32: (None, 50, 1),
            "d" * 32: (None, 0, 0),
            "e" * 32: (None, 20, 0),
            "f" * 32: (None, 0, 1),
        }
        assert [tuple(r) for r in usage] == [("*", 177, 4)]
        command.downgrade(config, "0005")
        assert "grants" not in inspect(engine).get_table_names()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM uploads")).scalar() == 6
        command.upgrade(config, "head")
    assert "ix_uploads_grant_id" in _indexes(engine)


BEFORE_VERDICTS = "0006"  # the revision 0007 follows


def test_verdicts_on_a_database_with_data(engine: Engine) -> None:
    """0007 adds the declared digest and the verdict: uploads finished before it were
    served as they were, so they are OK; unfinished ones get theirs when they finish.
    Down and up again keeps the rows."""
    config = db.alembic_config(engine)
    command.upgrade(config, BEFORE_VERDICTS)
    with engine.begin() as connection:
        connection.execute(
            text(
                'INSERT INTO uploads (id, state, length, "offset", upload_metadata, verifying,'
                " created_at, updated_at, completed_at, finished_at) VALUES (:id, :state, 3,"
                " :offset, '', FALSE, '2026-01-01 12:00:00.000000',"
                " '2026-01-01 12:05:00.000000', :done, :done)"
            ),
            [
                {"id": UPLOAD_ID, "state": "COMPLETED", "offset": 3, "done": STAMP.format(4)},
                {"id": TOMBSTONE_ID, "state": "ACTIVE", "offset": 1, "done": None},
            ],
        )
    command.upgrade(config, "head")
    sessions = db.make_sessionmaker(engine)
    with sessions.begin() as session:
        done = session.get_one(Upload, UPLOAD_ID)
        active = session.get_one(Upload, TOMBSTONE_ID)
        assert (done.verdict, done.verdict_reason, done.digest) == (Verdict.OK, None, None)
        assert active.verdict is None and active.offset == 1
        active.digest = "sha-256=:" + "A" * 43 + "=:"
        active.verdict, active.verdict_reason = Verdict.CORRUPT, "a reason"
    readers = db.make_readers(engine)
    assert [upload.id for upload in listing.recent_completed(readers)] == [UPLOAD_ID]
    command.downgrade(config, BEFORE_VERDICTS)
    assert "verdict" not in {column["name"] for column in inspect(engine).get_columns("uploads")}
    command.upgrade(config, "head")
    with sessions.begin() as session:
        assert session.get_one(Upload, UPLOAD_ID).verdict is Verdict.OK
        assert session.get_one(Upload, TOMBSTONE_ID).state is UploadState.ACTIVE


BEFORE_PROGRESS = "0008"  # the revision 0009 follows


def test_progress_tables_on_a_database_with_data(engine: Engine) -> None:
    """0009 adds the operator view's tables and an index on uploads.updated_at to a
    registry with uploads: they stay, the feed's query finds them by the index, and a
    downgrade takes it all away again."""
    config = db.alembic_config(engine)
    command.upgrade(config, BEFORE_PROGRESS)
    with engine.begin() as connection:
        connection.execute(
            text(
                'INSERT INTO uploads (id, state, length, "offset", upload_metadata, verifying,'
                " created_at, updated_at, expires_at) VALUES (:id, 'ACTIVE', 10, 1, '',"
                " FALSE, :at, :at, '2026-01-02 12:00:00.000000')"
            ),
            [{"id": f"{n:032x}", "at": STAMP.format(n)} for n in range(20)],
        )
    command.upgrade(config, "head")
    assert "ix_uploads_updated_at" in _indexes(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"upload_progress", "received_per_minute", "upload_failures"} <= tables
    watching = Watching(
        db.make_readers(engine), lambda: datetime(2026, 1, 1, 12, 30, tzinfo=UTC), 20.0
    )
    _, events = watching.changes(datetime(2026, 1, 1, 12, 14, 30, tzinfo=UTC))
    assert sorted(e["upload"]["id"] for e in events if e["type"] == "created") == [
        f"{n:032x}" for n in range(15, 20)
    ]
    command.downgrade(config, BEFORE_PROGRESS)
    assert "ix_uploads_updated_at" not in _indexes(engine)
    assert "upload_progress" not in set(inspect(engine).get_table_names())
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM uploads")).scalar() == 20
