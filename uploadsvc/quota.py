"""Quotas that hold: bytes and files per grant, and for uploads without a grant.

Each upload row says what it holds of its scope's quota (``quota_bytes``,
``quota_files``); each scope has a usage row (``quota_usage``: a grant's id, or
``OPEN_SCOPE``). Every change goes through one conditional UPDATE of the usage row, in
the caller's transaction, together with the upload row's own numbers:

    UPDATE quota_usage SET used_bytes = used_bytes + :n, used_files = used_files + :f
    WHERE scope = :scope AND used_bytes + :n <= <limit> AND used_files + :f <= <limit>

The caller's transaction is an ORM session (terminate, cleanup, a chunked body's
reservations) or the hot paths' registry transaction (create, a declared length, a
write's record: registry.py, the same statement in plain SQL).

So parallel creations never pass a limit (SQLite runs one writer at a time; PostgreSQL
re-checks the WHERE on the row it locked), and a refused change leaves nothing behind
(the caller's transaction rolls back). A grant's limits are read in the same statement
(a subquery on ``grants``); the shared scope's come from ``UPLOADSVC_QUOTA_BYTES`` and
``UPLOADSVC_QUOTA_FILES``.

What an upload holds:
- created with a length: that length and one file;
- created with a deferred length: one file, and bytes as they come: a PATCH with a
  ``Content-Length`` reserves its body before a byte of it is read, a chunked one
  reserves ``STEP`` bytes at a time as they arrive; what the body didn't use is given
  back when the write is recorded; declaring the length makes it hold that length;
- a partial upload: its bytes, no file (its final is the file);
- a final upload: one file, no bytes (its bytes are its partials').
It is freed, once, in the transaction that makes the upload a tombstone (terminated,
expired) or, for a partial whose bytes a live final still reads, when those go.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, or_, select, true, update
from sqlalchemy.orm import Session, sessionmaker

from .errors import UploadTooLarge
from .models import OPEN_SCOPE, Concat, Grant, QuotaUsage, Upload, UploadRow, UploadState
from .registry import Transaction

# A chunked body on an upload of deferred length reserves this much at a time.
STEP = 8 * 1024 * 1024

# The caller's transaction, and the row it read (the ORM's or the registry's).
_Tx = Session | Transaction
_Row = Upload | UploadRow


class QuotaExceeded(UploadTooLarge):
    """413: the change would pass a quota; the message says which."""

    watched_as = "quota"  # the operator view's failure reason (progress.py)


class Quota:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        open_bytes: int | None = None,
        open_files: int | None = None,
    ) -> None:
        self.sessions = sessions
        self.open_bytes = open_bytes
        self.open_files = open_files

    # -- what the service calls, in its transactions ------------------------------------
    # (``session``: an ORM session or a registry transaction; ``row``: its kind of row)

    def on_create(self, session: _Tx, row: _Row) -> None:
        """A new upload (its row added to ``session``): its length and its file."""
        files = 0 if row.concat is Concat.PARTIAL else 1
        size = 0 if row.concat is Concat.FINAL else row.length or 0
        self._change(session, row, size, files)

    def on_length(self, session: _Tx, row: _Row) -> None:
        """A deferred length was just declared on ``row``: it holds that length now."""
        if row.concat is not Concat.FINAL and row.length is not None:
            self._hold_bytes(session, row, row.length)

    def reserve_body(self, session: _Tx, row: _Row, content_length: int | None) -> None:
        """Before a PATCH body on an upload of deferred length is read: room for it."""
        if row.length is None and content_length:
            self._hold_bytes(session, row, row.offset + content_length, grow_only=True)

    def settle(self, session: _Tx, row: _Row) -> None:
        """A write was recorded: an upload of deferred length gives back what its body
        reserved and didn't bring."""
        deferred = row.length is None and row.state is UploadState.ACTIVE
        if deferred and row.quota_bytes > row.offset:
            self._hold_bytes(session, row, row.offset)

    def release(self, session: _Tx, row: _Row) -> None:
        """``row`` is going (a tombstone, or a partial's bytes at last): free what it
        holds. Zeroed with it in one transaction, so it is freed once."""
        if row.quota_bytes or row.quota_files:
            self._change(session, row, -row.quota_bytes, -row.quota_files)

    def meter(
        self, upload_id: str, start: int, held: int, chunks: Iterable[bytes]
    ) -> Iterator[bytes]:
        """A chunked body on an upload of deferred length, counted as it arrives: bytes
        past what the upload holds are reserved ``STEP`` at a time (a transaction each);
        refused, the bytes that fit go through and the body ends with ``QuotaExceeded``
        (they are kept, as for any body the server ends)."""
        position, allowed = start, held
        for chunk in chunks:
            end = position + len(chunk)
            if end > allowed:
                try:
                    allowed = self._reserve(upload_id, max(end, allowed + STEP))
                except QuotaExceeded:
                    allowed, refusal = self._reserve_what_fits(upload_id, end)
                    if refusal is not None:
                        fits = max(0, allowed - position)
                        if fits:
                            yield chunk[:fits]
                        raise refusal from None
            position = end
            yield chunk

    # -- internals ------------------------------------------------------------------------

    def _reserve(self, upload_id: str, target: int) -> int:
        with self.sessions.begin() as session:
            row = session.get(Upload, upload_id)
            if row is None:
                return target  # gone meanwhile: the write's record says so
            self._hold_bytes(session, row, target, grow_only=True)
            return row.quota_bytes

    def _reserve_what_fits(self, upload_id: str, target: int) -> tuple[int, QuotaExceeded | None]:
        """Up to ``target``, as much as the quota has room for: what the upload holds
        then, and the refusal when that is short of ``target``."""
        try:
            return self._reserve(upload_id, target), None
        except QuotaExceeded as refusal:
            with self.sessions.begin() as session:
                row = session.get(Upload, upload_id)
                if row is None:
                    return target, None
                room = self._room(session, row.grant_id or OPEN_SCOPE)
                # (Taken meanwhile by another upload of the scope: then none of it.)
                if room > 0:
                    with contextlib.suppress(QuotaExceeded):
                        self._hold_bytes(session, row, row.quota_bytes + room, grow_only=True)
                return row.quota_bytes, refusal

    def _room(self, session: Session, scope: str) -> int:
        usage = session.get(QuotaUsage, scope)
        if scope == OPEN_SCOPE:
            limit = self.open_bytes
        else:
            grant = session.get(Grant, scope)
            limit = grant.max_bytes if grant is not None else 0
        if usage is None or limit is None:
            return 0
        return max(0, limit - usage.used_bytes)

    def _hold_bytes(self, session: _Tx, row: _Row, target: int, grow_only: bool = False) -> None:
        delta = target - row.quota_bytes
        if delta > 0 or (delta < 0 and not grow_only):
            self._change(session, row, delta, 0)

    def _change(self, session: _Tx, row: _Row, size: int, files: int) -> None:
        scope = row.grant_id or OPEN_SCOPE
        if isinstance(session, Transaction):
            open_limits = (self.open_bytes, self.open_files) if scope == OPEN_SCOPE else None
            if not session.change_quota(scope, size, files, open_limits=open_limits):
                if size <= 0 and files <= 0:
                    return  # as below
                raise self._refusal(session, scope, size, files)
            row.quota_bytes += size
            row.quota_files += files
            return
        conditions: list[ColumnElement[bool]] = [QuotaUsage.scope == scope]
        if size > 0:
            conditions.append(self._within(scope, QuotaUsage.used_bytes, size, Grant.max_bytes))
        if files > 0:
            conditions.append(self._within(scope, QuotaUsage.used_files, files, Grant.max_files))
        result = session.execute(
            update(QuotaUsage)
            .where(*conditions)
            .values(
                used_bytes=QuotaUsage.used_bytes + size,
                used_files=QuotaUsage.used_files + files,
            )
            .execution_options(synchronize_session=False)
        )
        if cast("CursorResult[Any]", result).rowcount != 1:
            if size <= 0 and files <= 0:
                return  # nothing counted for this scope (its row is gone): nothing to free
            raise self._refusal(session, scope, size, files)
        row.quota_bytes += size
        row.quota_files += files

    def _within(self, scope: str, used: Any, amount: int, grant_limit: Any) -> ColumnElement[bool]:
        if scope == OPEN_SCOPE:
            limit = self.open_bytes if grant_limit is Grant.max_bytes else self.open_files
            return true() if limit is None else used + amount <= limit
        # The grant's own limit, read in the same statement: NULL is no limit.
        limit_of = select(grant_limit).where(Grant.id == scope).scalar_subquery()
        return or_(limit_of.is_(None), used + amount <= limit_of)

    def _refusal(self, session: _Tx, scope: str, size: int, files: int) -> QuotaExceeded:
        usage = _usage(session, scope)
        used_bytes, used_files = usage or (0, 0)
        if scope == OPEN_SCOPE:
            owner = "the server's quota for uploads without a grant"
            max_bytes, max_files = self.open_bytes, self.open_files
        else:
            grant = _grant_quota(session, scope)
            label = f" ({grant[2]!r})" if grant and grant[2] else ""
            owner = f"the quota of grant {scope}{label}"
            max_bytes, max_files = grant[:2] if grant else (None, None)
        if usage is None:
            return QuotaExceeded(f"over quota: no usage is kept for {owner}")
        if files > 0 and max_files is not None and used_files + files > max_files:
            return QuotaExceeded(
                f"over quota: {owner} allows {max_files} uploads and {used_files} are in use"
            )
        return QuotaExceeded(
            f"over quota: {owner} allows {max_bytes} bytes; {used_bytes} are in use"
            f" or reserved and this needs {size} more"
        )


def _usage(session: _Tx, scope: str) -> tuple[int, int] | None:
    if isinstance(session, Transaction):
        return session.quota_usage(scope)
    usage = session.get(QuotaUsage, scope)
    return None if usage is None else (usage.used_bytes, usage.used_files)


def _grant_quota(session: _Tx, grant_id: str) -> tuple[int | None, int | None, str] | None:
    if isinstance(session, Transaction):
        return session.grant_quota(grant_id)
    grant = session.get(Grant, grant_id)
    return None if grant is None else (grant.max_bytes, grant.max_files, grant.label)
