"""The operator view through the app: off without a token, who may look, what it shows,
the feed's events and its bound on watchers (README "Watching it run")."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import Clock
from uploadsvc import close_app, create_app
from uploadsvc.admin import COOKIE, SESSION_HOURS, _session_value
from uploadsvc.config import ConfigError, Settings
from uploadsvc.parts import parts
from uploadsvc.progress import Flow

TOKEN = "s3cret-admin-token-0123"
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


@pytest.fixture
def admin_app(data_dir: Path, clock: Clock) -> Iterator[Flask]:
    app = create_app(
        {
            "DATA_DIR": str(data_dir),
            "MAX_SIZE": "100000",
            "EXPIRE_AFTER": "3600",
            "LOCK_TIMEOUT": "0.2",
            "ADMIN_TOKEN": TOKEN,
            "STALL_AFTER": "5",
            "ADMIN_WATCHERS": "2",
            "ADMIN_STREAM_SECONDS": "1",
        },
        clock=clock,
    )
    app.testing = True
    parts(app).progress.autostart = False  # the tests call report() themselves
    yield app
    close_app(app)


@pytest.fixture
def admin(admin_app: Flask) -> Iterator[FlaskClient]:
    with admin_app.test_client() as client:
        yield client


BEARER = {"Authorization": f"Bearer {TOKEN}"}


def create(client: FlaskClient, length: int, name: str = "a.bin") -> str:
    meta = "filename " + base64.b64encode(name.encode()).decode()
    response = client.post(
        "/files/", headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": meta}
    )
    assert response.status_code == 201
    return response.headers["Location"].rsplit("/", 1)[1]


def patch(client: FlaskClient, upload_id: str, offset: int, body: bytes, **headers: str) -> int:
    response = client.patch(
        f"/files/{upload_id}",
        data=body,
        headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS, **headers},
    )
    return response.status_code


# -- who may look ---------------------------------------------------------------------------


def test_off_without_a_token(client: FlaskClient) -> None:
    for path in ("/admin", "/admin/events", "/admin/overview.json"):
        assert client.get(path, headers=BEARER).status_code == 404
    assert client.post("/admin/login", data={"token": TOKEN}).status_code == 404


@pytest.mark.parametrize(
    "token",
    ["short", "with a space in it here", "ünïcödé-token-long-enough"],
)
def test_a_token_must_be_long_printable_ascii(token: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="UPLOADSVC_ADMIN_TOKEN") as raised:
        Settings.from_mapping({"DATA_DIR": str(tmp_path), "ADMIN_TOKEN": token})
    assert token not in str(raised.value)


@pytest.mark.parametrize("path", ["/admin", "/admin/events", "/admin/overview.json"])
def test_no_credentials_401_wrong_ones_403(admin: FlaskClient, path: str) -> None:
    response = admin.get(path)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for wrong in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer ", TOKEN):
        assert admin.get(path, headers={"Authorization": wrong}).status_code == 403
    admin.set_cookie(COOKIE, "123.abc", path="/admin")
    assert admin.get(path).status_code == 403


def test_the_page_without_credentials_is_the_sign_in_form(admin: FlaskClient) -> None:
    response = admin.get("/admin")
    assert response.status_code == 401
    assert b'<form method="post" action="/admin/login">' in response.data
    assert b"In flight" not in response.data
    assert "form-action 'self'" in response.headers["Content-Security-Policy"]


def test_sign_in_sets_a_strict_httponly_cookie_without_the_token(admin: FlaskClient) -> None:
    assert admin.post("/admin/login", data={"token": "nope"}).status_code == 403
    response = admin.post("/admin/login", data={"token": TOKEN})
    assert response.status_code == 303 and response.headers["Location"] == "/admin"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=") and TOKEN not in cookie
    for part in ("HttpOnly", "SameSite=Strict", "Path=/admin", f"Max-Age={SESSION_HOURS * 3600}"):
        assert part in cookie
    assert "Secure" not in cookie  # plain HTTP here; over HTTPS it says Secure
    page = admin.get("/admin")
    assert page.status_code == 200 and b"In flight" in page.data
    assert admin.get("/admin/overview.json").status_code == 200
    # Signing out forgets it.
    admin.post("/admin/logout")
    assert admin.get("/admin").status_code == 401


def test_a_session_ends_after_its_hours(admin: FlaskClient, admin_app: Flask) -> None:
    with admin_app.test_request_context():
        old = _session_value(time.time() - SESSION_HOURS * 3600 - 5)
        fresh = _session_value(time.time())
    admin.set_cookie(COOKIE, old, path="/admin")
    assert admin.get("/admin").status_code == 403
    admin.set_cookie(COOKIE, fresh, path="/admin")
    assert admin.get("/admin").status_code == 200


def test_the_sign_in_cookie_is_secure_over_https(admin: FlaskClient) -> None:
    response = admin.post("/admin/login", data={"token": TOKEN}, base_url="https://localhost")
    assert "Secure" in response.headers["Set-Cookie"]


# -- what it shows --------------------------------------------------------------------------


def test_completions_terminations_failures_and_expiry_show(
    admin: FlaskClient, admin_app: Flask, clock: Clock
) -> None:
    done = create(admin, 3, "done.txt")
    assert patch(admin, done, 0, b"abc") == 204
    gone = create(admin, 10, "gone.txt")
    assert admin.delete(f"/files/{gone}", headers=TUS).status_code == 204
    bad = create(admin, 10, "bad.txt")
    wrong = "sha1 " + base64.b64encode(b"\0" * 20).decode()
    assert patch(admin, bad, 0, b"0123", **{"Upload-Checksum": wrong}) == 460
    late = create(admin, 10, "late.txt")
    parts(admin_app).progress.report()
    overview = admin.get("/admin/overview.json", headers=BEARER).get_json()
    assert [u["id"] for u in overview["completions"]] == [done]
    assert [u["id"] for u in overview["terminations"]] == [gone]
    assert [(u["id"], u["reason"]) for u in overview["failures"]] == [(bad, "checksum")]
    flying = {u["id"]: u for u in overview["in_flight"]}
    assert set(flying) == {bad, late}
    assert flying[late]["filename"] == "late.txt" and not flying[late]["stalled"]
    # An hour later the unfinished ones have expired: failures, not in flight.
    clock.advance(3601)
    overview = admin.get("/admin/overview.json", headers=BEARER).get_json()
    assert overview["in_flight"] == []
    reasons = {(u["id"], u["reason"]) for u in overview["failures"]}
    assert reasons == {(bad, "checksum"), (bad, "expired"), (late, "expired")}
    page = admin.get("/admin", headers=BEARER).data.decode()
    assert "done.txt" in page and "gone.txt" in page and "late.txt" in page
    metrics = admin.get("/metrics").data.decode()
    assert 'uploadsvc_upload_failures_total{reason="checksum"} 1.0' in metrics


def test_a_body_in_flight_shows_its_progress_then_stalls(
    admin: FlaskClient, admin_app: Flask, clock: Clock
) -> None:
    """The reporter writes what a worker's monitor sees (here, a body of 1,000 bytes at
    offset 200 that has been streaming for 2 s); any worker's page reads it."""
    upload = create(admin, 5000, "big.iso")
    app_parts = parts(admin_app)
    mono = [100.0]
    reporter = app_parts.progress
    reporter.monotonic = lambda: mono[0]
    flows = [Flow(1, upload, 200, 1000, started=98.0, last_byte=99.5)]
    reporter.flows = lambda: flows
    reporter.count(1000)
    reporter.report()
    overview = admin.get("/admin/overview.json", headers=BEARER).get_json()
    (body,) = overview["in_flight"]
    assert body["position"] == 1200 and body["offset"] == 0 and body["streaming"]
    assert body["rate"] == 500 and not body["stalled"]
    assert overview["minutes"][-1][1] == 1000
    # No byte for longer than UPLOADSVC_STALL_AFTER (5 s): stalled, on the page too.
    clock.advance(6)
    mono[0] += 6
    reporter.report()
    overview = admin.get("/admin/overview.json", headers=BEARER).get_json()
    assert overview["in_flight"][0]["stalled"]
    page = admin.get("/admin", headers=BEARER).data.decode()
    assert 'class="stalled"' in page and ">stalled<" in page
    # The body ends: its row goes, the upload shows its stored offset.
    flows.clear()
    reporter.report()
    overview = admin.get("/admin/overview.json", headers=BEARER).get_json()
    assert overview["in_flight"][0]["position"] == 0 and not overview["in_flight"][0]["streaming"]


# -- the feed -------------------------------------------------------------------------------


def test_changes_are_events(admin: FlaskClient, admin_app: Flask, clock: Clock) -> None:
    watching = parts(admin_app).watching
    since = clock()
    clock.advance(1)
    done = create(admin, 3)
    assert patch(admin, done, 0, b"abc") == 204
    gone = create(admin, 4)
    assert patch(admin, gone, 0, b"ab") == 204
    assert admin.delete(f"/files/{gone}", headers=TUS).status_code == 204
    parts(admin_app).progress.report()
    _, events = watching.changes(since)
    kinds = {
        (event["type"], (event.get("upload") or {}).get("id", event.get("id"))) for event in events
    }
    assert {("created", done), ("finished", done), ("created", gone), ("terminated", gone)} <= kinds
    assert ("minute", None) in {
        (kind, subject if kind != "minute" else None) for kind, subject in kinds
    }
    # Nothing changed since: nothing but the chart's current minutes.
    _, events = watching.changes(clock())
    assert {event["type"] for event in events} <= {"minute"}


def test_the_feed_sends_each_change_once(admin_app: Flask) -> None:
    feed = parts(admin_app).feed
    watcher = feed.watch()
    assert watcher is not None
    try:
        event = {"type": "progress", "id": "x", "position": 1}
        feed.publish([event])
        feed.publish([event, {"type": "progress", "id": "x", "position": 2}])
        # Creation (and the other one-time events) once, even when their content moved on
        # (a terminated upload must not come back as created).
        feed.publish([{"type": "created", "upload": {"id": "y", "stalled": False}}])
        feed.publish([{"type": "created", "upload": {"id": "y", "stalled": True}}])
        got = watcher.next(timeout=0.1)
        assert [e["position"] for e in got if e.get("id") == "x"] == [1, 2]
        assert [e["type"] for e in got if e.get("upload", {}).get("id") == "y"] == ["created"]
    finally:
        watcher.close()


def test_watchers_are_bounded_and_streams_end(admin: FlaskClient, admin_app: Flask) -> None:
    feed = parts(admin_app).feed
    held = [feed.watch(), feed.watch()]  # UPLOADSVC_ADMIN_WATCHERS=2
    try:
        response = admin.get("/admin/events", headers=BEARER)
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    finally:
        for watcher in held:
            assert watcher is not None
            watcher.close()
    started = time.monotonic()
    response = admin.get("/admin/events", headers=BEARER)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["X-Accel-Buffering"] == "no"
    text = response.get_data(as_text=True)  # ends by itself (UPLOADSVC_ADMIN_STREAM_SECONDS=1)
    assert text.startswith("retry: 2000\n\n")
    assert time.monotonic() - started < 5
    assert feed.watching() == 0


def test_the_grants_panel_shows_each_grants_use(data_dir: Path, clock: Clock) -> None:
    """With UPLOADSVC_AUTH=grants the panel lists the live grants against their limits."""
    app = create_app(
        {"DATA_DIR": str(data_dir), "AUTH": "grants", "ADMIN_TOKEN": TOKEN}, clock=clock
    )
    try:
        parts(app).progress.autostart = False
        grant, token = parts(app).grants.create(
            label="ACME scans", max_bytes=1000, max_files=5, expires_in=None
        )
        gone, _ = parts(app).grants.create(
            label="old", max_bytes=None, max_files=None, expires_in=None
        )
        parts(app).grants.revoke(gone.id)
        client = app.test_client()
        response = client.post(
            "/files/",
            headers={**TUS, "Upload-Length": "300", "Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 201
        shown = client.get("/admin/overview.json", headers=BEARER).get_json()["grants"]
        assert shown == [
            {"name": f"ACME scans ({grant.id})", "uploads": 1, "bytes": 300, "limit_bytes": 1000}
        ]
    finally:
        close_app(app)
