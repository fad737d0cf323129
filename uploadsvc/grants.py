"""Upload links (grants): who may upload, how much, what and until when.

A grant is a row (``models.Grant``) and a token: ``ug_`` and 43 characters of
``secrets.token_urlsafe(32)`` (256 bits). Only the token's sha256 is stored; a token is
looked up by its hash and the hashes compared again in constant time, so neither the
database nor a timing tells anything of a token. The link the operator hands out
carries the token in its fragment (``https://host/#grant=ug_...``), which browsers never
send to a server nor put in a ``Referer``: no proxy or access log sees it. tus clients
send it as ``Authorization: Bearer ug_...``.

Framework-free (no Flask): the store, the token rules, and the parsing of the operator's
``flask grant create`` values. Quotas are counted by quota.py; access is checked by
access.py.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from .models import Grant as GrantRow
from .models import QuotaUsage

TOKEN_PREFIX = "ug_"
_TOKEN_BYTES = 32
_ID_BYTES = 6  # a grant's id is public (flask grant list/revoke), not a secret
# A token as we make them; anything else is refused before a lookup.
_TOKEN = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{20,128}")
_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_DURATION = re.compile(r"(\d+)\s*([smhdw])", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# A media type or a family of them: "image/png", "image/*".
_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/(\*|[a-z0-9][a-z0-9!#$&^_.+-]*)")
MAX_GRANT_BYTES = 2**53  # config.MAX_BYTES: exact in JavaScript and BIGINT
MAX_GRANT_FILES = 2**31 - 1  # an INTEGER column


@dataclass(frozen=True)
class Grant:
    """A grant as callers see it (no token: that is never kept)."""

    id: str
    label: str
    max_bytes: int | None
    max_files: int | None
    expires_at: datetime | None
    revoked_at: datetime | None
    types: tuple[str, ...]
    created_at: datetime

    @classmethod
    def of(cls, row: GrantRow) -> Grant:
        return cls(
            id=row.id,
            label=row.label,
            max_bytes=row.max_bytes,
            max_files=row.max_files,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            types=split_types(row.types),
            created_at=row.created_at,
        )

    def problem(self, now: datetime) -> str | None:
        """Why this grant no longer works at ``now`` ("revoked", "expired"), or None."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return None

    def name(self) -> str:
        """How messages name it: its id and label."""
        return f"{self.id} ({self.label!r})" if self.label else self.id


def allowed_types(grant: Grant | None) -> tuple[str, ...]:
    """The media types a grant's uploads may have ("image/*" covers a family); empty
    allows any. For the type gates: the upload's grant is ``HookRequest.grant``."""
    return () if grant is None else grant.types


@dataclass(frozen=True)
class Usage:
    used_bytes: int
    used_files: int


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, or None without one
    (another scheme counts as none: it isn't ours to judge)."""
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class GrantStore:
    """Grants in the registry. ``readers`` for the per-request lookup (it waits for no
    writer), ``sessions`` for the rest."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        readers: sessionmaker[Session],
        clock: Callable[[], datetime],
    ) -> None:
        self.sessions = sessions
        self.readers = readers
        self.clock = clock

    def create(
        self,
        *,
        label: str,
        max_bytes: int | None,
        max_files: int | None,
        expires_in: timedelta | None,
        types: Iterable[str] = (),
    ) -> tuple[Grant, str]:
        """A new grant and its token (shown once: only its hash is kept)."""
        now = self.clock()
        token = new_token()
        row = GrantRow(
            id=secrets.token_hex(_ID_BYTES),
            label=label,
            token_hash=hash_token(token),
            max_bytes=max_bytes,
            max_files=max_files,
            expires_at=None if expires_in is None else now + expires_in,
            revoked_at=None,
            types=",".join(types),
            created_at=now,
        )
        with self.sessions.begin() as session:
            session.add(row)
            # Its usage row, counted from here on (quota.py).
            session.add(QuotaUsage(scope=row.id, used_bytes=0, used_files=0))
            grant = Grant.of(row)
        return grant, token

    def by_token(self, token: str) -> Grant | None:
        """The grant a token opens, revoked and expired ones included (the caller says
        which they are), or None for a token no grant has."""
        if not _TOKEN.fullmatch(token):
            return None
        wanted = hash_token(token)
        with self.readers.begin() as session:
            row = session.scalar(select(GrantRow).where(GrantRow.token_hash == wanted))
            if row is None or not hmac.compare_digest(row.token_hash, wanted):
                return None
            return Grant.of(row)

    def get(self, grant_id: str) -> Grant | None:
        with self.readers.begin() as session:
            row = session.get(GrantRow, grant_id)
            return None if row is None else Grant.of(row)

    def all(self) -> list[tuple[Grant, Usage]]:
        """Every grant with what it holds, oldest first."""
        query = (
            select(GrantRow, QuotaUsage)
            .outerjoin(QuotaUsage, QuotaUsage.scope == GrantRow.id)
            .order_by(GrantRow.created_at, GrantRow.id)
        )
        with self.readers.begin() as session:
            return [
                (
                    Grant.of(row),
                    Usage(usage.used_bytes, usage.used_files) if usage else Usage(0, 0),
                )
                for row, usage in session.execute(query)
            ]

    def revoke(self, grant_id: str) -> Grant | None:
        """Revoke a grant (from its uploads' next request on); None when unknown.
        Revoking again keeps the first time."""
        with self.sessions.begin() as session:
            session.execute(
                update(GrantRow)
                .where(GrantRow.id == grant_id, GrantRow.revoked_at.is_(None))
                .values(revoked_at=self.clock())
            )
            row = session.get(GrantRow, grant_id)
            return None if row is None else Grant.of(row)


def grant_json(grant: Grant, usage: Usage | None = None, *, now: datetime) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": grant.id,
        "label": grant.label,
        "state": grant.problem(now) or "live",
        "max_bytes": grant.max_bytes,
        "max_files": grant.max_files,
        "types": list(grant.types),
        "created_at": grant.created_at.isoformat(),
        "expires_at": grant.expires_at.isoformat() if grant.expires_at else None,
        "revoked_at": grant.revoked_at.isoformat() if grant.revoked_at else None,
    }
    if usage is not None:
        data["used_bytes"] = usage.used_bytes
        data["used_files"] = usage.used_files
    return data


# -- the operator's values (flask grant create) ---------------------------------------


def parse_size(text: str) -> int:
    """``20G``, ``512M``, ``1048576``, ``8MiB`` (powers of 1024, as uploadsvc-upload
    reads sizes), at least 1; ValueError otherwise."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (e.g. 20G, 512M, 1048576)")
    number = int(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")
    number = int(number)
    if not 1 <= number <= MAX_GRANT_BYTES:
        raise ValueError(f"{text!r}: a size is 1 byte to 8 PiB")
    return number


def parse_duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``2w``, ``3600s`` (a sum such as ``1d12h`` too), more
    than nothing and at most ten years; ValueError otherwise."""
    compact = text.strip().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration (e.g. 7d, 12h, 30m)")
    seconds = sum(int(n) * _DURATION_UNITS[u.lower()] for n, u in parts)
    if not 0 < seconds <= 10 * 366 * 86400:
        raise ValueError(f"{text!r}: a grant lasts more than nothing, at most ten years")
    return timedelta(seconds=seconds)


def parse_types(text: str) -> tuple[str, ...]:
    """``image/*,application/pdf`` as a tuple of lower-case media types."""
    types = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    for media_type in types:
        if not _TYPE.fullmatch(media_type):
            raise ValueError(f"{media_type!r} is not a media type (e.g. image/png, image/*)")
    return types


def split_types(stored: str) -> tuple[str, ...]:
    return tuple(t for t in stored.split(",") if t)
