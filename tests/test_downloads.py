"""GET downloads: ranges, conditional requests, safe types and names."""

from __future__ import annotations

import base64

import pytest
from flask.testing import FlaskClient

from tests.conftest import TUS
from tests.test_views import create, patch
from uploadsvc import downloads


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def uploaded(client: FlaskClient, data: bytes, name: bytes | None, filetype: bytes | None) -> str:
    pairs = []
    if name is not None:
        pairs.append(f"filename {b64(name)}")
    if filetype is not None:
        pairs.append(f"filetype {b64(filetype)}")
    url = create(client, len(data), **{"Upload-Metadata": ",".join(pairs)})
    assert patch(client, url, data).status_code == 204
    return url


@pytest.mark.parametrize(
    ("filetype", "expected"),
    [
        (None, ("application/octet-stream", False)),
        (b"image/png", ("image/png", True)),
        (b"IMAGE/PNG", ("image/png", True)),
        (b"application/pdf", ("application/pdf", True)),
        (b"text/plain; charset=latin1", ("text/plain; charset=utf-8", True)),
        (b"text/html", ("application/octet-stream", False)),
        (b"image/svg+xml", ("application/octet-stream", False)),
        (b"application/javascript", ("application/octet-stream", False)),
        (b"\xff\xfe", ("application/octet-stream", False)),
    ],
)
def test_content_type(filetype: bytes | None, expected: tuple[str, bool]) -> None:
    assert downloads.content_type(filetype) == expected


@pytest.mark.parametrize(
    ("name", "inline", "expected"),
    [
        (None, False, 'attachment; filename="download"'),
        (b"report.pdf", True, 'inline; filename="report.pdf"'),
        (
            "naïve café.txt".encode(),
            False,
            "attachment; filename=\"naive cafe.txt\"; filename*=UTF-8''na%C3%AFve%20caf%C3%A9.txt",
        ),
        (b'evil"\r\nSet-Cookie: x=1', False, 'attachment; filename="evil___Set-Cookie: x=1"'),
        (b"../../etc/passwd", False, 'attachment; filename="_.._etc_passwd"'),
        (
            "日本.txt".encode(),
            False,
            "attachment; filename=\"txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt",
        ),
        (b"\x00\x01", False, 'attachment; filename="__"'),
    ],
)
def test_content_disposition(name: bytes | None, inline: bool, expected: str) -> None:
    assert downloads.content_disposition(name, inline) == expected


def test_download(client: FlaskClient) -> None:
    url = uploaded(client, b"0123456789", b"a.txt", b"text/plain")
    response = client.get(url)  # no Tus-Resumable: a plain browser download
    assert response.status_code == 200
    assert response.data == b"0123456789"
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["Content-Disposition"] == 'inline; filename="a.txt"'
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Content-Length"] == "10"
    etag = response.headers["ETag"]
    last_modified = response.headers["Last-Modified"]
    response.close()

    response = client.get(url, headers={"If-None-Match": etag})
    assert response.status_code == 304
    response.close()
    response = client.get(url, headers={"If-Modified-Since": last_modified})
    assert response.status_code == 304
    response.close()


def test_download_ranges(client: FlaskClient) -> None:
    url = uploaded(client, b"0123456789", None, b"text/html")
    response = client.get(url, headers={"Range": "bytes=2-4"})
    assert response.status_code == 206
    assert response.data == b"234"
    assert response.headers["Content-Range"] == "bytes 2-4/10"
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    response.close()
    response = client.get(url, headers={"Range": "bytes=-3"})
    assert response.data == b"789"
    response.close()
    response = client.get(url, headers={"Range": "bytes=20-30"})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */10"
    response.close()


def test_unfinished_and_unknown_downloads_are_404(client: FlaskClient) -> None:
    url = create(client, 10)
    assert client.get(url).status_code == 404
    assert client.get("/files/0123456789abcdef0123456789abcdef").status_code == 404
    client.delete(url, headers=TUS)
    assert client.get(url).status_code == 410
