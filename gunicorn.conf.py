"""gunicorn settings tuned for long uploads: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Every upload in flight holds a thread for its whole PATCH, so workers are threaded
(gthread): a slow client costs one thread, not a whole worker, and the worker's
heartbeat keeps beating while a PATCH streams for minutes, so ``timeout`` never kills a
long upload. Tune ``UPLOADSVC_WORKERS`` and ``UPLOADSVC_THREADS`` for the number of
simultaneous uploads you expect (workers x threads).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from uploadsvc.config import ConfigError, Settings

wsgi_app = "wsgi:app"
bind = os.environ.get("UPLOADSVC_BIND", "127.0.0.1:8080")
worker_class = "gthread"
workers = int(os.environ.get("UPLOADSVC_WORKERS", "2"))
threads = int(os.environ.get("UPLOADSVC_THREADS", "32"))
# Heartbeat limit for a worker's main loop, not a per-request limit under gthread.
timeout = 60
# On SIGTERM, PATCHes in flight get this long to finish before the worker is killed.
graceful_timeout = 30
# Clients upload chunk after chunk on one connection.
keepalive = 75
# Headers carry metadata; keep them bounded but roomy enough for long filenames.
limit_request_field_size = 16 * 1024
# gunicorn's runtime control socket sits at one fixed path per user: several instances on
# one host (tests, blue/green) would fight over it, and uploadsvc doesn't use it.
control_socket_disable = True
accesslog = "-"
errorlog = "-"


def on_starting(server: Any) -> None:
    """Check the settings once in the master: a bad value stops start-up with one line."""
    try:
        Settings.from_env()
    except ConfigError as error:
        print(f"uploadsvc: {error}", file=sys.stderr)
        sys.exit(1)
