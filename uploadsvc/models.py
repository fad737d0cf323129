"""The upload registry: one row per upload, the truth about what its bytes mean."""

from __future__ import annotations

import enum
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

    def expired_at(self, now: datetime) -> bool:
        """Whether this upload is past its expiry at ``now`` (see ``is_expired``)."""
        return is_expired(self.state, self.expires_at, now)

    @classmethod
    def expired_by(cls, now: datetime) -> ColumnElement[bool]:
        """``is_expired`` as SQL: the rows past their expiry at ``now``."""
        return and_(cls.state == UploadState.ACTIVE, cls.expires_at <= now)


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
