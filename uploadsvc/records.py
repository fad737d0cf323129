"""The records hooks, views and the service all speak: an upload as callers see it
(``UploadInfo``), the service's limits, and the JSON form of an upload.

Below the service, hooks and views in the layering (pyproject.toml's import-linter
contracts), so each imports them from here and none imports another for its types. The
state enums live with the registry's columns (models.py, below this module) and are
re-exported here: views and hooks name states without importing the ORM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .errors import TusError
from .models import Concat, Upload, UploadRow, UploadState, Verdict
from .protocol import parse_metadata

__all__ = ["Concat", "Limits", "UploadInfo", "UploadState", "Verdict", "upload_json"]


@dataclass(frozen=True)
class Limits:
    max_size: int
    expire_after: timedelta
    lock_timeout: float


@dataclass(frozen=True)
class UploadInfo:
    id: str
    state: UploadState
    length: int | None
    offset: int
    metadata: str  # canonical Upload-Metadata header value
    expires_at: datetime | None
    created_at: datetime
    completed_at: datetime | None = None
    # When its finish sequence ran; None while it is due (see ``_complete``).
    finished_at: datetime | None = None
    concat: Concat | None = None
    parts: tuple[str, ...] = ()  # a final upload's partial upload ids, in order
    # Headers a pre-finish hook adds to the response of the request that completed it.
    finish_headers: dict[str, str] = field(default_factory=dict)
    # This request ran the finish sequence (and won its compare-and-set).
    finished_now: bool = False
    # The grant (upload link) that created it; None without one (grants.py).
    grant_id: str | None = None
    # The declared whole-file digest (one Repr-Digest member), and what the finish
    # decided (None until it ran; only OK is served).
    digest: str | None = None
    verdict: Verdict | None = None
    verdict_reason: str | None = None

    @property
    def complete(self) -> bool:
        return self.state is UploadState.COMPLETED

    @classmethod
    def of(cls, row: Upload | UploadRow, parts: tuple[str, ...] = ()) -> UploadInfo:
        return cls(
            id=row.id,
            state=row.state,
            length=row.length,
            offset=row.offset,
            metadata=row.upload_metadata,
            expires_at=row.expires_at,
            created_at=row.created_at,
            completed_at=row.completed_at,
            finished_at=row.finished_at,
            concat=row.concat,
            parts=parts,
            grant_id=row.grant_id,
            digest=row.digest,
            verdict=row.verdict,
            verdict_reason=row.verdict_reason,
        )


def upload_json(upload: UploadInfo) -> dict[str, Any]:
    try:
        metadata: dict[str, str | None] | str = {
            key: None if value is None else value.decode("utf-8", "replace")
            for key, value in parse_metadata(upload.metadata).items()
        }
    except TusError:
        # Stored by a pre_create hook in a form the header can't carry: sent as it is
        # rather than not at all.
        metadata = upload.metadata
    return {
        "id": upload.id,
        "state": upload.state.value,
        "length": upload.length,
        "offset": upload.offset,
        "metadata": metadata,
        "concat": upload.concat.value if upload.concat else None,
        "created_at": upload.created_at.isoformat(),
        "completed_at": upload.completed_at.isoformat() if upload.completed_at else None,
        # The upload link it came from (flask grant list), None without one.
        "grant_id": upload.grant_id,
        "digest": upload.digest,
        "verdict": upload.verdict.value if upload.verdict else None,
        "verdict_reason": upload.verdict_reason,
    }
