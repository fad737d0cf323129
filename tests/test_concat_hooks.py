"""Hooks and concatenation: authorize sees the upload (and every partial a final names),
pre_create sees finals, and no final makes the server write what it didn't receive."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from flask import Flask, current_app
from flask.testing import FlaskClient

from tests.conftest import TUS, database_settings, service
from tests.test_concat import downloaded, final
from tests.test_views import head, patch
from uploadsvc import close_app, create_app
from uploadsvc.hooks import Hooks

ALICE = {"Authorization": "Bearer alice"}
BOB = {"Authorization": "Bearer bob"}


def app_with(data_dir: Path, database_url: str | None, hooks: str | None) -> Flask:
    config = {"DATA_DIR": str(data_dir), "WEB_UI": "1", **database_settings(database_url)}
    if hooks:
        config["HOOKS"] = hooks
    app = create_app(config)
    app.testing = True
    return app


@pytest.fixture
def owned(data_dir: Path, database_url: str | None) -> Iterator[FlaskClient]:
    app = app_with(data_dir, database_url, "tests.hookmods.owner:OwnerHooks")
    with app.test_client() as client:
        yield client
    close_app(app)


@pytest.fixture
def plain(data_dir: Path, database_url: str | None) -> Iterator[tuple[Flask, FlaskClient]]:
    app = app_with(data_dir, database_url, None)
    with app.test_client() as client:
        yield app, client
    close_app(app)


def upload(
    client: FlaskClient,
    data: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    partial: bool = False,
) -> str:
    headers = headers or {}
    sent = {**TUS, "Upload-Length": str(len(data)), **headers}
    if partial:
        sent["Upload-Concat"] = "partial"
    response = client.post("/files/", headers=sent)
    assert response.status_code == 201, response.text
    url = response.headers["Location"].removeprefix("http://localhost")
    if data:
        assert patch(client, url, data, **headers).status_code == 204
    return url


def files_size(data_dir: Path) -> int:
    return sum(path.stat().st_size for path in (data_dir / "files").iterdir())


# -- authorize gets the upload -------------------------------------------------------------


def test_owner_hook_guards_every_way_in(owned: FlaskClient) -> None:
    client = owned
    url = upload(client, b"alice's", ALICE)
    assert client.head(url, headers={**TUS, **ALICE}).status_code == 200
    assert downloaded(client, url, **ALICE) == b"alice's"
    # Bob gets what an unknown id gets, by every method and every route.
    unknown = "/files/" + "0" * 32
    for method in ("HEAD", "GET", "DELETE"):
        assert client.open(url, method=method, headers={**TUS, **BOB}).status_code == 404
        assert client.open(unknown, method=method, headers={**TUS, **BOB}).status_code == 404
    assert patch(client, url, b"x", 7, **BOB).status_code == 404
    override = {**TUS, **BOB, "X-HTTP-Method-Override": "DELETE"}
    assert client.post(url, headers=override).status_code == 404
    assert client.head(url, headers=TUS).status_code == 401  # no identity at all
    assert client.get("/api/uploads", headers=BOB).json == {"uploads": [], "next": None}
    listed = client.get("/api/uploads", headers=ALICE).json
    assert listed is not None
    assert [item["url"] for item in listed["uploads"]] == [url.lstrip("/")]
    # The stamp can't be forged: pre_create replaces what the client sends.
    forged = upload(client, b"", {**BOB, "Upload-Metadata": "owner YWxpY2U="})
    assert head(client, forged).status_code == 401
    assert client.head(forged, headers={**TUS, **BOB}).headers["Upload-Metadata"] == "owner Ym9i"
    # A tombstone is its owner's business too: the hook decides before the 410.
    assert client.delete(url, headers={**TUS, **ALICE}).status_code == 204
    assert client.head(url, headers={**TUS, **BOB}).status_code == 404
    assert client.head(url, headers={**TUS, **ALICE}).status_code == 410


def test_finals_need_authorize_on_every_partial(owned: FlaskClient) -> None:
    client = owned
    mine = upload(client, b"bob", BOB, partial=True)
    theirs = upload(client, b"alice", ALICE, partial=True)
    before = client.get("/api/uploads", headers=BOB).json
    # Bob can't assemble Alice's bytes into an upload of his.
    assert final(client, mine, theirs, **BOB)[0] == 404
    assert final(client, theirs, **BOB)[0] == 404
    assert client.get("/api/uploads", headers=BOB).json == before
    status, url = final(client, mine, mine, **BOB)
    assert status == 201
    assert downloaded(client, url, **BOB) == b"bobbob"
    assert client.head(url, headers={**TUS, **ALICE}).status_code == 404
    status, url = final(client, theirs, **ALICE)
    assert status == 201 and downloaded(client, url, **ALICE) == b"alice"


def test_one_argument_authorize_hooks_still_work(data_dir: Path) -> None:
    class Legacy:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def authorize(self, request: object) -> None:
            self.seen.append(type(request).__name__)

    legacy = Legacy()
    hooks = Hooks(target=legacy)
    assert hooks.authorizes and not hooks.authorize_needs_upload
    hooks.authorize(object(), None)  # type: ignore[arg-type]
    assert legacy.seen == ["object"]

    class Varargs:
        def authorize(self, *args: object) -> None:
            legacy.seen.append(str(len(args)))

    Hooks(target=Varargs()).authorize(object(), None)  # type: ignore[arg-type]
    assert legacy.seen[-1] == "2"


def test_a_final_passes_pre_create(data_dir: Path, database_url: str | None) -> None:
    app = app_with(data_dir, database_url, "tests.hookmods.sample:SampleHooks")
    with app.test_client() as client:
        part = upload(client, b"MZ", partial=True)
        exe = {"Upload-Metadata": "filename eC5leGU="}  # x.exe
        assert final(client, part, **exe)[0] == 403
        status, url = final(client, part)
        assert status == 201
        assert head(client, url).headers["Upload-Metadata"] == "owner YWxpY2U="
    close_app(app)
    files = sorted(path.name for path in (data_dir / "files").iterdir())
    assert files == sorted([part.rsplit("/", 1)[1], url.rsplit("/", 1)[1]])


# -- amplification ------------------------------------------------------------------------


def test_finals_write_nothing_however_often_they_name_a_partial(
    plain: tuple[Flask, FlaskClient], data_dir: Path
) -> None:
    _, client = plain
    data = bytes(range(256)) * 400  # 100 KiB
    part = upload(client, data, partial=True)
    other = upload(client, b"tail", partial=True)
    before = files_size(data_dir)
    assert before == len(data) + 4
    urls = []
    for _ in range(10):
        status, url = final(client, *[part] * 10, other)
        assert status == 201
        urls.append(url)
    # 10 finals naming the partial 10 times each: a megabyte of uploads, no new bytes.
    assert files_size(data_dir) == before
    whole = data * 10 + b"tail"
    for url in urls:
        assert head(client, url).headers["Upload-Offset"] == str(len(whole))
        assert downloaded(client, url) == whole
    # Ranges across the partials' boundaries, and into the last one.
    ranges = [(0, 0), (len(data) - 3, len(data) + 2), (5 * len(data) - 1, len(whole) - 1)]
    for first, last in ranges:
        response = client.get(urls[0], headers={"Range": f"bytes={first}-{last}"})
        assert response.status_code == 206
        assert response.data == whole[first : last + 1]
        response.close()


# -- DELETE of a partial racing its final ---------------------------------------------------


def test_a_partial_deleted_while_its_final_is_created(
    data_dir: Path, database_url: str | None
) -> None:
    """pre_create of the final runs after the partials were checked and before the final
    is registered: a DELETE there is the race at its worst. The final is refused (410)
    and leaves nothing behind; a DELETE after it keeps the bytes the final reads."""
    app = app_with(data_dir, database_url, "tests.test_concat_hooks:DeleteDuringCreate")
    with app.test_client() as client:
        doomed = upload(client, b"doomed", partial=True)
        kept = upload(client, b"kept", partial=True)
        DeleteDuringCreate.victim = doomed
        assert final(client, kept, doomed)[0] == 410
        DeleteDuringCreate.victim = None
        status, url = final(client, kept, kept)
        assert status == 201
        assert client.delete(kept, headers=TUS).status_code == 204
        assert head(client, kept).status_code == 410
        assert downloaded(client, url) == b"keptkept"
    close_app(app)
    names = {path.name for path in (data_dir / "files").iterdir()}
    assert names == {kept.rsplit("/", 1)[1], url.rsplit("/", 1)[1]}


class DeleteDuringCreate:
    victim: str | None = None

    def pre_create(self, request: object, length: object, metadata: object) -> None:
        if self.victim is not None:
            service(current_app).terminate(self.victim.rsplit("/", 1)[1])  # a DELETE


def race_final_and_delete(app: Flask, part: str) -> dict[str, object]:
    """POST a final naming ``part`` and DELETE ``part`` at once; both answers."""
    answers: dict[str, object] = {}

    def make_final() -> None:
        with app.test_client() as own:
            answers["final"], answers["url"] = final(own, part)

    def delete() -> None:
        with app.test_client() as own:
            answers["delete"] = own.delete(part, headers=TUS).status_code

    threads = [threading.Thread(target=make_final), threading.Thread(target=delete)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return answers


def test_deletes_racing_finals_never_fail(plain: tuple[Flask, FlaskClient]) -> None:
    """Threads: a final naming a partial and a DELETE of it, many times over. Either
    order is an answer (201 or 410; 204), never a 500, and a final that was made
    downloads whole."""
    app, client = plain
    for _ in range(20):
        part = upload(client, b"x" * 1000, partial=True)
        answers = race_final_and_delete(app, part)
        assert answers.get("final") in (201, 410), answers
        assert answers.get("delete") == 204, answers
        if answers["final"] == 201:
            url = str(answers["url"])
            assert head(client, url).headers["Upload-Offset"] == "1000"
            assert downloaded(client, url) == b"x" * 1000
