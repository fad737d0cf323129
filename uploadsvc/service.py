"""UploadService: create, inspect, append to and terminate uploads.

Framework-free: views and the CLI call it with parsed values and get plain dataclasses.
Every operation on an existing upload runs under that upload's lock: lock, check, then
write. Database transactions stay short and never span a body read; the lock, not a
transaction, serialises one upload's writes.
"""

from __future__ import annotations

import errno
import logging
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, BinaryIO

from sqlalchemy import Select, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, aliased, sessionmaker

from . import checksums, db, protocol, verdicts
from .digests import Digest
from .errors import (
    BodyIncomplete,
    ChecksumMismatch,
    Forbidden,
    HookFailed,
    InsufficientStorage,
    InvalidHeader,
    LockLost,
    OffsetMismatch,
    StorageFailed,
    TusError,
    UploadExists,
    UploadGone,
    UploadLocked,
    UploadNotFound,
    UploadRefused,
    UploadTooLarge,
)
from .grants import allowed_types
from .hooks import HookRequest, Hooks
from .locking import Locker
from .models import Concat, Upload, UploadPart, UploadRow, UploadState, Verdict, is_expired
from .outbox import Outbox
from .quota import Quota
from .records import Limits, UploadInfo
from .registry import Registry, Transaction
from .storage import NotDurable, UploadStore
from .storage.chained import chained
from .typegate import TypeGate

log = logging.getLogger(__name__)

# 128 bits of randomness: an upload URL is a capability, so it must not be guessable.
_ID_BYTES = 16
# Ids per IN (...) query: well under SQLite's bound-parameter limit.
_QUERY_BATCH = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_upload_id() -> str:
    return secrets.token_hex(_ID_BYTES)


# The states in which a final upload still needs its partials' bytes: a final holds no
# copy of them (it is read through them), so they stay while it lives.
LIVE_FINAL_STATES = (UploadState.ACTIVE, UploadState.COMPLETED)


def _grant_id(request: HookRequest | None) -> str | None:
    """The grant a creation belongs to: the caller's (UPLOADSVC_AUTH=grants)."""
    return request.grant.id if request is not None and request.grant is not None else None


def _grant_gate(request: HookRequest | None, gate: TypeGate | None) -> TypeGate | None:
    """A creation's own type gate: the one given, or its grant's types (--types)."""
    if gate is not None or request is None:
        return gate
    types = allowed_types(request.grant)
    return TypeGate(types) if types else None


def named_by_live_finals() -> Select[str]:
    """The ids of partial uploads some live final upload names (their bytes are its)."""
    finals = aliased(Upload)
    return (
        select(UploadPart.partial_id)
        .join(finals, finals.id == UploadPart.final_id)
        .where(finals.state.in_(LIVE_FINAL_STATES))
    )


def partial_in_use(session: Session, partial_id: str) -> bool:
    query = named_by_live_finals().where(UploadPart.partial_id == partial_id).limit(1)
    return session.scalar(query) is not None


def _holds_its_bytes(partial: Upload) -> bool:
    """A partial whose bytes are all stored for good: complete and finished (a store
    keeping bytes in pieces has joined them), or terminated after it completed while a
    final named it (terminate keeps such bytes)."""
    if partial.length is None or partial.offset < partial.length:
        return False
    if partial.state is UploadState.COMPLETED:
        # A partial its finish refused (corrupt, rejected) is no one's bytes.
        return partial.finished_at is not None and partial.verdict in (None, Verdict.OK)
    return partial.state is UploadState.TERMINATED


@dataclass
class _BodyGuard:
    """Passes body chunks through, stopping at ``limit`` bytes and handing them to the
    checksum ``verifier``."""

    limit: int
    verifier: checksums.Verifier
    received: int = 0
    overflow: bool = False

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            room = self.limit - self.received
            if len(chunk) > room:
                # Store exactly up to the limit, then refuse the rest.
                self.overflow = True
                chunk = chunk[:room]
            if chunk:
                self.received += len(chunk)
                self.verifier.update(chunk)
                yield chunk
            if self.overflow:
                return

    def matches(self) -> bool:
        if self.verifier.expected is None:
            return True  # nothing to verify; an overflow keeps what fit
        return self.verifier.matches() and not self.overflow


@dataclass
class _KnownSize:
    """What a PATCH knows of its upload's stored size, so that it asks the store once
    (on S3, a LIST): read under the lock, None once a write may have changed it, then
    what recording the write made the row say."""

    value: int | None


class UploadService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: UploadStore,
        locker: Locker,
        limits: Limits,
        *,
        clock: Callable[[], datetime] = utcnow,
        new_id: Callable[[], str] = new_upload_id,
        hooks: Hooks | None = None,
        readers: sessionmaker[Session] | None = None,
        quota: Quota | None = None,
        outbox: Outbox | None = None,
        judge: verdicts.Judge | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.sessions = sessions
        # Read-only transactions (db.make_readers); the writers' sessions by default.
        self.readers = readers or sessions
        # The hot paths' transactions (plain SQL, registry.py); the ORM sessions above
        # serve the rest (concatenation's queries, terminate, downloads).
        self.registry = registry or Registry.of(sessions)
        self.store = store
        self.locker = locker
        self.limits = limits
        self.clock = clock
        self.new_id = new_id
        self.hooks = hooks or Hooks()
        # Counts what each upload holds of its grant's (or the shared) quota, in the
        # transactions that change it (quota.py); None counts nothing.
        self.quota = quota
        # Webhook events, written in the transaction of the change (outbox.py).
        self.outbox = outbox or Outbox()
        # Type gates, inspect and check hooks, whole-file digests (verdicts.py).
        self.judge = judge or verdicts.Judge(TypeGate(), self.hooks)

    # -- creation ---------------------------------------------------------------------

    def create(
        self,
        length: int | None,
        metadata: dict[str, bytes | None],
        *,
        partial: bool = False,
        request: HookRequest | None = None,
        digest: Digest | None = None,
        gate: TypeGate | None = None,
    ) -> UploadInfo:
        """Register a new upload (``length`` None: deferred) with an empty data file;
        ``partial``: it is meant to be concatenated into a final upload; ``digest``:
        the whole file's, checked when it finishes; ``gate``: a type gate of the
        request's own, on top of the server's."""
        self._check_size(length)
        changes = self.hooks.pre_create(request, length, metadata)
        if changes.metadata is not None:
            metadata = changes.metadata
        self.judge.at_creation(metadata, partial=partial, gate=_grant_gate(request, gate))
        row = self._new_row(length, metadata, Concat.PARTIAL if partial else None)
        row.grant_id = _grant_id(request)
        row.digest = None if digest is None else digest.header()
        if changes.upload_id is not None:
            row.id = self._chosen_id(changes.upload_id)
        self._register(row)
        log.info("upload %s created (length %s)", row.id, length)
        info = UploadInfo.of(row)
        self.hooks.emit("post-create", info)
        if not info.complete:
            return info
        # Upload-Length 0: complete at birth, so it finishes now, the one way all do.
        with self._hold(info.id):
            info = self._complete(info)
        return self._after_finish(info)

    def _chosen_id(self, upload_id: str) -> str:
        if not protocol.is_upload_id(upload_id):
            log.error("pre_create hook chose an invalid upload id %r", upload_id)
            raise HookFailed("the server's pre-create hook chose an invalid id")
        if self.registry.get(upload_id) is not None:
            raise UploadExists()
        return upload_id

    def _complete(self, info: UploadInfo) -> UploadInfo:
        """The one way an upload finishes: every route into "complete" ends here, with
        the upload's lock held and ``info`` read under it.

        Exactly once, by a state in the registry: the transaction that records the last
        byte (a PATCH, a reconcile, a declared length, a creation, an assembly) makes the
        row COMPLETED with ``finished_at`` NULL, so the finish is due and survives a
        crash. Then the sequence runs (store finish, pre-finish) and a compare-and-set
        sets ``finished_at``; only the request that wins it emits post-finish (hooks,
        webhook, the finish metric). A crash before the compare-and-set leaves the finish
        due, and the next request to hold the lock (HEAD, PATCH, GET) or ``flask
        cleanup`` runs it again: pre-finish and the store's finish are idempotent and
        may run twice, post-finish never. Finals waiting on a partial are the caller's
        to complete once the lock is released (``_after_finish``).
        """
        if not info.complete or info.finished_at is not None:
            return info
        # Its bytes are final: a store keeping them in pieces (S3 parts) joins them now,
        # before the hooks, so they find one whole object (deleting the pieces).
        self._fence(info.id)
        self.store.finish(info.id)
        # Judged from the stored bytes: type gate, digest, check hook (verdicts.py).
        judgement = self.judge.at_finish(info, lambda: self._open_stored(info))
        info = replace(info, verdict=judgement.verdict, verdict_reason=judgement.reason)
        info = replace(info, finish_headers=self.hooks.pre_finish(info))
        now = self.clock()
        with self.registry.writing() as tx:
            # The verdict with finished_at, by the same compare-and-set.
            if not tx.finish(info.id, now, info.verdict, info.verdict_reason):
                # Another holder finished it meanwhile (a lost lock), or it is gone.
                log.warning("upload %s: finished elsewhere meanwhile", info.id)
                return replace(info, finished_at=now)
            info = replace(info, finished_at=now, finished_now=True)
            self.outbox.record(tx, "post-finish", info, now)
        log.info("upload %s finished", info.id)
        self.hooks.emit("post-finish", info)
        return info

    def _complete_after_error(self, upload_id: str, size: int | None) -> UploadInfo | None:
        """``_complete`` for a request that failed (lock held): a refused or cut body
        may still have brought the upload to its length (a chunked body past it, kept up
        to it; framing that broke off after the last byte; bytes a crash left unrecorded,
        whose reconcile a refusal rolled back). Its own error is the answer, so a
        failure here is logged, and the finish stays due for the next request.
        ``size``: the store's, when the request knows it (see ``_KnownSize``)."""
        try:
            with self.registry.reading() as tx:
                row = tx.get(upload_id)
                if row is None:
                    return None
                info = UploadInfo.of(row)
                unsettled = row.state is UploadState.ACTIVE and not row.verifying
            if unsettled and size is None:
                size = self.store.size(upload_id)
            if unsettled and size is not None and size != info.offset:
                with self.registry.writing() as tx:
                    row = self._read_row(tx, upload_id)
                    self._reconcile_row(row, size)
                    tx.save(row)
                    info = UploadInfo.of(row)
            return self._complete(info)
        except TusError:
            return None  # lost its lock (the new holder finishes it), or expired meanwhile
        except Exception:
            log.exception("upload %s: finish failed; the next request resumes it", upload_id)
            return None

    def _after_finish(self, info: UploadInfo) -> UploadInfo:
        """The rest of a finish, once the upload's lock is released: finals waiting on a
        partial that just finished are assembled (each under its own lock; a final whose
        assembly fails here is assembled by its next HEAD)."""
        if info.finished_now and info.concat is Concat.PARTIAL:
            self._complete_finals_of(info.id)
        return info

    def create_final(
        self,
        partial_ids: list[str],
        metadata: dict[str, bytes | None],
        *,
        request: HookRequest | None = None,
        digest: Digest | None = None,
        gate: TypeGate | None = None,
    ) -> UploadInfo:
        """Register a final upload made of ``partial_ids`` (concatenation).

        A partial may be named several times, here and in other finals: no bytes are
        copied (a final is read through its partials, see ``download``), so naming one
        costs a row, not a copy. Every partial named must pass the authorize hook as a
        GET of it, and the final the pre-create hook, like any creation.
        The partials may still be unfinished (concatenation-unfinished): the final
        completes when the last of them does.
        """
        partials = self.describe_many(partial_ids)
        for partial_id in dict.fromkeys(partial_ids):
            if partial_id not in partials:
                raise UploadNotFound(f"partial upload {partial_id} not found")
            if request is not None:
                # Before anything but "unknown" is told of it: whose bytes a final
                # may read is the hook's call, as for a download of the partial.
                # (a creation's path is the files path)
                read = request.read_of(partial_id, request.path)
                self.hooks.authorize(read, partials[partial_id])
        length = sum(self._partial_length(partials[partial_id]) for partial_id in partial_ids)
        self._check_size(length)
        changes = self.hooks.pre_create(request, length, metadata)
        if changes.metadata is not None:
            metadata = changes.metadata
        self.judge.at_creation(metadata, gate=_grant_gate(request, gate))
        row = self._new_row(length, metadata, Concat.FINAL)
        row.grant_id = _grant_id(request)
        row.digest = None if digest is None else digest.header()
        if changes.upload_id is not None:
            row.id = self._chosen_id(changes.upload_id)
        # Holds no bytes (they are the partials'), but a final has data like any upload:
        # its lock, cleanup and terminate treat it as one.
        self.store.create(row.id)
        try:
            with self.registry.writing() as tx:
                for partial_id in sorted(set(partial_ids)):
                    # Again, with each partial's row locked (PostgreSQL; SQLite's write
                    # transactions are serial): a DELETE of one either came first (410
                    # here) or finds this final naming it, and keeps its bytes.
                    partial = tx.get(partial_id, for_update=True)
                    if partial is None:
                        raise UploadNotFound(f"partial upload {partial_id} not found")
                    self._partial_length(UploadInfo.of(partial))
                if self.quota is not None:
                    # Before the insert, so the row holds what was counted.
                    self.quota.on_create(tx, row)
                tx.insert(row)  # the upload row before its parts (foreign key)
                tx.insert_parts(row.id, partial_ids)
                created = UploadInfo.of(row, tuple(partial_ids))
                self.outbox.record(tx, "post-create", created, created.created_at)
        except BaseException:
            self.store.delete(row.id)
            raise
        log.info("final upload %s created from %d partials", row.id, len(partial_ids))
        self.hooks.emit("post-create", created)
        with self._hold(row.id):
            return self._assemble(row.id)

    def _partial_length(self, partial: UploadInfo) -> int:
        if partial.state in (UploadState.TERMINATED, UploadState.EXPIRED) or is_expired(
            partial.state, partial.expires_at, self.clock()
        ):
            raise UploadGone(f"partial upload {partial.id} expired or terminated")
        if partial.concat is not Concat.PARTIAL:
            raise InvalidHeader(f"upload {partial.id} is not a partial upload")
        if partial.verdict not in (None, Verdict.OK):
            raise UploadRefused(f"partial upload {partial.id} was refused when it finished")
        if partial.length is None:
            raise InvalidHeader(f"partial upload {partial.id} has no length yet")
        return partial.length

    def _check_size(self, length: int | None) -> None:
        if length is not None and length > self.limits.max_size:
            raise UploadTooLarge(f"Upload-Length exceeds the maximum size {self.limits.max_size}")

    def _new_row(
        self, length: int | None, metadata: dict[str, bytes | None], concat: Concat | None
    ) -> UploadRow:
        now = self.clock()
        done = length == 0 and concat is not Concat.FINAL
        return UploadRow(
            id=self.new_id(),
            state=UploadState.COMPLETED if done else UploadState.ACTIVE,
            length=length,
            offset=0,
            upload_metadata=protocol.format_metadata(metadata),
            verifying=False,
            created_at=now,
            updated_at=now,
            expires_at=None if done else now + self.limits.expire_after,
            completed_at=now if done else None,
            concat=concat,
        )

    def _register(self, row: UploadRow) -> None:
        upload_id = row.id
        # Data first: a row never exists without its file. A full disk fails here,
        # before anything is registered.
        self.store.create(upload_id)
        try:
            with self.registry.writing() as tx:
                if self.quota is not None:
                    # In the insert's transaction (before it, so the row holds what
                    # was counted): over quota, nothing is registered.
                    self.quota.on_create(tx, row)
                tx.insert(row)
                self.outbox.record(tx, "post-create", UploadInfo.of(row), row.created_at)
        except BaseException:
            self.store.delete(upload_id)
            raise

    # -- reads ------------------------------------------------------------------------

    def describe(self, upload_id: str) -> UploadInfo:
        """The upload as the registry has it, tombstones included: what the authorize
        hook decides on. A read only: no lock, no write, no store. An id this server
        could not have made, or doesn't know, is ``UploadNotFound`` (404)."""
        if not protocol.is_upload_id(upload_id):
            raise UploadNotFound()
        row = self._found(self.registry.get(upload_id))
        return UploadInfo.of(row, self._parts(row))

    def describe_many(self, upload_ids: Iterable[str]) -> dict[str, UploadInfo]:
        """``describe`` for many ids at once (unknown ones are left out)."""
        wanted = sorted({i for i in upload_ids if protocol.is_upload_id(i)})
        infos: dict[str, UploadInfo] = {}
        with self.readers.begin() as session:
            for start in range(0, len(wanted), _QUERY_BATCH):
                batch = wanted[start : start + _QUERY_BATCH]
                for row in session.scalars(select(Upload).where(Upload.id.in_(batch))):
                    infos[row.id] = UploadInfo.of(row, self._parts(row, session))
        return infos

    def info(self, upload_id: str) -> UploadInfo:
        """The upload as stored, reconciled with its data file under the lock."""
        with self._hold(upload_id) as size:
            # Usually the row agrees with the data file: reading is enough, and a read
            # waits for no writer. Only a row to reconcile takes a write transaction.
            row = self._get_row(upload_id)
            info = UploadInfo.of(row, self._parts(row))
            if info.concat is Concat.FINAL:
                # Its bytes are its partials' (download): its own data holds none, so
                # there is nothing to reconcile; a finish left due is resumed.
                info = self._complete(info) if info.complete else self._assemble(upload_id)
                return verdicts.require_servable(info)
            if row.verifying and size > info.offset:
                # Bytes of a checksummed PATCH that never got its verdict: dropped from
                # the file first, so the file agrees with the row even if clearing the
                # flag below fails.
                self._fence(upload_id)
                self.store.truncate(upload_id, info.offset)
                size = info.offset
            if row.verifying or size != info.offset:
                try:
                    with self.registry.writing() as tx:
                        row = self._read_row(tx, upload_id)
                        self._reconcile_row(row, size)
                        tx.save(row)
                        info = UploadInfo.of(row)
                except OperationalError as error:
                    if db.registry_full(error) is None or size != info.offset:
                        raise
                    # A full disk refuses to clear the flag, but the answer stands: the
                    # next PATCH's transaction clears it before writing.
            # A finish left due (a crash, a failed request) is resumed by the next look.
            info = self._complete(info)
        return verdicts.require_servable(self._after_finish(info))

    def download(self, upload_id: str) -> tuple[UploadInfo, BinaryIO]:
        """A completed upload and its bytes, opened for reading.

        No lock: a completed upload's bytes never change, and an open file survives a
        concurrent DELETE.
        """
        if not protocol.is_upload_id(upload_id):
            raise UploadNotFound()
        with self.readers.begin() as session:
            row = self._load_row(session, upload_id)
            info = UploadInfo.of(row, self._parts(row, session))
            lengths = self._lengths(session, info.parts)
        if not info.complete:
            raise UploadNotFound("upload not complete yet")
        if info.finished_at is None:
            # Finishing (its finish broke off): finish it first, so its bytes are whole
            # and post-finish has run before anyone downloads it.
            info = self.info(upload_id)
        verdicts.require_servable(info)
        try:
            # A final made before finals stopped copying holds its bytes itself.
            if info.concat is Concat.FINAL and self.store.size(upload_id) != info.length:
                return info, self._open_parts(info.parts, lengths)
            return info, self.store.open(upload_id)
        except FileNotFoundError:
            raise UploadGone("upload data is missing") from None

    @staticmethod
    def _lengths(session: Session, upload_ids: Iterable[str]) -> dict[str, int]:
        wanted = set(upload_ids)
        if not wanted:
            return {}
        query = select(Upload.id, Upload.length).where(Upload.id.in_(wanted))
        return {upload_id: length or 0 for upload_id, length in session.execute(query)}

    def _open_stored(self, info: UploadInfo) -> BinaryIO:
        """A complete upload's bytes as ``download`` reads them (a final's through its
        partials'), for the finish's checks."""
        if info.concat is Concat.FINAL and self.store.size(info.id) != info.length:
            with self.readers.begin() as session:
                parts = info.parts or self._parts(self._load_row(session, info.id), session)
                lengths = self._lengths(session, parts)
            return self._open_parts(parts, lengths)
        return self.store.open(info.id)

    def _open_parts(self, parts: tuple[str, ...], lengths: dict[str, int]) -> BinaryIO:
        """A final's bytes: its partials', one after another, as one seekable file.
        A partial named several times is opened once."""
        files: dict[str, BinaryIO] = {}
        try:
            for partial_id in dict.fromkeys(parts):
                if partial_id not in lengths:
                    raise FileNotFoundError(partial_id)  # its row was purged
                files[partial_id] = self.store.open(partial_id)
        except BaseException:
            for file in files.values():
                file.close()
            raise
        return chained([(files[partial_id], lengths[partial_id]) for partial_id in parts])

    # -- writes -----------------------------------------------------------------------

    def append(
        self,
        upload_id: str,
        offset: int,
        chunks: Iterable[bytes],
        *,
        content_length: int | None = None,
        length: int | None = None,
        checksum: checksums.Checksum | None = None,
        trailer: Callable[[], str | None] | None = None,
    ) -> UploadInfo:
        """Write a PATCH body at ``offset``.

        ``content_length`` is the announced body size (None for chunked bodies);
        ``length`` is an ``Upload-Length`` declared now for a deferred upload;
        ``trailer``, when the client announced an ``Upload-Checksum`` trailer, returns
        its value once the body has ended (checksum-trailer).
        Every byte that lands is recorded, whatever happens to the request; a checksum
        that doesn't match discards the whole body.
        """
        settled: UploadInfo | None = None
        try:
            with self._hold(upload_id) as size:
                known = _KnownSize(size)
                try:
                    info = self._write(
                        upload_id,
                        known,
                        offset,
                        chunks,
                        content_length=content_length,
                        length=length,
                        checksum=checksum,
                        trailer=trailer,
                    )
                except LockLost:
                    raise  # not ours to finish any more
                except Exception:
                    settled = self._complete_after_error(upload_id, known.value)
                    raise
                settled = self._complete(info)
        finally:
            # Once the lock is released, on success and on error alike.
            if settled is not None:
                self._after_finish(settled)
        return verdicts.require_servable(settled, wrote_last=True)

    def _write(
        self,
        upload_id: str,
        known: _KnownSize,
        offset: int,
        chunks: Iterable[bytes],
        *,
        content_length: int | None,
        length: int | None,
        checksum: checksums.Checksum | None,
        trailer: Callable[[], str | None] | None,
    ) -> UploadInfo:
        """``append``'s work under the lock: check, write, record. ``known`` is the
        store's size, read under the lock: the one time a PATCH asks it (on S3, a LIST);
        the append says what it left. The finish is not its business: ``append`` runs
        ``_complete`` after it, whatever it raised."""
        verifier = checksums.Verifier(checksum, trailer)
        verify = verifier.verifying

        def record(**outcome: Any) -> UploadInfo:
            info = self._record_write(upload_id, offset, **outcome)
            known.value = info.offset  # the row and the store agree again
            return info

        def check(row: UploadRow, tx: Transaction | None) -> int:
            """The checks before the body (changing ``row`` as they go): the bytes
            the body may bring. ``tx``: the write transaction, when they change the
            row or the quota's counts."""
            verdicts.require_servable(UploadInfo.of(row))
            known.value = self._reconcile_row(row, known.value)
            if row.concat is Concat.FINAL:
                raise Forbidden("a final upload is made by concatenation, not PATCH")
            if row.offset != offset:
                raise OffsetMismatch(
                    f"Upload-Offset {offset} does not match the upload's offset {row.offset}",
                    expected=row.offset,
                    provided=offset,
                )
            if length is not None:
                self._declare_length(row, length)
                if self.quota is not None and tx is not None:  # (a length always writes)
                    self.quota.on_length(tx, row)
            if row.state is UploadState.COMPLETED and content_length:
                raise UploadTooLarge("the upload is already complete", offset=row.offset)
            limit = (row.length if row.length is not None else self.limits.max_size) - offset
            if content_length is not None and content_length > limit:
                raise UploadTooLarge(
                    f"body of {content_length} bytes exceeds the {limit} bytes remaining"
                )
            if length is not None:
                row.updated_at = self.clock()
                self._mark_complete_if_done(row)
            row.verifying = verify
            if self.quota is not None and tx is not None:
                # Room for a body of deferred length, before a byte of it is read.
                self.quota.reserve_body(tx, row, content_length)
            return limit

        # Usually the checks change nothing (no reconcile, no length, no checksum, no
        # quota to reserve): a read then, which waits for no writer; else a write,
        # checked again in it.
        row = self._get_row(upload_id)
        reserves = self.quota is not None and row.length is None and bool(content_length)
        writes = verify or length is not None or reserves or self._unreconciled(row, known.value)
        if not writes:
            limit = check(row, None)
        else:
            with self.registry.writing() as tx:
                row = self._read_row(tx, upload_id)
                limit = check(row, tx)
                tx.save(row)
        before = UploadInfo.of(row)
        metered = self._metered(row, offset, content_length, chunks)
        if before.complete:
            # Declaring the length completed it, or it was complete already.
            return before
        guard = _BodyGuard(limit, verifier)
        body = guard.wrap(metered)
        # The type gate and inspect hook see the first bytes before they are stored.
        window = self.judge.window(before, offset, lambda n: self.store.head(upload_id, n))
        if window is not None:
            body = window.wrap(body)
        # Still ours? An S3 append begins by deleting stale segments.
        self._fence(upload_id)
        landed: int | None = None
        known.value = None  # whatever the append does, until it is recorded
        try:
            landed = self.store.append(upload_id, offset, body)
            verifier.body_ended()
        except TusError as error:
            # Bytes the window refused take the whole request's with them.
            refused = window is not None and window.refused
            info = record(verified=not verify and not refused, landed=landed)
            error.offset = info.offset
            raise
        except OSError as error:
            # The disk failed (EIO, or ENOSPC at write-back): what is durable is recorded,
            # and the client resumes from there.
            durable = error.durable if isinstance(error, NotDurable) else None
            info = record(verified=not verify, durable=durable)
            cause = error.__cause__ if isinstance(error, NotDurable) else error
            log.error(
                "upload %s: storage failed (%s); kept %d bytes", upload_id, error, info.offset
            )
            if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage(offset=info.offset) from error
            raise StorageFailed(offset=info.offset) from error
        except BaseException:
            record(verified=not verify, landed=landed)
            raise
        if not guard.matches():
            info = record(verified=False, landed=landed)
            if guard.overflow:
                raise UploadTooLarge("body exceeds Upload-Length", offset=info.offset)
            raise ChecksumMismatch(offset=info.offset)
        info = record(verified=True, landed=landed)
        if content_length is not None and guard.received < content_length:
            # The body ended before Content-Length: the client went away. What came
            # is stored and recorded; tell it (if it still listens) where to resume.
            raise BodyIncomplete(offset=info.offset)
        if guard.overflow:
            raise UploadTooLarge("body passes Upload-Length; kept up to it", offset=info.offset)
        return info

    def terminate(self, upload_id: str) -> None:
        """Delete the upload's data; its row stays as a tombstone answering 410."""
        with self._hold(upload_id):
            with self.sessions.begin() as session:
                row = self._load_row(session, upload_id)
                row.state = UploadState.TERMINATED
                row.expires_at = None
                row.updated_at = self.clock()
                # The tombstone first (on PostgreSQL, this takes the row lock a final
                # being created holds), then the question: either that final committed
                # and is seen naming this partial, or it will find the tombstone.
                session.flush()
                # A live final reads its bytes through this partial's: they stay (the
                # URL answers 410 all the same); cleanup removes them once unnamed.
                keep = row.concat is Concat.PARTIAL and partial_in_use(session, upload_id)
                if self.quota is not None and not keep:
                    self.quota.release(session, row)  # a kept partial's, when its bytes go
                info = UploadInfo.of(row)
                self.outbox.record(session, "post-terminate", info, row.updated_at)
            if not keep:
                # Lost, it is left to cleanup's orphan sweep: the row says it is dead.
                self._fence(upload_id)
                self.store.delete(upload_id)
            self.locker.forget(upload_id)
        log.info("upload %s terminated", upload_id)
        self.hooks.emit("post-terminate", info)

    def resume_finish(self, upload_id: str) -> bool:
        """Run a finish left due (for ``flask cleanup``); whether this call ran it.
        Waits for no lock (``UploadLocked``): a busy upload's holder finishes it."""
        with self.locker.hold(upload_id, timeout=0):
            with self.readers.begin() as session:
                info = UploadInfo.of(self._load_row(session, upload_id))
            info = self._complete(info)
        self._after_finish(info)
        return info.finished_now

    # -- internals --------------------------------------------------------------------

    def _assemble(self, final_id: str) -> UploadInfo:
        """Complete a final upload once all its partials are complete (lock held).

        Nothing is copied: the final is read through its partials' bytes (download),
        which stay while it lives (terminate, cleanup). So a DELETE of a partial racing
        this is harmless: the partial's bytes are kept for the final either way.
        """
        with self.readers.begin() as session:
            row = self._load_row(session, final_id)
            parts = self._parts(row, session)
            info = UploadInfo.of(row, parts)
            if not info.complete:
                query = select(Upload).where(Upload.id.in_(set(parts)))
                ready = {p.id for p in session.scalars(query) if _holds_its_bytes(p)}
        if info.complete:
            return self._complete(info)  # a finish left due
        if not ready.issuperset(parts):
            return info
        # Recording it is a write: only while the lock is still ours.
        self._fence(final_id)
        with self.sessions.begin() as session:
            row = self._load_row(session, final_id)
            row.offset = row.length or 0
            row.updated_at = self.clock()
            self._mark_complete_if_done(row)
            info = UploadInfo.of(row, parts)
        return self._complete(info)

    def _complete_finals_of(self, partial_id: str) -> None:
        with self.readers.begin() as session:
            query = select(UploadPart.final_id).where(UploadPart.partial_id == partial_id)
            final_ids = list(dict.fromkeys(session.scalars(query)))
        for final_id in final_ids:
            try:
                with self._hold(final_id):
                    self._assemble(final_id)
            except (UploadLocked, UploadGone, UploadNotFound):
                # Busy or gone: the next HEAD on the final assembles it if still due.
                continue

    def _require_known(self, upload_id: str) -> None:
        """404 for an id we couldn't have made or don't know, 410 for a tombstone or an
        expired upload: a read only, before any lock, so a stranger's made-up ids never
        take a lock (nor leave a lock file), nor queue behind (or block) a writer."""
        if not protocol.is_upload_id(upload_id):
            # Never a path: only ids we could have made reach storage and locks.
            raise UploadNotFound()
        self._check_live(self._found(self.registry.get(upload_id)))

    @contextmanager
    def _hold(self, upload_id: str) -> Iterator[int]:
        """Hold a known upload's lock; yields the size of its data, read under the lock
        (410 when it has none: lost data). A request's one question to the store before
        it writes: on S3 each is a LIST."""
        self._require_known(upload_id)
        with self.locker.hold(upload_id, timeout=self.limits.lock_timeout):
            size = self.store.size(upload_id)
            if size is None:
                raise UploadGone("upload data is missing")
            yield size

    def _load_row(self, session: Session, upload_id: str) -> Upload:
        """The upload's row: 404 when unknown, 410 for a tombstone or past its expiry.
        Reads the registry only (see ``_reconcile_row`` for the store)."""
        row = session.get(Upload, upload_id)
        if row is None:
            raise UploadNotFound()
        self._check_live(row)
        return row

    def _read_row(self, tx: Transaction, upload_id: str) -> UploadRow:
        """``_load_row`` on the hot paths (registry.py), in a transaction."""
        row = self._found(tx.get(upload_id))
        self._check_live(row)
        return row

    def _get_row(self, upload_id: str) -> UploadRow:
        """``_read_row`` as a read of its own (one statement)."""
        row = self._found(self.registry.get(upload_id))
        self._check_live(row)
        return row

    @staticmethod
    def _found(row: UploadRow | None) -> UploadRow:
        if row is None:
            raise UploadNotFound()
        return row

    def _check_live(self, row: Upload | UploadRow) -> None:
        if row.state in (UploadState.TERMINATED, UploadState.EXPIRED):
            raise UploadGone()
        if row.expired_at(self.clock()):
            raise UploadGone("upload expired")

    def _parts(self, row: Upload | UploadRow, session: Session | None = None) -> tuple[str, ...]:
        """A final upload's partial upload ids, in order (fixed when it was made, so
        read apart from its row); () for any other upload."""
        if row.concat is not Concat.FINAL:
            return ()
        if session is None:
            with self.registry.reading() as tx:
                return tx.parts(row.id)
        query = (
            select(UploadPart.partial_id)
            .where(UploadPart.final_id == row.id)
            .order_by(UploadPart.position)
        )
        return tuple(session.scalars(query))

    @staticmethod
    def _unreconciled(row: UploadRow, size: int | None) -> bool:
        """Whether ``_reconcile_row`` would change ``row`` (or refuse it)."""
        return row.concat is not Concat.FINAL and (row.verifying or size != row.offset)

    def _reconcile_row(self, row: Upload | UploadRow, size: int | None) -> int | None:
        """Make the row agree with the data file (``size``, read under the lock) after a
        crash between write and record: may truncate the store. Returns the store's
        size after it.

        Called under the lock. The file is the truth for bytes that landed, except bytes
        of a checksummed PATCH that never got its verdict: those are dropped.
        """
        if row.concat is Concat.FINAL:
            return size  # its bytes are its partials': its own data is empty by design
        if size is None:
            raise UploadGone("upload data is missing")
        if row.verifying:
            if size != row.offset:
                self.store.truncate(row.id, row.offset)
            row.verifying = False
            return row.offset
        if size == row.offset:
            return size
        if row.length is not None and size > row.length:
            self.store.truncate(row.id, row.length)
            size = row.length
        log.warning("upload %s: registry had %d bytes, file %d; fixed", row.id, row.offset, size)
        row.offset = size
        self._mark_complete_if_done(row)
        return size

    def _fence(self, upload_id: str) -> None:
        """Before recording or deleting what the upload's lock protects: is it still
        ours? A lost lock (PostgreSQL's dies with its connection) means another host
        may be writing this upload now. This narrows the window to one round trip; it
        can't close it (the store knows nothing of locks)."""
        if not self.locker.still_held(upload_id):
            log.error("upload %s: its lock was lost mid-request; stopping", upload_id)
            raise LockLost()

    def _metered(
        self,
        row: UploadRow,
        offset: int,
        content_length: int | None,
        chunks: Iterable[bytes],
    ) -> Iterable[bytes]:
        """A PATCH body counted against the quota (quota.py) when its upload's length is
        deferred: room for a body with a Content-Length was reserved by the checks
        (``reserve_body``, in their transaction), before a byte of it is read; a
        chunked one is counted as it arrives."""
        if self.quota is None or row.length is not None or content_length is not None:
            return chunks
        return self.quota.meter(row.id, offset, row.quota_bytes, chunks)

    def _declare_length(self, row: Upload | UploadRow, length: int) -> None:
        if row.length is not None:
            if row.length != length:
                raise InvalidHeader("Upload-Length can't change once set")
            return
        if length > self.limits.max_size:
            raise UploadTooLarge(f"Upload-Length exceeds the maximum size {self.limits.max_size}")
        if length < row.offset:
            raise InvalidHeader("Upload-Length is below the upload's offset")
        row.length = length

    def _mark_complete_if_done(self, row: Upload | UploadRow) -> None:
        now = self.clock()
        if row.length is not None and row.offset >= row.length:
            row.state = UploadState.COMPLETED
            row.completed_at = now
            row.expires_at = None
            log.info("upload %s completed (%d bytes)", row.id, row.offset)
        else:
            row.expires_at = now + self.limits.expire_after

    def _record_write(
        self,
        upload_id: str,
        start: int,
        *,
        verified: bool,
        landed: int | None = None,
        durable: int | None = None,
    ) -> UploadInfo:
        """Record what a write left in the store (a short transaction of its own).

        ``landed``: the store's size after the append, when the append returned it
        (otherwise the store is asked). ``durable``: the store could not make all of it
        durable (``NotDurable``), only this many bytes count, whatever the file's size
        says."""
        # A holder that lost the lock records nothing and deletes nothing: the new
        # holder reconciles the row with what the store has.
        self._fence(upload_id)
        if not verified:
            self.store.truncate(upload_id, start)
            if landed is not None:
                landed = start  # the append began there
        size = self.store.size(upload_id) if landed is None else landed
        stored = start if size is None else size
        doubtful = False
        if durable is not None and stored > durable:
            stored = durable
            try:
                self.store.truncate(upload_id, durable)
            except OSError:
                # The disk refuses even that: the row says what counts, and the flag
                # makes the reconcile drop the rest rather than count it.
                doubtful = True
        try:
            with self.registry.writing() as tx:
                row = tx.get(upload_id)
                if row is None:
                    raise UploadNotFound()
                row.offset = stored
                row.verifying = doubtful
                row.updated_at = self.clock()
                self._mark_complete_if_done(row)
                if self.quota is not None:
                    self.quota.settle(tx, row)
                tx.save(row)
                return UploadInfo.of(row)
        except OperationalError as error:
            full = db.registry_full(error, offset=start)
            if full is None:
                raise
            # The registry's disk is full too, so it can't learn of the new bytes: put
            # the file back to what the registry says (freeing their space) and tell the
            # client to resume from there. Left in place, they would make every later
            # request, HEAD included, try to record them and fail the same way.
            self.store.truncate(upload_id, start)
            raise full from error
