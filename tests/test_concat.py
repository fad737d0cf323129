"""concatenation and concatenation-unfinished through the test client."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient
from werkzeug.datastructures import Headers
from werkzeug.test import EnvironBuilder, run_wsgi_app

from tests.conftest import TUS
from tests.test_views import create, head, patch, stored


def partial(client: FlaskClient, length: int) -> str:
    return create(client, length, **{"Upload-Concat": "partial"})


def final(client: FlaskClient, *urls: str, **headers: str) -> tuple[int, str]:
    response = client.post(
        "/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(urls), **headers}
    )
    location = response.headers.get("Location", "").removeprefix("http://localhost")
    return response.status_code, location


def downloaded(client: FlaskClient, url: str, **headers: str) -> bytes:
    response = client.get(url, headers=headers)
    assert response.status_code in (200, 206), response.text
    data: bytes = response.data
    response.close()
    return data


def test_final_from_finished_partials(client: FlaskClient, data_dir: Path) -> None:
    a, b = partial(client, 3), partial(client, 4)
    assert head(client, a).headers["Upload-Concat"] == "partial"
    patch(client, a, b"abc")
    patch(client, b, b"defg")
    status, url = final(client, f"http://localhost{a}", b)  # absolute and relative
    assert status == 201
    assert downloaded(client, url) == b"abcdefg"
    assert stored(data_dir, url) == b""  # read through the partials: nothing copied
    response = head(client, url)
    assert response.headers["Upload-Offset"] == "7"
    assert response.headers["Upload-Length"] == "7"
    assert response.headers["Upload-Concat"] == f"final;http://localhost{a} http://localhost{b}"
    assert "Upload-Expires" not in response.headers


def test_final_before_partials_finish(client: FlaskClient, data_dir: Path) -> None:
    a, b = partial(client, 3), partial(client, 2)
    patch(client, a, b"ab")
    status, url = final(client, a, b)
    assert status == 201
    response = head(client, url)
    assert "Upload-Offset" not in response.headers  # unfinished final: no offset
    assert response.headers["Upload-Length"] == "5"
    patch(client, b, b"de")
    assert "Upload-Offset" not in head(client, url).headers
    patch(client, a, b"c", 2)  # the last partial completes the final
    assert head(client, url).headers["Upload-Offset"] == "5"
    assert downloaded(client, url) == b"abcde"


def test_patch_on_final_is_403(client: FlaskClient) -> None:
    a = partial(client, 1)
    _, url = final(client, a)
    assert patch(client, url, b"x").status_code == 403


@pytest.mark.parametrize(
    ("urls", "status"),
    [
        (["/files/0123456789abcdef0123456789abcdef"], 404),  # unknown partial
        (["http://elsewhere.example/files/0123456789abcdef0123456789abcdef"], 400),  # foreign
        (["/other/0123456789abcdef0123456789abcdef"], 400),
        (["/files/../files/x"], 400),
        (["/files/0123456789abcdef0123456789abcdef?x=1"], 400),
    ],
)
def test_bad_partials(client: FlaskClient, urls: list[str], status: int) -> None:
    assert final(client, *urls)[0] == status


def test_final_refuses_non_partials_and_lengths(client: FlaskClient) -> None:
    a = partial(client, 1)
    plain = create(client, 1)
    deferred = create(client, None, **{"Upload-Concat": "partial"})
    assert final(client, plain)[0] == 400
    assert final(client, deferred)[0] == 400
    assert final(client, a, **{"Upload-Length": "1"})[0] == 400
    client.delete(a, headers=TUS)
    assert final(client, a)[0] == 410


@pytest.mark.parametrize("value", ["", "final", "final;", "whole", "partial;x"])
def test_bad_concat_header(client: FlaskClient, value: str) -> None:
    response = client.post("/files/", headers={**TUS, "Upload-Concat": value, "Upload-Length": "1"})
    assert response.status_code == 400


def test_final_over_max_size_is_413(client: FlaskClient) -> None:
    a, b = partial(client, 600), partial(client, 600)
    assert final(client, a, b)[0] == 413


ID = "0123456789abcdef0123456789abcdef"
HOSTILE_PARTIAL_URLS = [
    f"http://[zz]/files/{ID}",
    f"http://[::1/files/{ID}",
    f"http://::1]/files/{ID}",
    f"http://[localhost]/files/{ID}",
    f"http://[::1]x/files/{ID}",
    f"http://localhost:99999/files/{ID}",
    f"http://localhost:-1/files/{ID}",
    f"http://localhost:abc/files/{ID}",
    f"http://localhost:/files/{ID}",
    f"http://localhost:80/files/{ID}",
    f"http://user:pw@localhost/files/{ID}",
    f"http://@localhost/files/{ID}",
    f"http://localhost@elsewhere.example/files/{ID}",
    f"https://localhost/files/{ID}",
    f"ftp://localhost/files/{ID}",
    f"//elsewhere.example/files/{ID}",
    f"http:files/{ID}",
    f"javascript:alert(1)//files/{ID}",
    "/files/%30123456789abcdef0123456789abcdef",
    f"/files/{ID}%2f",
    f"/files%2f{ID}",
    f"/files/{ID}/",
    f"/files/{ID}#x",
    f"/files/{ID}/..",
    f"files/{ID}x",
    f"../{ID}",
    "/files/",
    "/files",
    "?",
    "#",
    "%",
    "%zz",
    "[",
    "]",
    "http://",
    "http://[",
    "/files/０１２３４５６７８９abcdef0123456789abcdef",
    f"http://ｌｏｃａｌｈｏｓｔ/files/{ID}",
    f"http://localhost\u3002/files/{ID}",
    f"/files/{ID}\u200b",
    f"\u202e/files/{ID}",
    "/files/" + "a" * 5000,
]


@pytest.mark.parametrize("url", HOSTILE_PARTIAL_URLS)
def test_malformed_partial_urls_are_400(client: FlaskClient, url: str) -> None:
    """Whatever the form, a URL that doesn't name an upload of this server is 400 (the
    unknown id in a well-formed URL is 404), never a 500 from urllib."""
    response = client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{url}"})
    assert response.status_code == 400, (url, response.status_code, response.text)
    assert "not an upload of this server" in response.text


@pytest.mark.parametrize(
    "url", [f"///files/{ID}", f"http:/files/{ID}", f"/files/./{ID}", f"/files/x/../{ID}"]
)
def test_odd_but_valid_partial_urls_name_this_server(client: FlaskClient, url: str) -> None:
    """Forms urljoin resolves to this server's /files/<id> are followed (here: 404)."""
    assert final(client, url)[0] == 404


@pytest.mark.parametrize(
    "host", ["[zz]", "[::1", "localhost:99999", "a b", "[::1]:0", "xn--", "ｌｏｃａｌ"]
)
def test_hostile_host_is_400(client: FlaskClient, host: str) -> None:
    """URLs are made from Host: one that can't make a URL is 400 before anything else."""
    cases: list[dict[str, str]] = [{"Upload-Concat": f"final;/files/{ID}"}, {"Upload-Length": "1"}]
    for headers in cases:
        # Straight to the app: the test client itself can't make a URL of such a Host.
        sent = Headers({**TUS, **headers})
        environ = EnvironBuilder("/files/", method="POST", headers=sent).get_environ()
        environ["HTTP_HOST"] = host
        _, status, response_headers = run_wsgi_app(client.application, environ, buffered=True)
        assert status.startswith("400 "), response_headers.get("Location")
