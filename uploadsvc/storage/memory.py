"""Upload data in memory: the ``UploadStore`` double for tests that drive the service.

It keeps the file store's contract (tests/test_store_contract.py runs the same tests
against both), down to its exceptions: creating twice is ``FileExistsError``, writing
to or opening unknown data is ``FileNotFoundError``, an id that could not be a path
component is ``ValueError``. ``capacity`` makes a small disk: an append stores what
fits, then raises ``InsufficientStorage`` as the file store does on ``ENOSPC``.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import BinaryIO

from .. import protocol
from ..errors import InsufficientStorage


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MemoryStore:
    def __init__(
        self, *, capacity: int | None = None, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self.capacity = capacity  # bytes across all uploads; None: unbounded
        self.clock = clock
        self._data: dict[str, bytearray] = {}
        self._changed: dict[str, datetime] = {}
        self._guard = threading.Lock()

    def _check_id(self, upload_id: str) -> None:
        if not protocol.is_upload_id(upload_id):
            raise ValueError(f"unsafe upload id {upload_id!r}")

    def _bytes(self, upload_id: str) -> bytearray:
        """The upload's data (guard held)."""
        self._check_id(upload_id)
        try:
            return self._data[upload_id]
        except KeyError:
            raise FileNotFoundError(upload_id) from None

    def _room(self) -> int | None:
        if self.capacity is None:
            return None
        return self.capacity - sum(len(data) for data in self._data.values())

    def create(self, upload_id: str) -> None:
        self._check_id(upload_id)
        with self._guard:
            if upload_id in self._data:
                raise FileExistsError(upload_id)
            self._data[upload_id] = bytearray()
            self._changed[upload_id] = self.clock()

    def append(self, upload_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        with self._guard:
            data = self._bytes(upload_id)
            # As in the file store: bytes past the offset are unrecorded, overwritten.
            del data[offset:]
            self._changed[upload_id] = self.clock()
        # The guard is not held while a chunk is awaited (a body read can take minutes).
        for chunk in chunks:
            with self._guard:
                room = self._room()
                if room is not None and len(chunk) > room:
                    data.extend(chunk[: max(room, 0)])
                    self._changed[upload_id] = self.clock()
                    raise InsufficientStorage()
                data.extend(chunk)
                self._changed[upload_id] = self.clock()
        with self._guard:
            return len(data)

    def size(self, upload_id: str) -> int | None:
        self._check_id(upload_id)
        with self._guard:
            data = self._data.get(upload_id)
            return None if data is None else len(data)

    def truncate(self, upload_id: str, size: int) -> None:
        with self._guard:
            data = self._bytes(upload_id)
            if size < len(data):
                del data[size:]
            else:
                data.extend(bytes(size - len(data)))  # ftruncate extends with zeros
            self._changed[upload_id] = self.clock()

    def finish(self, upload_id: str) -> None:
        """Bytes in memory are whole all along."""

    def open(self, upload_id: str) -> BinaryIO:
        # A copy: like an open file after an unlink, it outlives a delete.
        with self._guard:
            return io.BytesIO(bytes(self._bytes(upload_id)))

    def head(self, upload_id: str, size: int) -> bytes:
        with self._guard:
            return bytes(self._bytes(upload_id)[:size])

    def delete(self, upload_id: str) -> None:
        self._check_id(upload_id)
        with self._guard:
            self._data.pop(upload_id, None)
            self._changed.pop(upload_id, None)

    def scan(self) -> list[tuple[str, datetime]]:
        with self._guard:
            return sorted(self._changed.items())

    def check(self) -> None:
        """Memory is always reachable."""
