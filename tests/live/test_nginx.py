"""uploadsvc behind real nginx with the shipped deploy/nginx.conf, under /uploads/."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
    read_response_head,
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
    url: str = uploader.url  # type: ignore[assignment]  # tuspy types url as None
    assert url.startswith(f"{origin}/uploads/files/")
    assert sha256_file(server.data_file(upload_id(url))) == sha256_bytes(data)

    response = http_request("GET", url, {"Range": "bytes=10-19"})
    assert response.status == 206
    assert response.body == data[10:20]
    response = http_request("GET", url)
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


ADMIN_TOKEN = "nginx-admin-token-0123456789"
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
    "/uploads/admin",
    "/uploads/admin/events",
    "/uploads/admin/overview.json",
    "/uploads/admin/login",
    "/uploads//admin",
    "/uploads/%61dmin",
    "/uploads/files/../admin",
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
    server = server_factory(
        UPLOADSVC_PROXY_HOPS="1", UPLOADSVC_WEB_UI="1", UPLOADSVC_ADMIN_TOKEN=ADMIN_TOKEN
    )
    with nginx_in_front(server, tmp_path / "nginx") as origin:
        yield server, origin


def test_metrics_health_and_the_list_are_internal(
    proxied_with_page: tuple[LiveServer, str],
) -> None:
    """The shipped location rules: /metrics, /healthz, /api/uploads and /admin answer
    loopback only, however the path is spelled; the tus endpoints and the page stay
    public."""
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
    # The operator view, from inside: still the token's, under the prefix.
    assert request_from(HOST, origin, "GET", "/uploads/admin")[0] == 401
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    status, body = request_from(HOST, origin, "GET", "/uploads/admin", bearer)
    assert status == 200 and b'data-events="/uploads/admin/events"' in body
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


# -- refusals with a big unread body, and the connection after them -------------------------

BIG = 4 * MiB


def refusals(url: str, endpoint: str) -> list[tuple[str, str, dict[str, str], int]]:
    """Requests refused before a byte of their (big) body is read."""
    return [
        ("PATCH", url, tus_headers(Upload_Offset="7", Content_Type=OFFSET_OCTET_STREAM), 409),
        ("PATCH", url, tus_headers(Upload_Offset="0", Content_Type="text/plain"), 415),
        ("PATCH", url, tus_headers(Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM), 413),
        (
            "POST",
            endpoint,
            tus_headers(Upload_Length=str(1 << 40), Content_Type=OFFSET_OCTET_STREAM),
            413,
        ),
    ]


def test_a_refusal_with_an_unread_body_says_connection_close(live_server: LiveServer) -> None:
    """gunicorn closes (or drains) after a refusal that left the body unread: the
    response must say so, or a proxy reuses the connection as it closes."""
    url = live_server.create_upload(100)
    path = url.removeprefix(live_server.origin)
    for method, target, headers, expected in refusals(url, live_server.endpoint):
        target = target.removeprefix(live_server.origin)
        headers = {**headers, "Content-Length": str(BIG)}
        with connect(live_server.port) as sock:
            sock.sendall(
                build_request(method, target, list(headers.items()), port=live_server.port)
            )
            answer = read_response_head(sock, timeout=10)
        assert answer.status == expected, (method, headers, answer)
        assert (answer.header("Connection") or "").lower() == "close", answer.head
    # A response that keeps the connection says so, and the next request follows.
    with connect(live_server.port) as sock:
        head = build_request("HEAD", path, list(tus_headers().items()), port=live_server.port)
        sock.sendall(head)
        answer = read_response_head(sock, timeout=10)
        assert answer.status == 200 and answer.header("Connection") == "keep-alive"


def upstream_failures(workdir: Path) -> list[str]:
    errors = (workdir / "error.log").read_text(errors="replace").splitlines()
    # warn and above: a host closed or reset a connection under nginx, or was left out.
    failing = re.compile(r"\[(?:warn|error|crit|alert|emerg)\].*upstream")
    return [line for line in errors if failing.search(line)]


def test_refusals_with_unread_bodies_through_nginx_cost_no_502(
    proxied: tuple[LiveServer, str], tmp_path: Path
) -> None:
    """nginx sends the next request on the connection a refusal came on (its keep-alive
    cache is last in, first out), and relays the refused body while the host answers."""
    _server, origin = proxied
    endpoint = f"{origin}/uploads/files/"
    url = http_request("POST", endpoint, tus_headers(Upload_Length="100")).header("Location")
    assert url is not None
    body = b"\x00" * BIG
    statuses = []
    for _ in range(5):
        for method, target, headers, expected in refusals(url, endpoint):
            try:
                status = http_request(method, target, headers, body).status
            except ConnectionResetError:  # nginx answered and closed mid-body: not a 502
                status = expected
            assert status == expected, (method, headers, status)
            statuses += [http_request("HEAD", url, tus_headers()).status for _ in range(3)]
            statuses.append(http_request("OPTIONS", endpoint).status)
    assert set(statuses) == {200, 204}, statuses
    assert upstream_failures(tmp_path / "nginx") == []
    access = (tmp_path / "nginx" / "access.log").read_text(errors="replace")
    assert '" 502 ' not in access  # not even for a refusal whose client saw a reset


def test_checksum_trailer_behind_nginx_is_neither_offered_nor_half_done(
    proxied: tuple[LiveServer, str],
) -> None:
    """nginx drops request trailers: uploadsvc behind it (UPLOADSVC_PROXY_HOPS=1) does
    not advertise checksum-trailer, and refuses a PATCH announcing one before its body."""
    server, origin = proxied
    endpoint = f"{origin}/uploads/files/"
    extensions = (http_request("OPTIONS", endpoint).header("Tus-Extension") or "").split(",")
    assert "checksum-trailer" not in extensions and "checksum" in extensions
    direct = (http_request("OPTIONS", server.endpoint).header("Tus-Extension") or "").split(",")
    assert "checksum-trailer" not in direct  # the same host, whichever way it is asked

    data = random_bytes(300_000, seed=74)
    url = http_request("POST", endpoint, tus_headers(Upload_Length=str(len(data)))).header(
        "Location"
    )
    assert url is not None
    port = int(origin.rsplit(":", 1)[1])
    headers = tus_headers(
        Upload_Offset="0",
        Content_Type=OFFSET_OCTET_STREAM,
        Transfer_Encoding="chunked",
        Trailer="Upload-Checksum",
    )
    digest = base64.b64encode(hashlib.sha256(data).digest())
    body = b"%x\r\n%s\r\n0\r\nUpload-Checksum: sha256 %s\r\n\r\n" % (len(data), data, digest)
    with connect(port) as sock:
        path = url.removeprefix(origin)
        sock.sendall(build_request("PATCH", path, list(headers.items()), port=port) + body)
        answer = read_response_head(sock, timeout=20)
    assert answer.status == 400, answer.head
    assert http_request("HEAD", url, tus_headers()).header("Upload-Offset") == "0"
    # The checksum as a header works through nginx.
    response = http_request(
        "PATCH",
        url,
        tus_headers(
            Upload_Offset="0",
            Content_Type=OFFSET_OCTET_STREAM,
            Upload_Checksum="sha256 " + digest.decode(),
        ),
        data,
    )
    assert response.status == 204, response


def test_a_body_the_server_ended_says_connection_close(
    server_factory: Callable[..., LiveServer],
) -> None:
    """The read timeout ends a silent body (shutting the socket's read side): the
    connection can't carry another request, and the answer says so."""
    server = server_factory(UPLOADSVC_READ_TIMEOUT="1")
    url = server.create_upload(1000)
    headers = tus_headers(Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM)
    headers["Content-Length"] = "1000"
    with connect(server.port) as sock:
        path = url.removeprefix(server.origin)
        sock.sendall(build_request("PATCH", path, list(headers.items()), port=server.port))
        sock.sendall(b"x" * 10)
        answer = read_response_head(sock, timeout=20)
    assert answer.status is not None and answer.header("Upload-Offset") == "10", answer.head
    assert (answer.header("Connection") or "").lower() == "close", answer.head


def test_refusals_after_the_whole_body_was_sent_cost_no_502(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """A PATCH that waits for a busy upload's lock is refused (423) after nginx has sent
    all of its body into the socket buffers: nginx keeps a connection whose answer said
    keep-alive and sends the next request on it at once, so a close the host makes after
    such an answer (gunicorn drains 64 KiB at most) lands under that request: "upstream
    prematurely closed connection", a 502."""
    server = server_factory(UPLOADSVC_PROXY_HOPS="1", UPLOADSVC_LOCK_TIMEOUT="0.3")
    busy = server.create_upload(10 * MiB)
    other = server.create_upload(100)
    stop = threading.Event()
    with connect(server.port) as holder, nginx_in_front(server, tmp_path / "nginx") as origin:
        # The lock holder: a PATCH that keeps sending, a byte at a time (never taken over).
        headers = tus_headers(Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM)
        headers["Content-Length"] = str(10 * MiB)
        path = busy.removeprefix(server.origin)
        holder.sendall(build_request("PATCH", path, list(headers.items()), port=server.port))

        def trickle() -> None:
            for _ in range(600):  # bounded: 60 s
                if stop.wait(0.1):
                    return
                holder.sendall(b"x")

        trickler = threading.Thread(target=trickle)
        trickler.start()
        time.sleep(0.3)
        busy_url = busy.replace(server.origin, f"{origin}/uploads")
        other_url = other.replace(server.origin, f"{origin}/uploads")
        body = b"\x00" * MiB

        def client(_: int) -> list[int]:
            statuses = []
            for _ in range(6):
                statuses.append(http_request("PATCH", busy_url, headers_1m, body).status)
                statuses += [
                    http_request("HEAD", other_url, tus_headers()).status for _ in range(3)
                ]
            return statuses

        headers_1m = tus_headers(Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM)
        try:
            with ThreadPoolExecutor(max_workers=4) as pool:
                statuses = [s for result in pool.map(client, range(4)) for s in result]
        finally:
            stop.set()
            trickler.join(timeout=10)
    failures = upstream_failures(tmp_path / "nginx")
    print(f"\n{len(statuses)} answers {sorted(set(statuses))}; {len(failures)} upstream failures")
    print("\n".join(failures[:3]))
    assert 502 not in statuses, statuses
    assert set(statuses) <= {200, 423}, statuses
    assert failures == []
