"""Progress the operator view shows, written to the registry every worker and host shares.

The registry's ``Upload.offset`` moves only when a PATCH ends (bytes durably stored), so
a long PATCH would look frozen from any other worker. A reporter thread per worker
process writes, about once a second and in one short transaction for all of them:

- a row per body streaming now (``UploadProgress``: position, rate, last byte), for
  bodies older than one interval only, so small PATCHes never cause a write; the row
  goes when the body ends;
- the bytes received since the previous report, added to this minute's
  ``ReceivedPerMinute`` row (the view's chart);
- failures the request threads noted (``failed``): a checksum mismatch, a full disk,
  and the reasons other parts add (``models.FAILURE_REASONS``).

The request threads only count: ``count`` adds a chunk's size under a lock, ``failed``
appends to a bounded queue; neither touches the registry. The bodies themselves come
from ``flows``, the transfer monitor's snapshot (transfers.py), read by the reporter.
A worker that dies loses at most its last second of counts; its rows go stale
(``reported_at``) and readers ignore them, and the reporter of a live worker trims them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Insert, delete, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from .errors import (
    ChecksumMismatch,
    DigestMismatch,
    InsufficientStorage,
    StorageFailed,
    TusError,
    TypeRefused,
    UploadRefused,
)
from .models import FAILURE_REASONS, ReceivedPerMinute, UploadFailure, UploadProgress

log = logging.getLogger(__name__)

REPORT_INTERVAL = 1.0
# A row not refreshed for this long belongs to a worker that died mid-body.
STALE_AFTER = timedelta(seconds=10)
TRIM_EVERY = 60.0
KEEP_MINUTES = timedelta(hours=2)
KEEP_FAILURES = timedelta(days=1)
MAX_QUEUED_FAILURES = 1000
# Bodies one worker reports per interval, the most recently active first.
MAX_ROWS = 32
DETAIL_LENGTH = 200

# The errors the tus views see that count as a failure of the upload, by reason.
_ERROR_REASONS: tuple[tuple[type[TusError], str], ...] = (
    (ChecksumMismatch, "checksum"),
    (InsufficientStorage, "disk_full"),
    (StorageFailed, "storage"),
    (TypeRefused, "type"),
    (DigestMismatch, "digest"),
    (UploadRefused, "type"),  # a gate or check hook rejected it at the finish
)


def failure_reason(error: TusError) -> str | None:
    """The ``FAILURE_REASONS`` entry a tus error counts as, or None (not a failure an
    operator watches: a wrong offset, a busy lock, a bad header...)."""
    for kind, reason in _ERROR_REASONS:
        if isinstance(error, kind):
            return reason
    # An error defined above this module (quota.QuotaExceeded) names its own reason.
    watched: str | None = getattr(error, "watched_as", None)
    return watched


@dataclass(frozen=True)
class Flow:
    """A body being read in this process, as the transfer monitor sees it now."""

    serial: int  # unique per body in this process
    upload_id: str
    start: int  # the upload's offset when the body began
    received: int
    started: float  # monotonic seconds
    last_byte: float | None  # monotonic seconds; None before the first byte


@dataclass
class _Reported:
    received: int
    at: float  # monotonic


class ProgressReporter:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        flows: Callable[[], list[Flow]] = list,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
        interval: float = REPORT_INTERVAL,
        on_failure: Callable[[str], None] = lambda reason: None,
        on_flows: Callable[[int], None] = lambda count: None,
    ) -> None:
        self.sessions = sessions
        self.flows = flows
        self.clock = clock
        self.monotonic = monotonic
        self.interval = interval
        self.on_failure = on_failure
        self.on_flows = on_flows
        self._pending = 0
        self._failures: deque[tuple[str | None, str, str, datetime]] = deque(
            maxlen=MAX_QUEUED_FAILURES
        )
        self._lock = threading.Lock()
        self._reported: dict[int, _Reported] = {}
        self._rows: dict[int, str] = {}  # serial -> upload id, of the rows this process wrote
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._trimmed = 0.0
        # False: no thread; whoever built it calls ``report`` (tests do).
        self.autostart = True
        self._closed = threading.Event()

    # -- called by request threads: counting only -------------------------------------

    def count(self, received: int) -> None:
        """A body chunk of ``received`` bytes arrived (any body, any size)."""
        with self._lock:
            self._pending += received
        if self._thread is None:
            self._start()

    def failed(self, upload_id: str | None, reason: str, detail: str = "") -> None:
        """Note a failure of ``upload_id`` (``reason`` from ``FAILURE_REASONS``); it is
        written with the next report."""
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason!r}")
        self.on_failure(reason)
        self._failures.append((upload_id, reason, detail[:DETAIL_LENGTH], self.clock()))
        if self._thread is None:
            self._start()

    def failed_with(self, upload_id: str | None, error: TusError) -> None:
        """``failed`` for a tus error, when it is one an operator watches."""
        reason = failure_reason(error)
        if reason is not None:
            self.failed(upload_id, reason, str(error))

    # -- the reporter thread ----------------------------------------------------------

    def close(self) -> None:
        """Stop the thread (``close_app``): no report after the registry is gone."""
        self._closed.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _start(self) -> None:
        if not self.autostart or self._closed.is_set():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if self._pid != os.getpid():  # forked: the parent's rows aren't ours
                self._pid, self._reported, self._rows = os.getpid(), {}, {}
            self._thread = threading.Thread(
                target=self._run, name="uploadsvc-progress", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._closed.wait(self.interval):
            try:
                self.report()
            except Exception as error:
                # The registry is busy or its disk full: the counts wait for the next
                # report. One line, no traceback: the logs must stay about uploads.
                log.warning(
                    "progress report failed (%s); retrying",
                    (str(error).splitlines() or [type(error).__name__])[0],
                )

    def report(self) -> None:
        """Write one report: what the thread does every interval (tests call it)."""
        now, mono = self.clock(), self.monotonic()
        flows = self.flows()
        self.on_flows(len(flows))
        # The most recently active bodies, at most MAX_ROWS: a crowd of trickled bodies
        # (slowloris) must not turn the report into a big write every second. The others
        # show from the registry's own columns (offset, updated_at) meanwhile.
        long = [flow for flow in flows if mono - flow.started >= self.interval]
        long.sort(key=lambda flow: flow.last_byte or flow.started, reverse=True)
        shown = long[:MAX_ROWS]
        rows = [self._row(flow, now, mono) for flow in shown]
        current = {flow.serial for flow in shown}
        ended = {serial: uid for serial, uid in self._rows.items() if serial not in current}
        with self._lock:
            pending, self._pending = self._pending, 0
            failures = list(self._failures)
            self._failures.clear()
        trim = mono - self._trimmed >= TRIM_EVERY
        if not (rows or ended or pending or failures or trim):
            return
        try:
            with self.sessions.begin() as session:
                if rows:
                    session.execute(_upsert(session, UploadProgress, ["upload_id"], rows))
                if ended:
                    mine = [
                        (upload_id, self._stream(serial)) for serial, upload_id in ended.items()
                    ]
                    session.execute(
                        delete(UploadProgress).where(
                            tuple_(UploadProgress.upload_id, UploadProgress.stream).in_(mine)
                        )
                    )
                if pending:
                    minute = now.replace(second=0, microsecond=0)
                    session.execute(
                        _upsert(
                            session,
                            ReceivedPerMinute,
                            ["minute"],
                            [{"minute": minute, "received": pending}],
                            add="received",
                        )
                    )
                session.add_all(
                    UploadFailure(upload_id=upload_id, reason=reason, detail=detail, at=at)
                    for upload_id, reason, detail, at in failures
                )
                if trim:
                    self._trim(session, now)
        except BaseException:
            with self._lock:
                self._pending += pending
            raise
        if trim:
            self._trimmed = mono
        for serial in ended:
            self._rows.pop(serial, None)
            self._reported.pop(serial, None)
        for flow in shown:
            self._rows[flow.serial] = flow.upload_id
            self._reported[flow.serial] = _Reported(flow.received, mono)

    def _stream(self, serial: int) -> str:
        return f"{self._pid}:{serial}"

    def _row(self, flow: Flow, now: datetime, mono: float) -> dict[str, Any]:
        before = self._reported.get(flow.serial)
        since, base = (before.at, before.received) if before else (flow.started, 0)
        elapsed = max(mono - since, 1e-3)
        last = flow.last_byte if flow.last_byte is not None else flow.started
        return {
            "upload_id": flow.upload_id,
            "stream": self._stream(flow.serial),
            "position": flow.start + flow.received,
            "rate": int((flow.received - base) / elapsed),
            "started_at": now - timedelta(seconds=mono - flow.started),
            "last_byte_at": now - timedelta(seconds=max(mono - last, 0.0)),
            "reported_at": now,
        }

    @staticmethod
    def _trim(session: Session, now: datetime) -> None:
        session.execute(
            delete(ReceivedPerMinute).where(ReceivedPerMinute.minute < now - KEEP_MINUTES)
        )
        session.execute(delete(UploadFailure).where(UploadFailure.at < now - KEEP_FAILURES))
        session.execute(
            delete(UploadProgress).where(UploadProgress.reported_at < now - STALE_AFTER)
        )


def _upsert(
    session: Session,
    model: Any,
    keys: list[str],
    rows: list[dict[str, Any]],
    *,
    add: str | None = None,
) -> Insert:
    """INSERT ... ON CONFLICT DO UPDATE on SQLite and PostgreSQL alike: the row's columns
    replaced, or ``add`` summed with what is there (many workers add to one minute)."""
    table = model.__table__
    if session.get_bind().dialect.name == "postgresql":
        pg = postgresql.insert(table).values(rows)
        changes = _changes(table, pg.excluded, rows, keys, add)
        return pg.on_conflict_do_update(index_elements=keys, set_=changes)
    lite = sqlite.insert(table).values(rows)
    changes = _changes(table, lite.excluded, rows, keys, add)
    return lite.on_conflict_do_update(index_elements=keys, set_=changes)


def _changes(
    table: Any, excluded: Any, rows: list[dict[str, Any]], keys: list[str], add: str | None
) -> dict[str, Any]:
    if add is not None:
        return {add: table.c[add] + excluded[add]}
    return {name: excluded[name] for name in rows[0] if name not in keys}
