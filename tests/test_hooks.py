"""Hooks loaded by import path, and the webhook posting to a real local HTTP receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import OCTET, TUS, Receiver, database_settings, service, settle
from tests.hookmods import sample
from tests.test_views import head, patch, stored
from uploadsvc import close_app, create_app
from uploadsvc.config import ConfigError
from uploadsvc.parts import parts


def app_with(data_dir: Path, **config: str) -> Flask:
    app = create_app({"DATA_DIR": str(data_dir), **config})
    app.testing = True
    return app


def post(client: FlaskClient, length: int, **headers: str) -> Any:
    return client.post("/files/", headers={**TUS, "Upload-Length": str(length), **headers})


@pytest.fixture
def hooked(data_dir: Path, database_url: str | None) -> Iterator[tuple[Flask, FlaskClient]]:
    sample.EVENTS.clear()
    app = app_with(
        data_dir, HOOKS="tests.hookmods.sample:SampleHooks", **database_settings(database_url)
    )
    with app.test_client() as client:
        yield app, client
    close_app(app)


def test_pre_create_rejects_changes_metadata_and_chooses_ids(
    hooked: tuple[Flask, FlaskClient], data_dir: Path
) -> None:
    _, client = hooked
    response = post(client, 3, **{"Upload-Metadata": "filename YS5leGU="})  # a.exe
    assert response.status_code == 403
    assert response.text == "no executables here\n"
    assert not any((data_dir / "files").iterdir())

    response = post(client, 3, **{"X-Choose-Id": "chosen0001"})
    assert response.headers["Location"].endswith("/files/chosen0001")
    assert post(client, 3, **{"X-Choose-Id": "chosen0001"}).status_code == 409
    longest = "L" * 64  # the longest id a hook may choose fits every registry
    response = post(client, 3, **{"X-Choose-Id": longest})
    assert response.headers["Location"].endswith(f"/files/{longest}")
    assert patch(client, response.headers["Location"], b"abc").status_code == 204

    url = post(client, 3).headers["Location"]
    assert head(client, url).headers["Upload-Metadata"] == "owner YWxpY2U="


def test_authorize_runs_for_every_method(hooked: tuple[Flask, FlaskClient]) -> None:
    _, client = hooked
    url = post(client, 3).headers["Location"]
    bad = {"Authorization": "Bearer bad"}
    assert client.head(url, headers={**TUS, **bad}).status_code == 401
    assert client.get(url, headers=bad).status_code == 401
    assert client.delete(url, headers={**TUS, **bad}).status_code == 401
    assert post(client, 3, **bad).status_code == 401
    response = client.patch(
        url, data=b"abc", headers={**TUS, **bad, "Content-Type": OCTET, "Upload-Offset": "0"}
    )
    assert response.status_code == 401
    assert head(client, url).headers["Upload-Offset"] == "0"
    assert client.options(url, headers=bad).status_code == 204  # preflights aren't auth'd


def test_pre_finish_shapes_the_completing_response(hooked: tuple[Flask, FlaskClient]) -> None:
    app, client = hooked
    url = post(client, 6).headers["Location"]
    response = patch(client, url, b"abc")
    assert "X-Upload-Checked" not in response.headers
    response = patch(client, url, b"def", 3)
    assert response.headers["X-Upload-Checked"] == "yes"
    assert "X-Evil" not in response.headers  # header injection dropped
    client.delete(url, headers=TUS)
    service(app).hooks.drain()
    upload_id = url.rsplit("/", 1)[1]
    assert [event for event in sample.EVENTS if event[1] == upload_id] == [
        ("post-create", upload_id),
        ("post-finish", upload_id),
        ("post-terminate", upload_id),
    ]


def test_broken_hooks_do_not_corrupt_uploads(data_dir: Path) -> None:
    app = app_with(data_dir, HOOKS="tests.hookmods.sample:BrokenHooks")
    client = app.test_client()
    url = post(client, 3).headers["Location"]
    assert patch(client, url, b"abc").status_code == 204
    service(app).hooks.drain()
    assert stored(data_dir, url) == b"abc"
    assert head(client, url).headers["Upload-Offset"] == "3"


@pytest.mark.parametrize("hook", ["BrokenAuth", "BrokenCreate"])
def test_failing_gatekeepers_refuse(data_dir: Path, hook: str) -> None:
    client = app_with(data_dir, HOOKS=f"tests.hookmods.sample:{hook}").test_client()
    assert post(client, 3).status_code == 500
    assert not any((data_dir / "files").iterdir())


@pytest.mark.parametrize(
    "spec", ["tests.hookmods.nothere:X", "tests.hookmods.sample:Missing", "not a path"]
)
def test_unloadable_hooks_stop_start_up(data_dir: Path, spec: str) -> None:
    with pytest.raises(ConfigError, match="UPLOADSVC_HOOKS"):
        app_with(data_dir, HOOKS=spec)


def test_webhook_posts_events_with_retries(data_dir: Path, receiver: str) -> None:
    Receiver.failures_left = 1  # the first delivery fails, the retry (1 s later) lands
    app = app_with(data_dir, WEBHOOK_URL=receiver)
    client = app.test_client()
    url = post(client, 3, **{"Upload-Metadata": "filename YS50eHQ="}).headers["Location"]
    patch(client, url, b"abc")
    settle(app)
    events = [(item["event"], item["upload"]["id"]) for item in Receiver.received]
    upload_id = url.rsplit("/", 1)[1]
    assert events == [("post-create", upload_id), ("post-finish", upload_id)]
    finished = Receiver.received[1]["upload"]
    assert finished["metadata"] == {"filename": "a.txt"}
    assert finished["offset"] == finished["length"] == 3
    close_app(app)


def test_dead_webhook_never_blocks_a_response(data_dir: Path) -> None:
    # Nothing listens on port 9 (discard) on loopback: every attempt fails at once, and
    # the requests still answer; the events wait in the outbox.
    app = app_with(data_dir, WEBHOOK_URL="http://127.0.0.1:9/events")
    client = app.test_client()
    url = post(client, 1).headers["Location"]
    assert patch(client, url, b"x").status_code == 204
    dispatcher = parts(app).dispatcher
    assert dispatcher is not None
    # The post-create refused; its post-finish waits behind it: both still owed.
    assert dispatcher.deliver_due() == 1
    assert dispatcher.pending() == 2
    close_app(app)


def test_unparsable_metadata_never_stops_the_webhook(data_dir: Path, receiver: str) -> None:
    app = app_with(data_dir, WEBHOOK_URL=receiver, HOOKS="tests.hookmods.sample:UnparsableMetadata")
    client = app.test_client()
    first = post(client, 3).headers["Location"].rsplit("/", 1)[1]
    second = post(client, 3).headers["Location"].rsplit("/", 1)[1]
    settle(app)
    # Both delivered: the metadata as stored, and the thread alive for the next one.
    assert [(item["upload"]["id"], item["upload"]["metadata"]) for item in Receiver.received] == [
        (first, "file name eA=="),
        (second, "file name eA=="),
    ]
