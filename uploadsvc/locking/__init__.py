"""Exclusive per-upload locks across threads, workers and processes."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

from ..protocol import is_upload_id

# Locks a whole run holds (through the same locker, so they span hosts when upload locks
# do), named apart from uploads: an upload id has at least 8 characters, so no request
# can ever lock one of these.
CLEANUP_RUN_LOCK = "cleanup"
RUN_LOCKS = frozenset({CLEANUP_RUN_LOCK})


def is_lock_name(name: str) -> bool:
    """What a locker locks: an upload id, or one of the fixed run-lock names."""
    return is_upload_id(name) or name in RUN_LOCKS


class Locker(Protocol):
    def hold(self, upload_id: str, *, timeout: float) -> AbstractContextManager[None]:
        """Hold the upload's lock for the ``with`` block; ``UploadLocked`` if it can't
        be had within ``timeout`` seconds (0: one attempt). While waiting, ask the
        holder to release (see ``release_requested``)."""
        ...

    def still_held(self, upload_id: str) -> bool:
        """Whether this process still holds the upload's lock: a fence, asked before
        acting on what the lock protects (recording a write, deleting data). A lock can
        be lost under its holder (PostgreSQL's ends with its connection); after that,
        another host may hold it and write the same upload."""
        ...

    def release_requested(self, upload_id: str) -> bool:
        """Whether a request is waiting for this upload's lock: its holder, if stalled,
        should save what it has and let go (tusd's "release request")."""
        ...

    def forget(self, upload_id: str) -> None:
        """Drop the lock's resources once the upload itself is gone; idempotent."""
        ...

    def scan(self) -> list[tuple[str, datetime]]:
        """Every upload id with lock resources, with when they were made (aware UTC).

        For cleanup: requests on unknown ids and crashes leave locks nobody will forget.
        """
        ...
