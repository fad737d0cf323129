"""The upload registry: one row per upload, the truth about what its bytes mean."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    and_,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The longest upload id: a pre-create hook may choose up to 64 characters
# (protocol.is_upload_id); the server's own are 32.
ID_LENGTH = 64
# A grant's public id (grants.py): 12 hex digits; the longest a scope of quota_usage is.
GRANT_ID_LENGTH = 32
# "sha-512=:" + 88 base64 characters + ":" with room to spare.
DIGEST_LENGTH = 128


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes, stored naive (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class UploadState(enum.StrEnum):
    ACTIVE = "active"  # accepting bytes
    COMPLETED = "completed"  # offset == length; kept until retention says otherwise
    TERMINATED = "terminated"  # tombstone after DELETE: answers 410
    EXPIRED = "expired"  # tombstone after expiry cleanup: answers 410


class Verdict(enum.StrEnum):
    """What the finish decided about an upload's bytes (None until it ran)."""

    OK = "ok"  # served
    CORRUPT = "corrupt"  # its bytes don't match the whole-file digest declared for it
    REJECTED = "rejected"  # a type gate or a check hook refused it: never served


class Concat(enum.StrEnum):
    """The concatenation role of an upload (None: an ordinary upload)."""

    PARTIAL = "partial"
    FINAL = "final"


class Base(DeclarativeBase):
    pass


class Upload(Base):
    __tablename__ = "uploads"
    # The upload page's list (listing.py): completed uploads, newest first, paged by
    # (completed_at, id). Without it every page sorted the table under its transaction.
    __table_args__ = (Index("ix_uploads_listing", "state", "completed_at", "id"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    state: Mapped[UploadState] = mapped_column(
        Enum(UploadState, native_enum=False, length=16, validate_strings=True),
        default=UploadState.ACTIVE,
        index=True,
    )
    # None while the client defers the length.
    length: Mapped[int | None] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    # Canonical Upload-Metadata header form: base64 values keep binary metadata intact.
    upload_metadata: Mapped[str] = mapped_column(Text, default="")
    # Set while a checksummed PATCH writes: bytes past ``offset`` are unverified, so a
    # crash before the verdict must not let reconciliation count them.
    verifying: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Indexed for the operator view's feed (watching.py): what changed in the last second.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the finish sequence (store finish, pre-finish, post-finish, finals waiting on
    # it) ran to its end. A COMPLETED row without it is finishing: its last byte is
    # recorded, its finish is due, and whoever next holds its lock runs it (a crash in
    # between leaves it due, never lost). Set by compare-and-set, so it happens once.
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    concat: Mapped[Concat | None] = mapped_column(
        Enum(Concat, native_enum=False, length=8, validate_strings=True)
    )
    # The grant (upload link) that created it, None without one (README "Access and
    # limits"); and what it holds of a quota (quota.py): bytes and files counted against
    # its grant's usage row, or the shared one, until it is terminated or expires.
    grant_id: Mapped[str | None] = mapped_column(String(GRANT_ID_LENGTH), index=True)
    quota_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    quota_files: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The whole-file digest the client declared (Repr-Digest or the checksum metadata),
    # as one Repr-Digest member, e.g. "sha-256=:<base64>:"; checked when it finishes.
    digest: Mapped[str | None] = mapped_column(String(DIGEST_LENGTH))
    # Set with ``finished_at``, by the same compare-and-set: only an OK upload is served.
    verdict: Mapped[Verdict | None] = mapped_column(
        Enum(Verdict, native_enum=False, length=16, validate_strings=True)
    )
    verdict_reason: Mapped[str | None] = mapped_column(Text)

    def expired_at(self, now: datetime) -> bool:
        """Whether this upload is past its expiry at ``now`` (see ``is_expired``)."""
        return is_expired(self.state, self.expires_at, now)

    @classmethod
    def expired_by(cls, now: datetime) -> ColumnElement[bool]:
        """``is_expired`` as SQL: the rows past their expiry at ``now``."""
        return and_(cls.state == UploadState.ACTIVE, cls.expires_at <= now)


@dataclass(slots=True)
class UploadRow:
    """An ``uploads`` row as a plain record: what registry.py reads and writes on the
    hot paths, where loading an ``Upload`` through the ORM cost about 80 times as much.
    Same names as ``Upload``'s columns, so the service's rules apply to either."""

    id: str
    state: UploadState
    length: int | None
    offset: int
    upload_metadata: str
    verifying: bool
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None
    completed_at: datetime | None = None
    finished_at: datetime | None = None
    concat: Concat | None = None
    grant_id: str | None = None
    quota_bytes: int = 0
    quota_files: int = 0
    digest: str | None = None
    verdict: Verdict | None = None
    verdict_reason: str | None = None

    def expired_at(self, now: datetime) -> bool:
        """Whether this upload is past its expiry at ``now`` (see ``is_expired``)."""
        return is_expired(self.state, self.expires_at, now)


def is_expired(state: UploadState, expires_at: datetime | None, now: datetime) -> bool:
    """The one rule for "expired at ``now``": an unfinished (ACTIVE) upload whose
    ``expires_at`` has come. A completed upload never expires (retention is cleanup's
    business), and a tombstone is already gone. ``Upload.expired_by`` is its SQL."""
    return state is UploadState.ACTIVE and expires_at is not None and expires_at <= now


class UploadPart(Base):
    """One partial upload of a final (concatenated) upload, in order."""

    __tablename__ = "upload_parts"

    final_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("uploads.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    # No foreign key: a final keeps naming its parts after a partial's row is purged.
    partial_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)


class EventState(enum.StrEnum):
    """Where an outbox event is in its delivery (outbox.py, delivery.py)."""

    PENDING = "pending"  # to be delivered when ``due_at`` comes
    DELIVERED = "delivered"  # a receiver answered 2xx
    FAILED = "failed"  # every attempt failed; ``flask webhooks replay`` sends it again


class Event(Base):
    """An event of the outbox: written in the same transaction as the change it
    describes, so it exists exactly when the change does, then delivered by a
    dispatcher (delivery.py) that claims it with a lease."""

    __tablename__ = "events"
    # The dispatcher's question: pending events due now, oldest first.
    __table_args__ = (
        Index("ix_events_due", "state", "due_at"),
        Index("ix_events_id", "id", unique=True),
        # One upload's events go out in order: each waits for the earlier ones.
        Index("ix_events_upload", "upload_id", "seq"),
    )

    # Order of recording (a sequence; the public id is random, see ``id``).
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    # X-Uploadsvc-Event-Id: random, so it stays unique across registries (a receiver
    # that drops duplicates by id never drops a new event of a rebuilt registry).
    id: Mapped[str] = mapped_column(String(36))
    event: Mapped[str] = mapped_column(String(32))
    upload_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    # The request body, frozen when the change happened: retries send the same bytes.
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[EventState] = mapped_column(
        Enum(EventState, native_enum=False, length=16, validate_strings=True),
        default=EventState.PENDING,
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # When the next attempt is due (pending), or when the last one ended (otherwise).
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # A dispatcher's claim: nobody else attempts it before then.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(200))


class Grant(Base):
    """An upload link (grants.py): who may upload, how much, until when. Never deleted
    (a revoked grant stays, so its uploads still name it), hence no foreign keys to it."""

    __tablename__ = "grants"

    id: Mapped[str] = mapped_column(String(GRANT_ID_LENGTH), primary_key=True)
    label: Mapped[str] = mapped_column(Text, default="")
    # sha256 of the token, hex: the token itself is never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    max_bytes: Mapped[int | None] = mapped_column(BigInteger)
    max_files: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Allowed media types, comma-separated ("image/*,application/pdf"); "" allows any.
    types: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class QuotaUsage(Base):
    """What a quota scope holds now: one row per grant (its id), and ``OPEN_SCOPE`` for
    uploads without one. Counted by conditional UPDATEs (quota.py), never read-then-write."""

    __tablename__ = "quota_usage"

    scope: Mapped[str] = mapped_column(String(GRANT_ID_LENGTH), primary_key=True)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    used_files: Mapped[int] = mapped_column(Integer, default=0)


# The usage row of uploads made without a grant (no grant id is this: ids are hex).
OPEN_SCOPE = "*"
# -- what the operator view watches (progress.py writes these, watching.py reads them) --


class UploadProgress(Base):
    """A PATCH (or POST) body in flight, as its worker last reported it: about once a
    second while the body streams, deleted when it ends. Every worker and host reads the
    same rows, so the operator view shows every body whichever worker answers.

    ``position`` is the upload's offset when the body began plus the bytes received
    since: not durable, never an answer to a client (``Upload.offset`` is)."""

    __tablename__ = "upload_progress"

    upload_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    # Which body (worker pid and a counter): a worker deletes only the row it wrote, not
    # the row of a newer body on the same upload that took over.
    stream: Mapped[str] = mapped_column(String(40))
    position: Mapped[int] = mapped_column(BigInteger)
    rate: Mapped[int] = mapped_column(BigInteger)  # bytes/s since the previous report
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_byte_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Refreshed with every report: a row not refreshed for a while is a dead worker's.
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class ReceivedPerMinute(Base):
    """Body bytes received per minute (UTC), summed over every worker and host: the
    operator view's chart. Rows older than a couple of hours are trimmed."""

    __tablename__ = "received_per_minute"

    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    received: Mapped[int] = mapped_column(BigInteger)


#: Why an upload failed, as the operator view and ``uploadsvc_upload_failures_total``
#: name it: a bounded set (a metric label). A part that refuses uploads for a new reason
#: adds it here and calls ``ProgressReporter.failed`` (progress.py). ``expired`` is read
#: from the registry (an unfinished upload past its expiry), never reported.
FAILURE_REASONS = ("checksum", "disk_full", "storage", "quota", "type", "digest", "expired")


class UploadFailure(Base):
    """A request that failed an upload in a way an operator wants to see (a checksum
    mismatch, a full disk, a quota, a refused type...): ``reason`` is one of
    ``FAILURE_REASONS``. Trimmed to the last day."""

    __tablename__ = "upload_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    upload_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
