"""GET downloads: ranges, conditional requests, safe types and names."""

from __future__ import annotations

import base64
import re
import unicodedata
from urllib.parse import unquote

import pytest
from flask.testing import FlaskClient
from werkzeug.http import parse_options_header

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


HOSTILE_NAMES = [
    pytest.param('a"b.txt', id="quote"),
    pytest.param("＂／＼", id="fullwidth-quote-slash-backslash"),
    pytest.param("x＂; filename=＂../../evil.html", id="fullwidth-second-parameter"),
    pytest.param('x"; filename="../../evil.html', id="second-parameter"),
    pytest.param("../../etc/passwd", id="dot-dot-slash"),
    pytest.param("..\\..\\boot.ini", id="dot-dot-backslash"),
    pytest.param("．．／．．／evil", id="fullwidth-dot-dot"),
    pytest.param("a∕b⁄c⧸d∖e", id="slash-lookalikes"),
    pytest.param("﹨evil", id="small-reverse-solidus"),
    pytest.param("a\x00b\x1fc\x7fd", id="controls"),
    pytest.param("a\r\nSet-Cookie: x=1", id="cr-lf"),
    pytest.param("a\u0085b\u2028c\u2029d", id="unicode-line-breaks"),
    pytest.param("invoice\u202efdp.exe", id="bidi-override"),
    pytest.param("a\u200bb\u2066c\ufeffd", id="invisible-format"),
    pytest.param("a;b;filename=c", id="semicolons"),
    pytest.param("x" * 5000 + ".txt", id="very-long"),
    pytest.param("", id="empty"),
    pytest.param("...", id="only-dots"),
    pytest.param(" . . ", id="dots-and-spaces"),
    pytest.param(".htaccess", id="leading-dot"),
    pytest.param("\udcff", id="lone-surrogate-escaped"),
    pytest.param("日本語\u0301.txt", id="combining"),
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("inline", [False, True])
def test_content_disposition_hostile_names(name: str, inline: bool) -> None:
    """Whatever the name, the header is one disposition with one ``filename`` (plain,
    quote-free printable ASCII without separators or ";") and at most one ``filename*``,
    and neither names a path, a hidden file, or hides characters."""
    raw = name.encode("utf-8", "surrogatepass")
    value = downloads.content_disposition(raw, inline)
    assert value.isascii() and value.isprintable()
    kind, _, rest = value.partition("; ")
    assert kind == ("inline" if inline else "attachment")
    match = re.fullmatch(r'filename="([^"]*)"(?:; filename\*=UTF-8\'\'([A-Za-z0-9%._~-]+))?', rest)
    assert match is not None, value
    fallback, encoded = match.groups()
    assert fallback and not set(fallback) & set('/\\";') and fallback != ".."
    assert not fallback.startswith(".") and len(fallback) <= downloads.MAX_FILENAME
    full = unquote(encoded) if encoded else fallback
    assert not set(full) & (set('/\\"') | set("∕⁄⧸∖﹨／＼＂"))
    assert all(unicodedata.category(char)[0] not in "CZ" or char == " " for char in full)
    assert not full.startswith(".") and not full.endswith((".", " "))
    assert 0 < len(full) <= downloads.MAX_FILENAME
    # Parsed as RFC 6266 says (filename* first): the same single name comes back.
    assert parse_options_header(value) == (kind, {"filename": full})


def test_download_of_a_fullwidth_name_has_one_filename(client: FlaskClient) -> None:
    url = uploaded(client, b"x", "＂; filename=＂../../evil.html".encode(), None)
    response = client.get(url)
    assert response.status_code == 200
    disposition = response.headers["Content-Disposition"]
    response.close()
    assert '"../' not in disposition and '"; filename=' not in disposition
    assert parse_options_header(disposition) == (
        "attachment",
        {"filename": "_; filename=_.._.._evil.html"},
    )


@pytest.mark.parametrize(
    ("range_header", "status", "body"),
    [
        # One satisfiable range of bytes: 206.
        ("bytes=2-4", 206, b"234"),
        ("bytes=-3", 206, b"789"),
        ("bytes=7-", 206, b"789"),
        ("bytes=8-100", 206, b"89"),
        ("bytes=0-0", 206, b"0"),
        ("BYTES=1-1", 206, b"1"),
        ("bytes= 1-2", 206, b"12"),
        # One well-formed range past the end: 416.
        ("bytes=10-", 416, b""),
        ("bytes=20-30", 416, b""),
        ("bytes=99999999999999999999999-", 416, b""),
        # Anything else is ignored (RFC 9110 section 14.2): the whole body, 200.
        ("bytes=0-0,2-3", 200, b"0123456789"),
        ("bytes=0-1,0-1,0-1", 200, b"0123456789"),
        ("bytes=5-2", 200, b"0123456789"),
        ("bytes=abc", 200, b"0123456789"),
        ("bytes=", 200, b"0123456789"),
        ("bytes=-", 200, b"0123456789"),
        ("bytes=1-2,", 200, b"0123456789"),
        ("bytes=--1", 200, b"0123456789"),
        ("bytes=1-2-3", 200, b"0123456789"),
        ("items=0-1", 200, b"0123456789"),
        ("0-1", 200, b"0123456789"),
        ("", 200, b"0123456789"),
        ("bytes=\u00b9-2", 200, b"0123456789"),
        ("bytes=" + ",".join(f"{n}-{n}" for n in range(200)), 200, b"0123456789"),
    ],
)
def test_range_table(client: FlaskClient, range_header: str, status: int, body: bytes) -> None:
    url = uploaded(client, b"0123456789", None, None)
    response = client.get(url, headers={"Range": range_header})
    assert (response.status_code, response.data if status != 416 else b"") == (status, body)
    if status == 206:
        assert response.headers["Content-Range"].startswith("bytes ")
    elif status == 416:
        assert response.headers["Content-Range"] == "bytes */10"
    else:
        assert "Content-Range" not in response.headers
        assert response.headers["Content-Length"] == "10"
    response.close()
