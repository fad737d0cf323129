"""Bodies the server ends itself (README, "Who ends a body"): the clients we ship go on.

A reload (``kill -HUP`` of the gunicorn master: new workers start, the old ones stop
gracefully) or the read timeout ends a PATCH in flight with 503 + Retry-After and the
kept offset. The CLI, tus-js-client under Node and the upload page in Chromium each
upload a file through such a cut and finish it intact, with nobody doing anything.
And a worker that stops delivers the post-events it had queued.

The uploads are slowed (a throttling relay for the CLI, tus-js-client's body rate in
Node, DevTools network conditions in Chromium) so the cut lands mid-PATCH.
"""

from __future__ import annotations

import http.server
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    HOST,
    REPO_ROOT,
    KiB,
    LiveServer,
    MiB,
    head_upload,
    http_request,
    make_data_file,
    run_node,
    sha256_file,
    tus_headers,
)
from .test_page import page_tools, run_page  # noqa: F401 (page_tools: a fixture)
from .test_upload_cli_live import CLI, cli_env

pytestmark = pytest.mark.live

RUN_TIMEOUT = 120.0  # seconds for one client run; the work takes a few


# --------------------------------------------------------------------------- a slow link


class ThrottledRelay:
    """A TCP relay on 127.0.0.1 in front of the server: the client's bytes go through
    at ``rate`` bytes per second (after ``pause_after`` of them, once, nothing for
    ``pause`` seconds); the server's go back at once and are kept, to see its answers."""

    def __init__(
        self, port: int, rate: float, *, pause_after: int | None = None, pause: float = 0.0
    ) -> None:
        self.port = port
        self.rate = rate
        self.pause_after = pause_after
        self.pause = pause
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(0.2)
        self.origin = f"http://{HOST}:{self.listener.getsockname()[1]}"
        self.answers = bytearray()
        self._up_total = 0
        self._paused = False
        self._guard = threading.Lock()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []

    def __enter__(self) -> ThrottledRelay:
        self._start(self._accept_loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        for sock in [self.listener, *self._sockets]:
            sock.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def answered(self) -> list[tuple[int, str | None]]:
        """(status, Retry-After) of every response the server sent through the relay."""
        with self._guard:
            text = bytes(self.answers).decode("latin-1")
        found = []
        for head in re.findall(r"HTTP/1\.[01] \d{3}[^\r\n]*\r\n(?:[^\r\n]+\r\n)*", text):
            retry = re.search(r"(?im)^retry-after: *(\S+)", head)
            found.append((int(head[9:12]), retry.group(1) if retry else None))
        return found

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection((HOST, self.port))
            self._sockets += [client, upstream]
            self._start(self._up, client, upstream)
            self._start(self._down, upstream, client)

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        started, passed = time.monotonic(), 0
        try:
            while data := client.recv(32 * KiB):
                passed += len(data)
                with self._guard:
                    self._up_total += len(data)
                    stall = (
                        self.pause_after is not None
                        and not self._paused
                        and self._up_total >= self.pause_after
                    )
                    self._paused |= stall
                if stall:
                    time.sleep(self.pause)
                    started, passed = time.monotonic(), len(data)
                delay = started + passed / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                upstream.sendall(data)
            upstream.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # either side closed: _down ends the connection

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(64 * KiB):
                with self._guard:
                    self.answers += data
                client.sendall(data)
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            # The server is done with this connection: so is the client's side.
            time.sleep(0.2)
            upstream.close()
            client.close()


def hup_master(server: LiveServer) -> None:
    """``kill -HUP`` the gunicorn master: new workers start, the old ones stop gracefully."""
    server.proc.send_signal(signal.SIGHUP)


def stored_bytes(server: LiveServer) -> int:
    files = list((server.data_dir / "files").glob("*"))
    return max((path.stat().st_size for path in files), default=0)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.02)


def workers_of(server: LiveServer) -> set[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(server.proc.pid)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return {int(pid) for pid in out.split()}


# --------------------------------------------------------------------------- the CLI


def run_cli_through(
    relay: ThrottledRelay, source: Path, tmp_path: Path, during: Callable[[], None]
) -> subprocess.CompletedProcess[str]:
    """Run uploadsvc-upload on ``source`` through ``relay``, calling ``during`` while it
    runs; its completed process."""
    args = [str(CLI), str(source), "-e", f"{relay.origin}/files/", "-c", "8M"]
    args += ["--state", str(tmp_path / "state.json"), "--retry-delays", "0,1,1,2,3"]
    proc = subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        during()
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_cli_upload_goes_on_through_a_reload(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory()
    source = tmp_path / "video.bin"
    digest = make_data_file(source, 12 * MiB, seed=131)
    old_workers = workers_of(server)

    def reload_mid_patch() -> None:
        # The first PATCH (8 MiB at 4 MiB/s) is a quarter through: reload now.
        wait_for(lambda: stored_bytes(server) >= 2 * MiB, 30, "the upload is under way")
        hup_master(server)

    with ThrottledRelay(server.port, rate=4 * MiB) as relay:
        done = run_cli_through(relay, source, tmp_path, reload_mid_patch)
    assert done.returncode == 0, done.stderr
    (url,) = done.stdout.split()
    url = url.replace(relay.origin, server.origin)
    assert sha256_file(server.data_file(url)) == digest
    assert head_upload(url).header("Upload-Offset") == str(12 * MiB)
    # It went on because the cut was an answer it retries, not by luck of a reset.
    assert (503, "1") in relay.answered(), relay.answered()
    assert "retry 1" in done.stderr, done.stderr
    # The old workers are gone and new ones served the rest.
    assert not old_workers & workers_of(server)
    print(f"\nCLI through a reload: answers {relay.answered()}")


def test_cli_upload_goes_on_through_a_read_timeout(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory(UPLOADSVC_READ_TIMEOUT="1")
    source = tmp_path / "archive.bin"
    digest = make_data_file(source, 3 * MiB, seed=132)
    # The link goes silent for 2.5 s a third of the way through the one PATCH.
    with ThrottledRelay(server.port, rate=8 * MiB, pause_after=MiB, pause=2.5) as relay:
        done = run_cli_through(relay, source, tmp_path, lambda: None)
    assert done.returncode == 0, done.stderr
    (url,) = done.stdout.split()
    url = url.replace(relay.origin, server.origin)
    assert sha256_file(server.data_file(url)) == digest
    assert (503, "1") in relay.answered(), relay.answered()


def test_a_reloaded_server_still_cleans_up_at_exit(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """gunicorn.conf.py's metrics directory is removed at exit after a reload too."""
    own_tmp = tmp_path / "tmp"
    own_tmp.mkdir()
    server = server_factory(TMPDIR=str(own_tmp))
    (metrics_dir,) = own_tmp.iterdir()
    old_workers = workers_of(server)
    hup_master(server)
    wait_for(
        lambda: len(workers_of(server) - old_workers) == 2 and not old_workers & workers_of(server),
        30,
        "new workers replaced the old",
    )
    url = server.create_upload(5)  # the new workers serve, and count in the same directory
    assert http_request("GET", f"{server.origin}/metrics").status == 200
    assert head_upload(url).status == 200
    server.stop()
    assert not metrics_dir.exists()


# --------------------------------------------------------------------------- tus-js-client


def test_tus_js_client_in_node_goes_on_through_a_reload(
    node: str, server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory()
    size = 12 * MiB
    source = tmp_path / "node.bin"
    digest = make_data_file(source, size, seed=133)
    spec = {
        "mode": "upload",
        "endpoint": server.endpoint,
        "path": str(source),
        "source": "file",
        "timeoutSeconds": 120,
        # One PATCH at 4 MiB/s; the script sends SIGHUP to the master a quarter through.
        "rate": 4 * MiB,
        "signal": {"pid": server.proc.pid, "name": "SIGHUP", "atBytes": size // 4},
    }
    result = run_node(node, "node_upload.mjs", spec, RUN_TIMEOUT)[-1]
    url = result["url"]
    assert sha256_file(server.data_file(url)) == digest
    assert head_upload(url).header("Upload-Offset") == str(size)
    patches = [r for r in result["requests"] if r["method"] == "PATCH"]
    cut = [r for r in patches if r["status"] == 503]
    # Either the 503 reached it (and it retried), or the cut surfaced as a network error
    # it retried all the same; nothing was created anew.
    assert result["signalled"] is not None
    assert result["retries"], result
    assert all(r["status"] in (None, 503) for r in result["retries"]), result["retries"]
    assert [r["method"] for r in result["requests"]].count("POST") == 1
    print(f"\ntus-js-client through a reload: PATCH answers {[r['status'] for r in patches]}")
    if cut:
        assert cut[0]["offset"] is not None


# --------------------------------------------------------------------------- the page


def test_upload_page_goes_on_through_a_reload(
    page_tools: tuple[str, str],  # noqa: F811 (the fixture imported above)
    server_factory: Callable[..., LiveServer],
    tmp_path: Path,
) -> None:
    server = server_factory(UPLOADSVC_WEB_UI="1")
    size = 12 * MiB
    source = tmp_path / "page.bin"
    digest = make_data_file(source, size, seed=134)
    result = run_page(
        page_tools,
        tmp_path,
        f"{server.origin}/",
        [source],
        mode="signal",
        # The cut PATCH (and a HEAD while the old worker still holds the upload).
        console_errors=re.compile(
            r"Failed to load resource: the server responded with a status of "
            r"(503 \(Service Unavailable\)|423 \(Locked\))"
        ),
        throttle=4 * MiB,
        signal={"pid": server.proc.pid, "name": "SIGHUP", "atPercent": 25},
    )
    url = result["url"]
    assert sha256_file(server.data_file(url)) == digest
    assert head_upload(url).header("Upload-Offset") == str(size)
    assert result["signalled"]
    assert [r["method"] for r in result["requests"]].count("POST") == 1
    statuses = [r["status"] for r in result["answers"] if r["method"] == "PATCH"]
    print(f"\npage through a reload: PATCH answers {statuses}")


# --------------------------------------------------------------------------- post-events


class SlowWebhook(http.server.ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1 that takes ``delay`` seconds per event."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.events: list[dict[str, Any]] = []
        super().__init__((HOST, 0), _WebhookHandler)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/hook"


class _WebhookHandler(http.server.BaseHTTPRequestHandler):
    server: SlowWebhook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.server.delay)
        self.server.events.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def slow_webhook() -> Iterator[SlowWebhook]:
    hook = SlowWebhook(delay=0.4)
    thread = threading.Thread(target=hook.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.shutdown()
        hook.server_close()
        thread.join(timeout=10)


def test_post_events_queued_at_a_stop_are_delivered(
    server_factory: Callable[..., LiveServer], slow_webhook: SlowWebhook
) -> None:
    server = server_factory(UPLOADSVC_WEBHOOK_URL=slow_webhook.url)
    finished = []
    for index in range(4):  # 8 events (create, finish) at 0.4 s each: ~3 s of queue
        url = server.create_upload(10)
        headers = tus_headers(Upload_Offset="0", Content_Type="application/offset+octet-stream")
        response = http_request("PATCH", url, headers, bytes([index]) * 10)
        assert response.status == 204, response
        finished.append(url.rsplit("/", 1)[1])
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)  # right after the completions
    server.proc.wait(timeout=30)
    took = time.monotonic() - started
    delivered = {e["upload"]["id"] for e in slow_webhook.events if e["event"] == "post-finish"}
    print(f"\nstop with queued post-events: {took:.2f} s, {len(slow_webhook.events)} delivered")
    assert delivered == set(finished)
