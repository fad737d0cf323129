"""Upload links (grants) and quotas, through the app: tokens, who owns what on every way
in, revocation in flight, and quotas that hold (creations, deferred lengths, chunked
bodies, concatenation, parallel creations, frees). SQLite and PostgreSQL (conftest)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text

from tests.conftest import TUS, Clock, database_settings
from tests.test_concat import downloaded, final
from tests.test_gates import EXE, meta
from tests.test_views import patch
from uploadsvc import close_app, create_app
from uploadsvc.config import ConfigError, Settings
from uploadsvc.grants import Grant, allowed_types, hash_token
from uploadsvc.hooks import HookRequest
from uploadsvc.models import OPEN_SCOPE, QuotaUsage, Upload
from uploadsvc.parts import parts
from uploadsvc.quota import QuotaExceeded
from uploadsvc.upload import cli as upload_cli

ADMIN = "admin-token-0123456789abcdef"


def make_app(data_dir: Path, clock: Clock, database_url: str | None, **settings: str) -> Flask:
    app = create_app(
        {
            "DATA_DIR": str(data_dir),
            "MAX_SIZE": "100000",
            "EXPIRE_AFTER": "3600",
            "LOCK_TIMEOUT": "0.2",
            "WEB_UI": "1",
            **database_settings(database_url),
            **settings,
        },
        clock=clock,
    )
    app.testing = True
    return app


@pytest.fixture
def app(data_dir: Path, clock: Clock, database_url: str | None) -> Iterator[Flask]:
    app = make_app(data_dir, clock, database_url, AUTH="grants", ADMIN_TOKEN=ADMIN)
    yield app
    close_app(app)


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as client:
        yield client


def grant(app: Flask, **limits: Any) -> tuple[Grant, dict[str, str]]:
    """A new grant and the header its token goes in."""
    made, token = parts(app).grants.create(
        label=limits.pop("label", "test"),
        max_bytes=limits.pop("max_bytes", None),
        max_files=limits.pop("max_files", None),
        expires_in=limits.pop("expires_in", None),
        types=limits.pop("types", ()),
    )
    return made, {"Authorization": f"Bearer {token}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create(client: FlaskClient, length: int | None, headers: dict[str, str], **more: str) -> Any:
    sent = {**TUS, **headers, **more}
    if length is None:
        sent["Upload-Defer-Length"] = "1"
    else:
        sent["Upload-Length"] = str(length)
    return client.post("/files/", headers=sent)


def url_of(response: Any) -> str:
    assert response.status_code == 201, response.text
    return str(response.headers["Location"]).removeprefix("http://localhost")


def usage(app: Flask, scope: str) -> tuple[int, int]:
    with parts(app).readers.begin() as session:
        row = session.get(QuotaUsage, scope)
        assert row is not None
        return row.used_bytes, row.used_files


# -- flask grant ----------------------------------------------------------------------------


def test_grant_create_prints_a_link_and_a_token_and_keeps_only_its_hash(app: Flask) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=[
            "grant", "create", "--label", "ACME scans", "--max-bytes", "20G",
            "--max-files", "50", "--expires", "7d", "--types", "image/*,application/pdf",
            "--base-url", "https://files.example/uploads/", "--json",
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    token = made["token"]
    assert token.startswith("ug_") and len(token) >= 40
    # In the fragment: a browser never sends it to a server or a proxy.
    assert made["link"] == f"https://files.example/uploads/#grant={token}"
    assert (made["max_bytes"], made["max_files"]) == (20 * 1024**3, 50)
    assert made["types"] == ["image/*", "application/pdf"]
    grant_row = parts(app).grants.get(made["id"])
    assert grant_row is not None and allowed_types(grant_row) == ("image/*", "application/pdf")
    with parts(app).readers.begin() as session:
        stored = session.execute(text("SELECT * FROM grants")).mappings().one()
    assert token not in json.dumps({k: str(v) for k, v in stored.items()})
    assert stored["token_hash"] == hash_token(token)

    listing = runner.invoke(args=["grant", "list", "--json"])
    assert listing.exit_code == 0, (listing.output, listing.exception)
    listed = json.loads(listing.stdout)
    assert [(g["id"], g["state"], g["used_bytes"], g["used_files"]) for g in listed] == [
        (made["id"], "live", 0, 0)
    ]
    human = runner.invoke(args=["grant", "list"]).stdout
    assert made["id"] in human and "0 B/20.00 GiB" in human and "0/50" in human


def test_grant_create_refuses_bad_values(app: Flask) -> None:
    runner = app.test_cli_runner()
    for bad in (["--max-bytes", "lots"], ["--expires", "soon"], ["--types", "exe"]):
        result = runner.invoke(args=["grant", "create", "--label", "x", *bad])
        assert result.exit_code == 2, result.output
    assert parts(app).grants.all() == []
    result = runner.invoke(args=["grant", "revoke", "nosuchgrant"])
    assert result.exit_code == 1


# -- who: tokens ------------------------------------------------------------------------------


def test_every_tus_request_needs_a_live_token(app: Flask, client: FlaskClient) -> None:
    _, alice = grant(app)
    url = url_of(create(client, 5, alice))
    for method in ("HEAD", "PATCH", "DELETE", "GET"):
        response = client.open(url, method=method, headers={**TUS})
        # 401 before the id is looked up: a stranger learns nothing of it.
        assert response.status_code == 401, method
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    missing = create(client, 5, {})
    assert missing.status_code == 401
    assert client.head("/files/" + "0" * 32, headers=TUS).status_code == 401
    unknown = create(client, 5, bearer("ug_" + "x" * 43))
    assert unknown.status_code == 401
    assert 'error="invalid_token"' in unknown.headers["WWW-Authenticate"]
    assert create(client, 5, {"Authorization": "Basic YWxpY2U6cHc="}).status_code == 401
    # Preflights carry no credentials.
    assert client.options("/files/", headers=TUS).status_code == 204
    # The admin token passes every check.
    assert client.head(url, headers={**TUS, **bearer(ADMIN)}).status_code == 200


def test_someone_elses_grant_is_refused_on_every_route(app: Flask, client: FlaskClient) -> None:
    _, alice = grant(app)
    _, bob = grant(app)
    url = url_of(create(client, 3, alice))
    assert patch(client, url, b"abc", **alice).status_code == 204
    piece = url_of(create(client, 2, alice, **{"Upload-Concat": "partial"}))
    assert patch(client, piece, b"de", **alice).status_code == 204

    assert client.head(url, headers={**TUS, **bob}).status_code == 403
    assert patch(client, url, b"x", 3, **bob).status_code == 403
    assert client.get(url, headers=bob).status_code == 403
    assert client.delete(url, headers={**TUS, **bob}).status_code == 403
    override = {**TUS, **bob, "X-HTTP-Method-Override": "DELETE"}
    assert client.post(url, headers=override).status_code == 403
    # A final may name only partials of its own grant.
    status, _ = final(client, piece, **bob)
    assert status == 403
    # The page's list shows a grant its own uploads only.
    listed = client.get("/api/uploads", headers=bob).get_json()
    assert listed["uploads"] == []
    assert client.get("/api/uploads").status_code == 401
    shown = client.get("/api/uploads", headers=alice).get_json()["uploads"]
    assert [u["id"] for u in shown] == [url.rsplit("/", 1)[1]]

    # Alice's own: all of it works, and so does the admin's token.
    status, whole = final(client, piece, **alice)
    assert status == 201
    assert downloaded(client, whole, **alice) == b"de"
    assert downloaded(client, url, **bearer(ADMIN)) == b"abc"
    assert client.delete(url, headers={**TUS, **alice}).status_code == 204


def test_download_links_may_carry_the_grant_in_the_pages_cookie(
    app: Flask, client: FlaskClient
) -> None:
    _, alice = grant(app)
    token = alice["Authorization"].removeprefix("Bearer ")
    url = url_of(create(client, 2, alice))
    assert patch(client, url, b"ok", **alice).status_code == 204
    client.set_cookie("uploadsvc_grant", token, path="/files/")
    assert downloaded(client, url) == b"ok"
    # Only a download: a cookie (which a browser adds to any request) changes nothing.
    assert client.head(url, headers=TUS).status_code == 401
    assert client.delete(url, headers=TUS).status_code == 401
    assert create(client, 1, {}).status_code == 401


def test_a_revoked_grant_stops_an_upload_in_flight_and_keeps_its_bytes(
    app: Flask, client: FlaskClient
) -> None:
    made, alice = grant(app)
    url = url_of(create(client, 10, alice))
    assert patch(client, url, b"1234", **alice).status_code == 204
    result = app.test_cli_runner().invoke(args=["grant", "revoke", made.id])
    assert result.exit_code == 0, result.output
    refused = patch(client, url, b"5678", 4, **alice)
    assert refused.status_code == 401
    assert "revoked" in refused.text
    assert create(client, 1, alice).status_code == 401
    kept = client.head(url, headers={**TUS, **bearer(ADMIN)})
    assert kept.headers["Upload-Offset"] == "4"
    listed = json.loads(app.test_cli_runner().invoke(args=["grant", "list", "--json"]).stdout)
    assert listed[0]["state"] == "revoked"


def test_an_expired_grant_stops_at_once(app: Flask, client: FlaskClient, clock: Clock) -> None:
    _, alice = grant(app, expires_in=timedelta(hours=1))
    url = url_of(create(client, 4, alice))
    clock.advance(3600)
    response = patch(client, url, b"late", **alice)
    assert response.status_code == 401
    assert "expired" in response.text


def test_the_upload_page_link_needs_the_page(app: Flask, client: FlaskClient) -> None:
    # The page itself is public (it holds no secret); it says a link is needed.
    page = client.get("/")
    assert page.status_code == 200
    assert b'data-auth="grants"' in page.data


# -- quotas ---------------------------------------------------------------------------------


def test_a_grants_quota_holds_bytes_and_files_and_says_which(
    app: Flask, client: FlaskClient
) -> None:
    made, alice = grant(app, max_bytes=100, max_files=2, label="ACME")
    first = url_of(create(client, 60, alice))
    too_big = create(client, 50, alice)
    assert too_big.status_code == 413
    assert "ACME" in too_big.text and "100 bytes" in too_big.text
    url_of(create(client, 40, alice))
    too_many = create(client, 1, alice)
    assert too_many.status_code == 413
    assert "2 uploads" in too_many.text
    assert usage(app, made.id) == (100, 2)
    # A refused creation registered nothing.
    with parts(app).readers.begin() as session:
        assert len(session.scalars(select(Upload)).all()) == 2
    # Terminating frees what it held, once.
    assert client.delete(first, headers={**TUS, **alice}).status_code == 204
    assert usage(app, made.id) == (40, 1)
    url_of(create(client, 60, alice))
    assert usage(app, made.id) == (100, 2)


def test_creation_with_upload_over_quota_is_refused_before_the_body(
    app: Flask, client: FlaskClient
) -> None:
    made, alice = grant(app, max_bytes=10)
    response = client.post(
        "/files/",
        data=b"x" * 20,
        headers={
            **TUS,
            **alice,
            "Upload-Length": "20",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert response.status_code == 413
    assert response.headers["Connection"] == "close"
    assert usage(app, made.id) == (0, 0)


def test_deferred_lengths_count_bodies_and_declarations(app: Flask, client: FlaskClient) -> None:
    made, alice = grant(app, max_bytes=100)
    url = url_of(create(client, None, alice))
    assert usage(app, made.id) == (0, 1)
    assert patch(client, url, b"a" * 80, **alice).status_code == 204
    assert usage(app, made.id) == (80, 1)
    # A body that doesn't fit is refused before a byte of it is stored.
    over = patch(client, url, b"b" * 30, 80, **alice)
    assert over.status_code == 413
    assert usage(app, made.id) == (80, 1)
    assert client.head(url, headers={**TUS, **alice}).headers["Upload-Offset"] == "80"
    # Declaring a length past the quota is refused too; one within it is held whole.
    declare = {"Upload-Length": "200"}
    assert patch(client, url, b"", 80, **alice, **declare).status_code == 413
    assert patch(client, url, b"", 80, **alice, **{"Upload-Length": "90"}).status_code == 204
    assert usage(app, made.id) == (90, 1)
    assert patch(client, url, b"c" * 10, 80, **alice).status_code == 204
    assert usage(app, made.id) == (90, 1)


def test_a_chunked_body_of_deferred_length_is_counted_as_it_arrives(app: Flask) -> None:
    made, _ = grant(app, max_bytes=100)
    svc = parts(app).service
    asking = HookRequest("POST", "/files", None, {}, None, grant=made)
    info = svc.create(None, {}, request=asking)
    with pytest.raises(QuotaExceeded) as refused:
        svc.append(info.id, 0, iter([b"x" * 40] * 4), content_length=None)
    # What fit is kept and counted; nothing more.
    assert refused.value.offset == 100
    assert svc.info(info.id).offset == 100
    assert usage(app, made.id) == (100, 1)


def test_concatenation_counts_the_partials_bytes_once(app: Flask, client: FlaskClient) -> None:
    made, alice = grant(app, max_bytes=100, max_files=1)
    partial = {"Upload-Concat": "partial"}
    a = url_of(create(client, 40, alice, **partial))
    b = url_of(create(client, 40, alice, **partial))
    patch(client, a, b"a" * 40, **alice)
    patch(client, b, b"b" * 40, **alice)
    assert usage(app, made.id) == (80, 0)  # pieces: their bytes, no file
    status, whole = final(client, a, b, a, **alice)  # 120 bytes named, none of them new
    assert status == 201
    assert usage(app, made.id) == (80, 1)
    assert downloaded(client, whole, **alice) == b"a" * 40 + b"b" * 40 + b"a" * 40
    status, _ = final(client, a, **alice)
    assert status == 413  # one file only
    assert create(client, 30, alice, **partial).status_code == 413


def test_parallel_creations_never_pass_the_quota(app: Flask) -> None:
    made, _ = grant(app, max_bytes=10 * 100, max_files=25)
    svc = parts(app).service
    asking = HookRequest("POST", "/files", None, {}, None, grant=made)
    outcomes: list[str] = []
    start = threading.Barrier(32)

    def one() -> None:
        start.wait(timeout=10)
        try:
            svc.create(100, {}, request=asking)
            outcomes.append("created")
        except QuotaExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=one) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(outcomes) == 32
    assert outcomes.count("created") == 10  # bytes: 10 x 100 fit
    assert usage(app, made.id) == (1000, 10)
    with parts(app).readers.begin() as session:
        rows = session.scalars(select(Upload).where(Upload.grant_id == made.id)).all()
    assert len(rows) == 10 and sum(r.quota_bytes for r in rows) == 1000


def test_the_shared_quota_holds_uploads_without_a_grant(
    data_dir: Path, clock: Clock, database_url: str | None
) -> None:
    app = make_app(data_dir, clock, database_url, QUOTA_BYTES="100", QUOTA_FILES="3")
    try:
        with app.test_client() as client:
            url = url_of(create(client, 70, {}))
            refused = create(client, 40, {})
            assert refused.status_code == 413
            assert "without a grant" in refused.text
            url_of(create(client, 30, {}))
            assert usage(app, OPEN_SCOPE) == (100, 2)
            # Expiry frees it when cleanup buries the upload; a second run frees nothing.
            clock.advance(3601)
            for _ in range(2):
                result = app.test_cli_runner().invoke(args=["cleanup"])
                assert result.exit_code == 0, result.output
            assert usage(app, OPEN_SCOPE) == (0, 0)
            assert client.head(url, headers=TUS).status_code == 410
    finally:
        close_app(app)


def test_open_mode_ignores_tokens_as_today(
    data_dir: Path, clock: Clock, database_url: str | None
) -> None:
    # An operator's authorize hook may use bearer tokens of its own: open mode leaves
    # them alone.
    app = make_app(data_dir, clock, database_url)
    try:
        with app.test_client() as client:
            url = url_of(create(client, 2, bearer("someone-elses-token")))
            assert client.head(url, headers=TUS).status_code == 200
    finally:
        close_app(app)


def test_a_terminated_partial_a_final_reads_holds_its_bytes_until_they_go(
    app: Flask, client: FlaskClient
) -> None:
    """Deleting a partial whose bytes a live final reads frees nothing (they stay on
    disk): else naming, deleting and naming again would pass any quota."""
    made, alice = grant(app, max_bytes=100)
    piece = url_of(create(client, 60, alice, **{"Upload-Concat": "partial"}))
    patch(client, piece, b"p" * 60, **alice)
    status, whole = final(client, piece, **alice)
    assert status == 201
    assert client.delete(piece, headers={**TUS, **alice}).status_code == 204
    assert usage(app, made.id) == (60, 1)
    assert create(client, 50, alice).status_code == 413
    # The final goes: its file now, the partial's bytes when cleanup removes them.
    assert client.delete(whole, headers={**TUS, **alice}).status_code == 204
    assert usage(app, made.id) == (60, 0)
    for _ in range(2):
        assert app.test_cli_runner().invoke(args=["cleanup"]).exit_code == 0
    assert usage(app, made.id) == (0, 0)


def test_python_hooks_run_after_the_built_in_check(
    data_dir: Path, clock: Clock, database_url: str | None
) -> None:
    from tests.hookmods import grantaware

    grantaware.CALLS.clear()
    app = make_app(
        data_dir,
        clock,
        database_url,
        AUTH="grants",
        HOOKS="tests.hookmods.grantaware:GrantAwareHooks",
    )
    try:
        with app.test_client() as client:
            _, fine = grant(app, label="fine")
            _, blocked = grant(app, label="blocked")
            assert create(client, 1, {}).status_code == 401
            assert grantaware.CALLS == []  # the guard refused first
            assert create(client, 1, fine).status_code == 201
            refused = create(client, 1, blocked)
            assert refused.status_code == 403
            assert "operator's hook" in refused.text
            assert grantaware.CALLS == [("POST", "fine"), ("POST", "blocked")]
    finally:
        close_app(app)


# -- settings and the uploader ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AUTH", "closed"),
        ("ADMIN_TOKEN", "short"),
        ("ADMIN_TOKEN", "has spaces in it, sixteen+"),
        ("QUOTA_BYTES", "-1"),
        ("QUOTA_FILES", "many"),
    ],
)
def test_bad_access_settings_stop_the_start(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_mapping({"DATA_DIR": str(tmp_path), name: value})
    assert f"UPLOADSVC_{name}" in str(refused.value)
    if name == "ADMIN_TOKEN":
        assert value not in str(refused.value)  # a secret is never shown


def test_access_settings_defaults(tmp_path: Path) -> None:
    settings = Settings.from_mapping({"DATA_DIR": str(tmp_path)})
    assert (settings.auth, settings.admin_token) == ("open", None)
    assert (settings.quota_bytes, settings.quota_files) == (None, None)


def test_the_uploader_sends_its_token_as_a_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = ["--endpoint", "http://127.0.0.1:8080/files/"]
    args = upload_cli.parse_args(["f.bin", *endpoint, "--token", "ug_abc"])
    assert ("Authorization", "Bearer ug_abc") in args.header
    monkeypatch.setenv("UPLOADSVC_TOKEN", "ug_env")
    args = upload_cli.parse_args(["f.bin", *endpoint])
    assert ("Authorization", "Bearer ug_env") in args.header
    with pytest.raises(SystemExit):
        upload_cli.parse_args(["f.bin", *endpoint, "-H", "Authorization: Basic eA=="])


def test_a_grants_types_gate_its_uploads_at_creation_and_on_the_bytes(
    app: Flask, client: FlaskClient
) -> None:
    """`--types` holds like UPLOADSVC_ALLOWED_TYPES, for that grant's uploads only: a
    declared type outside it is 415 before any body, and bytes that aren't the declared
    type are 415 in the PATCH that brings them, which stores none of them."""
    _, images = grant(app, types=("image/*",))
    _, anything = grant(app)
    pdf = {"Upload-Metadata": meta(filetype="application/pdf")}
    assert create(client, len(EXE), images, **pdf).status_code == 415
    url = url_of(create(client, len(EXE), anything, **pdf))  # another grant's: no gate
    png = {"Upload-Metadata": meta(filetype="image/png")}
    url = url_of(create(client, len(EXE), images, **png))
    refused = patch(client, url, EXE, 0, **images)
    assert refused.status_code == 415, refused.text
    offset = client.head(url, headers={**TUS, **images})
    assert offset.headers["Upload-Offset"] == "0"
