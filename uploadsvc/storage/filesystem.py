"""Upload data as one plain file per upload under ``<data dir>/files/``."""

from __future__ import annotations

import errno
import os
import tempfile
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from ..directory import scan_files
from ..errors import InsufficientStorage
from ..protocol import is_upload_id
from . import NotDurable, StoreUnavailable
from .errors import translated

# A long append hands its data to writeback in steps of this many bytes, and drops it
# from the page cache once it is this many steps behind.
WRITEBACK_STEP = 8 * 1024 * 1024
WRITEBACK_WINDOW = 8


class FileStore:
    """One file per upload. Ids are validated by the caller (``protocol.is_upload_id``),
    so they are safe path components; ``_path`` still refuses anything else as a last
    guard."""

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, upload_id: str) -> Path:
        if not is_upload_id(upload_id):
            raise ValueError(f"unsafe upload id {upload_id!r}")
        return self.directory / upload_id

    def create(self, upload_id: str) -> None:
        with _disk_errors():
            fd = os.open(self._path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            os.close(fd)
            if self.fsync:
                _fsync_directory(self.directory)

    def append(self, upload_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        with _disk_errors():
            fd = os.open(self._path(upload_id), os.O_WRONLY)
            try:
                # Anything past the offset is unrecorded (a crash mid-write); the
                # caller checked the offset, so those bytes are overwritten.
                os.ftruncate(fd, offset)
                position = written_back = offset
                steps: deque[int] = deque(maxlen=WRITEBACK_WINDOW)  # where recent steps began
                try:
                    for chunk in chunks:
                        view = memoryview(chunk)
                        while view:
                            written = os.pwrite(fd, view, position)
                            position += written
                            view = view[written:]
                        if position - written_back >= WRITEBACK_STEP:
                            # Start writing back what just landed (not all at the final
                            # fsync), and drop the last steps, written back by now, from
                            # the page cache: a long upload neither piles up dirty pages
                            # nor fills memory (measured: see bench/ in the README).
                            start = steps[0] if steps else written_back
                            os.posix_fadvise(fd, start, position - start, os.POSIX_FADV_DONTNEED)
                            steps.append(written_back)
                            written_back = position
                finally:
                    # Whatever landed is made durable, even when the body broke off.
                    self._sync_or_drop(fd, offset)
                return position
            finally:
                os.close(fd)

    def _sync_or_drop(self, fd: int, durable: int) -> None:
        """fsync what was appended since ``durable`` (the size it started from, durable
        then), or drop it: after a failed fsync the kernel may have marked the failed
        pages clean, so a second fsync "succeeds" without them, and the page cache
        serves bytes the disk never got. Nothing written since ``durable`` can count."""
        if not self.fsync:
            return
        try:
            os.fsync(fd)
        except OSError as error:
            reason = f"fsync failed: {error.strerror or error}"
            try:
                os.ftruncate(fd, durable)
                os.fsync(fd)
            except OSError:
                reason += "; dropping the bytes failed too"
            raise NotDurable(durable, reason) from error

    def size(self, upload_id: str) -> int | None:
        # open + fstat, not stat: on a volume shared by several hosts (NFS), opening
        # revalidates the file's attributes (close-to-open consistency), so the size
        # another host just wrote is seen; a path's stat may answer from a stale cache.
        try:
            fd = os.open(self._path(upload_id), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def truncate(self, upload_id: str, size: int) -> None:
        with _disk_errors():
            fd = os.open(self._path(upload_id), os.O_WRONLY)
            try:
                os.ftruncate(fd, size)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def finish(self, upload_id: str) -> None:
        """A file is whole all along."""

    def open(self, upload_id: str) -> BinaryIO:
        return self._path(upload_id).open("rb")

    def head(self, upload_id: str, size: int) -> bytes:
        with self._path(upload_id).open("rb") as file:
            return file.read(size)

    def delete(self, upload_id: str) -> None:
        self._path(upload_id).unlink(missing_ok=True)

    def scan(self) -> list[tuple[str, datetime]]:
        # Only names the store could have made.
        return scan_files(self.directory, lambda name: name if is_upload_id(name) else None)

    def check(self) -> None:
        """The directory takes a write that reaches the disk."""
        try:
            with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".healthz-") as probe:
                probe.write(b"ok")
                probe.flush()
                os.fsync(probe.fileno())
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise StoreUnavailable(f"data directory: {reason}") from error


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_errors() -> translated:
    """Turn a full disk into ``InsufficientStorage``; other OS errors stay bugs."""
    return translated(_full_disk)


def _full_disk(error: Exception) -> InsufficientStorage | None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage()
    return None
