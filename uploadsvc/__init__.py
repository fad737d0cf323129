"""uploadsvc: a resumable-upload server speaking tus 1.0.0.

``create_app`` is the one composition root: the only place that names the concrete
store, locker and database engine.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import cli, db
from .config import Settings
from .locking.filelock import FileLocker
from .overrides import MethodOverride
from .service import Limits, UploadService
from .storage.filesystem import FileStore

__all__ = ["create_app"]


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from ``UPLOADSVC_*`` environment variables, or from ``test_config``
    (keys without the prefix, e.g. ``{"DATA_DIR": tmp_path}``) when given."""
    settings = Settings.from_env() if test_config is None else Settings.from_mapping(test_config)
    app = Flask(__name__)
    app.config["UPLOADSVC_SETTINGS"] = settings
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        # Alembic announces its dialect at every start: under cron (`flask cleanup`) that
        # would be mail every run. Its warnings and errors still show.
        logging.getLogger("alembic").setLevel(logging.WARNING)

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine, settings.data_dir / "migrate.lock")
    app.extensions["uploadsvc"] = UploadService(
        db.make_sessionmaker(engine),
        FileStore(settings.files_dir, fsync=settings.fsync),
        FileLocker(settings.locks_dir),
        Limits(
            max_size=settings.max_size,
            expire_after=timedelta(seconds=settings.expire_after),
            lock_timeout=settings.lock_timeout,
        ),
    )

    from . import views

    app.register_blueprint(views.bp)
    cli.init_app(app)
    app.wsgi_app = MethodOverride(app.wsgi_app)  # type: ignore[method-assign]
    if settings.proxy_hops:
        # Trust X-Forwarded-* only from as many proxies as the operator says are there.
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )
    return app
