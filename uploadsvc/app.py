"""The composition root: ``create_app`` is the only place that names the concrete
store, locker and database engine, and wires the parts (parts.py) the views, CLI, page
and ops endpoints read.

Imported lazily by the package (``uploadsvc/__init__.py``), so the uploader
(``uploadsvc.upload``) never pays for Flask, SQLAlchemy and Alembic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.middleware.proxy_fix import ProxyFix

from . import cli, db, grant_commands, ops
from .access import GrantGuard
from .clientslots import ClientSlots
from .config import PREFIX, ConfigError, Settings
from .connection import AnnouncedCloses
from .delivery import Dispatcher
from .feed import Feed
from .grants import GrantStore, allowed_types
from .hooks import Hooks, load_hooks
from .locking import Locker
from .locking.filelock import FileLocker
from .metrics import Metrics
from .outbox import Outbox
from .overrides import MethodOverride
from .parts import EXTENSION, Parts, parts
from .progress import ProgressReporter
from .quota import Quota
from .records import Limits, UploadInfo
from .registry import Registry
from .service import UploadService, utcnow
from .storage import StoreUnavailable, UploadStore
from .storage.filesystem import FileStore
from .transfers import ANSWERS, TransferMonitor
from .typegate import TypeGate
from .verdicts import Judge
from .watching import GrantUsage, Watching, local_disk

__all__ = ["check_reachable", "close_app", "create_app"]


def create_app(
    test_config: Mapping[str, Any] | None = None,
    *,
    clock: Callable[[], datetime] | None = None,
) -> Flask:
    """Build the app from ``UPLOADSVC_*`` environment variables, or from ``test_config``
    (keys without the prefix, e.g. ``{"DATA_DIR": tmp_path}``) when given. ``clock``
    is the service's and the cleaner's "now" (tests pass one to move time)."""
    settings = Settings.from_env() if test_config is None else Settings.from_mapping(test_config)
    app = Flask("uploadsvc")  # the package: its templates/, static/ and logger name
    ops.configure_logging(settings.log_json)

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = db.make_engine(settings.database_url)
    closers: list[Callable[[], None]] = [engine.dispose]
    try:
        db.upgrade(engine, settings.data_dir / "migrate.lock")
    except BaseException:
        engine.dispose()
        raise
    sessions = db.make_sessionmaker(engine)
    # Reads (downloads, HEADs, /metrics, /healthz, the page's list) take no write lock.
    readers = db.make_readers(engine)
    # The hot paths' plain SQL (registry.py), on the same engine.
    registry = Registry(engine)
    closers.append(registry.close)
    metrics = Metrics(readers)
    clock = clock or utcnow
    # Webhooks: events recorded in the outbox with their change, delivered by a
    # dispatcher (a thread per gunicorn worker, started by gunicorn.conf.py, or `flask
    # webhooks deliver`); woken by each event once its change committed.
    outbox = Outbox(enabled=settings.webhook_url is not None)
    dispatcher = _dispatcher(settings, sessions, readers, clock, closers)
    listeners = [metrics.upload_event] + ([dispatcher.wake] if dispatcher else [])
    hooks = Hooks(
        target=load_hooks(settings.hooks) if settings.hooks else None,
        listeners=listeners,
    )
    locker = _locker(settings, metrics.lock_waited, closers)
    store = _store(settings, closers)
    grants = GrantStore(sessions, readers, clock)
    if settings.auth == "grants":
        # Every way in that asks authorize asks the guard first (access.py).
        hooks.access = GrantGuard(grants, admin_token=settings.admin_token, clock=clock)
    service = UploadService(
        sessions,
        store,
        locker,
        Limits(
            max_size=settings.max_size,
            expire_after=timedelta(seconds=settings.expire_after),
            lock_timeout=settings.lock_timeout,
        ),
        clock=clock,
        hooks=hooks,
        readers=readers,
        outbox=outbox,
        quota=Quota(sessions, open_bytes=settings.quota_bytes, open_files=settings.quota_files),
        judge=_judge(TypeGate(settings.allowed_types), hooks, grants),
        registry=registry,
    )
    progress = ProgressReporter(
        sessions,
        clock=clock,
        on_failure=metrics.upload_failed,
        on_flows=metrics.bodies_in_flight.set,
    )
    closers.insert(0, progress.close)  # before the engine goes
    for kind in ANSWERS:  # every reason a body ends, at 0 from the start (dashboards)
        metrics.stopped_bodies.labels(kind)

    def received(count: int) -> None:
        metrics.bytes_received.inc(count)
        progress.count(count)

    transfers = TransferMonitor(
        locker,
        read_timeout=settings.read_timeout,
        on_bytes=received,
        on_stop=metrics.body_stopped,
        min_rate=settings.min_rate,
        rate_window=settings.min_rate_window,
        rate_grace=settings.min_rate_grace,
    )
    progress.flows = transfers.flows
    watching = Watching(
        readers,
        clock,
        stall_after=settings.stall_after,
        disk=(lambda: None) if settings.s3_bucket is not None else local_disk(settings.files_dir),
    )
    if settings.auth == "grants":
        watching.grant_usage = _grant_usage(grants)
    app.extensions[EXTENSION] = Parts(
        settings=settings,
        service=service,
        sessions=sessions,
        readers=readers,
        store=store,
        locker=locker,
        hooks=hooks,
        clock=clock,
        transfers=transfers,
        metrics=metrics,
        client_slots=ClientSlots(settings.max_uploads_per_client),
        progress=progress,
        watching=watching,
        feed=Feed(watching.changes, clock, max_watchers=settings.admin_watchers),
        closers=closers,
        outbox=outbox,
        dispatcher=dispatcher,
        grants=grants,
    )

    # resumable_views puts the draft's answers on the tus blueprint (Resumable Uploads
    # for HTTP on the same endpoint): imported before the blueprint is registered.
    from . import admin, resumable_views, views, web  # noqa: F401

    app.register_blueprint(views.bp)
    web.init_app(app)
    admin.init_app(app)
    ops.init_app(app)
    cli.init_app(app)
    app.cli.add_command(grant_commands.grant_cli)
    app.wsgi_app = MethodOverride(app.wsgi_app)  # type: ignore[method-assign]
    if settings.proxy_hops:
        # Trust X-Forwarded-* only from as many proxies as the operator says are there.
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )
    # Outermost: it sees the server's own start_response.
    app.wsgi_app = AnnouncedCloses(app.wsgi_app)  # type: ignore[method-assign]
    return app


def _dispatcher(
    settings: Settings,
    sessions: sessionmaker[Session],
    readers: sessionmaker[Session],
    clock: Callable[[], datetime],
    closers: list[Callable[[], None]],
) -> Dispatcher | None:
    """The webhook dispatcher when a webhook URL is set (not started: see gunicorn.conf.py)."""
    if settings.webhook_url is None:
        return None
    dispatcher = Dispatcher(
        sessions, settings.webhook_url, secret=settings.webhook_secret, readers=readers, clock=clock
    )
    # First: a running loop stops (bounded) before the engine it uses is disposed.
    closers.insert(0, lambda: dispatcher.stop(timeout=0))
    return dispatcher


def _locker(
    settings: Settings, on_wait: Callable[[float, bool], None], closers: list[Callable[[], None]]
) -> Locker:
    """Lock files under the data dir (one host, or a shared volume), or PostgreSQL
    advisory locks (``UPLOADSVC_LOCKER=postgres``, the default with PostgreSQL)."""
    if settings.locker == "postgres":
        # Imported here: psycopg and boto3 take most of a second to import, which a
        # single host (and its cron cleanup) need not pay.
        from .locking.postgres import PostgresLocker

        locker = PostgresLocker(db.libpq_conninfo(settings.database_url), on_wait=on_wait)
        closers.append(locker.close)
        return locker
    return FileLocker(settings.locks_dir, on_wait=on_wait)


def _store(settings: Settings, closers: list[Callable[[], None]]) -> UploadStore:
    """Files under the data dir, or an S3 bucket (``UPLOADSVC_STORE=s3://...``)."""
    if settings.s3_bucket is not None:
        from .storage.s3 import S3Store  # see _locker

        store = S3Store(
            settings.s3_bucket,
            settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            part_size=settings.s3_part_size,
        )
        closers.append(store.close)
        return store
    return FileStore(settings.files_dir, fsync=settings.fsync)


def check_reachable(settings: Settings) -> None:
    """Raise ``ConfigError`` (one line naming the setting) when the PostgreSQL registry
    or the S3 store can't be reached. gunicorn.conf.py calls it before any worker
    starts, so a wrong URL stops start-up instead of failing every request."""
    if settings.postgres:
        db.check_connection(settings.database_url)
    if settings.s3_bucket is not None:
        closers: list[Callable[[], None]] = []
        try:
            _store(settings, closers).check()
        except StoreUnavailable as error:
            raise ConfigError(f"{PREFIX}STORE: {error}") from None
        finally:
            for close in closers:
                close()


def close_app(app: Flask) -> None:
    """Release what ``create_app`` opened: database connections, lock connections and
    their listener thread, the S3 client. For tests and embedding apps; a server
    process simply exits."""
    closers = parts(app).closers
    while closers:  # each once, even when close_app is called again
        closers.pop(0)()


def _judge(gate: TypeGate, hooks: Hooks, grants: GrantStore) -> Judge:
    """The judge of bytes, whose gate for an upload is the server's narrowed by its
    grant's types (``flask grant create --types``), so a PATCH and the finish hold an
    upload to what its link allows, as its creation did (service.create)."""
    judge = Judge(gate, hooks)
    # A grant's types never change: asked once per grant and process (grants are few).
    types: dict[str, tuple[str, ...]] = {}

    def gate_for(upload: UploadInfo) -> TypeGate:
        if upload.grant_id is None:
            return gate
        if upload.grant_id not in types:
            types[upload.grant_id] = allowed_types(grants.get(upload.grant_id))
        allowed = types[upload.grant_id]
        return gate & TypeGate(allowed) if allowed else gate

    judge.gate_for = gate_for
    return judge


def _grant_usage(grants: GrantStore) -> Callable[[], list[GrantUsage]]:
    """The operator view's grants panel: each live grant's use against its limit."""

    def usage() -> list[GrantUsage]:
        return [
            GrantUsage(
                name=f"{grant.label} ({grant.id})" if grant.label else grant.id,
                uploads=used.used_files,
                bytes=used.used_bytes,
                limit_bytes=grant.max_bytes,
            )
            for grant, used in grants.all()
            if grant.revoked_at is None
        ]

    return usage
