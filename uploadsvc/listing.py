"""Recent completed uploads, for the upload page's list (no Flask).

Partial uploads (pieces of a concatenation) are not listed: their final upload is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from . import downloads, protocol
from .models import Concat, Upload, UploadState

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
    sessions: sessionmaker[Session], *, scan: int = MAX_SCAN
) -> Iterator[CompletedUpload]:
    """Completed uploads, newest first, at most ``scan`` of them."""
    query = (
        select(Upload)
        .where(Upload.state == UploadState.COMPLETED)
        .where(or_(Upload.concat.is_(None), Upload.concat == Concat.FINAL))
        .order_by(Upload.completed_at.desc(), Upload.id)
        .limit(min(scan, MAX_SCAN))
    )
    with sessions() as session:
        rows = [_completed(row) for row in session.scalars(query)]
    yield from rows


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
