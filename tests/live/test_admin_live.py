"""The operator view (/admin) against a live gunicorn (2 workers) while real clients upload:
tus-js-client under Node (one upload rate-limited, one stalled mid-body) and the CLI.

Through HTTP: a body in flight on one worker shows its progress on every answer of
/admin/overview.json, whichever worker gives it (fresh connections), and the event
stream sends its progress. In Chromium (web/admin_test.mjs): the bar of the streaming
upload moves, the stalled one is marked stalled, the CLI's upload appears among the
completions. Screenshots go to the test's tmp dir; the last is copied to
/tmp/uploadsvc-admin.png (docs/admin.png is one of these).
"""

from __future__ import annotations

import base64
import http.client
import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from .conftest import (
    HOST,
    JS_DIR,
    REPO_ROOT,
    VENV_BIN,
    KiB,
    LiveServer,
    MiB,
    http_request,
    make_data_file,
    patch_upload,
    tus_headers,
)
from .test_page import page_tools  # noqa: F401  (a fixture)

pytestmark = pytest.mark.live

TOKEN = "live-admin-token-0123456789"
WEB_DIR = REPO_ROOT / "web"
CLI = VENV_BIN / "uploadsvc-upload"
LAST_SCREENSHOT = Path("/tmp/uploadsvc-admin.png")
BEARER = {"Authorization": f"Bearer {TOKEN}"}
UNAUTHORIZED = "Failed to load resource: the server responded with a status of 401 (UNAUTHORIZED)"


def named(filename: str) -> str:
    return "filename " + base64.b64encode(filename.encode()).decode()


def get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)  # a new connection each time
    try:
        conn.request("GET", path, headers=BEARER)
        response = conn.getresponse()
        assert response.status == 200, response.status
        return json.loads(response.read())
    finally:
        conn.close()


def lines_of(stream: IO[bytes]) -> queue.Queue[dict[str, Any]]:
    found: queue.Queue[dict[str, Any]] = queue.Queue()

    def pump() -> None:
        for line in stream:
            if line.strip():
                found.put(json.loads(line))

    threading.Thread(target=pump, daemon=True).start()
    return found


def next_line(lines: queue.Queue[dict[str, Any]], timeout: float) -> dict[str, Any]:
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"no line within {timeout} s")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def node_upload(node: str, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [node, "node_upload.mjs", json.dumps({"timeoutSeconds": 120, **spec})],
        cwd=JS_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_progress_of_a_body_in_flight_is_the_same_on_every_worker(
    server_factory: Callable[..., LiveServer],
    node: str,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    server = server_factory(UPLOADSVC_ADMIN_TOKEN=TOKEN)
    source = tmp_path / "slow.bin"
    make_data_file(source, 3 * MiB, seed=5)
    slow = node_upload(
        node,
        {
            "mode": "upload",
            "endpoint": server.endpoint,
            "path": str(source),
            "rate": 384 * KiB,
            "metadata": {"filename": "slow.bin"},
        },
    )
    processes.append(slow)
    positions: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(positions) < 8:
        flying = get_json(server.port, "/admin/overview.json")["in_flight"]
        body = next((u for u in flying if u["filename"] == "slow.bin" and u["streaming"]), None)
        if body is not None:
            assert body["offset"] == 0  # nothing recorded until the PATCH ends
            positions.append(body["position"])
        time.sleep(0.3)
    assert len(positions) == 8, positions
    assert positions == sorted(positions) and positions[-1] > positions[0] > 0
    # The event stream says the same.
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    conn.request("GET", "/admin/events", headers=BEARER)
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type") == (
        "text/event-stream; charset=utf-8"
    )
    seen = b""
    while b"event: progress" not in seen and len(seen) < 100_000:
        seen += response.read1(4096)
    conn.close()
    assert b'"streaming": true' in seen
    assert slow.wait(timeout=60) == 0


def test_the_operator_view_in_chromium_while_uploads_run(
    page_tools: tuple[str, str],  # noqa: F811
    server_factory: Callable[..., LiveServer],
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    node, chromium = page_tools
    server = server_factory(UPLOADSVC_ADMIN_TOKEN=TOKEN, UPLOADSVC_STALL_AFTER="3")
    moving, stalled, completed = (
        tmp_path / name for name in ("holiday.mov", "dataset.tar", "notes.pdf")
    )
    make_data_file(moving, 10 * MiB, seed=1)
    make_data_file(stalled, 4 * MiB, seed=2)
    make_data_file(completed, 3 * MiB, seed=3)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    spec = {
        "executablePath": chromium,
        "userDataDir": str(tmp_path / "chromium-profile"),
        "adminUrl": f"{server.origin}/admin",
        "token": TOKEN,
        "screenshotDir": str(shots),
        "timeoutSeconds": 90,
        "moving": moving.name,
        "stalled": stalled.name,
        "completed": completed.name,
        "failed": "scan.pdf",
        "terminated": "draft.docx",
    }
    browser = subprocess.Popen(
        [node, "admin_test.mjs", json.dumps(spec)],
        cwd=WEB_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    processes.append(browser)
    assert browser.stdout is not None
    lines = lines_of(browser.stdout)
    first = next_line(lines, 90)
    assert first.get("event") == "live", first
    # The uploads, once the page watches.
    processes.append(
        node_upload(
            node,
            {
                "mode": "upload",
                "endpoint": server.endpoint,
                "path": str(moving),
                "rate": 256 * KiB,
                "metadata": {"filename": moving.name},
            },
        )
    )
    processes.append(
        node_upload(
            node,
            {
                "mode": "stall",
                "endpoint": server.endpoint,
                "path": str(stalled),
                "stallAt": 1 * MiB,
                "storagePath": str(tmp_path / "urls.json"),
                "metadata": {"filename": stalled.name},
            },
        )
    )
    # A checksum failure and a termination, for the other panels.
    wrong = "sha1 " + base64.b64encode(b"\0" * 20).decode()
    scan = server.create_upload(1000, metadata=named("scan.pdf"))
    refused = patch_upload(scan, 0, b"x" * 1000, Upload_Checksum=wrong)
    assert refused.status == 460, refused.status
    draft = server.create_upload(1000, metadata=named("draft.docx"))
    assert http_request("DELETE", draft, tus_headers()).status == 204
    time.sleep(2)
    cli = subprocess.Popen(
        [
            str(CLI),
            str(completed),
            "-e",
            server.endpoint,
            "-c",
            "256K",
            "-q",
            "--state",
            str(tmp_path / "cli-state.json"),
        ],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "UPLOADSVC_UPLOAD_CHUNK_DELAY": "0.25"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    processes.append(cli)
    try:
        result = next_line(lines, 120)
    finally:
        taken = sorted(shots.glob("*.png"))
        if taken:
            shutil.copyfile(taken[-1], LAST_SCREENSHOT)
    assert browser.wait(timeout=30) == 0, json.dumps(result, indent=1)[:8000]
    assert result["ok"], json.dumps(result, indent=1)[:8000]
    assert result["pageErrors"] == []
    errors = [m["text"] for m in result["console"] if m["type"] == "error"]
    # The first visit's 401 (the sign-in form) is the only error Chromium may log.
    assert errors in ([], [UNAUTHORIZED]), errors
    before, after, *_ = result["progress"]
    assert 0 < before["value"] < after["value"] < after["max"] == 10 * MiB
    assert result["steps"][0] == {"step": "first visit", "status": 401}
    assert cli.wait(timeout=60) == 0
