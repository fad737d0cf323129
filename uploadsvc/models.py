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
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
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
