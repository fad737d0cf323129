"""Per-upload locks as ``flock`` on ``<data dir>/locks/<id>.lock`` via filelock.

The lock file stays on disk while the upload lives: unlinking it on release would let
a waiter holding the old inode and a newcomer creating a new one both "own" the lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from ..errors import UploadLocked


class FileLocker:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, upload_id: str) -> Path:
        if not upload_id.isalnum() or not upload_id.isascii():
            raise ValueError(f"unsafe upload id {upload_id!r}")
        return self.directory / f"{upload_id}.lock"

    @contextmanager
    def hold(self, upload_id: str, *, timeout: float) -> Iterator[None]:
        # A fresh lock object per hold: flock conflicts between open file descriptions,
        # so two threads of one process exclude each other just as two processes do.
        lock = filelock.FileLock(
            self._path(upload_id),
            timeout=timeout,
            preserve_lock_file=True,
            fallback_to_soft=False,
        )
        try:
            lock.acquire()
        except filelock.Timeout:
            raise UploadLocked() from None
        try:
            yield
        finally:
            lock.release()

    def forget(self, upload_id: str) -> None:
        self._path(upload_id).unlink(missing_ok=True)
