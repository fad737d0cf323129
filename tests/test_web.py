"""The upload page and its list of completed uploads, through the Flask test client."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from uploadsvc import create_app, web
from uploadsvc.config import ConfigError, Settings
from uploadsvc.hooks import HookRequest, Rejected
from uploadsvc.models import Upload
from uploadsvc.parts import parts

from .conftest import OCTET, TUS

# Who owns which upload, for OwnerHooks (the tests fill it in).
OWNERS: dict[str, str] = {}
BROKEN: set[str] = set()


class OwnerHooks:
    """Lets only an upload's owner (``X-User``) GET it; a hook bug for ids in BROKEN."""

    def authorize(self, request: HookRequest) -> None:
        if request.upload_id in BROKEN:
            raise RuntimeError("the hook has a bug")
        owner = OWNERS.get(request.upload_id or "")
        if request.method == "GET" and owner and request.headers.get("X-User") != owner:
            raise Rejected(403, "not yours")


def make_app(data_dir: Path, **extra: str) -> Flask:
    app = create_app({"DATA_DIR": str(data_dir), "MAX_SIZE": "100000", **extra})
    app.testing = True
    return app


@pytest.fixture
def web_client(data_dir: Path) -> Iterator[FlaskClient]:
    with make_app(data_dir, WEB_UI="1").test_client() as client:
        yield client


def upload(client: FlaskClient, data: bytes, filename: str | None = None, **headers: str) -> str:
    """A completed upload (creation-with-upload); its id."""
    if filename is not None:
        encoded = base64.b64encode(filename.encode()).decode()
        headers = {"Upload-Metadata": f"filename {encoded}", **headers}
    response = client.post(
        "/files/",
        headers={**TUS, "Upload-Length": str(len(data)), "Content-Type": OCTET, **headers},
        data=data,
    )
    assert response.status_code == 201, response.data
    return str(response.headers["Location"]).rsplit("/", 1)[1]


def test_setting() -> None:
    assert Settings.from_mapping({}).web_ui is False
    assert Settings.from_mapping({"WEB_UI": "1"}).web_ui is True
    assert Settings.from_mapping({"WEB_UI": "off"}).web_ui is False
    with pytest.raises(ConfigError, match="UPLOADSVC_WEB_UI"):
        Settings.from_mapping({"WEB_UI": "maybe"})


def test_off_by_default(client: FlaskClient) -> None:
    assert client.get("/").status_code == 404
    assert client.get("/api/uploads").status_code == 404
    # The tus endpoint doesn't care.
    assert client.options("/files/").status_code == 204


def test_page(web_client: FlaskClient) -> None:
    response = web_client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    html = response.get_data(as_text=True)
    # Relative URLs only: the page must work under a proxy's prefix (/uploads/).
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert not url.startswith("/") and "://" not in url, url
    assert re.search(r'src="static/tus\.min\.js\?v=\w+"', html)
    assert re.search(r'src="static/upload-page\.js\?v=\w+"', html)
    assert 'data-max-size="100000"' in html
    assert 'id="file"' in html and "multiple" in html
    # The page's own assets are there.
    for name in ("upload-page.js", "upload-page.css"):
        asset = web_client.get(f"/static/{name}")
        assert asset.status_code == 200, name
        asset.close()


def test_page_says_when_the_bundle_is_missing(
    web_client: FlaskClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(web, "STATIC_DIR", tmp_path)
    html = web_client.get("/").get_data(as_text=True)
    assert "missing its upload library" in html and "make install" in html


def test_list_of_completed_uploads(web_client: FlaskClient) -> None:
    first = upload(web_client, b"one", "one.txt")
    second = upload(web_client, b"second!", "caf\u00e9 \u2603.pdf")
    nameless = upload(web_client, b"x")
    # Not listed: unfinished, terminated, and partial uploads.
    unfinished = web_client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    assert unfinished.status_code == 201
    gone = upload(web_client, b"gone", "gone.txt")
    assert web_client.delete(f"/files/{gone}", headers=TUS).status_code == 204
    partial = web_client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "2", "Upload-Concat": "partial", "Content-Type": OCTET},
        data=b"ab",
    )
    assert partial.status_code == 201

    response = web_client.get("/api/uploads")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    listed = response.get_json()["uploads"]
    assert [item["id"] for item in listed] == [nameless, second, first]
    by_id = {item["id"]: item for item in listed}
    assert by_id[second] == {
        "id": second,
        "filename": "caf\u00e9 \u2603.pdf",
        "filetype": None,
        "size": 7,
        "completed_at": by_id[second]["completed_at"],
        "url": f"files/{second}",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", by_id[second]["completed_at"])
    assert by_id[nameless]["filename"] is None
    # The listed URL downloads the bytes.
    download = web_client.get(f"/{by_id[first]['url']}")
    assert download.get_data() == b"one"
    download.close()

    limited = web_client.get("/api/uploads?limit=1").get_json()["uploads"]
    assert [item["id"] for item in limited] == [nameless]
    assert len(web_client.get("/api/uploads?limit=junk").get_json()["uploads"]) == 3


def test_file_names_are_made_safe(web_client: FlaskClient) -> None:
    ident = upload(web_client, b"x", "../../etc/pass\nwd")
    listed = web_client.get("/api/uploads").get_json()["uploads"]
    assert listed[0]["id"] == ident
    assert "/" not in listed[0]["filename"] and "\n" not in listed[0]["filename"]


def test_list_shows_only_what_the_authorize_hook_allows(data_dir: Path) -> None:
    app = make_app(data_dir, WEB_UI="1", HOOKS="tests.test_web:OwnerHooks")
    with app.test_client() as client:
        alices = upload(client, b"alice's", "a.txt")
        bobs = upload(client, b"bob's", "b.txt")
        public = upload(client, b"anyone's", "p.txt")
        broken = upload(client, b"hook fails", "x.txt")
        OWNERS.update({alices: "alice", bobs: "bob"})
        BROKEN.add(broken)
        try:

            def listed(**headers: Any) -> list[str]:
                response = client.get("/api/uploads", headers=headers)
                assert response.status_code == 200
                return [item["id"] for item in response.get_json()["uploads"]]

            assert listed(**{"X-User": "alice"}) == [public, alices]
            assert listed(**{"X-User": "bob"}) == [public, bobs]
            assert listed() == [public]
            # The hook agrees with the downloads themselves.
            assert client.get(f"/files/{bobs}", headers={"X-User": "alice"}).status_code == 403
        finally:
            OWNERS.clear()
            BROKEN.clear()


def _pages(client: FlaskClient, limit: int, **headers: str) -> list[list[str]]:
    pages: list[list[str]] = []
    url = f"/api/uploads?limit={limit}"
    for _ in range(50):  # bounded: a cursor that never ends fails the test
        data = client.get(url, headers=headers).get_json()
        pages.append([item["id"] for item in data["uploads"]])
        if data["next"] is None:
            return pages
        url = f"/api/uploads?limit={limit}&before={quote(data['next'])}"
    raise AssertionError("the list never ended")


def _flat(pages: list[list[str]]) -> list[str]:
    return [upload_id for page in pages for upload_id in page]


def test_list_is_paged_by_cursor(web_client: FlaskClient, data_dir: Path) -> None:
    ids = [upload(web_client, b"x", f"{n}.txt") for n in range(7)]
    newest_first = list(reversed(ids))
    assert web_client.get("/api/uploads").get_json()["next"] is None
    pages = _pages(web_client, 3)
    assert [len(page) for page in pages] in ([3, 3, 1], [3, 3, 1, 0])
    assert _flat(pages) == newest_first
    # Ties on completed_at (a batch finishing in one instant) are ordered by id, and
    # paging neither repeats nor skips one.
    app = web_client.application
    with parts(app).sessions.begin() as session:
        moment = datetime(2026, 1, 1, tzinfo=UTC)
        session.execute(update(Upload).values(completed_at=moment))
    pages = _pages(web_client, 2)
    assert _flat(pages) == sorted(ids, reverse=True)


def test_paging_skips_what_the_hook_hides(data_dir: Path) -> None:
    OWNERS.clear()
    with make_app(data_dir, WEB_UI="1", HOOKS="tests.test_web:OwnerHooks").test_client() as client:
        ids = [upload(client, b"x") for _ in range(6)]
        for number, upload_id in enumerate(ids):
            OWNERS[upload_id] = "ann" if number % 2 else "bob"
        pages = _pages(client, 2, **{"X-User": "ann"})
        assert _flat(pages) == [ids[5], ids[3], ids[1]]
    OWNERS.clear()


@pytest.mark.parametrize(
    "before",
    [
        "",
        "x",
        ",",
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00Z,",
        "2026-01-01T00:00:00Z,../etc",
        "2026-01-01T00:00:00,0123456789abcdef",  # no time zone
        "not-a-date,0123456789abcdef",
        "0001-01-01T00:00:00+01:00,0123456789abcdef",
        "2026-13-01T00:00:00Z,0123456789abcdef",
    ],
)
def test_bad_cursor_is_400(web_client: FlaskClient, before: str) -> None:
    response = web_client.get(f"/api/uploads?before={quote(before)}")
    assert response.status_code == 400
    assert "error" in response.get_json()


SEEN: list[HookRequest] = []


class RecordingHooks:
    """Records what the authorize hook is asked."""

    def authorize(self, request: HookRequest) -> None:
        SEEN.append(request)


def test_the_hook_sees_each_listed_upload_as_a_get_of_it(data_dir: Path) -> None:
    """The page's list and a final's partials ask the same question, built one way
    (``HookRequest.read_of``): a GET of the upload, with the asking client's headers."""
    SEEN.clear()
    app = make_app(data_dir, WEB_UI="1", HOOKS="tests.test_web:RecordingHooks")
    with app.test_client() as client:
        whole = upload(client, b"abc", "a.txt")
        first = upload(client, b"abc", "a.txt", **{"Upload-Concat": "partial"})
        SEEN.clear()
        response = client.get("/api/uploads", headers={"X-User": "ann"})
        assert response.status_code == 200
        (listed,) = [seen for seen in SEEN if seen.upload_id == whole]
        assert (listed.method, listed.path) == ("GET", f"/files/{whole}")
        assert listed.headers["X-User"] == "ann"
        SEEN.clear()
        response = client.post(
            "/files",
            headers={**TUS, "Upload-Concat": f"final;/files/{first}", "X-User": "bob"},
        )
        assert response.status_code == 201, response.data
        (read,) = [seen for seen in SEEN if seen.upload_id == first]
        assert (read.method, read.path) == ("GET", f"/files/{first}")
        assert read.headers["X-User"] == "bob"
