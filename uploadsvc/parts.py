"""The app's parts: what ``create_app`` built, in one frozen, typed record.

Stored once in ``app.extensions`` and read through ``parts()``, so the views, the CLI,
the page, the ops endpoints and gunicorn.conf.py name each part by attribute (checked by
mypy) instead of by string key and ``cast``. Each reader takes the parts it uses: the
cleaner gets the sessions, store, locker and clock, not the service they sit behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from flask import Flask, current_app
from sqlalchemy.orm import Session, sessionmaker

from .clientslots import ClientSlots
from .config import Settings
from .delivery import Dispatcher
from .feed import Feed
from .grants import GrantStore
from .hooks import Hooks
from .locking import Locker
from .metrics import Metrics
from .outbox import Outbox
from .progress import ProgressReporter
from .service import UploadService
from .storage import UploadStore
from .transfers import TransferMonitor
from .watching import Watching

# The app.extensions key: Flask's convention is the extension's name.
EXTENSION = "uploadsvc"


@dataclass(frozen=True)
class Parts:
    settings: Settings
    service: UploadService
    sessions: sessionmaker[Session]  # writes
    readers: sessionmaker[Session]  # reads: never queued behind a writer (db.make_readers)
    store: UploadStore
    locker: Locker
    hooks: Hooks
    clock: Callable[[], datetime]  # the service's "now" (tests inject one)
    transfers: TransferMonitor
    metrics: Metrics
    client_slots: ClientSlots
    # Progress, bytes per minute and failures, written to the registry for /admin.
    progress: ProgressReporter
    # The operator view's reads (watching.py) and this worker's live feed (feed.py).
    watching: Watching
    feed: Feed
    # What close_app releases (engine, lock connections, S3 client), in order.
    closers: list[Callable[[], None]]
    # Webhook events: where they are recorded, and who delivers them (None: no
    # webhook URL; the dispatcher runs only where started, see gunicorn.conf.py).
    outbox: Outbox
    dispatcher: Dispatcher | None
    grants: GrantStore  # upload links (flask grant; the guard holds it too)


def parts(app: Flask | None = None) -> Parts:
    """The parts of ``app``, by default the current app."""
    found = (current_app if app is None else app).extensions[EXTENSION]
    assert isinstance(found, Parts), "not an app made by uploadsvc.create_app"
    return found
