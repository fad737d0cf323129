"""Watch the PATCH bodies being read in this process, and end those that must stop.

A PATCH ends early, keeping every byte it got, when:
- its client sent nothing for ``read_timeout`` seconds (gone without closing);
- its client sent fewer than ``min_rate`` bytes/s over a ``rate_window`` (after the
  first ``rate_grace`` seconds): a body trickled a byte at a time must not hold a
  thread for hours (README "Slow clients");
- another request waits for the upload's lock and this body has stalled for
  ``stall_grace`` seconds: a half-open connection must not hold an upload hostage,
  while a client that is still sending keeps its upload;
- the server is shutting down (SIGTERM), so the offset is recorded before it goes.

Ending a body means calling its ``stop`` callable, which (under gunicorn) shuts the
socket's read side: the blocked read returns end-of-file, the body reader raises
``BodyIncomplete``, and ``track`` turns that into the reason's answer (``ANSWERS``: a
503 with Retry-After, which the clients we ship retry), so the service records what
landed, releases the lock and the client resumes. The watcher thread starts with the
first tracked body, so nothing runs at import time.

The whole mechanism, by place: the policy (when, and the answer) is here; the stop
itself is ``connection.body_stopper`` (the socket); the reader that then sees
end-of-file is ``body.read_body``; the views join the three in ``_append``; the one
piece of server wiring is gunicorn.conf.py's ``post_worker_init``, which tells the
monitor when the worker is shutting down (``stop_all_when``).

"Silent" means the body reader is waiting on the client: time the server spends on a
block it already has (an S3 part upload, a slow write) is the server's, never the
client's, and neither the read timeout nor a takeover counts it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field

from .errors import BodyCut, BodyIncomplete
from .locking import Locker
from .progress import Flow

log = logging.getLogger(__name__)

# A waiting request takes over a body that has been silent this long. Loopback and LAN
# clients never pause this long mid-body; a half-open connection is silent forever.
DEFAULT_STALL_GRACE = 1.0
WATCH_INTERVAL = 0.1


@dataclass(frozen=True)
class Answer:
    """What a client is told when the server ended its body for one reason."""

    message: str
    retry_after: int  # seconds

    def error(self) -> BodyCut:
        return BodyCut(self.message, retry_after=self.retry_after)


#: Why the server ends a body (the ``kind`` also labels the stopped-bodies metric) and
#: what the client gets: every row is a 503 with Retry-After and the kept offset, an
#: answer the CLI and tus-js-client retry. A new reason to stop is a new row here.
ANSWERS: dict[str, Answer] = {
    # A graceful stop or reload: on SIGHUP the new workers are already accepting.
    "shutdown": Answer("the server is restarting; resume from Upload-Offset", 1),
    "read_timeout": Answer("no body bytes came for too long; resume from Upload-Offset", 1),
    # The stale holder's client is usually gone; if it is not, it resumes behind the
    # request that took over (which it may be itself, retrying on a new connection).
    "takeover": Answer("another request took this upload over; resume from Upload-Offset", 1),
    # A body trickled below UPLOADSVC_MIN_RATE: an honest client on a bad link resumes
    # and gets a fresh grace; a slowloris only gets to hold a thread for a window.
    "too_slow": Answer("the body came too slowly; resume from Upload-Offset", 5),
}


@dataclass(eq=False)
class _Transfer:
    upload_id: str
    stop: Callable[[], None]
    # When the body reader began waiting on the client; None while the server works on
    # the block it got (that time is never the client's silence).
    waiting_since: float | None
    kind: str | None = field(default=None)  # a key of ANSWERS once stopped
    stopped: str | None = field(default=None)
    # The minimum rate's window: bytes received in all, and at the window's start
    # (None until the grace is over).
    received: int = 0
    window_start: float = 0.0
    window_bytes: int | None = None
    # Set when the body's reading ends, under ``guard``: the watcher stops a transfer
    # only under the same lock and only before then, so a stop never reaches a
    # connection that has moved on to its next request.
    ended: bool = field(default=False)
    guard: threading.Lock = field(default_factory=threading.Lock)
    # For the operator view (``flows``): the upload's offset where the body began, a
    # serial that tells bodies apart, and when the last chunk came (monotonic).
    start: int = 0
    serial: int = 0
    started: float = 0.0
    last_byte: float | None = None


class TransferMonitor:
    def __init__(
        self,
        locker: Locker,
        *,
        read_timeout: float,
        stall_grace: float = DEFAULT_STALL_GRACE,
        interval: float = WATCH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        on_bytes: Callable[[int], None] = lambda count: None,
        on_stop: Callable[[str], None] = lambda kind: None,
        min_rate: int = 0,
        rate_window: float = 20.0,
        rate_grace: float = 10.0,
    ) -> None:
        self.locker = locker
        self.read_timeout = read_timeout
        self.stall_grace = stall_grace
        self.interval = interval
        self.clock = clock
        self.on_bytes = on_bytes
        self.on_stop = on_stop
        self.min_rate = min_rate  # bytes/s; 0: no minimum
        self.rate_window = rate_window
        self.rate_grace = rate_grace
        self._active: set[_Transfer] = set()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._shutting_down: Callable[[], bool] = lambda: False
        self._serials = itertools.count(1)

    def stop_all_when(self, shutting_down: Callable[[], bool]) -> None:
        """Install the server's "am I shutting down?" check (gunicorn.conf.py does)."""
        self._shutting_down = shutting_down

    def shutting_down(self) -> bool:
        """Whether the server is stopping (long responses, like the operator view's
        event stream, end then too)."""
        return self._shutting_down()

    def flows(self) -> list[Flow]:
        """The bodies being read now, for the progress reporter (progress.py)."""
        with self._guard:
            active = list(self._active)
        return [
            Flow(t.serial, t.upload_id, t.start, t.received, t.started, t.last_byte) for t in active
        ]

    def track(
        self, upload_id: str, chunks: Iterable[bytes], stop: Callable[[], None], start: int = 0
    ) -> Generator[bytes]:
        """Yield ``chunks``, watched from the first read (the lock is held by then)
        until the body ends. ``start``: the offset the body is written at."""
        started = self.clock()
        transfer = _Transfer(
            upload_id,
            stop,
            started,
            window_start=started + self.rate_grace,
            start=start,
            serial=next(self._serials),
            started=started,
        )
        self._add(transfer)
        blocks = iter(chunks)
        try:
            while True:
                transfer.waiting_since = self.clock()
                try:
                    chunk = next(blocks)
                except StopIteration:
                    return
                except BodyIncomplete as error:
                    if transfer.kind is not None:  # we ended it: the client may go on
                        raise ANSWERS[transfer.kind].error() from error
                    raise
                finally:
                    transfer.waiting_since = None
                transfer.received += len(chunk)
                transfer.last_byte = self.clock()
                self.on_bytes(len(chunk))
                yield chunk
        finally:
            with transfer.guard:
                transfer.ended = True
            with self._guard:
                self._active.discard(transfer)
            if transfer.stopped:
                log.info("upload %s: body ended early (%s)", upload_id, transfer.stopped)

    def _add(self, transfer: _Transfer) -> None:
        with self._guard:
            self._active.add(transfer)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._watch, name="uploadsvc-transfers", daemon=True
                )
                self._thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._guard:
                active = list(self._active)
            for transfer in active:
                kind, reason = self._reason_to_stop(transfer)
                if reason and not transfer.stopped:
                    with transfer.guard:
                        if transfer.ended:
                            continue
                        transfer.kind = kind
                        transfer.stopped = reason
                        with contextlib.suppress(OSError):  # the connection is already gone
                            transfer.stop()
                    self.on_stop(kind)

    def _reason_to_stop(self, transfer: _Transfer) -> tuple[str, str | None]:
        """(kind, reason): why the transfer must stop, or a None reason."""
        if self._shutting_down():
            return "shutdown", "server shutting down"
        waiting_since = transfer.waiting_since
        idle = 0.0 if waiting_since is None else self.clock() - waiting_since
        if idle >= self.read_timeout:
            return "read_timeout", f"no bytes for {self.read_timeout:g} s"
        if idle >= self.stall_grace and self.locker.release_requested(transfer.upload_id):
            return "takeover", "stalled, and another request wants the upload"
        if self.min_rate and self._too_slow(transfer):
            return "too_slow", f"slower than {self.min_rate} B/s over {self.rate_window:g} s"
        return "", None

    def _too_slow(self, transfer: _Transfer) -> bool:
        """Whether the window that just ended got fewer than ``min_rate`` bytes/s; then
        the next window starts. Called by the watcher thread only."""
        now = self.clock()
        if now < transfer.window_start:
            return False
        if transfer.window_bytes is None:  # the grace just ended: the first window starts
            transfer.window_start, transfer.window_bytes = now, transfer.received
            return False
        elapsed = now - transfer.window_start
        if elapsed < self.rate_window:
            return False
        if transfer.received - transfer.window_bytes < self.min_rate * self.rate_window:
            return True
        transfer.window_start, transfer.window_bytes = now, transfer.received
        return False
