"""Exclusive per-upload locks across threads, workers and processes."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol


class Locker(Protocol):
    def hold(self, upload_id: str, *, timeout: float) -> AbstractContextManager[None]:
        """Hold the upload's lock for the ``with`` block; ``UploadLocked`` if it can't
        be had within ``timeout`` seconds (0: one attempt)."""
        ...

    def forget(self, upload_id: str) -> None:
        """Drop the lock's resources once the upload itself is gone; idempotent."""
        ...
