"""Recent completed uploads, for the upload page's list (no Flask).

Partial uploads (pieces of a concatenation) are not listed: their final upload is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from . import downloads, protocol
from .models import Concat, Upload, UploadState, Verdict

# At most this many rows are read for one listing, however many the caller drops.
MAX_SCAN = 1000


@dataclass(frozen=True)
class CompletedUpload:
    id: str
    filename: str | None  # from the metadata, made safe as downloads name it
    filetype: str | None
    size: int
    completed_at: datetime


def recent_completed(
    readers: sessionmaker[Session],
    *,
    before: tuple[datetime, str] | None = None,
    scan: int = MAX_SCAN,
    grant_id: str | None = None,
) -> Iterator[CompletedUpload]:
    """Completed uploads, newest first (ties: larger id first), at most ``scan`` of
    them; with ``before`` (a row's ``completed_at`` and ``id``, see ``cursor``) only
    those after it in that order. ``readers``: read-only sessions, so a listing never
    waits for (or holds up) a writer. The index ``ix_uploads_listing`` (state,
    completed_at, id) serves the order, so a page costs its own rows, not a sort of
    the table. ``grant_id``: only the uploads that grant (upload link) created."""
    query = recent_completed_query(before, scan)
    if grant_id is not None:
        query = query.where(Upload.grant_id == grant_id)
    with readers() as session:
        rows = [_completed(row) for row in session.scalars(query)]
    yield from rows


def recent_completed_query(before: tuple[datetime, str] | None, scan: int) -> Select[Upload]:
    query = (
        select(Upload)
        .where(Upload.state == UploadState.COMPLETED)
        # Only what a download would serve: never a corrupt or rejected upload (a
        # finishing one, not judged yet, is judged by the download's finish).
        .where(or_(Upload.verdict.is_(None), Upload.verdict == Verdict.OK))
        .where(or_(Upload.concat.is_(None), Upload.concat == Concat.FINAL))
        .order_by(Upload.completed_at.desc(), Upload.id.desc())
        .limit(max(1, min(scan, MAX_SCAN)))
    )
    if before is not None:
        completed_at, upload_id = before
        query = query.where(
            or_(
                Upload.completed_at < completed_at,
                and_(Upload.completed_at == completed_at, Upload.id < upload_id),
            )
        )
    return query


def cursor(upload: CompletedUpload) -> str:
    """The ``before`` value that continues a listing after ``upload``."""
    return f"{_timestamp(upload.completed_at)},{upload.id}"


def parse_cursor(value: str) -> tuple[datetime, str]:
    """``cursor``'s inverse; ValueError when ``value`` isn't one."""
    stamp, sep, upload_id = value.strip().rpartition(",")
    if not sep or not protocol.is_upload_id(upload_id):
        raise ValueError("not a listing cursor")
    completed_at = datetime.fromisoformat(stamp)
    if completed_at.tzinfo is None:
        raise ValueError("not a listing cursor")
    return completed_at.astimezone(UTC), upload_id


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _completed(row: Upload) -> CompletedUpload:
    metadata = protocol.parse_metadata(row.upload_metadata)
    raw_name = metadata.get("filename")
    raw_type = metadata.get("filetype")
    return CompletedUpload(
        id=row.id,
        filename=downloads.safe_filename(raw_name) if raw_name else None,
        filetype=raw_type.decode("utf-8", "replace")[:255] if raw_type else None,
        size=row.offset,
        completed_at=row.completed_at or row.updated_at,
    )
