"""uploadsvc behind real nginx with the shipped deploy/nginx.conf, under /uploads/."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
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
    free_port,
    http_request,
    random_bytes,
    sha256_bytes,
    sha256_file,
    tus_headers,
    upload_id,
    wait_until_delivered,
)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@contextlib.contextmanager
def nginx_in_front(server: LiveServer, workdir: Path) -> Iterator[str]:
    """Run nginx with deploy/nginx.conf (ports rewritten for the test); yield its origin."""
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (.ci/run installs Debian's nginx)")
    port = free_port()
    site = (REPO_ROOT / "deploy" / "nginx.conf").read_text()
    site = site.replace("server 127.0.0.1:8080;", f"server {HOST}:{server.port};")
    site = site.replace("listen 80;", f"listen {HOST}:{port};")
    assert f"listen {HOST}:{port};" in site and str(server.port) in site
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "site.conf").write_text(site)
    temp = {name: workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    (workdir / "nginx.conf").write_text(
        f"""
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {workdir}/site.conf;
}}
"""
    )
    proc = subprocess.Popen(
        [NGINX, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        origin = f"http://{HOST}:{port}"
        for _ in range(100):  # up to 10 s
            with contextlib.suppress(OSError):
                if http_request("OPTIONS", f"{origin}/uploads/files/", timeout=2).status == 204:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {proc.stderr.read() if proc.stderr else ''!r}")
            time.sleep(0.1)
        yield origin
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


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
    assert sha256_file(server.data_file(upload_id(final))) == sha256_bytes(b"".join(parts))
