"""Fixtures: a fresh app, data dir and database per test, a clean UPLOADSVC_* environment."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.middleware.lint import LintMiddleware

from tests.pg import PostgresServer, start_postgres, stop_postgres
from tests.s3 import AWS_ENV, S3Server, start_s3, stop_s3
from uploadsvc import close_app, create_app
from uploadsvc.parts import parts
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


# -- the registry: SQLite, and PostgreSQL for the suites below ----------------------------
#
# Tests that use the ``database`` fixture (the ``app`` fixture does) in these modules run
# once per registry: on SQLite with lock files, and on PostgreSQL with advisory locks,
# each test on a fresh database. Elsewhere ``database`` is "sqlite".
DATABASES = ("sqlite", "postgresql")
BOTH_DATABASES = frozenset(
    {
        "test_views.py",  # the service through the tus endpoints
        "test_concat.py",
        "test_concat_hooks.py",  # finals racing DELETEs lock partial rows (PostgreSQL)
        "test_downloads.py",
        "test_migrations.py",
        "test_s3_store.py",  # the service on S3 (its store-only tests run once)
        "test_cleanup.py",
        "test_hooks.py",  # hook-chosen ids
        "test_grants.py",  # quotas counted by conditional UPDATEs
        "test_finish.py",
        "test_webhooks.py",  # the outbox's claims on both registries
        "test_gates.py",  # verdicts in the finish's compare-and-set
        "test_progress.py",  # the progress reporter's upserts, each dialect's own
        "test_registry.py",  # the hot paths' plain SQL against the ORM models
        "live/test_tuspy_uploads.py",
        "live/test_resume.py",
        "live/test_takeover.py",
        "live/test_concurrency.py",
        "live/test_quota_race.py",
    }
)
TESTS_DIR = Path(__file__).resolve().parent


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database" not in metafunc.fixturenames:
        return
    module = Path(metafunc.definition.path).resolve().relative_to(TESTS_DIR).as_posix()
    if module in BOTH_DATABASES:
        metafunc.parametrize("database", DATABASES, indirect=True, scope="module")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the session, started when first needed."""
    server = start_postgres()
    try:
        yield server
    finally:
        stop_postgres(server)


@pytest.fixture(scope="module")
def database(request: pytest.FixtureRequest) -> str:
    """Which registry: "sqlite" unless the module runs on both (see BOTH_DATABASES)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def database_url(database: str, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """A fresh PostgreSQL database's URL for the test, or None for SQLite (the default
    file in the data dir)."""
    if database == "sqlite":
        yield None
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    with server.database() as url:
        yield url


# -- an S3 endpoint (moto's server) --------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on a loopback port for the session, started when first needed."""
    server = start_s3(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        stop_s3(server)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """boto3's credentials and region for moto, in this process's environment."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    return dict(AWS_ENV)


@pytest.fixture
def s3_bucket(s3_server: S3Server, aws_env: dict[str, str]) -> Iterator[str]:
    """A fresh, empty bucket; emptied and removed after the test."""
    bucket = s3_server.new_bucket()
    yield bucket
    s3_server.remove_bucket(bucket)


def database_settings(database_url: str | None) -> dict[str, str]:
    """create_app settings for ``database_url`` (none for SQLite)."""
    return {} if database_url is None else {"DATABASE_URL": database_url}


@pytest.fixture
def app(data_dir: Path, clock: Clock, database_url: str | None) -> Iterator[Flask]:
    app = create_app(
        {
            "DATA_DIR": str(data_dir),
            "MAX_SIZE": "1000",
            "EXPIRE_AFTER": "3600",
            "LOCK_TIMEOUT": "0.2",
            **database_settings(database_url),
        },
        clock=clock,
    )
    app.testing = True
    app.wsgi_app = LintMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    yield app
    close_app(app)


def service(app: Flask) -> UploadService:
    return parts(app).service


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as client:
        yield client


# -- a webhook receiver on 127.0.0.1 (tests/test_hooks.py, test_finish.py, live/test_finish_live.py)


@dataclass(frozen=True)
class Delivery:
    """One POST the receiver got: its headers (lower-cased names), body and answer."""

    headers: dict[str, str]
    body: bytes
    status: int
    at: float  # time.monotonic() when it arrived


class Receiver(BaseHTTPRequestHandler):
    """A webhook endpoint: records each delivered event's JSON (``received``) and every
    POST (``requests``); paths in ``redirecting`` answer 302, ``failures_left`` POSTs
    answer ``failure_status`` first, and each POST takes ``delay`` seconds."""

    received: ClassVar[list[dict[str, Any]]] = []
    requests: ClassVar[list[Delivery]] = []
    failures_left: ClassVar[int] = 0
    failure_status: ClassVar[int] = 503
    delay: ClassVar[float] = 0.0
    # While set (an Event), each POST waits (bounded) until it is set; ``waiting``
    # counts the POSTs held there.
    gate: ClassVar[threading.Event | None] = None
    waiting: ClassVar[int] = 0
    # Paths that answer 302 to /landed, and how many POSTs each got.
    redirecting: ClassVar[dict[str, int]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def do_POST(self) -> None:
        arrived = time.monotonic()
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Receiver.delay:
            time.sleep(Receiver.delay)
        gate = Receiver.gate
        if gate is not None:
            with Receiver._guard:
                Receiver.waiting += 1
            gate.wait(30)
            with Receiver._guard:
                Receiver.waiting -= 1
        with Receiver._guard:
            if self.path in Receiver.redirecting:
                Receiver.redirecting[self.path] += 1
                status = 302
            elif Receiver.failures_left:
                Receiver.failures_left -= 1
                status = Receiver.failure_status
            else:
                Receiver.received.append(json.loads(body))
                status = 204
            headers = {name.lower(): value for name, value in self.headers.items()}
            Receiver.requests.append(Delivery(headers, body, status, arrived))
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/landed")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        # Where a redirect leads: it would answer (urllib follows a POST's 302 as a GET).
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.received = []
    Receiver.requests = []
    Receiver.redirecting = {}
    Receiver.failures_left = 0
    Receiver.failure_status = 503
    Receiver.delay = 0.0
    Receiver.gate = None
    Receiver.waiting = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/events"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def deliveries(event: str, upload_id: str) -> int:
    """How many ``event`` webhooks for ``upload_id`` the receiver got."""
    return sum(
        1
        for payload in Receiver.received
        if (payload["event"], payload["upload"]["id"]) == (event, upload_id)
    )


def settle(app: Flask, timeout: float = 15.0) -> None:
    """Run the queued Python post hooks and deliver the webhook events pending in the
    outbox (in this thread: an app outside gunicorn starts no dispatcher), bounded."""
    app_parts = parts(app)
    app_parts.hooks.drain(timeout=timeout)
    if app_parts.dispatcher is not None:
        app_parts.dispatcher.drain(timeout=timeout)
