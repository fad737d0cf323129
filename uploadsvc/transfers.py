"""Watch the PATCH bodies being read in this process, and end those that must stop.

A PATCH ends early, keeping every byte it got, when:
- its client sent nothing for ``read_timeout`` seconds (gone without closing);
- another request waits for the upload's lock and this body has stalled for
  ``stall_grace`` seconds: a half-open connection must not hold an upload hostage,
  while a client that is still sending keeps its upload;
- the server is shutting down (SIGTERM), so the offset is recorded before it goes.

Ending a body means calling its ``stop`` callable, which (under gunicorn) shuts the
socket's read side: the blocked read returns end-of-file, the body reader raises
``BodyIncomplete``, and the service records what landed and releases the lock. The
watcher thread starts with the first tracked body, so nothing runs at import time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field

from .locking import Locker

log = logging.getLogger(__name__)

# A waiting request takes over a body that has been silent this long. Loopback and LAN
# clients never pause this long mid-body; a half-open connection is silent forever.
DEFAULT_STALL_GRACE = 1.0
WATCH_INTERVAL = 0.1


@dataclass(eq=False)
class _Transfer:
    upload_id: str
    stop: Callable[[], None]
    last_progress: float
    stopped: str | None = field(default=None)
    # Set when the body's reading ends, under ``guard``: the watcher stops a transfer
    # only under the same lock and only before then, so a stop never reaches a
    # connection that has moved on to its next request.
    ended: bool = field(default=False)
    guard: threading.Lock = field(default_factory=threading.Lock)


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
    ) -> None:
        self.locker = locker
        self.read_timeout = read_timeout
        self.stall_grace = stall_grace
        self.interval = interval
        self.clock = clock
        self.on_bytes = on_bytes
        self.on_stop = on_stop
        self._active: set[_Transfer] = set()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._shutting_down: Callable[[], bool] = lambda: False

    def stop_all_when(self, shutting_down: Callable[[], bool]) -> None:
        """Install the server's "am I shutting down?" check (gunicorn.conf.py does)."""
        self._shutting_down = shutting_down

    def track(
        self, upload_id: str, chunks: Iterable[bytes], stop: Callable[[], None]
    ) -> Generator[bytes]:
        """Yield ``chunks``, watched from the first read (the lock is held by then)
        until the body ends."""
        transfer = _Transfer(upload_id, stop, self.clock())
        self._add(transfer)
        try:
            for chunk in chunks:
                transfer.last_progress = self.clock()
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
                        transfer.stopped = reason
                        with contextlib.suppress(OSError):  # the connection is already gone
                            transfer.stop()
                    self.on_stop(kind)

    def _reason_to_stop(self, transfer: _Transfer) -> tuple[str, str | None]:
        """(kind, reason): why the transfer must stop, or a None reason."""
        if self._shutting_down():
            return "shutdown", "server shutting down"
        idle = self.clock() - transfer.last_progress
        if idle >= self.read_timeout:
            return "read_timeout", f"no bytes for {self.read_timeout:g} s"
        if idle >= self.stall_grace and self.locker.release_requested(transfer.upload_id):
            return "takeover", "stalled, and another request wants the upload"
        return "", None
