"""Fixtures: a fresh app, data dir and database per test, a clean UPLOADSVC_* environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.middleware.lint import LintMiddleware

from uploadsvc import create_app
from uploadsvc.service import UploadService

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("UPLOADSVC_"):
            monkeypatch.delenv(key)
    # gunicorn.conf.py sets it when a test loads it; in-process apps count on their own.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)


class Clock:
    """A settable clock injected into the service for expiry edges."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def app(data_dir: Path, clock: Clock) -> Flask:
    app = create_app(
        {
            "DATA_DIR": str(data_dir),
            "MAX_SIZE": "1000",
            "EXPIRE_AFTER": "3600",
            "LOCK_TIMEOUT": "0.2",
        }
    )
    app.testing = True
    service(app).clock = clock
    app.wsgi_app = LintMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


def service(app: Flask) -> UploadService:
    svc = app.extensions["uploadsvc"]
    assert isinstance(svc, UploadService)
    return svc


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as client:
        yield client
