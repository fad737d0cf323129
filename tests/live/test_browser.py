"""tus-js-client in headless Chromium, uploading cross-origin to a live gunicorn.

A static server on its own loopback port serves tests/js/ (the page tests/js/page/
index.html) and, under /node_modules/, the Node project's packages (tus-js-client's browser
bundle); uploadsvc runs with
``UPLOADSVC_CORS_ORIGINS`` set to that origin. tests/js/browser_test.mjs (playwright-core
driving the system's chromium) picks a 20 MiB file in the page, which uploads it in 1 MiB
chunks, pauses itself (``abort()``) at 37 %, then resumes (``start()``) when Resume is
clicked. Screenshots land in the test's tmp dir; the last one is copied to
/tmp/uploadsvc-browser.png.
"""

from __future__ import annotations

import base64
import functools
import http.server
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from .conftest import (
    HOST,
    JS_DIR,
    NODE_MODULES,
    REPO_ROOT,
    LiveServer,
    MiB,
    head_upload,
    http_request,
    make_data_file,
    run_nginx,
    run_node,
    sha256_file,
)

pytestmark = pytest.mark.live

LAST_SCREENSHOT = Path("/tmp/uploadsvc-browser.png")
BROWSER_TIMEOUT = 240.0  # seconds for the whole browser run (its own steps are bounded)
SIZE = 20 * MiB
CHUNK = 1 * MiB
PAUSE_AT = 0.37

# What a browser client must be able to read (PROTOCOL.md, "What real clients do").
EXPOSED = {
    "location",
    "upload-offset",
    "upload-length",
    "tus-version",
    "tus-resumable",
    "tus-max-size",
    "tus-extension",
    "upload-metadata",
    "upload-defer-length",
    "upload-concat",
    "upload-expires",
}


@pytest.fixture
def chromium() -> str:
    """The system's Chromium; skips only when it is not installed on this machine."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def translate_path(self, path: str) -> str:
        # The page loads ../node_modules/...: the Node project's, at the repository's top.
        local = Path(super().translate_path(path))
        served_modules = JS_DIR / "node_modules"
        if local.is_relative_to(served_modules):
            return str(NODE_MODULES / local.relative_to(served_modules))
        return str(local)


@pytest.fixture
def static_origin() -> Iterator[str]:
    """tests/js/ (and /node_modules/) served over HTTP on a loopback port of its own
    (another origin)."""
    handler = functools.partial(_QuietHandler, directory=str(JS_DIR))
    server = http.server.ThreadingHTTPServer((HOST, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _patches(requests: list[dict[str, object]]) -> list[tuple[int, int]]:
    return [
        (int(str(r["reqOffset"])), int(str(r["offset"])))
        for r in requests
        if r["method"] == "PATCH"
    ]


def test_browser_cross_origin_pause_resume(
    node: str,
    chromium: str,
    static_origin: str,
    server_factory: Callable[..., LiveServer],
    tmp_path: Path,
) -> None:
    server = server_factory(UPLOADSVC_CORS_ORIGINS=static_origin)
    source = tmp_path / "browser-upload.bin"
    sha = make_data_file(source, SIZE, seed=20240)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    query = urlencode({"endpoint": server.endpoint, "chunkSize": CHUNK, "pauseAt": PAUSE_AT})
    spec = {
        "executablePath": chromium,
        "userDataDir": str(tmp_path / "chromium-profile"),
        "pageUrl": f"{static_origin}/page/index.html?{query}",
        "filePath": str(source),
        "screenshotDir": str(shots),
        "timeoutSeconds": 120,
    }
    try:
        result = run_node(node, "browser_test.mjs", spec, BROWSER_TIMEOUT)[-1]
    finally:
        taken = sorted(shots.glob("*.png"), key=lambda p: p.stat().st_mtime)
        if taken:
            shutil.copyfile(taken[-1], LAST_SCREENSHOT)

    assert result["pageErrors"] == []
    assert [m for m in result["console"] if m["type"] == "error"] == []
    # The only request allowed to fail is the PATCH cut short by the pause.
    assert all(
        r["method"] == "PATCH" and "ERR_ABORTED" in (r["error"] or "")
        for r in result["failedRequests"]
    ), result["failedRequests"]

    # Cross-origin: every answer the page saw allowed its origin and exposed the tus headers.
    assert result["responses"], "no response from the upload server reached the page"
    for response in result["responses"]:
        assert response["allowOrigin"] == static_origin, response
        exposed = {h.strip().lower() for h in (response["exposeHeaders"] or "").split(",")}
        assert exposed >= EXPOSED, (response, EXPOSED - exposed)

    paused = result["paused"]
    url = paused["url"]
    assert server.upload_url_re().fullmatch(url), url
    assert PAUSE_AT * SIZE <= paused["pausedAt"] < SIZE
    first = paused["requests"]
    assert [r["method"] for r in first].count("POST") == 1
    assert first[0]["location"] == url
    assert all(200 <= int(r["status"]) < 300 for r in first), first

    # While paused the server holds some of the file, and nothing moves.
    while_paused = result["serverWhilePaused"]
    assert while_paused["status"] == 200, while_paused
    offset = int(while_paused["offset"])
    assert 0 < offset <= paused["bytesSent"] < SIZE
    still = result["stillPaused"]
    assert (still["status"], still["bytesSent"]) == ("paused", paused["bytesSent"])
    assert len(still["requests"]) == len(first)

    # Resumed: HEAD, then only the missing bytes, from the server's offset.
    done = result["done"]
    assert done["status"] == "done", done
    assert done["url"] == url
    resumed = [r for r in done["requests"] if r["phase"] == "resumed"]
    assert (resumed[0]["method"], resumed[0]["status"]) == ("HEAD", 200), resumed[:1]
    assert int(resumed[0]["offset"]) == offset
    assert "POST" not in [r["method"] for r in resumed]
    patches = _patches(resumed)
    assert patches == [(o, min(o + CHUNK, SIZE)) for o in range(offset, SIZE, CHUNK)]
    assert sum(end - start for start, end in patches) == SIZE - offset < SIZE
    assert all(200 <= int(r["status"]) < 300 for r in resumed), resumed

    stored = server.data_file(url)
    assert stored.stat().st_size == SIZE
    assert sha256_file(stored) == sha, "stored bytes differ from the file the browser sent"
    head = head_upload(url)
    assert head.status == 200
    assert head.header("Upload-Offset") == head.header("Upload-Length") == str(SIZE)
    metadata = dict(
        item.strip().split(" ", 1) for item in (head.header("Upload-Metadata") or "").split(",")
    )
    assert base64.b64decode(metadata["filename"]).decode() == source.name
    assert {p.name for p in shots.glob("*.png")} == {"paused.png", "done.png"}


# ------------------------------------------------- Resumable Uploads for HTTP in the browser

# tus-js-client's names for the draft, and the interop version each sends.
DRAFT_PROTOCOLS = {"ietf-draft-03": "5", "ietf-draft-05": "6"}
DRAFT_EXPOSED = {"location", "upload-offset", "upload-length", "upload-complete", "upload-limit"}


def _browser_run(
    node: str,
    chromium: str,
    static_origin: str,
    endpoint: str,
    tmp_path: Path,
    size: int,
    **query: object,
) -> tuple[dict[str, Any], str]:
    """Upload a file of ``size`` seeded bytes from the test page; (the result, its sha256)."""
    source = tmp_path / f"draft-{size}.bin"
    sha = make_data_file(source, size, seed=size + 3)
    shots = tmp_path / f"shots-{size}"
    shots.mkdir()
    spec = {
        "executablePath": chromium,
        "userDataDir": str(tmp_path / f"profile-{size}"),
        "pageUrl": f"{static_origin}/page/index.html?{urlencode({'endpoint': endpoint, **query})}",
        "filePath": str(source),
        "screenshotDir": str(shots),
        "timeoutSeconds": 120,
    }
    result = run_node(node, "browser_test.mjs", spec, BROWSER_TIMEOUT)[-1]
    assert result["ok"], result
    assert result["pageErrors"] == []
    assert [m for m in result["console"] if m["type"] == "error"] == []
    for response in result["responses"]:
        assert response["allowOrigin"] == static_origin, response
        exposed = {h.strip().lower() for h in (response["exposeHeaders"] or "").split(",")}
        assert exposed >= DRAFT_EXPOSED, (response, DRAFT_EXPOSED - exposed)
    return result, sha


def _assert_draft_stored(server: LiveServer, url: str, size: int, sha: str, interop: str) -> None:
    stored = server.data_file(url)
    assert stored.stat().st_size == size
    assert sha256_file(stored) == sha, "stored bytes differ from the file the browser sent"
    head = http_request("HEAD", url, {"Upload-Draft-Interop-Version": interop})
    assert head.status == 204, head
    assert (head.header("Upload-Offset"), head.header("Upload-Complete")) == (str(size), "?1")


@pytest.mark.parametrize("protocol", sorted(DRAFT_PROTOCOLS))
@pytest.mark.parametrize("size", [0, 1, 5 * MiB, 64 * MiB], ids=["0B", "1B", "5MiB", "64MiB"])
def test_browser_draft_uploads(
    node: str,
    chromium: str,
    static_origin: str,
    server_factory: Callable[..., LiveServer],
    tmp_path: Path,
    size: int,
    protocol: str,
) -> None:
    server = server_factory(UPLOADSVC_CORS_ORIGINS=static_origin)
    result, sha = _browser_run(
        node, chromium, static_origin, server.endpoint, tmp_path, size, protocol=protocol
    )
    done = result["done"]
    assert all(200 <= int(r["status"]) < 300 for r in done["requests"]), done["requests"]
    assert done["requests"][0]["method"] == "POST"
    _assert_draft_stored(server, done["url"], size, sha, DRAFT_PROTOCOLS[protocol])


@pytest.mark.parametrize("protocol", sorted(DRAFT_PROTOCOLS))
def test_browser_draft_pause_resume(
    node: str,
    chromium: str,
    static_origin: str,
    server_factory: Callable[..., LiveServer],
    tmp_path: Path,
    protocol: str,
) -> None:
    """Aborted half way (the page's pause), resumed from the server's offset."""
    server = server_factory(UPLOADSVC_CORS_ORIGINS=static_origin)
    result, sha = _browser_run(
        node,
        chromium,
        static_origin,
        server.endpoint,
        tmp_path,
        SIZE,
        protocol=protocol,
        chunkSize=CHUNK,
        pauseAt=0.5,
    )
    url = result["paused"]["url"]
    offset = int(result["serverWhilePaused"]["offset"])
    assert 0 < offset < SIZE
    resumed = [r for r in result["done"]["requests"] if r["phase"] == "resumed"]
    assert resumed[0]["method"] == "HEAD" and int(resumed[0]["offset"]) == offset
    assert "POST" not in [r["method"] for r in resumed]
    assert _patches(resumed)[0][0] == offset
    _assert_draft_stored(server, url, SIZE, sha, DRAFT_PROTOCOLS[protocol])


@pytest.mark.parametrize("protocol", sorted(DRAFT_PROTOCOLS))
def test_browser_draft_upload_through_nginx(
    node: str,
    chromium: str,
    static_origin: str,
    server_factory: Callable[..., LiveServer],
    tmp_path: Path,
    protocol: str,
) -> None:
    """Through deploy/nginx.conf, with UPLOADSVC_SEND_104 on: behind a proxy hop the
    server never sends the 104 nginx would take for the final answer."""
    server = server_factory(
        UPLOADSVC_CORS_ORIGINS=static_origin, UPLOADSVC_PROXY_HOPS="1", UPLOADSVC_SEND_104="1"
    )
    site = (REPO_ROOT / "deploy" / "nginx.conf").read_text()
    site = site.replace("server 127.0.0.1:8080;", f"server {HOST}:{server.port};")
    with run_nginx(site, tmp_path / "nginx") as origin:
        endpoint = f"{origin}/uploads/files/"
        result, sha = _browser_run(
            node, chromium, static_origin, endpoint, tmp_path, 5 * MiB, protocol=protocol
        )
        url = result["done"]["url"]
        assert url.startswith(endpoint), url
        _assert_draft_stored(server, url, 5 * MiB, sha, DRAFT_PROTOCOLS[protocol])
