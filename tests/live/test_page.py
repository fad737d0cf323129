"""The upload page (UPLOADSVC_WEB_UI=1) in headless Chromium against a live gunicorn.

web/page_test.mjs (playwright-core driving the system's chromium) does what a person
would: picks a 20 MiB file and a small one, pauses the big one at a quarter and resumes
it, reloads the tab at 60 % (cutting the request in flight), picks the file again, and
downloads it from the completed list. The upload speed is throttled in the browser
(DevTools network conditions) so those steps land mid-upload. Screenshots go to the
test's tmp dir; the last one is copied to /tmp/uploadsvc-page.png.

Then nginx in front (deploy/nginx.conf, the /uploads/ prefix): the same page uploads.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    NODE_MODULES,
    REPO_ROOT,
    KiB,
    LiveServer,
    MiB,
    head_upload,
    http_request,
    make_data_file,
    sha256_bytes,
    sha256_file,
)

pytestmark = pytest.mark.live

WEB_DIR = REPO_ROOT / "web"
BUNDLE = REPO_ROOT / "uploadsvc" / "static" / "tus.min.js"
LAST_SCREENSHOT = Path("/tmp/uploadsvc-page.png")
BROWSER_TIMEOUT = 240.0  # seconds for a whole browser run (its own steps are bounded)
SIZE = 20 * MiB
SMALL = 300 * KiB
THROTTLE = 5 * MiB  # upload bytes per second in the browser while it pauses and reloads


@pytest.fixture(scope="module")
def page_tools() -> tuple[str, str]:
    """node and chromium, with the Node project's packages and the page's bundle built.

    Skips only when node or chromium are not installed; a missing build fails."""
    node = shutil.which("node")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if node is None or chromium is None:
        pytest.skip("node or chromium is not installed (.ci/run installs both)")
    if not (NODE_MODULES / "playwright-core" / "package.json").is_file():
        pytest.fail(f"{NODE_MODULES} is missing playwright-core: run `make install`")
    if not BUNDLE.is_file():
        pytest.fail(f"{BUNDLE} is missing: run `make install`")
    return node, chromium


def run_page(
    tools: tuple[str, str],
    tmp_path: Path,
    page_url: str,
    files: list[Path],
    *,
    keep_screenshot: bool = False,
    console_errors: re.Pattern[str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """Run web/page_test.mjs (bounded); its result. ``keep_screenshot``: copy the last
    screenshot to /tmp/uploadsvc-page.png. ``console_errors``: the console errors the
    test expects (Chromium logs every error status it loads); any other fails it."""
    node, chromium = tools
    shots = tmp_path / "screenshots"
    shots.mkdir(exist_ok=True)
    spec = {
        "executablePath": chromium,
        "userDataDir": str(tmp_path / "chromium-profile"),
        "pageUrl": page_url,
        "files": [str(path) for path in files],
        "screenshotDir": str(shots),
        "timeoutSeconds": 120,
        **spec,
    }
    try:
        proc = subprocess.run(
            [node, "page_test.mjs", json.dumps(spec)],
            cwd=WEB_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=BROWSER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"page_test.mjs didn't finish in {BROWSER_TIMEOUT} s: {exc.stderr!r:.3000}")
    finally:
        taken = sorted(shots.glob("*.png"), key=lambda p: p.stat().st_mtime)
        if taken and keep_screenshot:
            shutil.copyfile(taken[-1], LAST_SCREENSHOT)
    lines = [line for line in proc.stdout.decode().splitlines() if line.strip()]
    stderr = proc.stderr.decode(errors="replace")[-3000:]
    if not lines:
        pytest.fail(f"page_test.mjs exited {proc.returncode} without a result:\n{stderr}")
    result: dict[str, Any] = json.loads(lines[-1])
    if proc.returncode != 0 or not result.get("ok"):
        pytest.fail(f"page_test.mjs failed:\n{json.dumps(result, indent=1)[:12000]}\n{stderr}")
    assert result["pageErrors"] == []
    errors = [m["text"] for m in result["console"] if m["type"] == "error"]
    assert [e for e in errors if not (console_errors and console_errors.fullmatch(e))] == []
    return result


def received_bytes(origin: str) -> float:
    text = http_request("GET", f"{origin}/metrics").body.decode()
    match = re.search(r"^uploadsvc_received_bytes_total ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, text[:2000]
    return float(match.group(1))


def download(url: str) -> bytes:
    response = http_request("GET", url)
    assert response.status == 200, (url, response.status, response.body[:200])
    return response.body


def test_page_pause_reload_resume(
    page_tools: tuple[str, str], server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory(UPLOADSVC_WEB_UI="1")
    big = tmp_path / "holiday-video.bin"
    big_sha = make_data_file(big, SIZE, seed=77)
    small = tmp_path / "notes.pdf"
    small_sha = make_data_file(small, SMALL, seed=78)
    before = received_bytes(server.origin)

    result = run_page(
        page_tools,
        tmp_path,
        f"{server.origin}/",
        [big, small],
        keep_screenshot=True,
        mode="full",
        throttle=THROTTLE,
        pauseAt=25,
        reloadAt=60,
    )

    url = result["url"]
    assert server.upload_url_re().fullmatch(url), url
    # Paused means paused: the server's copy stops where the pause left it.
    assert 0.2 * SIZE <= result["paused"] < 0.6 * SIZE
    assert result["pausedLater"] == result["paused"]
    # After the reload the server still had what came before, and the page continued
    # from there: its first PATCH started at the server's offset, and nothing was
    # created anew.
    resumed = result["beforeResume"]
    assert 0.5 * SIZE <= resumed < SIZE
    assert result["resumedFrom"] == resumed
    assert "holiday-video.bin" in result["unfinishedText"]
    after_reload = [r for r in result["requests"] if r["phase"] == "after reload"]
    assert next(r["method"] for r in after_reload if r["method"] != "HEAD") == "PATCH"
    assert "POST" not in {r["method"] for r in after_reload}
    first_patch = next(r for r in after_reload if r["method"] == "PATCH")
    assert int(first_patch["offset"]) == resumed
    assert [r["method"] for r in result["requests"]].count("POST") == 2  # one per file
    # Only the requests cut short by the pause and the reload failed.
    assert len(result["failedRequests"]) <= 2, result["failedRequests"]
    assert all(r["method"] == "PATCH" for r in result["failedRequests"])
    # Every byte crossed the wire once: pause and reload lost nothing already sent.
    assert received_bytes(server.origin) - before == SIZE + SMALL

    assert sha256_file(server.data_file(url)) == big_sha
    assert head_upload(url).header("Upload-Offset") == str(SIZE)
    # The completed list links to the download, with the size.
    link = result["link"]
    assert link["href"] == url
    assert link["cells"][:2] == ["holiday-video.bin", "20.0 MiB"]
    assert sha256_bytes(download(link["href"])) == big_sha
    other = result["others"][0]
    assert other["cells"][:2] == ["notes.pdf", "300.0 KiB"]
    assert sha256_bytes(download(other["href"])) == small_sha


def test_page_behind_nginx_prefix(
    page_tools: tuple[str, str], server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    from .test_nginx import nginx_in_front

    server = server_factory(UPLOADSVC_WEB_UI="1", UPLOADSVC_PROXY_HOPS="1")
    source = tmp_path / "report.txt"
    digest = make_data_file(source, 2 * MiB, seed=79)
    with nginx_in_front(server, tmp_path / "nginx") as origin:
        page = http_request("GET", f"{origin}/uploads/")
        assert page.status == 200
        assert b'src="static/tus.min.js' in page.body
        result = run_page(page_tools, tmp_path, f"{origin}/uploads/", [source], mode="simple")
        url = result["url"]
        assert url.startswith(f"{origin}/uploads/files/"), url
        assert result["link"]["href"] == url
        assert result["link"]["cells"][0] == "report.txt"
        assert sha256_bytes(download(url)) == digest
    assert sha256_file(server.data_file(url)) == digest
