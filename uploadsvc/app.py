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
from werkzeug.middleware.proxy_fix import ProxyFix

from . import cli, db, ops
from .clientslots import ClientSlots
from .config import PREFIX, ConfigError, Settings
from .connection import AnnouncedCloses
from .hooks import Hooks, load_hooks
from .locking import Locker
from .locking.filelock import FileLocker
from .metrics import Metrics
from .overrides import MethodOverride
from .parts import EXTENSION, Parts, parts
from .records import Limits
from .registry import Registry
from .service import UploadService, utcnow
from .storage import StoreUnavailable, UploadStore
from .storage.filesystem import FileStore
from .transfers import TransferMonitor

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
    hooks = Hooks(
        target=load_hooks(settings.hooks) if settings.hooks else None,
        webhook_url=settings.webhook_url,
        listeners=[metrics.upload_event],
    )
    locker = _locker(settings, metrics.lock_waited, closers)
    store = _store(settings, closers)
    clock = clock or utcnow
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
        registry=registry,
    )
    transfers = TransferMonitor(
        locker,
        read_timeout=settings.read_timeout,
        on_bytes=metrics.bytes_received.inc,
        on_stop=metrics.body_stopped,
        min_rate=settings.min_rate,
        rate_window=settings.min_rate_window,
        rate_grace=settings.min_rate_grace,
    )
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
        closers=closers,
    )

    from . import views, web

    app.register_blueprint(views.bp)
    web.init_app(app)
    ops.init_app(app)
    cli.init_app(app)
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
