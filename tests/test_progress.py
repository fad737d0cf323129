"""The progress reporter (progress.py): what it writes to the registry, and what it
leaves alone. Run on SQLite and PostgreSQL (its upserts are each dialect's own)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from uploadsvc import db
from uploadsvc.errors import (
    ChecksumMismatch,
    DigestMismatch,
    OffsetMismatch,
    TusError,
    TypeRefused,
    UploadLocked,
    UploadRefused,
    UploadTooLarge,
)
from uploadsvc.models import ReceivedPerMinute, UploadFailure, UploadProgress
from uploadsvc.progress import MAX_ROWS, Flow, ProgressReporter, failure_reason
from uploadsvc.quota import QuotaExceeded

NOW = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)


@pytest.fixture
def sessions(tmp_path: Path, database_url: str | None) -> Iterator[sessionmaker[Session]]:
    engine: Engine = db.make_engine(database_url or f"sqlite:///{tmp_path / 'registry.db'}")
    db.upgrade(engine, tmp_path / "migrate.lock")
    yield db.make_sessionmaker(engine)
    engine.dispose()


class Fake:
    """A worker's monotonic clock and the bodies its monitor sees."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.flows: list[Flow] = []


def reporter(sessions: sessionmaker[Session], fake: Fake) -> ProgressReporter:
    made = ProgressReporter(
        sessions, flows=lambda: list(fake.flows), clock=lambda: NOW, monotonic=lambda: fake.mono
    )
    made.autostart = False
    return made


def rows(sessions: sessionmaker[Session], model: type) -> list:  # type: ignore[type-arg]
    with sessions() as session:
        return list(session.scalars(select(model)))


def test_a_short_body_writes_no_progress_row(sessions: sessionmaker[Session]) -> None:
    fake = Fake()
    report = reporter(sessions, fake)
    fake.flows = [Flow(1, "a" * 32, 0, 65536, started=fake.mono - 0.01, last_byte=fake.mono)]
    report.count(65536)
    report.report()
    assert rows(sessions, UploadProgress) == []
    (minute,) = rows(sessions, ReceivedPerMinute)
    assert minute.received == 65536 and minute.minute == NOW.replace(second=0)


def test_a_long_body_is_reported_then_removed(sessions: sessionmaker[Session]) -> None:
    fake = Fake()
    report = reporter(sessions, fake)
    fake.flows = [Flow(7, "b" * 32, 100, 4000, started=fake.mono - 2, last_byte=fake.mono - 0.5)]
    report.report()
    (row,) = rows(sessions, UploadProgress)
    assert (row.position, row.rate) == (4100, 2000)
    assert row.last_byte_at == NOW - timedelta(seconds=0.5)
    fake.mono += 1
    fake.flows = [Flow(7, "b" * 32, 100, 5000, started=fake.mono - 3, last_byte=fake.mono)]
    report.report()
    (row,) = rows(sessions, UploadProgress)
    assert (row.position, row.rate) == (5100, 1000)
    fake.flows = []
    report.report()
    assert rows(sessions, UploadProgress) == []


def test_an_ended_body_leaves_the_row_of_the_body_that_took_over(
    sessions: sessionmaker[Session],
) -> None:
    """A takeover: worker A's body on an upload ends while worker B's new one streams.
    A deletes only its own row, never B's."""
    a, b = Fake(), Fake()
    worker_a, worker_b = reporter(sessions, a), reporter(sessions, b)
    worker_b._pid = worker_a._pid + 1  # two processes
    a.flows = [Flow(1, "c" * 32, 0, 10, started=a.mono - 5, last_byte=a.mono - 4)]
    worker_a.report()
    b.flows = [Flow(1, "c" * 32, 10, 500, started=b.mono - 2, last_byte=b.mono)]
    worker_b.report()
    a.flows = []
    worker_a.report()
    (row,) = rows(sessions, UploadProgress)
    assert row.position == 510


def test_workers_add_to_one_minute(sessions: sessionmaker[Session]) -> None:
    workers = [reporter(sessions, Fake()) for _ in range(3)]
    for number, worker in enumerate(workers, 1):
        worker.count(number * 100)
        worker.report()
    (minute,) = rows(sessions, ReceivedPerMinute)
    assert minute.received == 600


def test_failures_are_written_with_the_next_report(sessions: sessionmaker[Session]) -> None:
    report = reporter(sessions, Fake())
    report.failed_with("d" * 32, ChecksumMismatch())
    report.failed_with("d" * 32, OffsetMismatch("not a failure an operator watches"))
    report.failed_with("d" * 32, UploadLocked())
    report.failed(None, "quota", "x" * 500)
    with pytest.raises(ValueError, match="unknown failure reason"):
        report.failed(None, "made-up")
    assert rows(sessions, UploadFailure) == []
    report.report()
    found = sorted((f.reason, f.upload_id, len(f.detail)) for f in rows(sessions, UploadFailure))
    assert found[0][:2] == ("checksum", "d" * 32)
    assert found[1] == ("quota", None, 200)
    assert failure_reason(OffsetMismatch("x")) is None


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (TypeRefused("an exe"), "type"),
        (DigestMismatch("sha-256"), "digest"),
        (UploadRefused("rejected"), "type"),
        (QuotaExceeded("the grant's bytes"), "quota"),
        (UploadTooLarge("past its length"), None),
    ],
)
def test_refusals_of_the_gates_and_quotas_are_failures(error: TusError, reason: str) -> None:
    """The failures the operator view names: type, digest and quota refusals count."""
    assert failure_reason(error) == reason


def test_old_rows_are_trimmed(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        session.add(ReceivedPerMinute(minute=NOW - timedelta(hours=3), received=1))
        session.add(
            UploadFailure(upload_id=None, reason="type", detail="", at=NOW - timedelta(days=2))
        )
        session.add(
            UploadProgress(
                upload_id="e" * 32,
                stream="1:1",
                position=1,
                rate=0,
                started_at=NOW - timedelta(minutes=5),
                last_byte_at=NOW - timedelta(minutes=5),
                reported_at=NOW - timedelta(minutes=5),  # a dead worker's
            )
        )
    reporter(sessions, Fake()).report()  # the first report trims
    assert rows(sessions, ReceivedPerMinute) == []
    assert rows(sessions, UploadFailure) == []
    assert rows(sessions, UploadProgress) == []


def test_a_crowd_of_bodies_writes_the_most_recent_few(sessions: sessionmaker[Session]) -> None:
    """A crowd (slowloris: hundreds of bodies a byte a second) costs a bounded write."""
    fake = Fake()
    report = reporter(sessions, fake)
    fake.flows = [
        Flow(n, f"{n:032x}", 0, n, started=fake.mono - 5, last_byte=fake.mono - 4 + n / 100)
        for n in range(MAX_ROWS + 8)
    ]
    report.report()
    written = {row.upload_id for row in rows(sessions, UploadProgress)}
    assert written == {f"{n:032x}" for n in range(8, MAX_ROWS + 8)}
