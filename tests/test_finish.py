"""One way to finish, exactly once: every route into "complete" runs the finish sequence
(store finish, pre-finish, post-finish hook and webhook, the finish metric, finals waiting
on a partial) once, and a finish that broke off (a crash) is resumed by the next request
or by cleanup. Each test counts post-finish events of a hook module and deliveries to a
real webhook receiver on 127.0.0.1."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import OCTET, TUS, Clock, database_settings, deliveries, service, settle
from tests.hookmods import finish_log
from tests.test_concat import final, partial
from tests.test_views import chunked_patch, create, head, patch, stored
from uploadsvc import close_app, create_app
from uploadsvc.models import Upload, UploadState
from uploadsvc.records import UploadInfo


@pytest.fixture
def app(data_dir: Path, clock: Clock, database_url: str | None, receiver: str) -> Iterator[Flask]:
    finish_log.EVENTS.clear()
    app = create_app(
        {
            "DATA_DIR": str(data_dir),
            "MAX_SIZE": "1000",
            "LOCK_TIMEOUT": "0.2",
            "HOOKS": "tests.hookmods.finish_log:FinishLog",
            "WEBHOOK_URL": receiver,
            **database_settings(database_url),
        },
        clock=clock,
    )
    app.testing = True
    yield app
    close_app(app)


class Crash(BaseException):
    """The process dying at this point: nothing after it runs, nothing catches it."""


def ident(url: str) -> str:
    return url.rsplit("/", 1)[1]


def finishes(app: Flask, url: str) -> tuple[int, int]:
    """(post-finish hook runs, post-finish webhook deliveries) for the upload."""
    settle(app)
    upload_id = ident(url)
    return (
        finish_log.count("post-finish", upload_id),
        deliveries("post-finish", upload_id),
    )


def finish_metric(client: FlaskClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("uploadsvc_upload_events_total") and 'event="finish"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def download(client: FlaskClient, url: str) -> bytes:
    response = client.get(url)
    try:
        assert response.status_code == 200, response.status_code
        data: bytes = response.data
        return data
    finally:
        response.close()


def row(app: Flask, url: str) -> Upload:
    with service(app).sessions.begin() as session:
        found = session.get(Upload, ident(url))
        assert found is not None
        session.expunge(found)
        return found


def crash_in_finish(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next finish dies after the last byte's record, before its compare-and-set."""
    store = service(app).store
    real = store.finish

    def dies(upload_id: str) -> None:
        monkeypatch.setattr(store, "finish", real)
        raise Crash()

    monkeypatch.setattr(store, "finish", dies)


# -- every route into "complete" --------------------------------------------------------


def test_plain_patch(app: Flask, client: FlaskClient) -> None:
    url = create(client, 3)
    response = patch(client, url, b"abc")
    assert response.status_code == 204
    assert response.headers["X-Finished"] == ident(url)
    assert finishes(app, url) == (1, 1)
    assert row(app, url).finished_at is not None
    head(client, url)
    patch(client, url, b"", 3)
    assert download(client, url) == b"abc"
    assert finishes(app, url) == (1, 1)


def test_chunked_patch_past_the_length(app: Flask, client: FlaskClient, data_dir: Path) -> None:
    url = create(client, 4)
    response = chunked_patch(client, url, b"0123456789")
    assert response.status_code == 413  # kept up to the length, and finished
    assert response.headers["Upload-Offset"] == "4"
    assert finishes(app, url) == (1, 1)
    assert stored(data_dir, url) == b"0123"
    assert head(client, url).headers["Upload-Offset"] == "4"
    assert finishes(app, url) == (1, 1)


class BreaksAfter(io.RawIOBase):
    """A chunked body whose bytes all arrive, then its framing breaks off (a reset
    before the last chunk)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.data:
            raise ConnectionResetError("the terminating chunk never came")
        size = min(len(buffer), len(self.data))
        buffer[:size] = self.data[:size]
        self.data = self.data[size:]
        return size


def test_chunked_body_broken_after_its_last_byte(
    app: Flask, client: FlaskClient, data_dir: Path
) -> None:
    url = create(client, 5)
    response = client.patch(
        url,
        headers={
            **TUS,
            "Content-Type": OCTET,
            "Upload-Offset": "0",
            "Transfer-Encoding": "chunked",
        },
        environ_overrides={"wsgi.input": BreaksAfter(b"abcde")},
    )
    assert response.headers["Upload-Offset"] == "5"
    assert stored(data_dir, url) == b"abcde"
    assert finishes(app, url) == (1, 1)
    assert row(app, url).state is UploadState.COMPLETED


@pytest.mark.parametrize("method", ["HEAD", "PATCH"])
def test_reconcile_after_a_crash_before_the_record(
    app: Flask, client: FlaskClient, data_dir: Path, method: str
) -> None:
    """The bytes reached the file, the process died before recording them: the next
    request's reconcile completes the upload, and that is a finish like any other."""
    url = create(client, 5)
    (data_dir / "files" / ident(url)).write_bytes(b"abcde")
    if method == "HEAD":
        assert head(client, url).headers["Upload-Offset"] == "5"
    else:
        assert patch(client, url, b"abcde").status_code == 409  # it has all 5 now
    assert finishes(app, url) == (1, 1)
    assert head(client, url).headers["Upload-Offset"] == "5"
    assert finishes(app, url) == (1, 1)


@pytest.mark.parametrize("resumer", ["HEAD", "PATCH", "GET", "cleanup"])
def test_crash_between_the_last_byte_and_the_finish(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, resumer: str
) -> None:
    """The last byte's record commits (finishing), the process dies before the
    finish's compare-and-set: the finish is due, and whoever comes next runs it."""
    url = create(client, 3)
    crash_in_finish(app, monkeypatch)
    with pytest.raises(Crash):
        patch(client, url, b"abc")
    finishing = row(app, url)
    assert (finishing.state, finishing.offset, finishing.finished_at) == (
        UploadState.COMPLETED,
        3,
        None,
    )
    assert finishes(app, url) == (0, 0)
    if resumer == "HEAD":
        # While finishing, a HEAD shows the full offset (and finishes it first).
        assert head(client, url).headers["Upload-Offset"] == "3"
    elif resumer == "PATCH":
        response = patch(client, url, b"", 3)
        assert response.status_code == 204
        assert response.headers["X-Finished"] == ident(url)
    elif resumer == "GET":
        assert download(client, url) == b"abc"
    else:
        result = app.test_cli_runner().invoke(args=["cleanup", "--json"])
        assert json.loads(result.output)["finished"] == [ident(url)]
    assert finishes(app, url) == (1, 1)
    assert row(app, url).finished_at is not None
    head(client, url)
    assert app.test_cli_runner().invoke(args=["cleanup"]).output == ""
    assert finishes(app, url) == (1, 1)


def test_deferred_length_declared_at_the_offset(app: Flask, client: FlaskClient) -> None:
    url = create(client, None)
    assert patch(client, url, b"abc").status_code == 204
    assert finishes(app, url) == (0, 0)
    response = patch(client, url, b"", 3, **{"Upload-Length": "3"})
    assert response.status_code == 204
    assert response.headers["X-Finished"] == ident(url)
    assert finishes(app, url) == (1, 1)


def test_upload_length_zero(app: Flask, client: FlaskClient) -> None:
    response = client.post("/files/", headers={**TUS, "Upload-Length": "0"})
    assert response.status_code == 201
    url = response.headers["Location"]
    assert response.headers["X-Finished"] == ident(url)
    assert finishes(app, url) == (1, 1)
    assert download(client, url) == b""
    assert finishes(app, url) == (1, 1)


def test_creation_with_upload_completing(app: Flask, client: FlaskClient) -> None:
    response = client.post(
        "/files/",
        data=b"abc",
        headers={**TUS, "Upload-Length": "3", "Content-Type": OCTET},
    )
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "3"
    url = response.headers["Location"]
    assert response.headers["X-Finished"] == ident(url)
    assert finishes(app, url) == (1, 1)


def test_final_concatenation(app: Flask, client: FlaskClient) -> None:
    a, b = partial(client, 2), partial(client, 1)
    patch(client, a, b"ab")
    patch(client, b, b"c")
    status, url = final(client, a, b)
    assert status == 201
    assert finishes(app, url) == (1, 1)
    for part in (a, b):
        assert finishes(app, part) == (1, 1)
    head(client, url)
    assert finishes(app, url) == (1, 1)


def test_final_completed_by_its_last_partial(app: Flask, client: FlaskClient) -> None:
    a, b = partial(client, 2), partial(client, 1)
    patch(client, a, b"ab")
    _, url = final(client, a, b)
    assert finishes(app, url) == (0, 0)
    # The last partial arrives chunked and past its length: a 413 route into complete,
    # and the final waiting on it completes too.
    assert chunked_patch(client, b, b"cd").status_code == 413
    assert finishes(app, b) == (1, 1)
    assert finishes(app, url) == (1, 1)
    assert download(client, url) == b"abc"


def test_finish_metric_counts_each_finish_once(app: Flask, client: FlaskClient) -> None:
    before = finish_metric(client)
    url = create(client, 4)
    chunked_patch(client, url, b"0123456789")
    head(client, url)
    patch(client, url, b"", 4)
    assert finish_metric(client) == before + 1


def test_only_the_compare_and_set_winner_emits(app: Flask, client: FlaskClient) -> None:
    """Two holders with the same view of a finishing upload (a lock lost in between):
    both may run the idempotent steps, only one sets ``finished_at`` and emits."""
    url = create(client, 1)
    svc = service(app)
    crash_in_finish(app, monkeypatch := pytest.MonkeyPatch())
    try:
        with pytest.raises(Crash):
            patch(client, url, b"x")
    finally:
        monkeypatch.undo()
    with svc.sessions.begin() as session:
        stale = UploadInfo.of(session.get_one(Upload, ident(url)))
    with svc.locker.hold(ident(url), timeout=0):
        first = svc._complete(stale)
        second = svc._complete(stale)
    assert (first.finished_now, second.finished_now) == (True, False)
    assert finishes(app, url) == (1, 1)
    assert finish_log.count("pre-finish", ident(url)) == 2  # both here (the crash came before it)
    with svc.sessions.begin() as session:
        due = session.scalars(select(Upload.id).where(Upload.finished_at.is_(None))).all()
    assert due == []
