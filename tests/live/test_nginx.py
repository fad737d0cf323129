"""uploadsvc behind real nginx with the shipped deploy/nginx.conf, under /uploads/."""

from __future__ import annotations

import contextlib
import http.client
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tusclient import client as tus_client

from tests.live.conftest import (
    HOST,
    OFFSET_OCTET_STREAM,
    REPO_ROOT,
    LiveServer,
    MiB,
    build_request,
    connect,
    http_request,
    random_bytes,
    run_nginx,
    sha256_bytes,
    sha256_file,
    tus_headers,
    upload_id,
    wait_until_delivered,
)


@contextlib.contextmanager
def nginx_in_front(server: LiveServer, workdir: Path) -> Iterator[str]:
    """Run nginx with deploy/nginx.conf, its upstream pointed at ``server``."""
    site = (REPO_ROOT / "deploy" / "nginx.conf").read_text()
    assert "server 127.0.0.1:8080;" in site
    site = site.replace("server 127.0.0.1:8080;", f"server {HOST}:{server.port};")
    with run_nginx(site, workdir) as origin:
        yield origin


@pytest.fixture
def proxied(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> Iterator[tuple[LiveServer, str]]:
    server = server_factory(UPLOADSVC_PROXY_HOPS="1")
    with nginx_in_front(server, tmp_path / "nginx") as origin:
        yield server, origin


@pytest.mark.parametrize("chunk_size", [1 * MiB, 64 * MiB], ids=["1MiB", "whole"])
def test_tuspy_through_nginx(proxied: tuple[LiveServer, str], chunk_size: int) -> None:
    server, origin = proxied
    data = random_bytes(5 * MiB + 7, seed=70)
    uploader = tus_client.TusClient(f"{origin}/uploads/files/").uploader(
        file_stream=io.BytesIO(data), chunk_size=chunk_size, metadata={"filename": "a.bin"}
    )
    uploader.upload()
    assert uploader.url.startswith(f"{origin}/uploads/files/")
    assert sha256_file(server.data_file(upload_id(uploader.url))) == sha256_bytes(data)

    response = http_request("GET", uploader.url, {"Range": "bytes=10-19"})
    assert response.status == 206
    assert response.body == data[10:20]
    response = http_request("GET", uploader.url)
    assert sha256_bytes(response.body) == sha256_bytes(data)


def test_resume_through_nginx_after_a_drop(proxied: tuple[LiveServer, str]) -> None:
    server, origin = proxied
    data = random_bytes(2 * MiB, seed=71)
    response = http_request(
        "POST", f"{origin}/uploads/files/", tus_headers(Upload_Length=str(len(data)))
    )
    url = response.header("Location") or ""
    assert url.startswith(f"{origin}/uploads/files/")
    port = int(origin.rsplit(":", 1)[1])
    with connect(port) as sock:
        headers = tus_headers(
            Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM, Content_Length=str(len(data))
        )
        path = url.removeprefix(origin)
        sock.sendall(build_request("PATCH", path, list(headers.items()), port=port))
        sock.sendall(data[: MiB + 3])
        wait_until_delivered(sock)
        time.sleep(0.3)  # let nginx pass the bytes on before the connection goes
    offset = 0
    for _ in range(50):  # nginx notices the close, then gunicorn records: bounded wait
        response = http_request("HEAD", url, tus_headers())
        if response.status == 200 and int(response.header("Upload-Offset") or 0) == MiB + 3:
            offset = MiB + 3
            break
        time.sleep(0.1)
    assert offset == MiB + 3, response
    response = http_request(
        "PATCH",
        url,
        tus_headers(Upload_Offset=str(offset), Content_Type=OFFSET_OCTET_STREAM),
        data[offset:],
    )
    assert response.status == 204
    assert sha256_file(server.data_file(upload_id(url))) == sha256_bytes(data)


def test_chunked_and_concatenation_through_nginx(proxied: tuple[LiveServer, str]) -> None:
    server, origin = proxied
    parts = [random_bytes(300_000, seed=72), random_bytes(200_001, seed=73)]
    urls = []
    for part in parts:
        response = http_request(
            "POST",
            f"{origin}/uploads/files/",
            tus_headers(Upload_Length=str(len(part)), Upload_Concat="partial"),
        )
        url = response.header("Location") or ""
        response = http_request(
            "PATCH",
            url,
            tus_headers(Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM),
            iter([part[:1000], part[1000:]]),
            encode_chunked=True,
        )
        assert response.status == 204, response
        urls.append(url)
    response = http_request(
        "POST", f"{origin}/uploads/files/", tus_headers(Upload_Concat="final;" + " ".join(urls))
    )
    assert response.status == 201, response
    final = response.header("Location") or ""
    assert final.startswith(f"{origin}/uploads/files/")
    head = http_request("HEAD", final, tus_headers())
    assert head.header("Upload-Concat") == "final;" + " ".join(urls)
    # Read through its partials (a final has no bytes of its own), through nginx.
    download = http_request("GET", final, {})
    assert download.status == 200, download
    assert sha256_bytes(download.body) == sha256_bytes(b"".join(parts))
    assert server.data_file(upload_id(final)).stat().st_size == 0


# A client that isn't loopback to nginx: 127.0.0.2 is another address on lo.
OUTSIDER = "127.0.0.2"
INTERNAL_ONLY = [
    "/uploads/metrics",
    "/uploads/healthz",
    "/uploads/api/uploads",
    "/uploads/api/uploads?limit=1",
    "/uploads//metrics",
    "/uploads/./metrics",
    "/uploads/files/../metrics",
    "/uploads/%6detrics",
    "/uploads/%6Detrics",
    "/uploads/metrics?x=1",
    "/uploads/metrics/",
    "/uploads/healthz/",
    "/uploads/api//uploads",
    "/uploads/api/%75ploads",
    "/uploads/./api/uploads",
]


def request_from(
    source: str, origin: str, method: str, target: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    port = int(origin.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection(HOST, port, timeout=10, source_address=(source, 0))
    try:
        conn.request(method, target, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def proxied_with_page(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> Iterator[tuple[LiveServer, str]]:
    server = server_factory(UPLOADSVC_PROXY_HOPS="1", UPLOADSVC_WEB_UI="1")
    with nginx_in_front(server, tmp_path / "nginx") as origin:
        yield server, origin


def test_metrics_health_and_the_list_are_internal(
    proxied_with_page: tuple[LiveServer, str],
) -> None:
    """The shipped location rules: /metrics, /healthz and /api/uploads answer loopback
    only, however the path is spelled; the tus endpoints and the page stay public."""
    server, origin = proxied_with_page
    url = server.create_upload(3, body=b"abc")
    for target in INTERNAL_ONLY:
        for method in ("GET", "HEAD", "POST"):
            status, body = request_from(OUTSIDER, origin, method, target, tus_headers())
            assert status in (403, 404), (method, target, status)
            assert b"uploadsvc_" not in body and upload_id(url).encode() not in body
    # The operator's scraper, health check and the page's list, from inside.
    assert request_from(HOST, origin, "GET", "/uploads/metrics")[0] == 200
    assert request_from(HOST, origin, "GET", "/uploads/healthz") == (200, b"ok\n")
    status, body = request_from(HOST, origin, "GET", "/uploads/api/uploads")
    assert status == 200 and upload_id(url).encode() in body
    # Public: the page and the tus endpoints, uploads and downloads included.
    assert request_from(OUTSIDER, origin, "GET", "/uploads/")[0] == 200
    assert request_from(OUTSIDER, origin, "OPTIONS", "/uploads/files/")[0] == 204
    status, _ = request_from(
        OUTSIDER, origin, "POST", "/uploads/files/", tus_headers(Upload_Length="1")
    )
    assert status == 201
    target = "/uploads/files/" + upload_id(url)
    assert request_from(OUTSIDER, origin, "HEAD", target, tus_headers())[0] == 200
    assert request_from(OUTSIDER, origin, "GET", target) == (200, b"abc")
