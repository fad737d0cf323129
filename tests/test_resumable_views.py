"""Resumable Uploads for HTTP through Flask's test client: one table per interop version
(careful and optimistic creation, offset retrieval, append, mismatch, completion,
cancellation, expiry, limits), and a draft upload being an upload like a tus one (hooks,
CORS, method override, downloads)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import OCTET, TUS, Clock, database_settings, service
from tests.hookmods import sample
from uploadsvc import close_app, create_app
from uploadsvc.resumable import VERSIONS, InteropVersion

ALL = sorted(VERSIONS)


@pytest.fixture(params=ALL, ids=[f"interop{n}" for n in ALL])
def version(request: pytest.FixtureRequest) -> InteropVersion:
    return VERSIONS[request.param]


def draft(version: InteropVersion, complete: bool | None = None, /, **extra: str) -> dict[str, str]:
    headers = {"Upload-Draft-Interop-Version": str(version.number), **extra}
    if complete is not None:
        if version.complete_field == "Upload-Incomplete":
            headers["Upload-Incomplete"] = "?0" if complete else "?1"
        else:
            headers["Upload-Complete"] = "?1" if complete else "?0"
    return headers


def complete_of(version: InteropVersion, response: TestResponse) -> bool:
    """What a response says of completeness, read the way the version's clients read it."""
    if version.complete_field == "Upload-Incomplete":
        return response.headers.get("Upload-Incomplete") != "?1"
    value = response.headers.get("Upload-Complete")
    assert value in ("?0", "?1"), response.headers
    return value == "?1"


def create(client: FlaskClient, version: InteropVersion, data: bytes = b"", /, **extra: str) -> str:
    complete = extra.pop("complete", None) == "yes"
    response = client.post("/files/", data=data, headers=draft(version, complete, **extra))
    assert response.status_code == 201, response.text
    assert response.headers["Upload-Offset"] == str(len(data))
    return response.headers["Location"].removeprefix("http://localhost")


def append(
    client: FlaskClient,
    version: InteropVersion,
    url: str,
    offset: int,
    data: bytes,
    complete: bool | None,
    **extra: str,
) -> TestResponse:
    headers = draft(version, complete, **{"Upload-Offset": str(offset), **extra})
    if version.append_media_type:
        headers.setdefault("Content-Type", version.append_media_type)
    return client.patch(url, data=data, headers=headers)


def download(client: FlaskClient, url: str) -> bytes:
    response = client.get(url)
    try:
        return response.get_data()
    finally:
        response.close()


def test_careful_creation_appends_and_completes(
    client: FlaskClient, version: InteropVersion
) -> None:
    response = client.post("/files/", headers=draft(version, False))
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "0"
    assert not complete_of(version, response)
    assert response.headers["Upload-Limit"] == f"max-size=1000, {version.age_limit_key}=3600"
    url = response.headers["Location"].removeprefix("http://localhost")

    response = append(client, version, url, 0, b"hello ", False)
    assert response.status_code == version.incomplete_status
    assert response.headers["Upload-Offset"] == "6"
    assert not complete_of(version, response)

    response = client.head(url, headers=draft(version))
    assert response.status_code == 204
    assert (response.headers["Upload-Offset"], response.headers["Cache-Control"]) == (
        "6",
        "no-store",
    )
    assert not complete_of(version, response)
    assert "Upload-Length" not in response.headers  # no length told yet
    assert response.headers["Upload-Limit"].startswith("max-size=1000, ")

    response = append(client, version, url, 6, b"world", True)
    assert response.status_code == version.complete_status
    assert response.headers["Upload-Offset"] == "11"
    assert complete_of(version, response)

    response = client.head(url, headers=draft(version))
    assert complete_of(version, response)
    assert response.headers["Upload-Length"] == "11"
    assert response.headers["Upload-Limit"] == "max-size=1000"  # complete: no expiry
    assert download(client, url) == b"hello world"


def test_optimistic_creation_is_one_request(client: FlaskClient, version: InteropVersion) -> None:
    response = client.post("/files/", data=b"all of it", headers=draft(version, True))
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "9"
    assert complete_of(version, response)
    url = response.headers["Location"].removeprefix("http://localhost")
    assert download(client, url) == b"all of it"


def test_creation_with_some_content(client: FlaskClient, version: InteropVersion) -> None:
    url = create(client, version, b"abc")
    response = client.head(url, headers=draft(version))
    assert (response.headers["Upload-Offset"], complete_of(version, response)) == ("3", False)


def test_empty_upload(client: FlaskClient, version: InteropVersion) -> None:
    response = client.post("/files/", headers=draft(version, True))
    assert response.status_code == 201
    assert complete_of(version, response)
    assert download(client, response.headers["Location"]) == b""


def test_mismatch_is_409_with_the_offsets(client: FlaskClient, version: InteropVersion) -> None:
    url = create(client, version, b"abc")
    response = append(client, version, url, 1, b"zz", False)
    assert response.status_code == 409
    assert response.headers["Upload-Offset"] == "3"
    assert not complete_of(version, response)
    if version.problem_types:
        assert response.mimetype == "application/problem+json"
        problem = json.loads(response.data)
        assert problem["type"].endswith("#mismatching-upload-offset")
        assert (problem["expected-offset"], problem["provided-offset"]) == (3, 1)
    assert client.head(url, headers=draft(version)).headers["Upload-Offset"] == "3"


def test_cancellation(app: Flask, client: FlaskClient, version: InteropVersion) -> None:
    url = create(client, version, b"abc")
    assert client.delete(url, headers=draft(version)).status_code == 204
    assert client.head(url, headers=draft(version)).status_code == version.gone_status
    assert append(client, version, url, 3, b"d", False).status_code == version.gone_status
    # The tus client of the same server sees a tombstone, as for any terminated upload.
    assert client.head(url, headers=TUS).status_code == 410


def test_expired(client: FlaskClient, clock: Clock, version: InteropVersion) -> None:
    url = create(client, version, b"abc")
    clock.advance(3601)
    assert client.head(url, headers=draft(version)).status_code == version.gone_status


def test_unknown_upload(client: FlaskClient, version: InteropVersion) -> None:
    assert client.head("/files/" + "0" * 32, headers=draft(version)).status_code == 404


@pytest.mark.parametrize("field", ["Upload-Offset", "complete"])
def test_offset_retrieval_and_cancel_refuse_upload_fields(
    client: FlaskClient, version: InteropVersion, field: str
) -> None:
    url = create(client, version, b"abc")
    name = version.complete_field if field == "complete" else field
    for method in (client.head, client.delete):
        assert method(url, headers=draft(version, **{name: "?0"})).status_code == 400
    assert client.head(url, headers=draft(version)).headers["Upload-Offset"] == "3"


def test_append_media_type(client: FlaskClient, version: InteropVersion) -> None:
    url = create(client, version)
    response = append(client, version, url, 0, b"ab", False, **{"Content-Type": OCTET})
    if version.append_media_type is None:
        assert response.status_code == version.incomplete_status  # any body will do
    else:
        assert response.status_code == 415
        assert client.head(url, headers=draft(version)).headers["Upload-Offset"] == "0"


def test_append_without_completeness(client: FlaskClient, version: InteropVersion) -> None:
    url = create(client, version)
    response = append(client, version, url, 0, b"ab", None)
    if version.append_requires_complete:
        assert response.status_code == 400
    else:
        # "If the end of the content is not the end of the upload, it MUST say so."
        assert response.status_code == version.complete_status
        assert complete_of(version, response)


def test_completed_upload_refuses_more(client: FlaskClient, version: InteropVersion) -> None:
    url = create(client, version, b"abc", complete="yes")
    response = append(client, version, url, 3, b"more", False)
    assert response.status_code == 400
    if version.problem_types:
        assert json.loads(response.data)["type"].endswith("#completed-upload")
    # A completing append whose answer was lost gets its answer again.
    response = append(client, version, url, 3, b"", True)
    assert response.status_code == version.complete_status
    assert complete_of(version, response)
    assert download(client, url) == b"abc"


def test_length_is_set_once(client: FlaskClient, version: InteropVersion) -> None:
    url = create(client, version, **{"Upload-Length": "5"})
    assert client.head(url, headers=draft(version)).headers["Upload-Length"] == "5"
    # Completing with 3 bytes would make it 3 long: refused, nothing stored.
    assert append(client, version, url, 0, b"abc", True).status_code == 400
    assert client.head(url, headers=draft(version)).headers["Upload-Offset"] == "0"
    assert append(client, version, url, 0, b"abcdef", False).status_code == 413
    response = append(client, version, url, 0, b"abcde", True)
    assert response.status_code == version.complete_status


def test_limits_refused_with_upload_limit(client: FlaskClient, version: InteropVersion) -> None:
    response = client.post("/files/", headers=draft(version, False, **{"Upload-Length": "1001"}))
    assert response.status_code == 413
    assert response.headers["Upload-Limit"].startswith("max-size=1000")
    response = client.post("/files/", data=b"x" * 1001, headers=draft(version, True))
    assert response.status_code == 413
    assert response.headers["Upload-Limit"].startswith("max-size=1000")


@pytest.mark.parametrize("value", ["4", "7", "abc", ""])
def test_versions_we_do_not_speak(client: FlaskClient, value: str) -> None:
    headers = {"Upload-Draft-Interop-Version": value, "Upload-Complete": "?1"}
    response = client.post("/files/", data=b"abc", headers=headers)
    assert response.status_code == 400
    assert "3, 5, 6, 8, 9" in response.text


@pytest.mark.parametrize("headers", [{}, {"Upload-Draft-Interop-Version": "9"}])
def test_options_announce_limits(client: FlaskClient, headers: dict[str, str]) -> None:
    response = client.options("/files/", headers=headers)
    assert response.status_code == 204
    assert response.headers["Upload-Limit"] == "max-size=1000, max-age=3600"


def test_required_fields(client: FlaskClient, version: InteropVersion) -> None:
    assert client.post("/files/", headers=draft(version)).status_code == 400  # no completeness
    headers = draft(version, False, **{"Upload-Offset": "0"})
    assert client.post("/files/", headers=headers).status_code == 400
    url = create(client, version)
    response = client.patch(url, data=b"a", headers=draft(version, False, **_media(version)))
    assert response.status_code == 400  # no Upload-Offset
    bad = draft(version, **_media(version), **{"Upload-Offset": "0"})
    bad[version.complete_field] = "yes"
    assert client.patch(url, data=b"a", headers=bad).status_code == 400


def _media(version: InteropVersion) -> dict[str, str]:
    return {"Content-Type": version.append_media_type} if version.append_media_type else {}


def test_tus_and_draft_share_uploads(client: FlaskClient) -> None:
    """Both protocols on one endpoint: a request naming both is tus's."""
    v9 = VERSIONS[9]
    url = create(client, v9, b"abc")
    response = client.head(url, headers=TUS)
    assert (response.status_code, response.headers["Upload-Offset"]) == (200, "3")
    response = client.post("/files/", headers={**TUS, **draft(v9, False)})
    assert response.status_code == 400  # tus: no Upload-Length
    assert client.post("/files/", headers=draft(v9, False)).status_code == 201
    assert client.post("/files/").status_code == 412  # neither: tus's answer


def test_metadata(client: FlaskClient, app: Flask) -> None:
    v6 = VERSIONS[6]
    url = create(client, v6, **{"Upload-Metadata": "filename YS50eHQ="})
    upload_id = url.rsplit("/", 1)[1]
    assert service(app).describe(upload_id).metadata == "filename YS50eHQ="
    url = create(
        client,
        VERSIONS[8],
        b"abc",
        complete="yes",
        **{"Content-Type": "text/plain", "Content-Disposition": 'attachment; filename="b.txt"'},
    )
    info = service(app).describe(url.rsplit("/", 1)[1])
    assert info.metadata == "filename Yi50eHQ=,filetype dGV4dC9wbGFpbg=="


def test_method_override(client: FlaskClient) -> None:
    v6 = VERSIONS[6]
    url = create(client, v6)
    headers = draft(v6, False, **{"Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"})
    headers["Content-Type"] = "application/partial-upload"
    response = client.post(url, data=b"abc", headers=headers)
    assert (response.status_code, response.headers["Upload-Offset"]) == (201, "3")


def test_cors_exposes_the_draft_fields(data_dir: Path) -> None:
    app = create_app({"DATA_DIR": str(data_dir), "CORS_ORIGINS": "https://app.example"})
    try:
        client = app.test_client()
        origin = {"Origin": "https://app.example"}
        preflight = client.options(
            "/files/",
            headers={**origin, "Access-Control-Request-Method": "POST"},
        )
        allowed = preflight.headers["Access-Control-Allow-Headers"]
        for name in ("Upload-Complete", "Upload-Draft-Interop-Version", "Upload-Incomplete"):
            assert name in allowed
        response = client.post("/files/", headers={**origin, **draft(VERSIONS[6], False)})
        exposed = response.headers["Access-Control-Expose-Headers"]
        for name in ("Upload-Complete", "Upload-Limit", "Upload-Incomplete", "Location"):
            assert name in exposed
    finally:
        close_app(app)


@pytest.fixture
def hooked(data_dir: Path, database_url: str | None) -> Iterator[FlaskClient]:
    sample.EVENTS.clear()
    app = create_app(
        {
            "DATA_DIR": str(data_dir),
            "HOOKS": "tests.hookmods.sample:SampleHooks",
            **database_settings(database_url),
        }
    )
    app.testing = True
    with app.test_client() as client:
        yield client
    close_app(app)


def test_hooks_see_draft_uploads(hooked: FlaskClient) -> None:
    client = hooked
    v8 = VERSIONS[8]
    bad = {"Authorization": "Bearer bad"}
    assert client.post("/files/", headers=draft(v8, False, **bad)).status_code == 401
    refused = {"Upload-Metadata": "filename YS5leGU="}  # a.exe: pre_create says no
    response = client.post("/files/", headers=draft(v8, False, **refused))
    assert (response.status_code, response.text) == (403, "no executables here\n")
    url = create(client, v8)
    for method in (client.head, client.delete):
        assert method(url, headers=draft(v8, **bad)).status_code == 401
    assert append(client, v8, url, 0, b"ab", True, **bad).status_code == 401
    response = append(client, v8, url, 0, b"ab", True)
    assert response.headers["X-Upload-Checked"] == "yes"  # pre_finish
    assert client.delete(url, headers=draft(v8)).status_code == 204


def test_hook_events_for_draft_uploads(hooked: FlaskClient) -> None:
    url = create(hooked, VERSIONS[5], b"abc", complete="yes")
    assert hooked.delete(url, headers=draft(VERSIONS[5])).status_code == 204
    service(hooked.application).hooks.drain()
    upload_id = url.rsplit("/", 1)[1]
    assert [event for event in sample.EVENTS if event[1] == upload_id] == [
        ("post-create", upload_id),
        ("post-finish", upload_id),
        ("post-terminate", upload_id),
    ]


def test_authorize_gets_the_draft_upload(data_dir: Path) -> None:
    """The owner hooks (README's example) decide on the upload itself, whichever
    protocol asks: another user's draft upload is not found."""
    app = create_app({"DATA_DIR": str(data_dir), "HOOKS": "tests.hookmods.owner:OwnerHooks"})
    try:
        client = app.test_client()
        v9 = VERSIONS[9]
        alice, bob = {"Authorization": "Bearer alice"}, {"Authorization": "Bearer bob"}
        url = create(client, v9, b"abc", **alice)
        assert client.head(url, headers=draft(v9, **alice)).status_code == 204
        assert client.head(url, headers=draft(v9, **bob)).status_code == 404
        assert append(client, v9, url, 3, b"d", True, **bob).status_code == 404
        assert client.head(url, headers={**TUS, **bob}).status_code == 404
    finally:
        close_app(app)


def test_busy_upload_is_a_5xx_the_draft_retries(
    app: Flask, client: FlaskClient, version: InteropVersion
) -> None:
    """tus answers 423 for a lock it can't take; the draft's clients retry no 4xx, but
    resume after a 5xx: 503 with Retry-After, nothing stored."""
    url = create(client, version, b"abc")
    upload_id = url.rsplit("/", 1)[1]
    with service(app).locker.hold(upload_id, timeout=1):
        for response in (
            client.head(url, headers=draft(version)),
            append(client, version, url, 3, b"def", True),
        ):
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "1"
    assert client.head(url, headers=draft(version)).headers["Upload-Offset"] == "3"


def test_preflights_are_not_authorized(hooked: FlaskClient) -> None:
    """As for tus: an OPTIONS carries no credentials, so authorize doesn't run for it."""
    headers = draft(VERSIONS[9], Authorization="Bearer bad")
    assert hooked.options("/files/", headers=headers).status_code == 204
