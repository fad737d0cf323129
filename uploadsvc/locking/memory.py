"""Per-upload locks in one process's memory: the ``Locker`` double for tests.

Modelled on tusd's memorylocker, and kept to the file locker's contract
(tests/test_locker_contract.py runs the same tests against both): one holder per
upload whatever the thread (not reentrant), a wait that leaves a release request its
holder can see, ``UploadLocked`` when the wait runs out, and lock resources (made by
the first hold, dropped by ``forget``) that ``scan`` lists.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from .. import protocol
from ..errors import UploadLocked


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MemoryLocker:
    def __init__(self, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.clock = clock  # when lock resources were made (``scan``)
        self._held: set[str] = set()
        self._waiting: dict[str, int] = {}  # upload id -> requests waiting for it
        self._made: dict[str, datetime] = {}
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, upload_id: str, *, timeout: float) -> Iterator[None]:
        if not protocol.is_upload_id(upload_id):
            raise ValueError(f"unsafe upload id {upload_id!r}")
        with self._changed:
            self._made.setdefault(upload_id, self.clock())
            if upload_id in self._held:
                self._wait(upload_id, timeout)
            self._held.add(upload_id)
        try:
            yield
        finally:
            with self._changed:
                self._held.discard(upload_id)
                self._changed.notify_all()

    def _wait(self, upload_id: str, timeout: float) -> None:
        """Busy: stand as a release request while waiting (condition held)."""
        if timeout <= 0:
            raise UploadLocked()
        deadline = time.monotonic() + timeout
        self._waiting[upload_id] = self._waiting.get(upload_id, 0) + 1
        try:
            while upload_id in self._held:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise UploadLocked()
                self._changed.wait(left)
        finally:
            self._waiting[upload_id] -= 1
            if not self._waiting[upload_id]:
                del self._waiting[upload_id]

    def still_held(self, upload_id: str) -> bool:
        with self._changed:
            return upload_id in self._held

    def release_requested(self, upload_id: str) -> bool:
        with self._changed:
            return upload_id in self._waiting

    def forget(self, upload_id: str) -> None:
        with self._changed:
            self._made.pop(upload_id, None)

    def scan(self) -> list[tuple[str, datetime]]:
        with self._changed:
            return sorted(self._made.items())
