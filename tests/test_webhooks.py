"""Webhooks you can trust: the events outbox (outbox.py) and its dispatcher (delivery.py),
through the app, against a real receiver on 127.0.0.1, on SQLite and PostgreSQL.

The app's clock is the test's: the dispatcher retries when the clock says an event is
due, so backoff is checked without sleeping. The signature is checked with the five
lines README.md gives receivers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import (
    Clock,
    Receiver,
    database_settings,
    deliveries,
    service,
    settle,
)
from tests.test_views import create, patch
from uploadsvc import close_app, create_app, db
from uploadsvc.delivery import MAX_ATTEMPTS, Dispatcher, backoff
from uploadsvc.models import Event, EventState
from uploadsvc.parts import parts

SECRET = "s3cr3t-for-the-tests-only-0123456789"
EXPIRE_AFTER = 3600


def make_app(
    data_dir: Path, clock: Clock, database_url: str | None, url: str, **config: str
) -> Flask:
    app = create_app(
        {
            "DATA_DIR": str(data_dir),
            "MAX_SIZE": "1000",
            "EXPIRE_AFTER": str(EXPIRE_AFTER),
            "LOCK_TIMEOUT": "0.2",
            "WEBHOOK_URL": url,
            **database_settings(database_url),
            **config,
        },
        clock=clock,
    )
    app.testing = True
    return app


@pytest.fixture
def app(data_dir: Path, clock: Clock, database_url: str | None, receiver: str) -> Iterator[Flask]:
    app = make_app(data_dir, clock, database_url, receiver, WEBHOOK_SECRET=SECRET)
    yield app
    close_app(app)


def dispatcher(app: Flask) -> Dispatcher:
    found = parts(app).dispatcher
    assert found is not None
    return found


def ident(url: str) -> str:
    return url.rsplit("/", 1)[1]


def events(app: Flask) -> list[Event]:
    with service(app).sessions.begin() as session:
        rows = list(session.scalars(select(Event).order_by(Event.seq)))
        session.expunge_all()
        return rows


def verify(secret: bytes, headers: Mapping[str, str], body: bytes) -> bool:
    """README's receiver check, line for line (headers here are lower-cased)."""
    timestamp = headers["x-uploadsvc-timestamp"]
    signed = timestamp.encode() + b"." + body
    expected = "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(timestamp)) < 300  # reject replays of old requests
    return fresh and hmac.compare_digest(expected, headers.get("x-uploadsvc-signature", ""))


def cli(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=list(args))


# -- what is sent --------------------------------------------------------------------------


def test_every_event_is_signed_with_a_stable_id(
    app: Flask, client: FlaskClient, clock: Clock
) -> None:
    done = create(client, 3)
    patch(client, done, b"abc")
    gone = create(client, 3)
    client.delete(gone, headers={"Tus-Resumable": "1.0.0"})
    stale = create(client, 3)
    clock.advance(EXPIRE_AFTER + 1)
    assert cli(app, "cleanup").exit_code == 0
    settle(app)
    # Each upload's events in order (different uploads' may interleave).
    got: dict[str, list[str]] = {}
    for item in Receiver.received:
        got.setdefault(item["upload"]["id"], []).append(item["event"])
    assert got == {
        ident(done): ["post-create", "post-finish"],
        ident(gone): ["post-create", "post-terminate"],
        ident(stale): ["post-create", "post-expire"],
    }
    by_event = {item["event"]: item for item in Receiver.received}
    assert by_event["post-expire"]["reason"] == "expired"
    assert by_event["post-expire"]["upload"]["state"] == "expired"
    assert by_event["post-finish"]["upload"]["offset"] == 3
    assert by_event["post-terminate"]["upload"]["state"] == "terminated"
    for request in Receiver.requests:
        assert verify(SECRET.encode(), request.headers, request.body)
        assert not verify(b"another-secret-of-the-same-size!!", request.headers, request.body)
        # The id in the header is the body's, so a receiver can drop a duplicate
        # before it parses anything.
        assert request.headers["x-uploadsvc-event-id"] == json.loads(request.body)["id"]
        assert request.headers["content-type"] == "application/json"
    assert len({r.headers["x-uploadsvc-event-id"] for r in Receiver.requests}) == 6
    assert all(row.state is EventState.DELIVERED and row.attempts == 1 for row in events(app))


def test_a_tampered_body_or_timestamp_fails_verification(app: Flask, client: FlaskClient) -> None:
    create(client, 3)
    settle(app)
    (request,) = Receiver.requests
    assert verify(SECRET.encode(), request.headers, request.body)
    assert not verify(SECRET.encode(), request.headers, request.body.replace(b"3", b"4"))
    older = {**request.headers, "x-uploadsvc-timestamp": str(int(time.time()) - 301)}
    assert not verify(SECRET.encode(), older, request.body)


def test_without_a_secret_requests_go_unsigned(
    data_dir: Path,
    clock: Clock,
    database_url: str | None,
    receiver: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(data_dir, clock, database_url, receiver)
    try:
        # Said where deliveries start (a worker, `flask webhooks deliver`), not by every
        # command (cron's `flask cleanup` would mail it every run).
        assert "WEBHOOK_SECRET" not in caplog.text
        create(app.test_client(), 3)
        dispatcher(app).start()
        assert "without UPLOADSVC_WEBHOOK_SECRET" in caplog.text
        dispatcher(app).stop(10)
        settle(app)
        (request,) = Receiver.requests
        assert "x-uploadsvc-signature" not in request.headers
        assert request.headers["x-uploadsvc-event-id"]
        assert int(request.headers["x-uploadsvc-timestamp"]) == pytest.approx(time.time(), abs=60)
    finally:
        close_app(app)


def test_no_webhook_url_records_nothing(data_dir: Path, clock: Clock) -> None:
    app = create_app({"DATA_DIR": str(data_dir)}, clock=clock)
    try:
        create(app.test_client(), 0)
        assert parts(app).dispatcher is None
        assert events(app) == []
    finally:
        close_app(app)


# -- retries -------------------------------------------------------------------------------


def test_the_event_id_is_stable_across_a_retry(
    app: Flask, client: FlaskClient, clock: Clock
) -> None:
    Receiver.failure_status = 500
    Receiver.failures_left = 1
    url = create(client, 3)
    assert dispatcher(app).deliver_due() == 1
    (row,) = events(app)
    assert (row.state, row.attempts, row.last_status) == (EventState.PENDING, 1, 500)
    assert row.due_at == clock.now + backoff(1)
    assert dispatcher(app).deliver_due() == 0  # not due yet
    clock.advance(1)
    assert dispatcher(app).deliver_due() == 1
    first, second = Receiver.requests
    assert (first.status, second.status) == (500, 204)
    assert first.headers["x-uploadsvc-event-id"] == second.headers["x-uploadsvc-event-id"]
    assert first.body == second.body
    assert verify(SECRET.encode(), second.headers, second.body)
    assert deliveries("post-create", ident(url)) == 1
    (row,) = events(app)
    assert (row.state, row.attempts, row.delivered_at) == (EventState.DELIVERED, 2, clock.now)


def test_a_redirect_is_a_failed_attempt_not_followed(
    data_dir: Path, clock: Clock, database_url: str | None, receiver: str
) -> None:
    Receiver.redirecting = {"/moved": 0}
    app = make_app(data_dir, clock, database_url, receiver.replace("/events", "/moved"))
    try:
        create(app.test_client(), 3)
        for _ in range(3):
            assert dispatcher(app).deliver_due() == 1
            clock.advance(backoff(MAX_ATTEMPTS).total_seconds())
        assert Receiver.redirecting == {"/moved": 3}
        assert Receiver.received == []  # nothing landed where the 302 pointed
        (row,) = events(app)
        assert (row.state, row.attempts, row.last_status) == (EventState.PENDING, 3, 302)
    finally:
        close_app(app)


def test_backoff_doubles_then_caps_then_the_event_fails(
    app: Flask, client: FlaskClient, clock: Clock
) -> None:
    Receiver.failures_left = 10**6
    create(client, 3)
    waits = []
    for _ in range(MAX_ATTEMPTS):
        assert dispatcher(app).deliver_due() == 1
        (row,) = events(app)
        waits.append((row.due_at - clock.now).total_seconds())
        clock.advance(waits[-1])
    assert waits[:10] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert waits[-1] == 0  # failed for good: no next attempt
    (row,) = events(app)
    assert (row.state, row.attempts, row.last_status) == (EventState.FAILED, MAX_ATTEMPTS, 503)
    clock.advance(3600)
    assert dispatcher(app).deliver_due() == 0
    assert len(Receiver.requests) == MAX_ATTEMPTS


# -- flask webhooks ------------------------------------------------------------------------


def test_list_failed_and_replay_one(app: Flask, client: FlaskClient, clock: Clock) -> None:
    Receiver.failures_left = 10**6
    failing = create(client, 3)
    for _ in range(MAX_ATTEMPTS):
        dispatcher(app).deliver_due()
        clock.advance(backoff(MAX_ATTEMPTS).total_seconds())
    Receiver.failures_left = 0
    fine = create(client, 3)
    settle(app)

    listed = json.loads(cli(app, "webhooks", "list", "--json").output)
    assert [(e["upload_id"], e["state"]) for e in listed] == [
        (ident(fine), "delivered"),
        (ident(failing), "failed"),
    ]
    result = cli(app, "webhooks", "list", "--failed", "--json")
    assert result.exit_code == 0, result.output
    (failed,) = json.loads(result.output)
    assert (failed["upload_id"], failed["attempts"], failed["last_status"]) == (
        ident(failing),
        MAX_ATTEMPTS,
        503,
    )
    text = cli(app, "webhooks", "list", "--failed").output
    assert failed["id"] in text and "failed" in text and ident(fine) not in text

    result = cli(app, "webhooks", "replay", failed["id"])
    assert result.exit_code == 0, result.output
    assert result.output == "1 event(s) to deliver again\n"
    settle(app)
    assert deliveries("post-create", ident(failing)) == 1
    assert [r.headers["x-uploadsvc-event-id"] for r in Receiver.requests][-1] == failed["id"]
    assert cli(app, "webhooks", "list", "--failed", "--json").output.strip() == "[]"
    # An unknown (or pending) id is an error; so is neither an id nor --since.
    assert cli(app, "webhooks", "replay", "nonesuch").exit_code == 1
    assert cli(app, "webhooks", "replay").exit_code == 2


def test_replay_since(app: Flask, client: FlaskClient, clock: Clock) -> None:
    old = create(client, 0)
    clock.advance(7200)
    recent = create(client, 0)
    settle(app)
    assert len(Receiver.received) == 4  # each: post-create, post-finish
    result = cli(app, "webhooks", "replay", "--since", "1h")
    assert result.output == "2 event(s) to deliver again\n"
    settle(app)
    assert deliveries("post-finish", ident(recent)) == 2
    assert deliveries("post-finish", ident(old)) == 1
    iso = (clock.now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%S")
    assert cli(app, "webhooks", "replay", "--since", iso).output == "4 event(s) to deliver again\n"
    assert cli(app, "webhooks", "replay", "--since", "yesterday").exit_code == 2


def test_deliver_once(app: Flask, client: FlaskClient) -> None:
    create(client, 0)
    result = cli(app, "webhooks", "deliver", "--once")
    assert result.exit_code == 0, result.output
    assert result.output == "2 attempt(s); 0 event(s) pending\n"
    assert len(Receiver.received) == 2


def test_deliver_needs_a_webhook_url(data_dir: Path) -> None:
    app = create_app({"DATA_DIR": str(data_dir)})
    try:
        result = cli(app, "webhooks", "deliver", "--once")
        assert result.exit_code == 2
        assert "UPLOADSVC_WEBHOOK_URL is not set" in result.output
    finally:
        close_app(app)


def test_cleanup_trims_delivered_and_failed_events_after_the_retention(
    app: Flask, client: FlaskClient, clock: Clock
) -> None:
    # Complete at birth (length 0): post-create and post-finish, and nothing expires.
    create(client, 0)
    settle(app)
    Receiver.failures_left = 10**6
    owed = create(client, 0)  # stays pending: attempted once, due again later
    dispatcher(app).deliver_due()
    clock.advance(7 * 86400 - 1)
    report = json.loads(cli(app, "cleanup", "--json").output)
    assert report["events_trimmed"] == 0
    clock.advance(2)
    assert json.loads(cli(app, "cleanup", "--dry-run", "--json").output)["events_trimmed"] == 2
    assert len(events(app)) == 4
    result = cli(app, "cleanup")
    assert "deleted 2 webhook event(s) past their retention" in result.output
    assert [row.upload_id for row in events(app)] == [ident(owed)] * 2
    # A failed event goes the retention after its last attempt.
    for _ in range(MAX_ATTEMPTS):
        dispatcher(app).deliver_due()
        clock.advance(backoff(MAX_ATTEMPTS).total_seconds())
    assert [row.state for row in events(app)] == [EventState.FAILED, EventState.PENDING]
    clock.advance(7 * 86400)
    assert json.loads(cli(app, "cleanup", "--json").output)["events_trimmed"] == 1
    assert [row.event for row in events(app)] == ["post-finish"]


# -- durability and concurrency ------------------------------------------------------------


class Crash(BaseException):
    """The process dying at this point: nothing after it runs, nothing catches it."""


def test_an_event_survives_a_crash_right_after_its_commit(
    data_dir: Path,
    clock: Clock,
    database_url: str | None,
    receiver: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The finish's compare-and-set commits, and the process dies before anything
    after it runs (the in-memory queue of old): the next process delivers it."""
    app = make_app(data_dir, clock, database_url, receiver)
    client = app.test_client()
    url = create(client, 3)
    settle(app)

    def dies(event: str, upload: object) -> None:
        raise Crash()

    monkeypatch.setattr(service(app).hooks, "emit", dies)
    with pytest.raises(Crash):
        patch(client, url, b"abc")
    close_app(app)
    assert deliveries("post-finish", ident(url)) == 0

    restarted = make_app(data_dir, clock, database_url, receiver)
    try:
        settle(restarted)
        assert deliveries("post-finish", ident(url)) == 1
    finally:
        close_app(restarted)


def test_a_rolled_back_change_records_no_event(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event is in the change's transaction: a creation whose transaction fails
    leaves no event behind (nor an upload)."""
    from uploadsvc import outbox

    real = outbox.record

    def then_fail(*args: Any, **kwargs: Any) -> str:
        real(*args, **kwargs)
        raise RuntimeError("the registry failed after the event's insert")

    monkeypatch.setattr(outbox, "record", then_fail)
    with pytest.raises(RuntimeError):
        client.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3"})
    assert events(app) == []


def test_two_dispatchers_never_deliver_one_event_twice(
    app: Flask, client: FlaskClient, database_url: str | None, data_dir: Path
) -> None:
    """Two workers (two engines, two dispatchers) on one outbox at once: every event
    delivered exactly once."""
    for _ in range(20):
        create(client, 0)  # post-create and post-finish each
    Receiver.delay = 0.01
    url = database_url or f"sqlite:///{data_dir / 'uploadsvc.db'}"
    engines = [db.make_engine(url) for _ in range(2)]
    workers = [
        Dispatcher(db.make_sessionmaker(engine), dispatcher(app).url, secret=SECRET)
        for engine in engines
    ]
    try:
        threads = [threading.Thread(target=worker.drain, args=(60,)) for worker in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
    finally:
        for engine in engines:
            engine.dispose()
    ids = Counter(r.headers["x-uploadsvc-event-id"] for r in Receiver.requests)
    assert len(ids) == 40
    assert set(ids.values()) == {1}
    assert all(row.state is EventState.DELIVERED for row in events(app))


def test_a_blocked_receiver_delays_no_upload(app: Flask, client: FlaskClient) -> None:
    """The dispatcher thread is stuck in a request the receiver doesn't answer;
    uploads go on meanwhile (their requests never wait on a delivery)."""
    gate = threading.Event()
    Receiver.gate = gate
    worker = dispatcher(app)
    worker.start()
    try:
        first = create(client, 1)
        deadline = time.monotonic() + 10
        while not Receiver.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert Receiver.waiting == 1  # the post-create is stuck in the receiver
        for _ in range(5):
            url = create(client, 3)
            assert patch(client, url, b"abc").status_code == 204
        assert patch(client, first, b"x").status_code == 204
        assert Receiver.received == []  # none delivered yet: all of that went on meanwhile
    finally:
        gate.set()
    assert worker.drain(30)
    worker.stop(5)
    assert len(Receiver.received) == 12


def test_metrics_show_the_backlog(app: Flask, client: FlaskClient, clock: Clock) -> None:
    def scrape() -> dict[str, float]:
        lines = client.get("/metrics").text.splitlines()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in lines
            if line.startswith("uploadsvc_webhook_")
        }

    Receiver.failures_left = 1
    create(client, 0)  # post-create (refused once), post-finish behind it
    dispatcher(app).deliver_due()
    seen = scrape()
    assert seen['uploadsvc_webhook_events{state="pending"}'] == 2
    assert seen['uploadsvc_webhook_events{state="delivered"}'] == 0
    assert seen['uploadsvc_webhook_events{state="failed"}'] == 0
    assert seen["uploadsvc_webhook_oldest_pending_seconds"] > 0  # the test clock is in the past
    clock.advance(1)
    settle(app)
    seen = scrape()
    assert seen['uploadsvc_webhook_events{state="pending"}'] == 0
    assert seen['uploadsvc_webhook_events{state="delivered"}'] == 2
    assert seen["uploadsvc_webhook_oldest_pending_seconds"] == 0
