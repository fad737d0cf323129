"""gunicorn settings tuned for long uploads: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Every upload in flight holds a thread for its whole PATCH, so workers are threaded
(gthread): a slow client costs one thread, not a whole worker, and the worker's
heartbeat keeps beating while a PATCH streams for minutes, so ``timeout`` never kills a
long upload. Tune ``UPLOADSVC_WORKERS`` and ``UPLOADSVC_THREADS`` for the number of
simultaneous uploads you expect (workers x threads).

Why threads and not gevent (README "Capacity", measured with `make bench`'s capacity
workload): 2 workers x 1,024 threads hold 1,000 uploads trickling 4 KiB/s with a
probe's HEADs and small uploads answered at p99 35 ms (one run, load average 5), some
160 to 300 KB per upload in flight. gunicorn's gevent worker, unchanged, held them too,
with less memory but p99 103 ms and one probe unanswered in 10 s in the same conditions
(SQLite calls and file writes block every greenlet of a worker), and it would need
every blocking call made cooperative and the header deadline, the body reader and the
server cuts redone for it. A blocked thread costs memory, not CPU: threads start only
when needed and wait in the kernel.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

# Prometheus multiprocess mode: every worker writes its metrics under one fresh
# directory, so a scrape of any worker counts them all. It must be set before anything
# imports prometheus_client (importing uploadsvc does); an operator may set it instead.
# A reload (SIGHUP) reads this file again with the variable already set: the mark in
# the environment tells on_exit the directory is still ours to remove.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="uploadsvc-metrics-")
    os.environ["_UPLOADSVC_OWN_METRICS_DIR"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]

from flask import Flask

from uploadsvc import check_reachable
from uploadsvc.config import ConfigError, ServerSettings, Settings
from uploadsvc.hooks import load_hooks
from uploadsvc.parts import EXTENSION, Parts, parts

# Checked like every setting: UPLOADSVC_WORKERS=abc was a traceback, =0 a server with
# no worker. gunicorn reads this file before on_starting, so a bad value stops it here.
try:
    _server = ServerSettings.from_env()
except ConfigError as error:
    print(f"uploadsvc: {error}", file=sys.stderr)
    sys.exit(1)

wsgi_app = "wsgi:app"
bind = _server.bind
# gthread, but a connection gets a thread only once its request head is in (README
# "Slow clients"): half-sent heads wait in the selector, closed after UPLOADSVC_HEADER_TIMEOUT.
worker_class = "uploadsvc.worker.HeaderDeadlineWorker"
workers = _server.workers
# Threads per worker: how many uploads one worker streams at once. A gthread worker
# accepts connections it has no free thread for, and those wait until one ends, so this,
# not workers x threads, must cover the slow uploads in flight: with 128, a probe got no
# answer in 10 s while 512 clients trickled 4 KiB/s; with 1,024 (the default), 1,000
# clients, probe p99 35 ms (`make bench`, capacity rows).
threads = _server.threads
# Connections per worker: a thread for each, plus this many for kept-alive idle
# connections and heads still arriving (neither holds a thread). gthread keeps a
# connection alive only while fewer than worker_connections - threads are idle, and
# gunicorn's default (1,000) is below the threads: keep-alive would be off.
KEEPALIVE_CONNECTIONS = 1000
worker_connections = _server.threads + KEEPALIVE_CONNECTIONS


def _raise_open_files(per_worker: int) -> None:
    """Raise the soft open-file limit (often 1,024) towards the hard one: an upload in
    flight holds its socket, its data file and its lock file, and past the limit a
    worker's accept and open fail. The workers inherit it from the master."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = per_worker + 256  # the app's own files, the database, the listeners
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


_raise_open_files(3 * _server.threads + KEEPALIVE_CONNECTIONS)
# Heartbeat limit for a worker's main loop, not a per-request limit under gthread.
timeout = 60
# On SIGTERM, PATCHes in flight get this long to finish before the worker is killed.
graceful_timeout = 30
# Clients upload chunk after chunk on one connection.
keepalive = 75
# gunicorn itself trusts X-Forwarded-Proto (and friends) from 127.0.0.1 by default, so any
# client behind a local nginx could flip the scheme of Location. Forwarded headers are
# uploadsvc's to trust, and only with UPLOADSVC_PROXY_HOPS (found by `make torture`).
forwarded_allow_ips = ""
# Headers carry metadata; keep them bounded but roomy enough for long filenames.
limit_request_field_size = 16 * 1024
# gunicorn's runtime control socket sits at one fixed path per user: several instances on
# one host (tests, blue/green) would fight over it, and uploadsvc doesn't use it.
control_socket_disable = True
# uploadsvc logs one line per request itself, with its request id; gunicorn's access
# log would say the same again without it.
accesslog = None
errorlog = "-"


def on_starting(server: Any) -> None:
    """Check the settings once in the master: a bad value stops start-up with one line."""
    try:
        settings = Settings.from_env()
        if settings.hooks:
            load_hooks(settings.hooks)
        # A PostgreSQL registry or an S3 store that can't be reached: one line, too.
        check_reachable(settings)
    except ConfigError as error:
        print(f"uploadsvc: {error}", file=sys.stderr)
        sys.exit(1)


def _parts(worker: Any) -> Parts | None:
    """The parts of the app this worker loaded (wsgi:app), or None where none is: the
    master, or another app that gunicorn runs with this file (gunicorn reads
    ./gunicorn.conf.py by default; the bench's baseline app does)."""
    app = getattr(worker, "wsgi", None)
    if not isinstance(app, Flask) or EXTENSION not in app.extensions:
        return None
    return parts(app)


def post_worker_init(worker: Any) -> None:
    """On SIGTERM, end the PATCH bodies in flight so their offsets are recorded before
    the worker exits, instead of waiting out graceful_timeout and being killed. And
    start this worker's webhook dispatcher (a thread delivering the events outbox):
    every worker runs one, and their claims keep them off each other's events."""
    app_parts = _parts(worker)
    if app_parts is not None:
        app_parts.transfers.stop_all_when(lambda: not worker.alive)
        if app_parts.dispatcher is not None:
            app_parts.dispatcher.start()


# A stopping worker waits this long at most for its queued post-events (post-finish
# Python hooks, and webhook events due now) before it exits; within graceful_timeout,
# after the PATCHes ended.
HOOK_DRAIN_TIMEOUT = 10.0


def worker_exit(server: Any, worker: Any) -> None:
    """In the exiting worker: run the Python post hooks still queued (a completion just
    before a stop or reload), bounded, or they die with the process; meanwhile the
    webhook dispatcher delivers what is due, then stops. Webhook events it leaves are
    not lost: they wait in the outbox for the next worker. gunicorn calls this hook in
    the master too (for a reaped worker), where no app is loaded: nothing to do."""
    app_parts = _parts(worker) if worker.pid == os.getpid() else None
    if app_parts is None:
        return
    deadline = time.monotonic() + HOOK_DRAIN_TIMEOUT
    dispatcher = app_parts.dispatcher
    stopper = None
    if dispatcher is not None:
        # In a thread of its own: the hooks' queue drains at the same time.
        stopper = threading.Thread(target=dispatcher.stop, args=(HOOK_DRAIN_TIMEOUT,))
        stopper.start()
    app_parts.hooks.drain(timeout=HOOK_DRAIN_TIMEOUT)
    if stopper is not None:
        stopper.join(max(0.0, deadline - time.monotonic()) + 6.0)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if os.environ.get("_UPLOADSVC_OWN_METRICS_DIR") == metrics_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)
