"""The tus endpoints through Flask's test client: every status code PROTOCOL.md names."""

from __future__ import annotations

import base64
import hashlib
import io
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.exc import OperationalError
from werkzeug.test import TestResponse

from tests.conftest import OCTET, TUS, Clock, service
from uploadsvc import create_app
from uploadsvc.models import Upload
from uploadsvc.storage.filesystem import FileStore


def create(client: FlaskClient, length: int | None = 10, **headers: str) -> str:
    sent = {**TUS, **headers}
    if length is None:
        sent["Upload-Defer-Length"] = "1"
    else:
        sent["Upload-Length"] = str(length)
    response = client.post("/files/", headers=sent)
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    assert location.startswith("http://localhost/files/")
    return location.removeprefix("http://localhost")


def patch(
    client: FlaskClient, url: str, data: bytes, offset: int = 0, /, **headers: str
) -> TestResponse:
    return client.patch(
        url,
        data=data,
        headers={**TUS, "Content-Type": OCTET, "Upload-Offset": str(offset), **headers},
    )


def head(client: FlaskClient, url: str) -> TestResponse:
    return client.head(url, headers=TUS)


def stored(data_dir: Path, url: str) -> bytes:
    return (data_dir / "files" / url.rsplit("/", 1)[1]).read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- OPTIONS and versions ---------------------------------------------------------------


def test_options_advertises_what_works(client: FlaskClient) -> None:
    for path in ("/files/", "/files", "/files/0123456789abcdef0123456789abcdef"):
        response = client.options(path)  # no Tus-Resumable: browsers' preflights lack it
        assert response.status_code == 204
        assert response.headers["Tus-Version"] == "1.0.0"
        assert response.headers["Tus-Extension"].split(",") == [
            "creation",
            "creation-with-upload",
            "creation-defer-length",
            "termination",
            "expiration",
            "checksum",
            "checksum-trailer",
            "concatenation",
            "concatenation-unfinished",
        ]
        assert response.headers["Tus-Max-Size"] == "1000"
        assert response.headers["Tus-Checksum-Algorithm"] == "sha1,md5,sha256,sha512"
        assert response.data == b""


@pytest.mark.parametrize("version", [None, "", "0.2.2", "1.0"])
@pytest.mark.parametrize("method", ["POST", "HEAD", "PATCH", "DELETE"])
def test_wrong_version_is_412_with_tus_version(
    client: FlaskClient, data_dir: Path, method: str, version: str | None
) -> None:
    url = create(client, 5)
    headers = {"Upload-Length": "5", "Content-Type": OCTET, "Upload-Offset": "0"}
    if version is not None:
        headers["Tus-Resumable"] = version
    target = "/files/" if method == "POST" else url
    response = client.open(target, method=method, headers=headers, data=b"hello")
    assert response.status_code == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert stored(data_dir, url) == b""
    assert head(client, url).headers["Upload-Offset"] == "0"


# -- creation ---------------------------------------------------------------------------


def test_create_then_head(client: FlaskClient, clock: Clock) -> None:
    url = create(client, 10, **{"Upload-Metadata": f"filename {b64(b'a.txt')},flag"})
    response = head(client, url)
    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Length"] == "10"
    assert response.headers["Upload-Metadata"] == f"filename {b64(b'a.txt')},flag"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Upload-Expires"] == "Thu, 01 Jan 2026 13:00:00 GMT"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.data == b""


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Upload-Length": "5", "Upload-Defer-Length": "1"},
        {"Upload-Defer-Length": "0"},
        {"Upload-Length": "-1"},
        {"Upload-Length": "abc"},
        {"Upload-Length": "1e3"},
        {"Upload-Length": ""},
        {"Upload-Length": "5", "Upload-Metadata": "filename !!!"},
        {"Upload-Length": "5", "Upload-Metadata": "a YQ==,a Yg=="},
    ],
)
def test_create_refuses_bad_headers(
    client: FlaskClient, data_dir: Path, headers: dict[str, str]
) -> None:
    response = client.post("/files/", headers={**TUS, **headers})
    assert response.status_code == 400
    assert response.mimetype == "text/plain"
    assert response.text.strip()
    assert not any((data_dir / "files").iterdir())


@pytest.mark.parametrize("length", ["1001", "9" * 30])
def test_create_over_max_size_is_413(client: FlaskClient, data_dir: Path, length: str) -> None:
    response = client.post("/files/", headers={**TUS, "Upload-Length": length})
    assert response.status_code == 413
    assert not any((data_dir / "files").iterdir())


def test_zero_length_upload_is_complete_at_once(client: FlaskClient) -> None:
    url = create(client, 0)
    response = head(client, url)
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Length"] == "0"
    assert "Upload-Expires" not in response.headers


def test_creation_with_upload(client: FlaskClient, data_dir: Path) -> None:
    response = client.post(
        "/files/",
        data=b"hello",
        headers={**TUS, "Upload-Length": "11", "Content-Type": OCTET},
    )
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "5"
    url = response.headers["Location"].removeprefix("http://localhost")
    assert stored(data_dir, url) == b"hello"
    assert patch(client, url, b" world", 5).headers["Upload-Offset"] == "11"
    assert stored(data_dir, url) == b"hello world"


def test_creation_with_upload_longer_than_length_is_413(
    client: FlaskClient, data_dir: Path
) -> None:
    response = client.post(
        "/files/", data=b"hello", headers={**TUS, "Upload-Length": "3", "Content-Type": OCTET}
    )
    assert response.status_code == 413
    assert not any((data_dir / "files").iterdir())


def test_post_body_without_offset_content_type_is_ignored(client: FlaskClient) -> None:
    response = client.post(
        "/files/",
        data=b"hello",
        headers={**TUS, "Upload-Length": "5", "Content-Type": "text/plain"},
    )
    assert response.status_code == 201
    assert "Upload-Offset" not in response.headers


# -- PATCH ------------------------------------------------------------------------------


def test_patch_in_pieces(client: FlaskClient, data_dir: Path, clock: Clock) -> None:
    url = create(client, 10)
    clock.advance(60)
    response = patch(client, url, b"01234")
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "5"
    assert response.headers["Upload-Expires"] == "Thu, 01 Jan 2026 13:01:00 GMT"
    response = patch(client, url, b"56789", 5)
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "10"
    assert "Upload-Expires" not in response.headers
    assert stored(data_dir, url) == b"0123456789"
    assert "Upload-Expires" not in head(client, url).headers


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Content-Type": "application/octet-stream"}, 415),
        ({"Content-Type": ""}, 415),
        ({"Upload-Offset": ""}, 400),
        ({"Upload-Offset": "abc"}, 400),
        ({"Upload-Offset": "-1"}, 400),
        ({"Upload-Offset": "1e3"}, 400),
        ({"Upload-Offset": "3"}, 409),
        ({"Upload-Offset": "9" * 30}, 409),
        ({"Upload-Checksum": "crc32 AAAAAA=="}, 400),
        ({"Upload-Checksum": "sha1 !!"}, 400),
        ({"Upload-Length": "x"}, 400),
    ],
)
def test_patch_refusals_store_nothing(
    client: FlaskClient, data_dir: Path, headers: dict[str, str], status: int
) -> None:
    url = create(client, 10)
    response = patch(client, url, b"01234", **headers)
    assert response.status_code == status
    assert response.mimetype == "text/plain"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert stored(data_dir, url) == b""
    assert head(client, url).headers["Upload-Offset"] == "0"


def test_patch_without_offset_is_400(client: FlaskClient) -> None:
    url = create(client, 10)
    response = client.patch(url, data=b"x", headers={**TUS, "Content-Type": OCTET})
    assert response.status_code == 400


def test_patch_past_length_is_413_before_reading(client: FlaskClient, data_dir: Path) -> None:
    url = create(client, 4)
    response = patch(client, url, b"01234")
    assert response.status_code == 413
    assert response.headers["Connection"] == "close"
    assert stored(data_dir, url) == b""


def chunked_patch(client: FlaskClient, url: str, data: bytes) -> TestResponse:
    """A PATCH at offset 0 whose body comes with Transfer-Encoding: chunked."""
    return client.patch(
        url,
        input_stream=io.BytesIO(data),
        headers={
            **TUS,
            "Content-Type": OCTET,
            "Upload-Offset": "0",
            "Transfer-Encoding": "chunked",
        },
    )


def test_chunked_patch_past_length_keeps_exactly_the_length(
    client: FlaskClient, data_dir: Path
) -> None:
    url = create(client, 4)
    response = chunked_patch(client, url, b"0123456789")
    assert response.status_code == 413
    assert response.headers["Upload-Offset"] == "4"
    assert stored(data_dir, url) == b"0123"
    assert head(client, url).headers["Upload-Offset"] == "4"


def test_chunked_patch(client: FlaskClient, data_dir: Path) -> None:
    url = create(client, 10)
    response = chunked_patch(client, url, b"0123456789")
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "10"
    assert stored(data_dir, url) == b"0123456789"


def test_body_shorter_than_content_length_keeps_what_came(
    client: FlaskClient, data_dir: Path
) -> None:
    url = create(client, 10)
    response = client.patch(
        url,
        input_stream=io.BytesIO(b"0123"),
        headers={**TUS, "Content-Type": OCTET, "Upload-Offset": "0"},
        environ_overrides={"CONTENT_LENGTH": "8"},
    )
    assert response.status_code == 400
    assert response.headers["Upload-Offset"] == "4"
    assert stored(data_dir, url) == b"0123"
    assert patch(client, url, b"456789", 4).status_code == 204


def test_patch_on_complete_upload_is_413(client: FlaskClient) -> None:
    url = create(client, 2)
    assert patch(client, url, b"ab").status_code == 204
    assert patch(client, url, b"c", 2).status_code == 413
    assert patch(client, url, b"", 2).status_code == 204


# -- deferred length ---------------------------------------------------------------------


def test_deferred_length(client: FlaskClient, data_dir: Path) -> None:
    url = create(client, None)
    response = head(client, url)
    assert response.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in response.headers
    assert patch(client, url, b"abc").headers["Upload-Offset"] == "3"
    assert patch(client, url, b"de", 3, **{"Upload-Length": "2"}).status_code == 400  # < offset
    assert patch(client, url, b"de", 3, **{"Upload-Length": "1001"}).status_code == 413
    response = patch(client, url, b"de", 3, **{"Upload-Length": "5"})
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "5"
    response = head(client, url)
    assert response.headers["Upload-Length"] == "5"
    assert "Upload-Defer-Length" not in response.headers
    assert stored(data_dir, url) == b"abcde"


def test_deferred_length_cannot_change(client: FlaskClient) -> None:
    url = create(client, None)
    assert patch(client, url, b"a", 0, **{"Upload-Length": "4"}).status_code == 204
    assert patch(client, url, b"b", 1, **{"Upload-Length": "5"}).status_code == 400
    assert patch(client, url, b"b", 1, **{"Upload-Length": "4"}).status_code == 204


def test_deferred_length_limited_by_max_size(client: FlaskClient) -> None:
    url = create(client, None)
    assert patch(client, url, b"x" * 1001).status_code == 413


# -- checksums -------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512"])
def test_checksum_match(client: FlaskClient, data_dir: Path, algorithm: str) -> None:
    url = create(client, 5)
    digest = b64(hashlib.new(algorithm, b"hello").digest())
    response = patch(client, url, b"hello", **{"Upload-Checksum": f"{algorithm} {digest}"})
    assert response.status_code == 204
    assert stored(data_dir, url) == b"hello"


def test_checksum_mismatch_is_460_and_discards(client: FlaskClient, data_dir: Path) -> None:
    url = create(client, 10)
    assert patch(client, url, b"ab").status_code == 204
    digest = b64(hashlib.sha1(b"other").digest())
    response = patch(client, url, b"cde", 2, **{"Upload-Checksum": f"sha1 {digest}"})
    assert response.status_code == 460
    assert response.headers["Upload-Offset"] == "2"
    assert stored(data_dir, url) == b"ab"
    assert head(client, url).headers["Upload-Offset"] == "2"


# -- checksum-trailer: only where trailers arrive ---------------------------------------


def behind_a_proxy(data_dir: Path) -> FlaskClient:
    return create_app({"DATA_DIR": str(data_dir), "PROXY_HOPS": "1"}).test_client()


def test_checksum_trailer_is_not_advertised_behind_a_proxy(data_dir: Path) -> None:
    """Proxies (nginx as shipped) drop request trailers: a client that believed the
    advertisement would send bodies that can only fail."""
    response = behind_a_proxy(data_dir).options("/files/")
    extensions = response.headers["Tus-Extension"].split(",")
    assert "checksum-trailer" not in extensions
    assert "checksum" in extensions and "concatenation" in extensions


def test_an_announced_trailer_behind_a_proxy_is_400_before_the_body(data_dir: Path) -> None:
    client = behind_a_proxy(data_dir)
    url = create(client, 5).removeprefix("http://localhost")
    response = patch(client, url, b"hello", Trailer="Upload-Checksum")
    assert response.status_code == 400
    assert "as a header" in response.text
    assert head(client, url).headers["Upload-Offset"] == "0"
    # creation-with-upload: refused before the upload is made.
    response = client.post(
        "/files/",
        data=b"hello",
        headers={**TUS, "Upload-Length": "5", "Content-Type": OCTET, "Trailer": "Upload-Checksum"},
    )
    assert response.status_code == 400 and "Location" not in response.headers
    assert len(list((data_dir / "files").iterdir())) == 1
    # A checksum in a header works behind a proxy as anywhere.
    digest = b64(hashlib.sha1(b"hello").digest())
    response = patch(client, url, b"hello", **{"Upload-Checksum": f"sha1 {digest}"})
    assert response.status_code == 204


# -- termination and expiry -----------------------------------------------------------


def test_delete_leaves_a_tombstone(client: FlaskClient, data_dir: Path) -> None:
    url = create(client, 10)
    patch(client, url, b"abc")
    upload_id = url.rsplit("/", 1)[1]
    assert client.delete(url, headers=TUS).status_code == 204
    assert not (data_dir / "files" / upload_id).exists()
    assert not (data_dir / "locks" / f"{upload_id}.lock").exists()
    assert head(client, url).status_code == 410
    assert patch(client, url, b"d", 3).status_code == 410
    assert client.delete(url, headers=TUS).status_code == 410


def test_expiry_edges(client: FlaskClient, clock: Clock) -> None:
    url = create(client, 10)
    clock.advance(3599)
    assert head(client, url).status_code == 200
    clock.advance(1)
    assert head(client, url).status_code == 410
    assert patch(client, url, b"a").status_code == 410


def test_completed_uploads_do_not_expire(client: FlaskClient, clock: Clock) -> None:
    url = create(client, 1)
    patch(client, url, b"a")
    clock.advance(10 * 3600)
    assert head(client, url).status_code == 200


# -- unknown ids, methods, overrides ---------------------------------------------------


@pytest.mark.parametrize(
    "upload_id",
    [
        "0123456789abcdef0123456789abcdef",
        "0123456789ABCDEF0123456789ABCDEF",
        "short",
        "..",
        "%2e%2e%2fetc%2fpasswd",
        "a" * 4000,
        "%00",
    ],
)
def test_unknown_ids_are_404(client: FlaskClient, data_dir: Path, upload_id: str) -> None:
    assert head(client, f"/files/{upload_id}").status_code == 404
    assert client.delete(f"/files/{upload_id}", headers=TUS).status_code == 404
    response = client.patch(
        f"/files/{upload_id}",
        data=b"x",
        headers={**TUS, "Content-Type": OCTET, "Upload-Offset": "0"},
    )
    assert response.status_code == 404
    assert response.mimetype == "text/plain"
    # Strangers' ids leave no lock files (with PostgreSQL's advisory locks, no locks dir).
    assert not any(data_dir.glob("locks/*"))


def test_unsupported_method_is_405(client: FlaskClient) -> None:
    url = create(client, 1)
    response = client.put(url, headers=TUS)
    assert response.status_code == 405
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.mimetype == "text/plain"


def test_method_override(client: FlaskClient, data_dir: Path) -> None:
    url = create(client, 3)
    response = client.post(
        url,
        data=b"abc",
        headers={
            **TUS,
            "X-HTTP-Method-Override": "PATCH",
            "Content-Type": OCTET,
            "Upload-Offset": "0",
        },
    )
    assert response.status_code == 204
    assert stored(data_dir, url) == b"abc"
    response = client.post(url, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert response.status_code == 204


# -- locks and reconciliation ----------------------------------------------------------


def test_busy_upload_is_423(app: Flask, client: FlaskClient) -> None:
    url = create(client, 3)
    upload_id = url.rsplit("/", 1)[1]
    with service(app).locker.hold(upload_id, timeout=1):
        assert head(client, url).status_code == 423
        assert patch(client, url, b"abc").status_code == 423
    assert patch(client, url, b"abc").status_code == 204


def test_reconciles_bytes_written_but_not_recorded(
    app: Flask, client: FlaskClient, data_dir: Path
) -> None:
    url = create(client, 10)
    patch(client, url, b"abc")
    # A worker died after writing "defg" but before recording it.
    with (data_dir / "files" / url.rsplit("/", 1)[1]).open("ab") as file:
        file.write(b"defg")
    assert head(client, url).headers["Upload-Offset"] == "7"
    assert patch(client, url, b"hij", 7).status_code == 204
    assert stored(data_dir, url) == b"abcdefghij"


def test_reconcile_drops_unverified_bytes(
    app: Flask, client: FlaskClient, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = create(client, 10)
    upload_id = url.rsplit("/", 1)[1]
    patch(client, url, b"abc")
    # A worker died while a checksummed PATCH was writing: its bytes were never verified.
    with service(app).sessions.begin() as session:
        row = session.get(Upload, upload_id)
        assert row is not None
        row.verifying = True
    with (data_dir / "files" / upload_id).open("ab") as file:
        file.write(b"XXXX")
    # ... and the registry's disk is full, so the flag can't be cleared: HEAD answers.
    registry = service(app).registry
    writing = registry.writing
    monkeypatch.setattr(registry, "writing", FullDisk().writing)
    assert head(client, url).headers["Upload-Offset"] == "3"
    assert stored(data_dir, url) == b"abc"
    monkeypatch.setattr(registry, "writing", writing)
    assert head(client, url).headers["Upload-Offset"] == "3"
    with service(app).sessions.begin() as session:
        row = session.get(Upload, upload_id)
        assert row is not None and not row.verifying  # cleared once the disk took it
    assert patch(client, url, b"def", 3).status_code == 204
    assert stored(data_dir, url) == b"abcdef"


class FullDisk:
    """Write transactions on a registry whose disk is full (SQLite's SQLITE_FULL)."""

    def writing(self) -> Any:
        error = sqlite3.OperationalError("database or disk is full")
        error.sqlite_errorcode = sqlite3.SQLITE_FULL
        raise OperationalError("BEGIN IMMEDIATE", {}, error)


def test_a_full_registry_is_507_wherever_it_is_met(
    app: Flask, client: FlaskClient, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = create(client, 10)
    registry = service(app).registry
    writing = registry.writing
    # A creation the registry can't take: the views' handler answers 507.
    monkeypatch.setattr(registry, "writing", FullDisk().writing)
    response = client.post("/files/", headers={**TUS, "Upload-Length": "5"})
    assert response.status_code == 507
    assert response.get_data(as_text=True) == "no space left for the upload registry\n"
    # A PATCH whose bytes landed but can't be recorded (its checks only read): put
    # back, and 507 says where to resume (the service's write path, the same rule).
    response = patch(client, url, b"abc")
    assert response.status_code == 507
    assert response.headers["Upload-Offset"] == "0"
    assert response.get_data(as_text=True) == "no space left for the upload registry\n"
    assert stored(data_dir, url) == b""
    monkeypatch.setattr(registry, "writing", writing)
    assert patch(client, url, b"abc").status_code == 204


class SizeCounting:
    """The real FileStore, counting how often it is asked an upload's size (on S3,
    each ask is a LIST of the upload's objects)."""

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.asked = 0

    def size(self, upload_id: str) -> int | None:
        self.asked += 1
        return self.store.size(upload_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"abc", {}, 204),
        (b"abcdefghij", {}, 204),  # completes it (and finishes it)
        (b"abc", {"Upload-Checksum": "sha1 " + b64(hashlib.sha1(b"abc").digest())}, 204),
        (b"abc", {"Upload-Checksum": "sha1 " + b64(hashlib.sha1(b"xyz").digest())}, 460),
        (b"abc", {"Upload-Offset": "1"}, 409),
    ],
)
def test_a_patch_asks_the_store_its_size_once(
    app: Flask,
    client: FlaskClient,
    monkeypatch: pytest.MonkeyPatch,
    body: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    url = create(client, 10)
    store = service(app).store
    assert isinstance(store, FileStore)
    counting = SizeCounting(store)
    monkeypatch.setattr(service(app), "store", counting)
    assert patch(client, url, body, **headers).status_code == status
    assert counting.asked == 1
    counting.asked = 0
    assert head(client, url).status_code == 200
    assert counting.asked == 1
