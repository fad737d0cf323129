"""The webhook dispatcher: delivers the outbox's events (outbox.py), signed, at least once.

A ``Dispatcher`` runs in each gunicorn worker (a thread, started and stopped by
gunicorn.conf.py) and in ``flask webhooks deliver``. Its loop: find pending events that
are due, claim each one with a lease, POST it, record the outcome; sleep (bounded) when
there is nothing to do, or until woken (the service's events wake it after their commit).

- **Claims.** ``UPDATE events SET claimed_until = now + LEASE ... WHERE seq = ? AND
  state = 'pending' AND due_at <= now AND (claimed_until IS NULL OR claimed_until <
  now)``: whoever's UPDATE changes the row owns the attempt, on SQLite (one writer at a
  time) and PostgreSQL (the second UPDATE waits for the first, then finds the row
  claimed) alike, so workers and hosts never attempt one event at once. A dispatcher
  that dies mid-attempt (SIGKILL) leaves its claim to expire: then another attempts
  it again, with the same event id.
- **Order.** One upload's events go out in the order they were recorded: an event is
  not due while an earlier one of its upload is pending (a post-finish waits for its
  post-create's retries). Events of different uploads have no order.
- **Outcome.** Only a 2xx answer is a delivery; a 3xx is not followed (the event would
  land wherever the receiver points) and, like a 4xx, 5xx, a timeout or a refused
  connection, is a failed attempt: the event is due again after ``backoff(attempts)``
  (1 s, 2 s, 4 s ... capped at BACKOFF_CAP), and after MAX_ATTEMPTS it is ``failed``
  (``flask webhooks replay`` sends it again).
- **Signature.** Each request carries ``X-Uploadsvc-Event-Id`` (stable across
  retries), ``X-Uploadsvc-Timestamp`` (Unix seconds, of this attempt) and, when a secret
  is set, ``X-Uploadsvc-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``.

Nothing here holds a transaction open across an HTTP request: claim, post, record are
three steps, so a slow receiver delays only its own deliveries, never an upload.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from .models import Event, EventState

log = logging.getLogger(__name__)

# Seconds a request's socket operations may each take (connect, send, the answer's head).
TIMEOUT = 5.0
# How long a claim keeps other dispatchers off an event: far above an attempt's
# TIMEOUT, so only a dead dispatcher's claim ever runs out.
LEASE = timedelta(seconds=60)
# Attempts before an event is failed for good, and the backoff between them: 1 s, then
# doubling, capped; 15 attempts span about 33 minutes.
MAX_ATTEMPTS = 15
BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
# Events claimed per look at the outbox, and seconds an idle dispatcher waits before
# looking again (it is woken at once for its own process's events; this bounds the wait
# for events recorded elsewhere: another host, flask cleanup, a retry coming due).
BATCH = 50
IDLE_WAIT = 1.0
# Seconds a dispatcher waits after the registry failed (unreachable, locked) before it
# tries again, doubling up to ERROR_WAIT_CAP: a dead database costs a log line now and
# then, not one per second.
ERROR_WAIT = 1.0
ERROR_WAIT_CAP = 30.0

SIGNATURE_HEADER = "X-Uploadsvc-Signature"
TIMESTAMP_HEADER = "X-Uploadsvc-Timestamp"
EVENT_ID_HEADER = "X-Uploadsvc-Event-Id"


def utcnow() -> datetime:
    return datetime.now(UTC)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Uploadsvc-Signature`` value: HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    message = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def backoff(attempts: int) -> timedelta:
    """How long after its ``attempts``-th failed attempt an event is due again."""
    return timedelta(seconds=min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class Attempt:
    """What one POST came to: ``status`` when the receiver answered, else ``error``."""

    status: int | None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        return f"answered {self.status}" if self.status is not None else f"failed: {self.error}"


@dataclass(frozen=True)
class _Claimed:
    seq: int
    id: str
    event: str
    upload_id: str
    payload: str
    attempts: int


def _claimer_name() -> str:
    """Who holds a claim (logs and ``flask webhooks list``): host, process, a nonce."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


class Dispatcher:
    """Delivers due outbox events to ``url``; see the module docstring."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        url: str,
        *,
        secret: str | None = None,
        readers: sessionmaker[Session] | None = None,
        clock: Callable[[], datetime] = utcnow,
        timeout: float = TIMEOUT,
        max_attempts: int = MAX_ATTEMPTS,
        idle_wait: float = IDLE_WAIT,
    ) -> None:
        self.sessions = sessions
        # Reads (the due events, the backlog) take no write lock (db.make_readers).
        self.readers = readers or sessions
        self.url = url
        self.secret = secret
        self.clock = clock
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.idle_wait = idle_wait
        self.name = _claimer_name()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._deadline: float | None = None  # monotonic; set by stop()
        self._thread: threading.Thread | None = None

    # -- the background loop ----------------------------------------------------------

    def wake(self, *_: Any) -> None:
        """Look at the outbox now (an event was just committed). Takes and ignores a
        hooks listener's arguments, so it can be one."""
        self._wake.set()

    def start(self) -> None:
        """Run the loop in a daemon thread (once; again after a fork, see gunicorn.conf.py)."""
        if self._thread is not None and self._thread.is_alive():
            return
        if self.secret is None:
            # Here, not at every create_app: `flask cleanup` from cron would mail it.
            log.warning(
                "UPLOADSVC_WEBHOOK_URL is set without UPLOADSVC_WEBHOOK_SECRET:"
                " webhook requests go unsigned"
            )
        self._stop.clear()
        self._deadline = None
        self.name = _claimer_name()  # a forked child is another claimer
        self._thread = threading.Thread(target=self._run, name="uploadsvc-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop: it keeps delivering what is due for up to ``timeout`` s (a
        completion just before a stop goes out now rather than from the next worker),
        then ends; returns when it has, or at the deadline. What is left stays pending
        in the outbox for the next dispatcher: stopping never loses an event."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # An attempt in flight may take up to its timeout past the deadline.
            thread.join(timeout + self.timeout + 1.0)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _run(self) -> None:
        error_wait = ERROR_WAIT
        while True:
            self._wake.clear()
            try:
                attempted = self.deliver_due()
                error_wait = ERROR_WAIT
            except Exception:
                # The registry is unreachable or locked: nothing is lost (the events
                # wait in it), so wait and look again, less often while it lasts.
                log.exception("webhooks: reading the outbox failed; retrying in %g s", error_wait)
                attempted = 0
                if self._stop.wait(error_wait):
                    return
                error_wait = min(ERROR_WAIT_CAP, error_wait * 2)
                continue
            if self._stop.is_set() and (attempted == 0 or self._past_deadline()):
                return
            if attempted == 0:
                self._wake.wait(self.idle_wait)

    # -- one pass ---------------------------------------------------------------------

    def deliver_due(self, limit: int = BATCH) -> int:
        """Claim and attempt up to ``limit`` events due now, oldest first; the number
        attempted (events another dispatcher claimed first don't count)."""
        now = self.clock()
        with self.readers.begin() as session:
            candidates = list(
                session.scalars(
                    select(Event.seq)
                    .where(
                        Event.state == EventState.PENDING,
                        Event.due_at <= now,
                        _unclaimed(now),
                        _first_of_its_upload(),
                    )
                    .order_by(Event.seq)
                    .limit(limit)
                )
            )
        attempted = 0
        for seq in candidates:
            if self._stop.is_set() and self._past_deadline():
                break
            claimed = self._claim(seq)
            if claimed is None:
                continue  # another dispatcher's now
            self._attempt(claimed)
            attempted += 1
        return attempted

    def drain(self, timeout: float = 10.0) -> bool:
        """Deliver in this thread until no event is pending (True), or ``timeout`` s
        passed (False): for tests, and operators who want the outbox empty now.
        Retries come due by the dispatcher's clock; waits between them are short."""
        deadline = time.monotonic() + timeout
        while True:
            self.deliver_due()
            if self.pending() == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def pending(self) -> int:
        with self.readers.begin() as session:
            count = session.scalar(
                select(func.count()).select_from(Event).where(Event.state == EventState.PENDING)
            )
        return int(count or 0)

    def _claim(self, seq: int) -> _Claimed | None:
        now = self.clock()
        with self.sessions.begin() as session:
            result = session.execute(
                update(Event)
                .where(
                    Event.seq == seq,
                    Event.state == EventState.PENDING,
                    Event.due_at <= now,
                    _unclaimed(now),
                    _first_of_its_upload(),
                )
                .values(claimed_until=now + LEASE, claimed_by=self.name)
                .execution_options(synchronize_session=False)
            )
            if cast("CursorResult[Any]", result).rowcount != 1:
                return None
            row = session.execute(
                select(Event.id, Event.event, Event.upload_id, Event.payload, Event.attempts).where(
                    Event.seq == seq
                )
            ).one()
        return _Claimed(seq, row.id, row.event, row.upload_id, row.payload, row.attempts)

    def _attempt(self, event: _Claimed) -> None:
        outcome = self.post(event.id, event.payload.encode())
        attempts = event.attempts + 1
        now = self.clock()
        values: dict[str, Any] = {
            "attempts": attempts,
            "claimed_until": None,
            "claimed_by": None,
            "last_status": outcome.status,
            "last_error": None if outcome.error is None else outcome.error[:200],
        }
        if outcome.delivered:
            values.update(state=EventState.DELIVERED, delivered_at=now, due_at=now)
            mine = Event.seq == event.seq  # delivered is delivered, whoever claims it now
        else:
            final = attempts >= self.max_attempts
            values.update(
                state=EventState.FAILED if final else EventState.PENDING,
                due_at=now if final else now + backoff(attempts),
            )
            # A claim that ran out (a very slow attempt) is someone else's now: theirs
            # records the outcome.
            mine = (
                (Event.seq == event.seq)
                & (Event.claimed_by == self.name)
                & (Event.state == EventState.PENDING)
            )
            level = logging.ERROR if final else logging.WARNING
            log.log(
                level,
                "webhook %s %s for upload %s: attempt %d %s%s",
                event.event,
                event.id,
                event.upload_id,
                attempts,
                outcome.describe(),
                "; failed for good (flask webhooks replay sends it again)" if final else "",
            )
        with self.sessions.begin() as session:
            session.execute(
                update(Event)
                .where(mine)
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    # -- the request ------------------------------------------------------------------

    def post(self, event_id: str, body: bytes) -> Attempt:
        """POST ``body`` to the webhook URL, signed now; what it came to."""
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "uploadsvc",
            EVENT_ID_HEADER: event_id,
            TIMESTAMP_HEADER: str(timestamp),
        }
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, timestamp, body)
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                return Attempt(int(response.status))
        except urllib.error.HTTPError as error:  # a 3xx (not followed), 4xx or 5xx
            error.close()
            return Attempt(int(error.code))
        except OSError as error:  # refused, reset, timed out, a name that won't resolve
            return Attempt(None, str(getattr(error, "reason", None) or error))


def _unclaimed(now: datetime) -> Any:
    return or_(Event.claimed_until.is_(None), Event.claimed_until < now)


def _first_of_its_upload() -> Any:
    """No earlier event of the same upload is still pending: one upload's events are
    delivered in the order they happened (a retried post-create holds back its
    post-finish), across workers and hosts too."""
    earlier = aliased(Event)
    return ~(
        select(earlier.seq)
        .where(
            earlier.upload_id == Event.upload_id,
            earlier.seq < Event.seq,
            earlier.state == EventState.PENDING,
        )
        .exists()
    )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is not a delivery, and is not followed: urllib would resend the event as a
    GET, to wherever the receiver points. Refused here, it surfaces as an ``HTTPError``:
    a failed attempt."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)
