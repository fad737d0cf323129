"""The events outbox: each post-event is a row written in the transaction of its change.

``record(session_or_connection, ...)`` is called by whoever makes the change (the
service's create, finish and terminate; cleanup's expiry) inside the transaction that
makes it (an ORM session, a Core connection, or the hot paths' registry transaction,
registry.py: anything with ``insert_event``), so the event commits exactly when the
change does: a crash (SIGKILL) before the commit loses both, after it neither. Delivery
is someone else's (delivery.py): a dispatcher claims due rows with a lease and posts
them, so a slow or dead receiver costs no upload anything.

The row holds the request body as it will be sent (JSON, frozen at the change: every
retry sends the same bytes) and a random event id, ``X-Uploadsvc-Event-Id``, stable
across retries so receivers can drop duplicates: delivery is at least once.

Only an ``Outbox`` that is ``enabled`` (a webhook URL is set) writes rows: with no
receiver there is nobody to deliver to, and nothing should pile up.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Connection, CursorResult, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from .models import Event, EventState
from .records import UploadInfo, upload_json

__all__ = [
    "EVENTS",
    "EventView",
    "EventWriter",
    "Outbox",
    "list_events",
    "payload",
    "record",
    "replay",
]

# The events a webhook receives (the Python post hooks get the first three in-process).
EVENTS = ("post-create", "post-finish", "post-terminate", "post-expire")


def payload(event_id: str, event: str, upload: UploadInfo, now: datetime, **details: Any) -> str:
    """The JSON body of a webhook request: the event, its id and time, the upload as
    it was just after the change (``upload_json``), and any ``details`` (an expiry's
    reason)."""
    body: dict[str, Any] = {
        "id": event_id,
        "event": event,
        "occurred_at": now.isoformat(),
        "upload": upload_json(upload),
        **details,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=False)


class EventWriter(Protocol):
    """A transaction that writes outbox rows itself (registry.Transaction: the hot
    paths' plain SQL, where the ORM's insert would cost more than the change)."""

    def insert_event(self, values: dict[str, Any]) -> None: ...


def record(
    session: Session | Connection | EventWriter,
    event: str,
    upload: UploadInfo,
    now: datetime,
    **details: Any,
) -> str:
    """Write ``event`` for ``upload`` to the outbox within ``session``'s transaction
    (an ORM session, a Core connection or an ``EventWriter``, whichever the caller's
    transaction is); returns the event id. Due at once."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")
    event_id = str(uuid.uuid4())
    values: dict[str, Any] = {
        "id": event_id,
        "event": event,
        "upload_id": upload.id,
        "payload": payload(event_id, event, upload, now, **details),
        "state": EventState.PENDING,
        "attempts": 0,
        "created_at": now,
        "due_at": now,
    }
    if isinstance(session, Session | Connection):
        session.execute(insert(Event).values(**values))
    else:
        session.insert_event(values)
    return event_id


@dataclass(frozen=True)
class Outbox:
    """``record`` when webhooks are on (``enabled``), nothing otherwise: what the
    service and cleanup hold, so neither asks the settings."""

    enabled: bool = False

    def record(
        self,
        session: Session | Connection | EventWriter,
        event: str,
        upload: UploadInfo,
        now: datetime,
        **details: Any,
    ) -> str | None:
        if not self.enabled:
            return None
        return record(session, event, upload, now, **details)


# -- what operators do with it (flask webhooks list / replay) ----------------------------


@dataclass(frozen=True)
class EventView:
    """An outbox row as ``flask webhooks list`` shows it."""

    id: str
    event: str
    upload_id: str
    state: str
    attempts: int
    created_at: datetime
    due_at: datetime
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.event,
            "upload_id": self.upload_id,
            "state": self.state,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
            "due_at": self.due_at.isoformat(),
            "delivered_at": self.delivered_at.isoformat() if self.delivered_at else None,
            "last_status": self.last_status,
            "last_error": self.last_error,
        }


def list_events(
    readers: sessionmaker[Session], *, failed_only: bool = False, limit: int = 100
) -> list[EventView]:
    """The newest ``limit`` events (only the failed ones with ``failed_only``)."""
    query = select(Event).order_by(Event.seq.desc()).limit(limit)
    if failed_only:
        query = query.where(Event.state == EventState.FAILED)
    with readers.begin() as session:
        return [
            EventView(
                id=row.id,
                event=row.event,
                upload_id=row.upload_id,
                state=row.state.value,
                attempts=row.attempts,
                created_at=row.created_at,
                due_at=row.due_at,
                delivered_at=row.delivered_at,
                last_status=row.last_status,
                last_error=row.last_error,
            )
            for row in session.scalars(query)
        ]


def replay(
    sessions: sessionmaker[Session],
    now: datetime,
    *,
    event_id: str | None = None,
    since: datetime | None = None,
) -> int:
    """Make delivered or failed events pending again, due ``now``, with a fresh count
    of attempts: the one ``event_id``, or every event recorded at or after ``since``.
    Same id, same body (a receiver dropping duplicates by id drops one it already
    has). Pending events are left as they are. Returns how many were replayed."""
    if (event_id is None) == (since is None):
        raise ValueError("replay takes an event id or a time, not both")
    which = Event.id == event_id if event_id is not None else Event.created_at >= since
    with sessions.begin() as session:
        result = session.execute(
            update(Event)
            .where(which, Event.state != EventState.PENDING)
            .values(
                state=EventState.PENDING,
                due_at=now,
                attempts=0,
                claimed_until=None,
                claimed_by=None,
                delivered_at=None,
            )
            .execution_options(synchronize_session=False)
        )
        return int(cast("CursorResult[Any]", result).rowcount or 0)
