"""Two hosts behind real nginx (deploy/nginx-two-hosts.conf): round robin, no
stickiness, one PostgreSQL registry and one S3 store (moto's server), each host with its
own empty data dir. Every upload is checked by sha256 of a GET through nginx.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tusclient import client as tus_client

from tests.pg import PostgresServer
from tests.s3 import AWS_ENV, S3Server

from .conftest import (
    HOST,
    OFFSET_OCTET_STREAM,
    REPO_ROOT,
    VENV_BIN,
    LiveServer,
    MiB,
    abort_connection,
    build_request,
    call_with_deadline,
    connect,
    http_request,
    make_data_file,
    random_bytes,
    read_response_head,
    run_nginx,
    run_node,
    sha256_bytes,
    tus_headers,
    upload_id,
    wait_until_delivered,
)
from .conftest import _ServerPool as ServerPool

PART = 5 * MiB  # the smallest S3 part: PATCHes cross part boundaries cheaply
HOSTS = ("uploads-a.internal:8080", "uploads-b.internal:8080")
RETRIES = 40  # bounded client retries (502 while nginx notices a dead host, 423)


@dataclass
class Cluster:
    hosts: list[LiveServer]
    origin: str  # nginx
    env: dict[str, str]  # the settings the hosts share
    s3: S3Server
    bucket: str
    nginx_dir: Path  # nginx's error.log and access.log

    @property
    def endpoint(self) -> str:
        return f"{self.origin}/uploads/files/"

    def served(self, host: LiveServer, method: str, upload: str) -> int:
        """How many ``method`` requests on ``upload`` ``host`` answered (its request log)."""
        pattern = re.compile(rf"\] {method} /files/{upload} \d{{3}} ")
        return len(pattern.findall(host.log_text()))


@contextlib.contextmanager
def nginx_for(hosts: list[LiveServer], workdir: Path) -> Iterator[str]:
    """Run nginx with deploy/nginx-two-hosts.conf, its hosts rewritten to ours."""
    site = (REPO_ROOT / "deploy" / "nginx-two-hosts.conf").read_text()
    for name, host in zip(HOSTS, hosts, strict=True):
        assert f"server {name} " in site
        site = site.replace(f"server {name} ", f"server {HOST}:{host.port} ")
    assert "proxy_next_upstream off;" in site
    with run_nginx(site, workdir) as origin:
        yield origin


@contextlib.contextmanager
def shared_services(postgres: PostgresServer, s3: S3Server) -> Iterator[dict[str, str]]:
    """What the hosts share: a fresh PostgreSQL database and a fresh bucket."""
    bucket = s3.new_bucket()
    try:
        with postgres.database() as url:
            yield {
                "UPLOADSVC_DATABASE_URL": url,
                "UPLOADSVC_STORE": f"s3://{bucket}/tus",
                "UPLOADSVC_S3_ENDPOINT_URL": s3.endpoint,
                "UPLOADSVC_S3_PART_SIZE": str(PART),
                "UPLOADSVC_PROXY_HOPS": "1",
                "UPLOADSVC_MAX_SIZE": str(1024 * MiB),
                **AWS_ENV,
            }
    finally:
        s3.remove_bucket(bucket)


@contextlib.contextmanager
def two_hosts(
    postgres: PostgresServer, s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with shared_services(postgres, s3) as env:
        pool = ServerPool(tmp_path_factory)
        try:
            hosts = [pool.start(**env) for _ in HOSTS]
            bucket = env["UPLOADSVC_STORE"].removeprefix("s3://").split("/")[0]
            nginx_dir = tmp_path_factory.mktemp("nginx")
            with nginx_for(hosts, nginx_dir) as origin:
                yield Cluster(hosts, origin, env, s3, bucket, nginx_dir)
            # No host kept anything of an upload: each data dir is as empty as it began.
            for host in hosts:
                assert [p.name for p in host.data_dir.iterdir()] == [], host.data_dir
        finally:
            pool.close()


@pytest.fixture(scope="module")
def cluster(
    postgres: PostgresServer, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Two hosts and nginx, shared by the module's tests (each on uploads of its own)."""
    with two_hosts(postgres, s3_server, tmp_path_factory) as cluster:
        yield cluster


@pytest.fixture
def own_cluster(
    postgres: PostgresServer, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Two hosts and nginx for one test (one that kills a host)."""
    with two_hosts(postgres, s3_server, tmp_path_factory) as cluster:
        yield cluster


@pytest.fixture
def shared_env(postgres: PostgresServer, s3_server: S3Server) -> Iterator[dict[str, str]]:
    with shared_services(postgres, s3_server) as env:
        yield env


def request_with_retries(method: str, url: str, headers: dict[str, str], body: bytes = b"") -> Any:
    """A tus client's patience: retry 502 (a dead host) and 423 (busy), bounded."""
    response = http_request(method, url, headers, body or None)
    for _ in range(RETRIES):
        if response.status not in (502, 423):
            break
        time.sleep(0.25)
        response = http_request(method, url, headers, body or None)
    return response


def download_sha256(url: str) -> str:
    response = request_with_retries("GET", url, {})
    assert response.status == 200, response
    return sha256_bytes(response.body)


def test_tuspy_in_chunks_lands_on_both_hosts(cluster: Cluster, tmp_path: Path) -> None:
    data = random_bytes(21 * MiB + 333, seed=200)
    uploader = tus_client.TusClient(cluster.endpoint).uploader(
        file_stream=io.BytesIO(data), chunk_size=3 * MiB, metadata={"filename": "both.bin"}
    )
    call_with_deadline(uploader.upload, 120, "tuspy through nginx")
    url: str = uploader.url  # type: ignore[assignment]  # tuspy types url as None
    assert url.startswith(cluster.endpoint)
    ident = upload_id(url)
    patches = [cluster.served(host, "PATCH", ident) for host in cluster.hosts]
    print(f"\nPATCHes per host: {patches}")
    assert all(count >= 3 for count in patches), patches  # round robin, no stickiness
    assert download_sha256(url) == sha256_bytes(data)
    ranged = http_request("GET", url, {"Range": f"bytes={PART - 5}-{PART + 4}"})
    assert ranged.status == 206 and ranged.body == data[PART - 5 : PART + 5]


def test_tus_js_client_in_chunks_across_hosts(cluster: Cluster, node: str, tmp_path: Path) -> None:
    path = tmp_path / "js.bin"
    digest = make_data_file(path, 13 * MiB + 1, seed=201)
    spec = {
        "mode": "upload",
        "endpoint": cluster.endpoint,
        "path": str(path),
        "source": "file",
        "chunkSize": 2 * MiB,
        "metadata": {"filename": "js.bin"},
        "timeoutSeconds": 120,
    }
    result = run_node(node, "node_upload.mjs", spec, 150)[-1]
    url = result["url"]
    patches = [cluster.served(host, "PATCH", upload_id(url)) for host in cluster.hosts]
    print(f"\ntus-js-client PATCHes per host: {patches}")
    assert all(count >= 2 for count in patches), patches
    assert download_sha256(url) == digest


def test_concatenation_across_hosts(cluster: Cluster) -> None:
    parts = [random_bytes(6 * MiB + 1, seed=202), random_bytes(1000, seed=203)]
    urls = []
    for part in parts:
        response = http_request(
            "POST",
            cluster.endpoint,
            tus_headers(Upload_Length=str(len(part)), Upload_Concat="partial"),
        )
        url = response.header("Location") or ""
        offset = 0
        for start in range(0, len(part), 2 * MiB):  # chunks alternate between hosts
            piece = part[start : start + 2 * MiB]
            response = request_with_retries(
                "PATCH",
                url,
                tus_headers(Upload_Offset=str(offset), Content_Type=OFFSET_OCTET_STREAM),
                piece,
            )
            assert response.status == 204, response
            offset += len(piece)
        urls.append(url)
    response = http_request(
        "POST", cluster.endpoint, tus_headers(Upload_Concat="final;" + " ".join(urls))
    )
    assert response.status == 201, response
    final = response.header("Location") or ""
    head = request_with_retries("HEAD", final, tus_headers())
    assert head.header("Upload-Offset") == str(sum(map(len, parts)))
    assert download_sha256(final) == sha256_bytes(b"".join(parts))


def test_a_stalled_patch_on_one_host_is_taken_over_from_the_other(cluster: Cluster) -> None:
    a, b = cluster.hosts
    data = random_bytes(3 * MiB, seed=204)
    url = cluster.hosts[0].create_upload(len(data))
    ident = upload_id(url)
    sent = MiB + 17
    with connect(a.port) as sock:
        headers = tus_headers(
            Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM, Content_Length=str(len(data))
        )
        sock.sendall(build_request("PATCH", f"/files/{ident}", list(headers.items()), port=a.port))
        sock.sendall(data[:sent])
        wait_until_delivered(sock)
        time.sleep(0.3)  # host A now waits for bytes that never come
        started = time.monotonic()
        response = http_request("HEAD", f"{b.endpoint}{ident}", tus_headers())
        took = time.monotonic() - started
        print(
            f"\ncross-host takeover: HEAD on host B answered {response.status} after {took:.2f} s"
        )
        assert response.status == 200
        assert response.header("Upload-Offset") == str(sent)
        # 200, not 423: B had the lock within UPLOADSVC_LOCK_TIMEOUT (the time is printed).
        # The stale holder is told to retry (README: who ends a body), with its offset.
        answer = read_response_head(sock, timeout=10)
        assert (answer.status, answer.header("Retry-After")) == (503, "1"), answer.head
        assert answer.header("Upload-Offset") == str(sent)
    response = http_request(
        "PATCH",
        f"{cluster.endpoint}{ident}",
        tus_headers(Upload_Offset=str(sent), Content_Type=OFFSET_OCTET_STREAM),
        data[sent:],
    )
    assert response.status == 204
    assert download_sha256(f"{cluster.endpoint}{ident}") == sha256_bytes(data)


def parts_in_s3(cluster: Cluster, key: str) -> int:
    s3 = cluster.s3.client()
    try:
        uploads = s3.list_multipart_uploads(Bucket=cluster.bucket, Prefix=key).get("Uploads", [])
        if not uploads:
            return 0
        listed = s3.list_parts(Bucket=cluster.bucket, Key=key, UploadId=uploads[0]["UploadId"])
        return len(listed.get("Parts", []))
    finally:
        s3.close()


def test_a_host_killed_mid_upload_and_the_upload_finished_through_the_other(
    own_cluster: Cluster,
) -> None:
    cluster = own_cluster
    a, b = cluster.hosts
    data = random_bytes(23 * MiB + 11, seed=205)
    response = http_request("POST", cluster.endpoint, tus_headers(Upload_Length=str(len(data))))
    url = response.header("Location") or ""
    ident = upload_id(url)
    sent = 2 * PART + 3 * MiB  # two whole parts, and most of a third in host A's memory
    sock = connect(a.port)
    try:
        headers = tus_headers(
            Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM, Content_Length=str(len(data))
        )
        sock.sendall(build_request("PATCH", f"/files/{ident}", list(headers.items()), port=a.port))
        sock.sendall(data[:sent])
        wait_until_delivered(sock)
        deadline = time.monotonic() + 30
        for _ in range(300):  # host A has sent both parts to S3 (bounded wait)
            if parts_in_s3(cluster, f"tus/{ident}") >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        os.killpg(a.proc.pid, signal.SIGKILL)  # master and workers: the host is gone
        a.proc.wait(timeout=10)
    finally:
        sock.close()
    started = time.monotonic()
    head = request_with_retries("HEAD", url, tus_headers())
    print(
        f"\nhost A killed mid-PATCH: HEAD through nginx answered {head.status} after"
        f" {time.monotonic() - started:.2f} s, offset {head.header('Upload-Offset')} of {sent} sent"
    )
    assert head.status == 200
    # What was durably in S3 counts (two parts); the bytes in A's memory died with it.
    offset = int(head.header("Upload-Offset") or -1)
    assert offset == 2 * PART
    for start in range(offset, len(data), 4 * MiB):
        piece = data[start : start + 4 * MiB]
        response = request_with_retries(
            "PATCH",
            url,
            tus_headers(Upload_Offset=str(start), Content_Type=OFFSET_OCTET_STREAM),
            piece,
        )
        assert response.status == 204, response
    assert download_sha256(url) == sha256_bytes(data)
    assert cluster.served(b, "PATCH", ident) >= 1


def run_cleanup(host: LiveServer, cluster: Cluster) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPLOADSVC_")}
    env.update(cluster.env)
    env["UPLOADSVC_DATA_DIR"] = str(host.data_dir)
    result = subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "wsgi", "cleanup", "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_two_cleanups_at_once_from_one_host(cluster: Cluster) -> None:
    data = random_bytes(PART + 100, seed=206)
    url = cluster.hosts[0].create_upload(len(data))
    response = http_request(
        "PATCH", url, tus_headers(Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM), data
    )
    assert response.status == 204
    # A multipart upload nobody knows (a host died creating it long ago: moto dates
    # every multipart upload 2010, so it is past the grace).
    orphan = "e5" * 16
    s3 = cluster.s3.client()
    try:
        s3.create_multipart_upload(Bucket=cluster.bucket, Key=f"tus/{orphan}")
    finally:
        s3.close()
    reports: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda: reports.append(run_cleanup(cluster.hosts[0], cluster)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    assert len(reports) == 2 and all(report["ok"] for report in reports), reports
    assert sum(report["orphan_files"].count(orphan) for report in reports) == 1
    assert download_sha256(f"{cluster.endpoint}{upload_id(url)}") == sha256_bytes(data)


# -- a shared volume instead of S3 ----------------------------------------------------------


def test_file_store_on_a_shared_volume_with_postgres_locks(
    postgres: PostgresServer, server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """Both hosts on one data dir (as on NFS) with the PostgreSQL registry and locks."""
    volume = tmp_path / "volume"
    with postgres.database() as url:
        env = {
            "UPLOADSVC_DATABASE_URL": url,
            "UPLOADSVC_DATA_DIR": str(volume),
            "UPLOADSVC_PROXY_HOPS": "1",
        }
        hosts = [server_factory(**env) for _ in HOSTS]
        with nginx_for(hosts, tmp_path / "nginx") as origin:
            data = random_bytes(9 * MiB + 7, seed=207)
            uploader = tus_client.TusClient(f"{origin}/uploads/files/").uploader(
                file_stream=io.BytesIO(data), chunk_size=MiB
            )
            call_with_deadline(uploader.upload, 120, "tuspy through nginx, shared volume")
            upload_url: str = uploader.url  # type: ignore[assignment]  # tuspy types url as None
            ident = upload_id(upload_url)
            patches = [
                len(re.findall(rf"\] PATCH /files/{ident} 204 ", h.log_text())) for h in hosts
            ]
            print(f"\nshared volume: PATCHes per host {patches}")
            assert all(count >= 3 for count in patches), patches
            assert (volume / "files" / ident).read_bytes() == data
            assert download_sha256(upload_url) == sha256_bytes(data)
            assert not (volume / "locks").exists()  # advisory locks, no lock files
        for host in hosts:
            host.stop()  # before the database goes


# -- memory per active PATCH with the S3 store ------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker_pids(server: LiveServer) -> list[int]:
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


def stream_patch(url: str, size: int) -> int:
    block = b"\xa5" * MiB
    response = http_request(
        "PATCH",
        url,
        tus_headers(Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM, Content_Length=str(size)),
        iter([block] * (size // MiB)),
        timeout=300,
    )
    return response.status


@pytest.mark.parametrize("patches", [1, 4])
def test_memory_per_active_patch_is_about_one_part(
    shared_env: dict[str, str], server_factory: Callable[..., LiveServer], patches: int
) -> None:
    """RSS of the workers while PATCHes stream into S3 with the default 8 MiB parts."""
    server = server_factory(**{**shared_env, "UPLOADSVC_S3_PART_SIZE": str(8 * MiB)})
    size = 96 * MiB
    urls = [server.create_upload(size) for _ in range(patches)]
    # Warm up both workers: a first PATCH loads code and opens connections.
    warm = [server.create_upload(8 * MiB + 1) for _ in range(4)]
    warmers = [threading.Thread(target=stream_patch, args=(url, 8 * MiB)) for url in warm]
    for thread in warmers:
        thread.start()
    for thread in warmers:
        thread.join(timeout=60)
    pids = worker_pids(server)
    before = {pid: rss_kib(pid) for pid in pids}
    peak = dict(before)
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda u=url: results.append(stream_patch(u, size))) for url in urls
    ]
    for thread in threads:
        thread.start()
    for _ in range(6000):  # sample every 20 ms while the PATCHes run (bounded: 120 s)
        if not any(thread.is_alive() for thread in threads):
            break
        for pid in pids:
            peak[pid] = max(peak[pid], rss_kib(pid))
        time.sleep(0.02)
    for thread in threads:
        thread.join(timeout=60)
    assert results == [204] * patches
    grown = sum(peak[pid] - before[pid] for pid in pids) / 1024
    print(
        f"\n{patches} PATCH(es) of {size // MiB} MiB into S3 (8 MiB parts), {len(pids)} workers:"
        f" RSS {sum(before.values()) / 1024:.0f} MiB -> +{grown:.1f} MiB at peak"
        f" ({grown / patches:.1f} MiB per PATCH)"
    )
    assert grown / patches < 40  # a few parts at most, never the body
    for url in urls:
        assert http_request("HEAD", url, tus_headers()).header("Upload-Offset") == str(size)


# -- concurrency through nginx: no connection the hosts close may be reused -----------------

ROUNDS = 3  # each round races, takes over, drops and refuses through nginx
RACERS = 8
# What nginx logs when a host closes (or resets) a connection under it, or leaves a host
# out after that: at warn level or above and naming the upstream ("upstream prematurely
# closed connection", "writev() failed ... while sending request to upstream", "upstream
# server temporarily disabled", "no live upstreams"). A client's own drop is info level.
UPSTREAM_FAILURE = re.compile(r"\[(?:warn|error|crit|alert|emerg)\].*upstream")


def upstream_failures(cluster: Cluster) -> list[str]:
    errors = (cluster.nginx_dir / "error.log").read_text(errors="replace").splitlines()
    return [
        line
        for line in errors
        if UPSTREAM_FAILURE.search(line) or "upstream prematurely closed" in line
    ]


def answered_502(cluster: Cluster) -> list[str]:
    access = (cluster.nginx_dir / "access.log").read_text(errors="replace").splitlines()
    return [line for line in access if '" 502 ' in line]


def nginx_port(cluster: Cluster) -> int:
    return int(cluster.origin.rsplit(":", 1)[1])


def heads(url: str, count: int) -> list[int]:
    """``count`` HEADs in a row, each on a new client connection: nginx sends them on
    its kept-alive upstream connections, the ones a host may have closed meanwhile."""
    return [http_request("HEAD", url, tus_headers()).status for _ in range(count)]


def raw_patch(cluster: Cluster, url: str, data: bytes, sent: int) -> Any:
    """A PATCH through nginx announcing all of ``data`` that sends ``sent`` bytes."""
    port = nginx_port(cluster)
    sock = connect(port)
    headers = tus_headers(
        Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM, Content_Length=str(len(data))
    )
    path = url.removeprefix(cluster.origin)
    sock.sendall(build_request("PATCH", path, list(headers.items()), port=port))
    sock.sendall(data[:sent])
    wait_until_delivered(sock)
    return sock


def race_through_nginx(cluster: Cluster, round_no: int) -> list[int]:
    """RACERS PATCHes of one upload at offset 0 at once, HEADs and a DELETE among them.

    The losers are refused (409, 423) with their bodies unread. A body of 1 MiB fits
    in the socket buffers: nginx has sent all of it when the refusal comes, so it keeps
    the connection if the refusal says keep-alive (and gunicorn then drains 64 KiB and
    closes it under nginx's next request). In odd rounds the bodies cross an S3 part.
    """
    size = MiB if round_no % 2 == 0 else PART + MiB
    response = http_request("POST", cluster.endpoint, tus_headers(Upload_Length=str(size)))
    url = response.header("Location") or ""
    bodies = [bytes([0x41 + i + round_no]) * size for i in range(RACERS)]
    barrier = threading.Barrier(RACERS + 2, timeout=30)

    def patch(i: int) -> list[int]:
        barrier.wait()
        headers = tus_headers(Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM)
        return [http_request("PATCH", url, headers, bodies[i]).status]

    def head_loop(_: int) -> list[int]:
        barrier.wait()
        return heads(url, 20)

    with ThreadPoolExecutor(max_workers=RACERS + 2) as pool:
        futures = [pool.submit(patch, i) for i in range(RACERS)]
        futures += [pool.submit(head_loop, i) for i in range(2)]
        statuses = [status for future in futures for status in future.result()]
    patches = statuses[:RACERS]
    assert patches.count(204) == 1 and set(patches) <= {204, 409, 423}, patches
    head = http_request("HEAD", url, tus_headers())
    assert head.header("Upload-Offset") == str(size)
    winner = patches.index(204)
    assert download_sha256(url) == sha256_bytes(bodies[winner])
    with ThreadPoolExecutor(max_workers=3) as pool:
        deleting = pool.submit(lambda: [http_request("DELETE", url, tus_headers()).status])
        racing = [pool.submit(heads, url, 10) for _ in range(2)]
        statuses += deleting.result() + [s for f in racing for s in f.result()]
    return statuses


def takeover_through_nginx(cluster: Cluster, seed: int) -> list[int]:
    """A PATCH stalls mid-body; a HEAD through nginx takes the upload over."""
    data = random_bytes(2 * MiB, seed=seed)
    url = request_with_retries(
        "POST", cluster.endpoint, tus_headers(Upload_Length=str(len(data)))
    ).header("Location")
    sent = MiB + 5
    sock = raw_patch(cluster, url, data, sent)
    try:
        time.sleep(0.3)  # a host now waits for bytes that never come
        head = http_request("HEAD", url, tus_headers())
        assert head.status == 200 and head.header("Upload-Offset") == str(sent), head
        answer = read_response_head(sock, timeout=15)
        assert answer.status not in (None, 502), answer
        assert answer.header("Upload-Offset") == str(sent)
    finally:
        sock.close()
    statuses = [head.status, answer.status or 0, *heads(url, 10)]
    response = http_request(
        "PATCH",
        url,
        tus_headers(Upload_Offset=str(sent), Content_Type=OFFSET_OCTET_STREAM),
        data[sent:],
    )
    assert response.status == 204, response
    return [*statuses, response.status, *heads(url, 10)]


def drop_through_nginx(cluster: Cluster, seed: int) -> list[int]:
    """A client resets its connection mid-PATCH: nginx drops the upstream one too."""
    data = random_bytes(2 * MiB, seed=seed)
    url = http_request("POST", cluster.endpoint, tus_headers(Upload_Length=str(len(data)))).header(
        "Location"
    )
    assert url is not None
    abort_connection(raw_patch(cluster, url, data, MiB + 7))
    statuses = []
    for _ in range(100):  # nginx passes the reset on, a host records: bounded wait
        head = http_request("HEAD", url, tus_headers())
        statuses.append(head.status)
        if head.header("Upload-Offset") == str(MiB + 7):
            break
        time.sleep(0.05)
    assert head.header("Upload-Offset") == str(MiB + 7), head
    return statuses + heads(url, 10)


def refusals_through_nginx(cluster: Cluster) -> list[int]:
    """Refusals before a byte of a big body is read (409, 415, 413), each followed by
    requests that nginx sends on its kept-alive upstream connections."""
    url = http_request("POST", cluster.endpoint, tus_headers(Upload_Length="100")).header(
        "Location"
    )
    assert url is not None
    big = b"\x00" * (4 * MiB)
    statuses = []
    refusals = [
        ("PATCH", url, tus_headers(Upload_Offset="7", Content_Type=OFFSET_OCTET_STREAM), 409),
        ("PATCH", url, tus_headers(Upload_Offset="0", Content_Type="text/plain"), 415),
        ("PATCH", url, tus_headers(Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM), 413),
        (
            "POST",
            cluster.endpoint,
            tus_headers(Upload_Length=str(2048 * MiB), Content_Type=OFFSET_OCTET_STREAM),
            413,
        ),
    ]
    for method, target, headers, expected in refusals:
        try:
            status = http_request(method, target, headers, big).status
        except ConnectionResetError:  # the refusal came and the connection went mid-body
            status = expected
        assert status == expected, (method, headers, status)
        statuses += [status, *heads(url, 6)]
    return statuses


def lock_wait_refusals_through_nginx(cluster: Cluster) -> list[int]:
    """PATCHes of an upload another PATCH holds (still sending, so never taken over)
    wait out the lock timeout and get 423 after nginx sent all of their 1 MiB bodies:
    nginx keeps such a connection on the word of a keep-alive and sends the next
    request (a HEAD) on it at once (tests/live/test_nginx.py has the single-host case)."""
    a = cluster.hosts[0]
    busy = a.create_upload(10 * MiB)
    other = http_request("POST", cluster.endpoint, tus_headers(Upload_Length="100"))
    other_url = other.header("Location") or ""
    busy_url = f"{cluster.endpoint}{upload_id(busy)}"
    stop = threading.Event()
    with connect(a.port) as holder:
        headers = tus_headers(
            Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM, Content_Length=str(10 * MiB)
        )
        path = f"/files/{upload_id(busy)}"
        holder.sendall(build_request("PATCH", path, list(headers.items()), port=a.port))

        def trickle() -> None:
            for _ in range(600):  # a byte every 0.1 s, bounded (60 s)
                if stop.wait(0.1):
                    return
                holder.sendall(b"x")

        def client(_: int) -> list[int]:
            patch = tus_headers(Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM)
            statuses = [http_request("PATCH", busy_url, patch, b"\x00" * MiB).status]
            return statuses + heads(other_url, 4)

        trickler = threading.Thread(target=trickle)
        trickler.start()
        try:
            time.sleep(0.3)  # the holder has the lock
            with ThreadPoolExecutor(max_workers=4) as pool:
                statuses = [s for result in pool.map(client, range(4)) for s in result]
        finally:
            stop.set()
            trickler.join(timeout=10)
    assert set(statuses) <= {200, 423}, statuses
    return statuses


def test_concurrency_through_nginx_leaves_no_upstream_failure(own_cluster: Cluster) -> None:
    """Races, takeovers, drops and refusals through nginx, round after round: no host
    closes a connection nginx may reuse, so no client gets a 502 and no host is left out.
    """
    cluster = own_cluster
    statuses: list[int] = []
    for round_no in range(ROUNDS):
        statuses += race_through_nginx(cluster, round_no)
        statuses += takeover_through_nginx(cluster, seed=300 + round_no)
        statuses += drop_through_nginx(cluster, seed=310 + round_no)
        statuses += refusals_through_nginx(cluster)
        statuses += lock_wait_refusals_through_nginx(cluster)
    failures = upstream_failures(cluster)
    print(f"\n{len(statuses)} answers through nginx in {ROUNDS} rounds; upstream failures:")
    print("\n".join(failures[:20]))
    assert 502 not in statuses, statuses
    assert answered_502(cluster) == []
    assert failures == []
