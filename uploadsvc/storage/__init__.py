"""Where upload bytes live. The registry, not the store, says what they mean."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import BinaryIO, Protocol


class StoreUnavailable(Exception):
    """The store can't be reached or written; the message says where and why, briefly."""


class NotDurable(OSError):
    """An append's bytes could not be made durable (a failed write-back or fsync): only
    the upload's first ``durable`` bytes are known to be stored. The store has dropped
    the rest, or tried to; ``__cause__`` is the failure."""

    def __init__(self, durable: int, reason: str) -> None:
        super().__init__(reason)
        self.durable = durable


class UploadStore(Protocol):
    """Byte storage for uploads, addressed by upload id.

    ``append`` writes whatever arrives before an error and makes it durable before it
    returns or re-raises; callers then ask ``size`` for the truth. Bytes it can't make
    durable don't count: it raises ``NotDurable`` saying how many do.
    """

    def create(self, upload_id: str) -> None: ...

    def append(self, upload_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        """Write ``chunks`` at ``offset``; return the new size."""
        ...

    def size(self, upload_id: str) -> int | None:
        """Bytes stored, or ``None`` when the upload has no data."""
        ...

    def truncate(self, upload_id: str, size: int) -> None:
        """Drop everything past ``size`` (unverified or excess bytes)."""
        ...

    def finish(self, upload_id: str) -> None:
        """The upload is complete: its bytes will not change again. A store that keeps
        bytes in pieces while they arrive makes them one object now (S3 completes the
        multipart upload), so that post-finish hooks find it whole. Best effort: a store
        that couldn't must still do it in ``open``."""
        ...

    def open(self, upload_id: str) -> BinaryIO:
        """The upload's bytes, for reading: a seekable file (ranged downloads)."""
        ...

    def head(self, upload_id: str, size: int) -> bytes:
        """The first ``size`` bytes of an upload still arriving (at most the bytes
        stored; ``size`` is small: the type gate's window, typegate.SNIFF_BYTES)."""
        ...

    def delete(self, upload_id: str) -> None:
        """Remove the data; idempotent."""
        ...

    def scan(self) -> list[tuple[str, datetime]]:
        """Every upload id that has data, with when its data last changed (aware UTC).

        For cleanup, which finds data the registry no longer knows.
        """
        ...

    def check(self) -> None:
        """Raise ``StoreUnavailable`` if the store can't be reached or written (/healthz,
        and the start-up check)."""
        ...
