"""What the operator view (/admin) shows, read from the registry every worker shares.

``overview`` is the page's picture: uploads in flight (progress, rate, last byte,
stalled), recent completions, failures and terminations, the bytes unfinished uploads
hold, the disk, bytes received per minute over the last hour, and per-grant usage
where a part provides it. ``changes`` is the live feed: what changed in the registry
since a moment, as events (created, progress, finished, terminated, expired, failed,
minute), which feed.py fans out to the watchers of a worker. No Flask here.

Extension points, for the parts that refuse or meter uploads:
- a failure is written with ``ProgressReporter.failed(upload_id, reason)`` (reasons:
  ``models.FAILURE_REASONS``): it shows here and in the feed with nothing else to do;
- ``Watching.failure_sources``: more failures read from elsewhere (one function each);
- ``Watching.grant_usage``: per-grant usage rows for the grants panel (None: no grants).
- ``Watching.changes`` is the one function the feed calls: an outbox of events in the
  registry would replace it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from .models import ReceivedPerMinute, Upload, UploadFailure, UploadProgress, UploadState
from .progress import STALE_AFTER
from .protocol import parse_metadata

# Unfinished uploads idle longer than this are counted, not listed as in flight.
IN_FLIGHT_WINDOW = timedelta(hours=1)
MAX_IN_FLIGHT = 100
MAX_RECENT = 20
CHART_MINUTES = 60
# Uploads one feed read looks at, newest first: a busy second costs a bounded read (the
# page shows what it has; a reload shows the rest).
MAX_CHANGES = 1000
_UNFINISHED = UploadState.ACTIVE


@dataclass(frozen=True)
class InFlight:
    id: str
    filename: str
    length: int | None
    offset: int  # durably stored
    position: int  # received, as its worker last reported (>= offset while streaming)
    rate: int  # bytes/s, while a body streams
    last_byte_at: datetime
    streaming: bool
    stalled: bool

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "filename": self.filename,
            "length": self.length,
            "offset": self.offset,
            "position": self.position,
            "rate": self.rate,
            "last_byte_at": _iso(self.last_byte_at),
            "streaming": self.streaming,
            "stalled": self.stalled,
        }


@dataclass(frozen=True)
class Ended:
    """A completion, a termination or a failure (``reason``)."""

    id: str | None
    filename: str
    size: int | None
    at: datetime
    reason: str = ""
    detail: str = ""

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "filename": self.filename,
            "size": self.size,
            "at": _iso(self.at),
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class GrantUsage:
    """One grant's use, for the grants panel (filled by the part that has grants)."""

    name: str
    uploads: int
    bytes: int
    limit_bytes: int | None = None


@dataclass(frozen=True)
class Disk:
    free: int
    total: int


@dataclass(frozen=True)
class Overview:
    now: datetime
    stall_after: float
    in_flight: list[InFlight]
    idle_unfinished: int  # unfinished uploads not listed (idle over IN_FLIGHT_WINDOW)
    held_bytes: int  # stored by unfinished uploads (bodies in flight included)
    disk: Disk | None  # None: not on a local disk (S3)
    completions: list[Ended]
    failures: list[Ended]
    terminations: list[Ended]
    minutes: list[tuple[datetime, int]]  # CHART_MINUTES entries, oldest first
    grants: list[GrantUsage] | None


FailureSource = Callable[[Session, datetime], list[Ended]]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def filename_of(metadata: str) -> str:
    try:
        name = parse_metadata(metadata).get("filename")
    except Exception:  # a hook stored metadata the header can't carry
        return ""
    return "" if name is None else name.decode("utf-8", "replace")[:200]


def recorded_failures(session: Session, now: datetime) -> list[Ended]:
    """Failures the request threads reported (progress.py): checksum, disk_full..."""
    rows = session.scalars(
        select(UploadFailure).order_by(UploadFailure.at.desc()).limit(MAX_RECENT)
    ).all()
    names = _filenames(session, {row.upload_id for row in rows if row.upload_id})
    return [
        Ended(
            row.upload_id, names.get(row.upload_id or "", ""), None, row.at, row.reason, row.detail
        )
        for row in rows
    ]


def expired_uploads(session: Session, now: datetime) -> list[Ended]:
    """Unfinished uploads past their expiry: cleanup's tombstones and the ones it hasn't
    reached yet (they answer 410 already)."""
    tombstones = session.scalars(
        select(Upload)
        .where(Upload.state == UploadState.EXPIRED)
        .order_by(Upload.updated_at.desc())
        .limit(MAX_RECENT)
    ).all()
    due = session.scalars(
        select(Upload)
        .where(Upload.expired_by(now))
        .order_by(Upload.expires_at.desc())
        .limit(MAX_RECENT)
    ).all()
    found = [
        Ended(row.id, filename_of(row.upload_metadata), row.offset, row.updated_at, "expired")
        for row in tombstones
    ]
    found += [
        Ended(
            row.id, filename_of(row.upload_metadata), row.offset, row.expires_at or now, "expired"
        )
        for row in due
    ]
    return found


def _filenames(session: Session, upload_ids: set[str]) -> dict[str, str]:
    if not upload_ids:
        return {}
    query = select(Upload.id, Upload.upload_metadata).where(Upload.id.in_(upload_ids))
    return {upload_id: filename_of(metadata) for upload_id, metadata in session.execute(query)}


def local_disk(path: Path) -> Callable[[], Disk | None]:
    def disk() -> Disk | None:
        try:
            usage = shutil.disk_usage(path)
        except OSError:
            return None
        return Disk(free=usage.free, total=usage.total)

    return disk


@dataclass
class Watching:
    readers: sessionmaker[Session]
    clock: Callable[[], datetime]
    stall_after: float
    disk: Callable[[], Disk | None] = lambda: None
    failure_sources: list[FailureSource] = field(
        default_factory=lambda: [recorded_failures, expired_uploads]
    )
    grant_usage: Callable[[], list[GrantUsage]] | None = None

    # -- the page -------------------------------------------------------------------------

    def overview(self) -> Overview:
        now = self.clock()
        with self.readers.begin() as session:
            in_flight = self._in_flight(session, now)
            unfinished, held = session.execute(
                select(func.count(), func.coalesce(func.sum(Upload.offset), 0)).where(
                    Upload.state == _UNFINISHED, ~Upload.expired_by(now)
                )
            ).one()
            completions = [
                Ended(row.id, filename_of(row.upload_metadata), row.length, row.completed_at or now)
                for row in session.scalars(
                    select(Upload)
                    .where(Upload.state == UploadState.COMPLETED)
                    .order_by(Upload.completed_at.desc(), Upload.id.desc())
                    .limit(MAX_RECENT)
                )
            ]
            terminations = [
                Ended(
                    row.id,
                    filename_of(row.upload_metadata),
                    row.offset,
                    row.updated_at,
                    "terminated",
                )
                for row in session.scalars(
                    select(Upload)
                    .where(Upload.state == UploadState.TERMINATED)
                    .order_by(Upload.updated_at.desc())
                    .limit(MAX_RECENT)
                )
            ]
            failures = [f for source in self.failure_sources for f in source(session, now)]
            minutes = self._minutes(session, now)
        failures.sort(key=lambda failure: failure.at, reverse=True)
        return Overview(
            now=now,
            stall_after=self.stall_after,
            in_flight=in_flight,
            idle_unfinished=max(int(unfinished) - len(in_flight), 0),
            # Bodies streaming now have written past the recorded offset already.
            held_bytes=int(held) + sum(u.position - u.offset for u in in_flight),
            disk=self.disk(),
            completions=completions,
            failures=failures[:MAX_RECENT],
            terminations=terminations,
            minutes=minutes,
            grants=self.grant_usage() if self.grant_usage else None,
        )

    def _in_flight(self, session: Session, now: datetime) -> list[InFlight]:
        progress = {
            row.upload_id: row
            for row in session.scalars(
                select(UploadProgress).where(UploadProgress.reported_at >= now - STALE_AFTER)
            )
        }
        query = (
            select(Upload)
            .where(
                Upload.state == _UNFINISHED,
                ~Upload.expired_by(now),
                (Upload.updated_at >= now - IN_FLIGHT_WINDOW) | Upload.id.in_(progress),
            )
            .order_by(Upload.updated_at.desc())
            .limit(MAX_IN_FLIGHT)
        )
        return [self._one(row, progress.get(row.id), now) for row in session.scalars(query)]

    def _one(self, row: Upload, body: UploadProgress | None, now: datetime) -> InFlight:
        last = body.last_byte_at if body is not None else row.updated_at
        return InFlight(
            id=row.id,
            filename=filename_of(row.upload_metadata),
            length=row.length,
            offset=row.offset,
            position=max(row.offset, body.position) if body is not None else row.offset,
            rate=body.rate if body is not None else 0,
            last_byte_at=last,
            streaming=body is not None,
            stalled=(now - last).total_seconds() >= self.stall_after,
        )

    @staticmethod
    def _minutes(session: Session, now: datetime) -> list[tuple[datetime, int]]:
        this_minute = now.replace(second=0, microsecond=0)
        first = this_minute - timedelta(minutes=CHART_MINUTES - 1)
        counts = dict(
            session.execute(
                select(ReceivedPerMinute.minute, ReceivedPerMinute.received).where(
                    ReceivedPerMinute.minute >= first
                )
            ).all()
        )
        return [
            (minute, int(counts.get(minute, 0)))
            for minute in (first + timedelta(minutes=i) for i in range(CHART_MINUTES))
        ]

    # -- the feed ------------------------------------------------------------------------

    def changes(self, since: datetime) -> tuple[datetime, list[dict[str, Any]]]:
        """Events for what changed in the registry after ``since`` (and the moment to
        ask from next time). The feed (feed.py) calls it about once a second per worker
        while someone watches; it uses the indexes on updated_at, expires_at,
        reported_at and at, so it reads only what changed."""
        now = self.clock()
        events: list[dict[str, Any]] = []
        with self.readers.begin() as session:
            changed = session.scalars(
                select(Upload)
                .where(Upload.updated_at > since)
                .order_by(Upload.updated_at.desc())
                .limit(MAX_CHANGES)
            ).all()
            for row in reversed(changed):
                events.extend(self._row_events(row, since, now))
            for row in session.scalars(
                select(Upload).where(
                    Upload.state == _UNFINISHED, Upload.expires_at > since, Upload.expires_at <= now
                )
            ):
                events.append({"type": "expired", "upload": self._ended(row, row.expires_at)})
            for body in session.scalars(
                select(UploadProgress).where(UploadProgress.reported_at > since)
            ):
                events.append(
                    {
                        "type": "progress",
                        "id": body.upload_id,
                        "position": body.position,
                        "rate": body.rate,
                        "last_byte_at": _iso(body.last_byte_at),
                        "streaming": True,
                    }
                )
            failures = session.scalars(
                select(UploadFailure).where(UploadFailure.at > since).order_by(UploadFailure.at)
            ).all()
            names = _filenames(session, {f.upload_id for f in failures if f.upload_id})
            for failure in failures:
                name = names.get(failure.upload_id or "", "")
                ended = Ended(
                    failure.upload_id, name, None, failure.at, failure.reason, failure.detail
                )
                events.append({"type": "failed", "upload": ended.json()})
            this_minute = now.replace(second=0, microsecond=0)
            for minute, received in session.execute(
                select(ReceivedPerMinute.minute, ReceivedPerMinute.received).where(
                    ReceivedPerMinute.minute >= this_minute - timedelta(minutes=1)
                )
            ):
                events.append({"type": "minute", "minute": _iso(minute), "received": received})
        return now, events

    def _row_events(self, row: Upload, since: datetime, now: datetime) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if row.created_at > since:
            events.append({"type": "created", "upload": self._one(row, None, now).json()})
        if row.state is UploadState.COMPLETED:
            events.append({"type": "finished", "upload": self._ended(row, row.completed_at)})
        elif row.state is UploadState.TERMINATED:
            events.append({"type": "terminated", "upload": self._ended(row, row.updated_at)})
        elif row.state is UploadState.EXPIRED:
            events.append({"type": "expired", "upload": self._ended(row, row.updated_at)})
        elif row.created_at <= since:
            # A write recorded (a PATCH ended): the durable offset, the body is done.
            events.append(
                {
                    "type": "progress",
                    "id": row.id,
                    "position": row.offset,
                    "offset": row.offset,
                    "rate": 0,
                    "last_byte_at": _iso(row.updated_at),
                    "streaming": False,
                }
            )
        return events

    @staticmethod
    def _ended(row: Upload, at: datetime | None) -> dict[str, Any]:
        size = row.length if row.state is UploadState.COMPLETED else row.offset
        return Ended(row.id, filename_of(row.upload_metadata), size, at or row.updated_at).json()
