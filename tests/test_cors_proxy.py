"""CORS for browser clients, and Location behind trusted (and untrusted) proxies."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.conftest import TUS
from uploadsvc import create_app

ORIGIN = "http://app.example:3000"


def client_for(data_dir: Path, **config: str) -> FlaskClient:
    app = create_app({"DATA_DIR": str(data_dir), **config})
    return app.test_client()


def test_preflight_without_tus_resumable(data_dir: Path) -> None:
    client = client_for(data_dir, CORS_ORIGINS=ORIGIN)
    response = client.options(
        "/files/",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "tus-resumable,upload-length,upload-metadata",
        },
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    allowed = response.headers["Access-Control-Allow-Headers"]
    for name in (
        "Tus-Resumable",
        "Upload-Length",
        "Upload-Metadata",
        "Upload-Offset",
        "Upload-Defer-Length",
        "Upload-Concat",
        "Upload-Checksum",
        "Repr-Digest",  # a whole-file digest declared from a browser
        "Content-Type",
        "X-HTTP-Method-Override",
        "X-Requested-With",
    ):
        assert name in allowed
    assert "PATCH" in response.headers["Access-Control-Allow-Methods"]
    assert response.headers["Vary"] == "Origin"


def test_cors_on_success_and_errors(data_dir: Path) -> None:
    client = client_for(data_dir, CORS_ORIGINS=f"{ORIGIN},http://other.example")
    response = client.post("/files/", headers={**TUS, "Origin": ORIGIN, "Upload-Length": "1"})
    assert response.status_code == 201
    exposed = response.headers["Access-Control-Expose-Headers"]
    for name in (
        "Location",
        "Upload-Offset",
        "Upload-Length",
        "Tus-Version",
        "Tus-Resumable",
        "Tus-Max-Size",
        "Tus-Extension",
        "Upload-Metadata",
        "Upload-Defer-Length",
        "Upload-Concat",
        "Upload-Expires",
        "Repr-Digest",  # downloaders check the verified digest too
    ):
        assert name in exposed
    for headers, status in (({"Origin": ORIGIN}, 412), ({**TUS, "Origin": ORIGIN}, 400)):
        response = client.post("/files/", headers=headers)
        assert response.status_code == status
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    response = client.head(
        "/files/0123456789abcdef0123456789abcdef", headers={**TUS, "Origin": ORIGIN}
    )
    assert response.status_code == 404
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


@pytest.mark.parametrize(
    ("configured", "allowed"), [("", False), ("http://a.example", False), ("*", True)]
)
def test_other_origins(data_dir: Path, configured: str, allowed: bool) -> None:
    client = client_for(data_dir, CORS_ORIGINS=configured)
    response = client.options(
        "/files/", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert ("Access-Control-Allow-Origin" in response.headers) is allowed


FORWARDED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "uploads.example",
    "X-Forwarded-Port": "8443",
    "X-Forwarded-Prefix": "/uploads",
    "X-Forwarded-For": "10.0.0.9",
}


def test_forwarded_headers_ignored_by_default(data_dir: Path) -> None:
    client = client_for(data_dir)
    response = client.post("/files/", headers={**TUS, "Upload-Length": "1", **FORWARDED})
    assert response.headers["Location"].startswith("http://localhost/files/")


def test_forwarded_headers_trusted_with_proxy_hops(data_dir: Path) -> None:
    client = client_for(data_dir, PROXY_HOPS="1")
    response = client.post("/files/", headers={**TUS, "Upload-Length": "1", **FORWARDED})
    location = response.headers["Location"]
    assert location.startswith("https://uploads.example:8443/uploads/files/")
    upload_id = location.rsplit("/", 1)[1]
    # A final upload may name its partials by the URLs the proxy hands out.
    partial = client.post(
        "/files/", headers={**TUS, "Upload-Length": "0", "Upload-Concat": "partial", **FORWARDED}
    ).headers["Location"]
    response = client.post(
        "/files/", headers={**TUS, "Upload-Concat": f"final;{partial}", **FORWARDED}
    )
    assert response.status_code == 201, response.text
    assert upload_id


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CORS_ORIGINS", "app.example"),
        ("CORS_ORIGINS", "http://a.example/path"),
        ("PROXY_HOPS", "-1"),
        ("READ_TIMEOUT", "0"),
    ],
)
def test_bad_settings(data_dir: Path, name: str, value: str) -> None:
    from uploadsvc.config import ConfigError

    with pytest.raises(ConfigError, match=f"UPLOADSVC_{name}"):
        create_app({"DATA_DIR": str(data_dir), name: value})


NOT_TUS_PATHS = ["/metrics", "/healthz", "/api/uploads", "/", "/nowhere", "/filesx", "/files.json"]
TUS_PATHS = ["/files", "/files/", "/files/0123456789abcdef0123456789abcdef", "/files/x/y"]


@pytest.mark.parametrize("origins", ["*", ORIGIN])
@pytest.mark.parametrize("path", NOT_TUS_PATHS)
@pytest.mark.parametrize("method", ["GET", "OPTIONS", "POST"])
def test_no_cors_outside_the_tus_endpoints(
    data_dir: Path, origins: str, path: str, method: str
) -> None:
    """With any origin allowed, a web page still can't read /metrics or the page's list
    (capability URLs) through a visitor's browser: only /files speaks CORS (and tus)."""
    client = client_for(data_dir, CORS_ORIGINS=origins, WEB_UI="1")
    headers = {"Origin": ORIGIN, **TUS}
    if method == "OPTIONS":
        headers["Access-Control-Request-Method"] = "GET"
    response = client.open(path, method=method, headers=headers)
    assert not [name for name, _ in response.headers if name.startswith("Access-Control-")]
    assert "Tus-Resumable" not in response.headers
    response.close()


@pytest.mark.parametrize("path", TUS_PATHS)
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PATCH", "DELETE", "BREW"])
def test_cors_on_every_tus_answer(data_dir: Path, path: str, method: str) -> None:
    """Every answer under /files, errors and unmatched routes included, carries CORS
    and Tus-Resumable, so a browser client can read the status it must act on."""
    client = client_for(data_dir, CORS_ORIGINS="*")
    response = client.open(path, method=method, headers={"Origin": ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    response.close()
