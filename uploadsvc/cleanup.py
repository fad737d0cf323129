"""Cleanup: reclaim the disk and registry space of uploads nobody will finish or fetch.

Framework-free: ``flask cleanup`` (cli.py) builds a ``Cleaner`` and prints its
``Report``. One run, in order:

0. finished: completed uploads whose finish sequence broke off (a crash) run it now.
1. expired: unfinished uploads past ``expires_at`` lose their data; the row becomes an
   EXPIRED tombstone, so the URL keeps answering 410 rather than 404.
2. completed: with a retention set, completed uploads older than it, likewise; but not
   a partial upload that a live final upload names.
3. gone: live rows whose data file vanished become tombstones too.
4. purged: tombstones older than the TTL lose their row (the URL then answers 404).
5. orphans: data and lock files without a live row. Files without any row must be older
   than a grace period: ``service.create`` writes the data file before it inserts the
   row, so a young row-less file is an upload being born.
6. events: webhook events (outbox.py) delivered, or failed for good, longer ago than the
   event retention are deleted; pending ones are never touched.

Steps 1-3 record a ``post-expire`` webhook event (its ``reason`` the step's name) in
the transaction that makes the tombstone.

A final upload holds no copy of its partials' bytes: it is read through them. So the
data of a partial that a live (active or completed) final names is never removed,
whatever the partial's own state (a terminated one answers 410 but keeps its bytes);
its row is not purged either, so its data never looks like an orphan's. Once no live
final names it, the steps above remove it as any other.

Everything it changes, it changes under the upload's lock taken with timeout 0: a busy
upload is skipped (left for the next run), never waited for, and the row is read again
under the lock, because a write may have moved it on since the candidates were chosen.
A run also holds a lock of its own (``RUN_LOCK``, through the same locker, so it spans
hosts when the locks do): a cleanup that starts while another runs, as cron may start
one while a long one lasts, does nothing and says so. Without it both would see the
same orphans and both would report removing them. Data is removed only after the row
says it is dead, so a crash in between leaves an orphan the next run removes, never a
live row without data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, cast

from sqlalchemy import CursorResult, Executable, delete, func, or_, select
from sqlalchemy.orm import Session, object_session, sessionmaker

from .config import Settings
from .errors import UploadLocked
from .locking import CLEANUP_RUN_LOCK, Locker
from .models import Event, EventState, Upload, UploadPart, UploadState
from .outbox import Outbox
from .protocol import is_upload_id
from .quota import Quota
from .records import UploadInfo
from .service import named_by_live_finals, partial_in_use
from .storage import UploadStore

log = logging.getLogger(__name__)

LIVE = (UploadState.ACTIVE, UploadState.COMPLETED)
TOMBSTONES = (UploadState.TERMINATED, UploadState.EXPIRED)
# Ids per IN (...) query: well under SQLite's bound-parameter limit.
QUERY_BATCH = 500
# The lock a run holds: a run-lock name (locking.RUN_LOCKS), which no request can lock.
RUN_LOCK = CLEANUP_RUN_LOCK


@dataclass(frozen=True)
class Retention:
    """How long things are kept; see config.py for the defaults and why."""

    tombstone_ttl: timedelta
    orphan_grace: timedelta
    keep_completed: timedelta | None = None  # None: completed uploads stay forever
    # Webhook events delivered (or failed for good) longer ago than this are deleted.
    events: timedelta = timedelta(days=7)

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        keep = settings.keep_completed
        return cls(
            tombstone_ttl=timedelta(seconds=settings.tombstone_ttl),
            orphan_grace=timedelta(seconds=settings.orphan_grace),
            keep_completed=None if keep is None else timedelta(seconds=keep),
            events=timedelta(seconds=settings.event_retention),
        )


@dataclass(frozen=True)
class Failure:
    upload_id: str
    action: str  # the Report field it was meant for
    error: str


@dataclass
class Report:
    """Upload ids per outcome. In a dry run: what a real run would have done."""

    dry_run: bool = False
    running_elsewhere: bool = False  # another cleanup held the run lock: nothing done
    finished: list[str] = field(default_factory=list)  # finishes left due, run now
    expired: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    orphan_locks: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # busy: left for the next run
    failures: list[Failure] = field(default_factory=list)
    events_trimmed: int = 0  # webhook events past their retention, deleted

    OUTCOMES: ClassVar[tuple[str, ...]] = (  # what a run removes
        "expired",
        "completed",
        "gone",
        "purged",
        "orphan_files",
        "orphan_locks",
    )

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def idle(self) -> bool:
        """Nothing done, nothing skipped, nothing failed: nothing worth telling."""
        return not (
            self.running_elsewhere
            or self.finished
            or self.skipped
            or self.failures
            or self.events_trimmed
            or any(self.counts().values())
        )

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in self.OUTCOMES}

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "ok": self.ok,
            "running_elsewhere": self.running_elsewhere,
            "counts": self.counts(),
            **{name: list(getattr(self, name)) for name in self.OUTCOMES},
            "finished": list(self.finished),
            "skipped": list(self.skipped),
            "failures": [vars(failure) for failure in self.failures],
            "events_trimmed": self.events_trimmed,
        }


class Cleaner:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        store: UploadStore,
        locker: Locker,
        clock: Callable[[], datetime],
        resume_finish: Callable[[str], bool],
        retention: Retention,
        dry_run: bool = False,
        outbox: Outbox | None = None,
        quota: Quota | None = None,
    ):
        self.sessions = sessions
        self.store = store
        self.locker = locker
        self.clock = clock
        # UploadService.resume_finish: a finish left due runs as a request would run it.
        self.resume_finish = resume_finish
        self.retention = retention
        self.dry_run = dry_run
        # Where an expiry's post-expire webhook event is recorded (outbox.py).
        self.outbox = outbox or Outbox()
        # Frees what an upload held of its quota when it becomes a tombstone (quota.py).
        self.quota = quota

    def run(self) -> Report:
        report = Report(dry_run=self.dry_run)
        if self.dry_run:  # changes nothing, so it needn't wait its turn
            self._run(report)
            return report
        try:
            with self.locker.hold(RUN_LOCK, timeout=0):
                self._run(report)
        except UploadLocked:
            log.info("cleanup: another cleanup is running; this one did nothing")
            report.running_elsewhere = True
        return report

    def _run(self, report: Report) -> None:
        # One "now" for the whole run: every cutoff and re-check agrees on it.
        now = self.clock()
        # Each id is handled once per run, by the first step that wants it.
        seen: set[str] = set()
        self._finish(report)
        self._expire(now, report, seen)
        self._retire_completed(now, report, seen)
        self._bury_gone(now, report, seen)
        self._purge_tombstones(now, report, seen)
        self._sweep_orphans(now, report, seen)
        self._trim_events(now, report)

    # -- the steps --------------------------------------------------------------------

    def _finish(self, report: Report) -> None:
        """Completed uploads whose finish broke off (a crash between the last byte and
        the end of the finish sequence; see ``UploadService._complete``) finish now, as
        the next request to them would. Not counted in ``seen``: they live on."""
        query = select(Upload.id).where(
            Upload.state == UploadState.COMPLETED, Upload.finished_at.is_(None)
        )
        for upload_id in self._ids(query):
            if self.dry_run:
                report.finished.append(upload_id)
                continue
            try:
                if self.resume_finish(upload_id):
                    report.finished.append(upload_id)
            except UploadLocked:
                report.skipped.append(upload_id)  # its holder finishes it
            except Exception as error:  # one bad upload must not stop the rest
                log.exception("cleanup: finishing upload %s failed", upload_id)
                report.failures.append(Failure(upload_id, "finished", repr(error)))

    def _expire(self, now: datetime, report: Report, seen: set[str]) -> None:
        def still_due(row: Upload | None) -> bool:
            return row is not None and row.expired_at(now)

        query = select(Upload.id).where(Upload.expired_by(now))
        for upload_id in self._unseen(self._ids(query), seen):
            self._attempt(
                upload_id, report, "expired", lambda i: self._bury(i, now, still_due, "expired")
            )

    def _retire_completed(self, now: datetime, report: Report, seen: set[str]) -> None:
        keep = self.retention.keep_completed
        if keep is None:
            return
        cutoff = now - keep

        # A completed partial upload stays while a live final names it: the final's
        # bytes are read through it.
        awaited = named_by_live_finals()

        def still_due(row: Upload | None) -> bool:
            session = object_session(row) if row is not None else None
            return (
                row is not None
                and session is not None
                and row.state is UploadState.COMPLETED
                and row.completed_at is not None
                and row.completed_at <= cutoff
                and session.scalar(awaited.where(UploadPart.partial_id == row.id).limit(1)) is None
            )

        query = select(Upload.id).where(
            Upload.state == UploadState.COMPLETED,
            Upload.completed_at <= cutoff,
            Upload.id.not_in(awaited),
        )
        for upload_id in self._unseen(self._ids(query), seen):
            self._attempt(
                upload_id, report, "completed", lambda i: self._bury(i, now, still_due, "completed")
            )

    def _bury_gone(self, now: datetime, report: Report, seen: set[str]) -> None:
        # Rows first, then files: every row read here had its file before it was
        # inserted, so a row missing from the later listing really lost its data.
        live = self._ids(select(Upload.id).where(Upload.state.in_(LIVE)))
        stored = {upload_id for upload_id, _ in self.store.scan()}
        candidates = [upload_id for upload_id in live if upload_id not in stored]

        def still_due(row: Upload | None) -> bool:
            return row is not None and row.state in LIVE and self.store.size(row.id) is None

        for upload_id in self._unseen(candidates, seen):
            self._attempt(
                upload_id, report, "gone", lambda i: self._bury(i, now, still_due, "gone")
            )

    def _purge_tombstones(self, now: datetime, report: Report, seen: set[str]) -> None:
        cutoff = now - self.retention.tombstone_ttl
        # Not a partial whose bytes a live final reads: its row says they are in use.
        query = select(Upload.id).where(
            Upload.state.in_(TOMBSTONES),
            Upload.updated_at <= cutoff,
            Upload.id.not_in(named_by_live_finals()),
        )

        def purge(upload_id: str) -> bool:
            with self.sessions.begin() as session:
                row = session.get(Upload, upload_id)
                if (
                    row is None
                    or row.state not in TOMBSTONES
                    or row.updated_at > cutoff
                    or partial_in_use(session, upload_id)
                ):
                    self._forget_if_dead(upload_id, row)
                    return False
                self._release(session, row)  # a kept partial's, freed when its bytes go
                session.delete(row)
            # Leftovers of a crash between a tombstone's commit and its data's removal.
            self._drop_data(upload_id)
            return True

        for upload_id in self._unseen(self._ids(query), seen):
            self._attempt(upload_id, report, "purged", purge)

    def _sweep_orphans(self, now: datetime, report: Report, seen: set[str]) -> None:
        # Files first, then rows: a row inserted after the listing makes its file live
        # (it is young, so the grace would have spared it anyway).
        old = now - self.retention.orphan_grace
        files = {i: when for i, when in self.store.scan() if is_upload_id(i)}
        # Not the run lock's own file, nor anything else no upload could have made.
        locks = {i: when for i, when in self.locker.scan() if is_upload_id(i)}
        states = self._states(files.keys() | locks.keys())
        in_use = set(self._ids(named_by_live_finals()))

        def stray(upload_id: str, modified_at: datetime) -> bool:
            state = states.get(upload_id)
            if upload_id in in_use:
                return False  # a tombstoned partial whose bytes a live final reads
            if state is None:
                return modified_at <= old
            # A tombstone's files are a crash's leftovers; a tombstone never comes back
            # to life, so they need no grace.
            return state in TOMBSTONES

        stray_files = {i for i, modified_at in files.items() if stray(i, modified_at)}
        stray_locks = {i for i, modified_at in locks.items() if stray(i, modified_at)}

        def remove(upload_id: str) -> bool:
            with self.sessions.begin() as session:
                row = session.get(Upload, upload_id)
                if (row is not None and row.state in LIVE) or partial_in_use(session, upload_id):
                    return False
                if row is not None:
                    self._release(session, row)  # a tombstoned partial no final reads now
            if upload_id in stray_files:
                self.store.delete(upload_id)
            # Always: taking the lock just now made a lock file if there was none.
            self.locker.forget(upload_id)
            return True

        for upload_id in self._unseen(sorted(stray_files | stray_locks), seen):
            removed = self._attempt(upload_id, report, None, remove)
            if removed:
                if upload_id in stray_files:
                    report.orphan_files.append(upload_id)
                if upload_id in stray_locks:
                    report.orphan_locks.append(upload_id)

    def _trim_events(self, now: datetime, report: Report) -> None:
        """Delete webhook events delivered, or failed for good, before the retention
        cutoff (a failed one's ``due_at`` is its last attempt). Pending events stay
        whatever their age: they are still owed to the receiver."""
        cutoff = now - self.retention.events
        done = or_(
            (Event.state == EventState.DELIVERED) & (Event.delivered_at <= cutoff),
            (Event.state == EventState.FAILED) & (Event.due_at <= cutoff),
        )
        with self.sessions.begin() as session:
            if self.dry_run:
                count = session.scalar(select(func.count()).select_from(Event).where(done))
                report.events_trimmed = int(count or 0)
                return
            result = session.execute(delete(Event).where(done))
            report.events_trimmed = int(cast("CursorResult[Any]", result).rowcount or 0)

    # -- helpers ----------------------------------------------------------------------

    def _bury(
        self,
        upload_id: str,
        now: datetime,
        still_due: Callable[[Upload | None], bool],
        reason: str,
    ) -> bool:
        """Turn a live row into an EXPIRED tombstone, then drop its data (lock held)."""
        with self.sessions.begin() as session:
            row = session.get(Upload, upload_id)
            if not still_due(row):
                # A write moved it on, or another cleanup got here first.
                self._forget_if_dead(upload_id, row)
                return False
            assert row is not None  # still_due said so
            row.state = UploadState.EXPIRED
            row.expires_at = None
            row.updated_at = now
            keep = partial_in_use(session, upload_id)
            self.outbox.record(session, "post-expire", UploadInfo.of(row), now, reason=reason)
            if not keep:
                self._release(session, row)
        if keep:
            # An expired partial named by a live (so unfinished) final: that final can
            # never complete now, but its bytes stay until no live final names them.
            self.locker.forget(upload_id)
        else:
            self._drop_data(upload_id)
        return True

    def _release(self, session: Session, row: Upload) -> None:
        if self.quota is not None:
            self.quota.release(session, row)

    def _forget_if_dead(self, upload_id: str, row: Upload | None) -> None:
        # Another cleanup removed the lock file before we took the lock, so taking it
        # made the file again; a dead upload needs none.
        if row is None or row.state in TOMBSTONES:
            self.locker.forget(upload_id)

    def _drop_data(self, upload_id: str) -> None:
        self.store.delete(upload_id)
        # Safe while held: any request that gets this lock later reads the tombstone.
        self.locker.forget(upload_id)

    def _attempt(
        self,
        upload_id: str,
        report: Report,
        outcome: str | None,
        act: Callable[[str], bool],
    ) -> bool:
        """Run ``act`` under the upload's lock; file the id under ``outcome`` if it did
        something. A busy upload is skipped; a failure is recorded and the run goes on."""
        if self.dry_run:
            if outcome is not None:
                getattr(report, outcome).append(upload_id)
            return True
        try:
            with self.locker.hold(upload_id, timeout=0):
                done = act(upload_id)
        except UploadLocked:
            log.debug("cleanup: upload %s busy, skipped", upload_id)
            report.skipped.append(upload_id)
            return False
        except Exception as error:  # one bad upload must not stop the rest
            log.exception("cleanup: upload %s failed (%s)", upload_id, outcome or "orphans")
            report.failures.append(Failure(upload_id, outcome or "orphans", repr(error)))
            return False
        if done:
            log.debug("cleanup: upload %s %s", upload_id, outcome or "orphaned")
            if outcome is not None:
                getattr(report, outcome).append(upload_id)
        return done

    def _ids(self, query: Executable) -> list[str]:
        with self.sessions.begin() as session:
            return list(session.scalars(query))

    def _states(self, upload_ids: Iterable[str]) -> dict[str, UploadState]:
        wanted = sorted(upload_ids)
        states: dict[str, UploadState] = {}
        with self.sessions.begin() as session:
            for start in range(0, len(wanted), QUERY_BATCH):
                batch = wanted[start : start + QUERY_BATCH]
                query = select(Upload.id, Upload.state).where(Upload.id.in_(batch))
                states.update({upload_id: state for upload_id, state in session.execute(query)})
        return states

    @staticmethod
    def _unseen(upload_ids: Iterable[str], seen: set[str]) -> list[str]:
        fresh = [upload_id for upload_id in upload_ids if upload_id not in seen]
        seen.update(fresh)
        return fresh
