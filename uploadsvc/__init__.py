"""uploadsvc: a resumable-upload server speaking tus 1.0.0.

``create_app`` is the one composition root: the only place that names the concrete
store, locker and database engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import cli, db, ops
from .config import Settings
from .hooks import Hooks, load_hooks
from .locking.filelock import FileLocker
from .metrics import Metrics
from .overrides import MethodOverride
from .service import Limits, UploadService
from .storage.filesystem import FileStore
from .transfers import TransferMonitor

__all__ = ["create_app"]


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from ``UPLOADSVC_*`` environment variables, or from ``test_config``
    (keys without the prefix, e.g. ``{"DATA_DIR": tmp_path}``) when given."""
    settings = Settings.from_env() if test_config is None else Settings.from_mapping(test_config)
    app = Flask(__name__)
    app.config["UPLOADSVC_SETTINGS"] = settings
    ops.configure_logging(settings.log_json)

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine, settings.data_dir / "migrate.lock")
    sessions = db.make_sessionmaker(engine)
    metrics = Metrics(sessions)
    hooks = Hooks(
        target=load_hooks(settings.hooks) if settings.hooks else None,
        webhook_url=settings.webhook_url,
        listeners=[metrics.upload_event],
    )
    locker = FileLocker(settings.locks_dir, on_wait=metrics.lock_waited)
    app.extensions["uploadsvc"] = UploadService(
        sessions,
        FileStore(settings.files_dir, fsync=settings.fsync),
        locker,
        Limits(
            max_size=settings.max_size,
            expire_after=timedelta(seconds=settings.expire_after),
            lock_timeout=settings.lock_timeout,
        ),
        hooks=hooks,
    )
    app.extensions["uploadsvc.transfers"] = TransferMonitor(
        locker,
        read_timeout=settings.read_timeout,
        on_bytes=metrics.bytes_received.inc,
        on_stop=metrics.body_stopped,
    )

    from . import views, web

    app.register_blueprint(views.bp)
    web.init_app(app)
    ops.init_app(app, metrics)
    cli.init_app(app)
    app.wsgi_app = MethodOverride(app.wsgi_app)  # type: ignore[method-assign]
    if settings.proxy_hops:
        # Trust X-Forwarded-* only from as many proxies as the operator says are there.
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )
    return app
