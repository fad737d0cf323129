"""Per-upload locks as ``flock`` on ``<data dir>/locks/<id>.lock``.

The lock file stays on disk while the upload lives: unlinking it on release would let
a waiter holding the old inode and a newcomer creating a new one both "own" the lock.

A hold is an open, one ``flock``, an ``fstat`` and a close (which releases it), on a
descriptor of its own: flock conflicts between open file descriptions, so two threads
of one process exclude each other just as two processes do. The filelock package did
the same through about a millisecond of machinery per hold (singleton lookup, path
resolution, fork tracking), the largest share of a HEAD's time (PROFILES.md).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from ..directory import scan_files
from ..errors import UploadLocked
from ..protocol import is_upload_id
from . import is_lock_name

LOCK_SUFFIX = ".lock"
# A waiting request's ask to the holder to let go: a file beside the lock file, so it
# reaches a holder in any process on the host.
RELEASE_SUFFIX = ".release"
# Seconds a release request stands: longer than any lock wait (UPLOADSVC_LOCK_TIMEOUT).
RELEASE_REQUEST_TTL = 30.0
# Seconds between tries while waiting: a client resuming right after its dropped PATCH
# waits about this long for the lock the PATCH just freed.
POLL_INTERVAL = 0.005
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class FileLocker:
    def __init__(
        self, directory: Path, *, on_wait: Callable[[float, bool], None] | None = None
    ) -> None:
        self.directory = directory
        # Told of every wait for a busy lock: (seconds waited, whether it was acquired).
        self.on_wait = on_wait
        directory.mkdir(parents=True, exist_ok=True)
        self._held: set[str] = set()  # upload ids this process holds (one holder each)
        self._guard = threading.Lock()

    def _path(self, upload_id: str) -> Path:
        # Upload ids and run-lock names only: either is a safe path component.
        if not is_lock_name(upload_id):
            raise ValueError(f"unsafe lock name {upload_id!r}")
        return self.directory / f"{upload_id}{LOCK_SUFFIX}"

    @contextmanager
    def hold(self, upload_id: str, *, timeout: float) -> Iterator[None]:
        path = str(self._path(upload_id))
        fd = _try_lock(path)
        if fd is None:
            fd = self._wait(path, upload_id, timeout)
        with self._guard:
            self._held.add(upload_id)
        try:
            yield
        finally:
            with self._guard:
                self._held.discard(upload_id)
            os.close(fd)  # releases the flock

    def _wait(self, path: str, upload_id: str, timeout: float) -> int:
        """Busy: leave a release request beside the lock file, then wait for the lock."""
        if timeout <= 0:
            raise UploadLocked()
        request = self._release_path(upload_id)
        request.touch()
        started = time.monotonic()
        deadline = started + timeout
        fd = None
        try:
            while fd is None:
                if time.monotonic() >= deadline:
                    raise UploadLocked()
                time.sleep(POLL_INTERVAL)
                fd = _try_lock(path)
            return fd
        finally:
            request.unlink(missing_ok=True)
            if self.on_wait is not None:
                self.on_wait(time.monotonic() - started, fd is not None)

    def still_held(self, upload_id: str) -> bool:
        # An flock lasts as long as its open file: nothing takes it from its holder.
        with self._guard:
            return upload_id in self._held

    def release_requested(self, upload_id: str) -> bool:
        if not is_lock_name(upload_id):
            # A request for an id no lock can have (the transfer monitor watches a body
            # before the service has looked at its id): nobody can be waiting.
            return False
        try:
            requested = self._release_path(upload_id).stat().st_mtime
        except FileNotFoundError:
            return False
        # A waiter removes its request when it stops waiting; one killed meanwhile
        # leaves it behind, so an old request is taken as withdrawn.
        return time.time() - requested < RELEASE_REQUEST_TTL

    def _release_path(self, upload_id: str) -> Path:
        return self._path(upload_id).with_suffix(RELEASE_SUFFIX)

    def forget(self, upload_id: str) -> None:
        self._release_path(upload_id).unlink(missing_ok=True)
        self._path(upload_id).unlink(missing_ok=True)

    def scan(self) -> list[tuple[str, datetime]]:
        # flock never touches a lock file, so its mtime is when it was made.
        return scan_files(self.directory, _lock_id)


def _try_lock(path: str) -> int | None:
    """One try: a descriptor of the lock file holding its flock, or None (busy)."""
    while True:
        fd = os.open(path, _OPEN_FLAGS, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Unlinked between our open and our flock (``forget``): a newcomer would
            # make a new file and lock that one too. Try again, on the new file.
            unlinked = os.fstat(fd).st_nlink == 0
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if not unlinked:
            return fd
        os.close(fd)


def _lock_id(name: str) -> str | None:
    """The upload id of a lock file's name (a run lock's file is not an upload's)."""
    upload_id = name.removesuffix(LOCK_SUFFIX)
    if upload_id == name or not is_upload_id(upload_id):
        return None
    return upload_id
