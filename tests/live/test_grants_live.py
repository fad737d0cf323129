"""Upload links (grants) against a live gunicorn with UPLOADSVC_AUTH=grants: a link made
by `flask grant create` used by uploadsvc-upload, tuspy, tus-js-client (concatenation
too) and the page in Chromium; another grant's token refused; a grant revoked while
the CLI uploads (its next PATCH refused, the bytes kept)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from tusclient import client

from testsupport import server as harness

from .conftest import (
    VENV_BIN,
    KiB,
    LiveServer,
    MiB,
    call_with_deadline,
    http_request,
    make_data_file,
    run_flask,
    run_node,
    sha256_file,
    tus_headers,
)
from .test_page import page_tools as page_tools
from .test_page import run_page

pytestmark = pytest.mark.live

ADMIN = "live-admin-token-0123456789"
CLI = VENV_BIN / "uploadsvc-upload"
RUN_TIMEOUT = 120.0


def grants_server(server_factory: Callable[..., LiveServer]) -> LiveServer:
    return server_factory(
        UPLOADSVC_AUTH="grants", UPLOADSVC_ADMIN_TOKEN=ADMIN, UPLOADSVC_WEB_UI="1"
    )


def new_grant(server: LiveServer, *options: str) -> dict[str, Any]:
    done = run_flask(
        server,
        "grant",
        "create",
        "--label",
        "live",
        "--base-url",
        f"{server.origin}/",
        "--json",
        *options,
    )
    assert done.returncode == 0, done.stderr
    made: dict[str, Any] = json.loads(done.stdout)
    return made


def grant_list(server: LiveServer) -> dict[str, dict[str, Any]]:
    done = run_flask(server, "grant", "list", "--json")
    assert done.returncode == 0, done.stderr
    return {g["id"]: g for g in json.loads(done.stdout)}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload_cli(
    *args: str, env: Mapping[str, str] | None = None, wait: bool = True
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [str(CLI), *args],
        env=harness.clean_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if wait:
        proc.wait(timeout=RUN_TIMEOUT)
    return proc


def test_a_link_works_for_the_cli_tuspy_and_tus_js_client(
    server_factory: Callable[..., LiveServer], tmp_path: Path, node: str
) -> None:
    server = grants_server(server_factory)
    made = new_grant(server, "--max-files", "10", "--expires", "1d")
    other = new_grant(server)
    token = made["token"]
    assert made["link"] == f"{server.origin}/#grant={token}"

    # uploadsvc-upload: --token, and --verify downloads with it too.
    source = tmp_path / "scan.pdf"
    digest = make_data_file(source, 3 * MiB + 17, seed=1)
    state = str(tmp_path / "state.json")
    common = ["--endpoint", server.endpoint, "--state", state, "--chunk-size", "1M"]
    cli = upload_cli(str(source), *common, "--token", token, "--verify")
    out, err = cli.communicate(timeout=RUN_TIMEOUT)
    assert cli.returncode == 0, err
    cli_url = out.strip()
    assert sha256_file(server.data_file(cli_url)) == digest
    # Without a token: refused, one line saying why.
    refused = upload_cli(str(source), *common, "--fresh")
    _, err = refused.communicate(timeout=RUN_TIMEOUT)
    assert refused.returncode == 1 and "401" in err, err

    # tuspy
    tus = client.TusClient(server.endpoint, headers=bearer(token))
    with source.open("rb") as stream:
        uploader = tus.uploader(file_stream=stream, chunk_size=MiB)
        call_with_deadline(uploader.upload, 60, "tuspy upload")
    tuspy_url = str(uploader.url)
    assert sha256_file(server.data_file(tuspy_url)) == digest

    # tus-js-client under Node, in two parallel partials made into a final.
    result = run_node(
        node,
        "node_upload.mjs",
        {
            "mode": "upload",
            "endpoint": server.endpoint,
            "path": str(source),
            "source": "file",
            "parallel": 2,
            "headers": bearer(token),
            "timeoutSeconds": 120,
        },
        150.0,
    )[-1]
    js_url = str(result["url"])
    downloaded = http_request("GET", js_url, bearer(token))
    assert downloaded.status == 200 and len(downloaded.body) == 3 * MiB + 17

    # Another link's token gets none of it; the admin's gets all.
    for url in (cli_url, tuspy_url, js_url):
        assert http_request("HEAD", url, {**tus_headers(), **bearer(other["token"])}).status == 403
        assert http_request("HEAD", url, {**tus_headers(), **bearer(ADMIN)}).status == 200
        assert http_request("GET", url).status == 401
    # What it holds: three files (the final counts, its partials don't), their bytes.
    used = grant_list(server)[made["id"]]
    assert used["used_files"] == 3
    assert used["used_bytes"] == 3 * (3 * MiB + 17)
    assert token not in server.log_text()


def test_a_grant_revoked_while_the_cli_uploads(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = grants_server(server_factory)
    made = new_grant(server)
    source = tmp_path / "big.bin"
    make_data_file(source, 64 * 64 * KiB, seed=2)
    proc = upload_cli(
        str(source),
        "--endpoint",
        server.endpoint,
        "--state",
        str(tmp_path / "state.json"),
        "--chunk-size",
        "64K",
        env={"UPLOADSVC_TOKEN": made["token"], "UPLOADSVC_UPLOAD_CHUNK_DELAY": "0.1"},
        wait=False,
    )
    try:
        offset = 0
        url = None
        deadline = time.monotonic() + 60
        while offset < 256 * KiB and time.monotonic() < deadline:
            time.sleep(0.1)
            state = tmp_path / "state.json"
            if url is None and state.exists():
                entries = json.loads(state.read_text() or "{}")
                urls = [v for v in json.dumps(entries).split('"') if v.startswith(server.endpoint)]
                url = urls[0] if urls else None
            if url is not None:
                head = http_request("HEAD", url, {**tus_headers(), **bearer(ADMIN)})
                offset = int(head.header("Upload-Offset") or 0)
        assert url is not None and offset >= 256 * KiB, "the upload never got going"
        revoked = run_flask(server, "grant", "revoke", made["id"])
        assert revoked.returncode == 0, revoked.stderr
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    # Its next PATCH was refused and the run stopped (401 is no error to retry).
    assert proc.returncode == 1, err
    assert "401" in err and "revoked" in err, err
    kept = int(
        http_request("HEAD", url, {**tus_headers(), **bearer(ADMIN)}).header("Upload-Offset") or -1
    )
    assert offset <= kept < 64 * 64 * KiB
    stored = server.data_file(url).read_bytes()
    assert len(stored) == kept and source.read_bytes()[:kept] == stored


def test_the_page_opened_from_a_link(
    page_tools: tuple[str, str], server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = grants_server(server_factory)
    made = new_grant(server)
    other = new_grant(server)
    # Someone else's upload: the link's page must not list it.
    theirs = tmp_path / "theirs.txt"
    make_data_file(theirs, 1000, seed=3)
    tus = client.TusClient(server.endpoint, headers=bearer(other["token"]))
    with theirs.open("rb") as stream:
        tus.uploader(file_stream=stream, metadata={"filename": "theirs.txt"}).upload()
    mine = tmp_path / "mine.bin"
    digest = make_data_file(mine, 2 * MiB, seed=4)

    result = run_page(page_tools, tmp_path, made["link"], [mine], mode="simple")

    url = result["url"]
    assert sha256_file(server.data_file(url)) == digest
    assert result["listed"] == ["mine.bin"]
    # The download link, followed by the browser, carries the link's cookie.
    assert result["fetched"] == {"status": 200, "sha256": digest}
    # Every tus request carried the token in a header, never in a URL.
    assert all(made["token"] not in r["url"] for r in result["requests"])
    assert made["token"] not in server.log_text()
    assert grant_list(server)[made["id"]]["used_files"] == 1
