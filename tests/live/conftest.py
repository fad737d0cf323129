"""Shared machinery for the live suite: a real gunicorn server on 127.0.0.1, real clients.

Every server gets its own temporary directory holding its data dir and its log. Servers
are stopped at fixture teardown (SIGTERM, then SIGKILL for the whole process group) and
their log must not contain a Python traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import random
import re
import select
import shutil
import socket
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast
from urllib.parse import urlsplit

import pytest
from tusclient import client

from tests.pg import PostgresServer
from testsupport import server as harness
from testsupport.server import HOST as HOST
from testsupport.server import free_port as free_port

T = TypeVar("T")

REPO_ROOT = harness.REPO_ROOT
VENV_BIN = REPO_ROOT / ".venv" / "bin"
GUNICORN = VENV_BIN / "gunicorn"
VENV_PYTHON = VENV_BIN / "python"

TUS_VERSION = "1.0.0"
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
KiB = 1024
MiB = 1024 * KiB

STARTUP_TIMEOUT = 20.0  # seconds until OPTIONS /files/ must answer 204
STOP_TIMEOUT = 30.0  # seconds gunicorn gets to stop after SIGTERM
IO_TIMEOUT = 60.0  # per-socket timeout for test clients
HANG_TIMEOUT = 120.0  # a whole client operation that takes longer is considered hung

UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
STATUS_LINE_RE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: |\r\n)")

LIVE_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if LIVE_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.live)


# --------------------------------------------------------------------------- data helpers


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def make_data_file(path: Path, size: int, seed: int) -> str:
    """Write ``size`` seeded random bytes to ``path``; return their sha256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    remaining = size
    with path.open("wb") as fh:
        while remaining > 0:
            block = rng.randbytes(min(remaining, 4 * MiB))
            fh.write(block)
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- HTTP helpers


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def run_flask(
    server: LiveServer, *args: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """``flask --app wsgi ARGS`` with the live server's settings, as cron or an operator
    runs it against the same registry."""
    env = harness.clean_env(UPLOADSVC_DATA_DIR=str(server.data_dir), **server.env)
    return subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "wsgi", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ``data_file(size)``: a file of seeded random bytes and its sha256.
DataFile = Callable[[int], tuple[Path, str]]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> DataFile:
    """``data_file(size)``: a file of seeded random bytes and its sha256 (made once per
    module and size)."""
    folder = tmp_path_factory.mktemp("data")
    made: dict[int, tuple[Path, str]] = {}

    def get(size: int) -> tuple[Path, str]:
        if size not in made:
            path = folder / f"data-{size}.bin"
            made[size] = (path, make_data_file(path, size, seed=size + 7))
        return made[size]

    return get


def http_request(
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | Iterator[bytes] | None = None,
    *,
    encode_chunked: bool = False,
    timeout: float = IO_TIMEOUT,
) -> Response:
    """One request on a fresh connection (closed afterwards) with http.client."""
    parts = urlsplit(url)
    assert parts.hostname == HOST, url
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPConnection(HOST, parts.port, timeout=timeout)
    try:
        conn.request(
            method, target, body=body, headers=dict(headers or {}), encode_chunked=encode_chunked
        )
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def tus_headers(**extra: str) -> dict[str, str]:
    """``Tus-Resumable`` plus ``extra`` (underscores in names become dashes)."""
    headers = {"Tus-Resumable": TUS_VERSION}
    headers.update({name.replace("_", "-"): value for name, value in extra.items()})
    return headers


# --------------------------------------------------------------------------- raw sockets


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def build_request(
    method: str | bytes,
    target: str | bytes,
    headers: Sequence[tuple[str | bytes, str | bytes]],
    *,
    port: int,
) -> bytes:
    """The request line and header block (ending in CRLF CRLF), bytes exactly as given.

    ``Host`` is added first; str values are sent as UTF-8, bytes as they are.
    """
    request_line = b" ".join((_b(method), _b(target), b"HTTP/1.1"))
    lines = [request_line, b"Host: %s:%d" % (HOST.encode(), port)]
    lines.extend(_b(name) + b": " + _b(value) for name, value in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass
class RawResponse:
    status: int | None  # None: the server closed (or reset) without a status line
    head: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("ascii")
        for line in self.head.split(b"\r\n")[1:]:
            key, sep, value = line.partition(b":")
            if sep and key.strip().lower() == wanted:
                return value.strip().decode("latin-1")
        return None


def connect(port: int, timeout: float = IO_TIMEOUT) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=timeout)


def read_response_head(sock: socket.socket, timeout: float = IO_TIMEOUT) -> RawResponse:
    """Read up to the end of the response header block, EOF or a reset (bounded)."""
    deadline = time.monotonic() + timeout
    buf = b""
    for _ in range(1024):
        if b"\r\n\r\n" in buf or len(buf) > 256 * KiB:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete response head within {timeout} s: {buf[:200]!r}")
        sock.settimeout(remaining)
        try:
            data = sock.recv(64 * KiB)
        except ConnectionResetError:
            break
        if not data:
            break
        buf += data
    head = buf.split(b"\r\n\r\n", 1)[0]
    match = STATUS_LINE_RE.match(buf)
    return RawResponse(int(match.group(1)) if match else None, head)


def exchange_on(
    sock: socket.socket,
    payload: bytes,
    *,
    half_close: bool = False,
    timeout: float = IO_TIMEOUT,
) -> RawResponse:
    """Send ``payload``, stopping early if the server answers or closes first, then read
    the response head. ``half_close`` shuts our side down for writing once all is sent."""
    deadline = time.monotonic() + timeout
    view = memoryview(payload)
    sent = 0
    complete = not payload
    for _ in range(len(payload) // 512 + 1024):
        if sent >= len(view):
            complete = True
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"sent only {sent} of {len(view)} bytes within {timeout} s")
        readable, writable, _ = select.select([sock], [sock], [], remaining)
        if readable:
            break  # an early answer (or close): stop sending, read it
        if writable:
            sock.settimeout(remaining)
            try:
                sent += sock.send(view[sent : sent + 256 * KiB])
            except (BrokenPipeError, ConnectionResetError):
                break
    if complete and half_close:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
    return read_response_head(sock, max(deadline - time.monotonic(), 1.0))


def exchange(
    port: int, payload: bytes, *, half_close: bool = False, timeout: float = IO_TIMEOUT
) -> RawResponse:
    """``exchange_on`` over a fresh connection, closed afterwards."""
    with connect(port, timeout) as sock:
        return exchange_on(sock, payload, half_close=half_close, timeout=timeout)


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes in our send queue not yet acknowledged by the peer's kernel (Linux SIOCOUTQ)."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", raw)[0])


def wait_until_delivered(sock: socket.socket, timeout: float = 20.0) -> None:
    """Wait (bounded) until the peer's kernel has every byte we sent."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.005) + 1):
        if unsent_bytes(sock) == 0:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    raise AssertionError(f"{unsent_bytes(sock)} bytes still unacknowledged after {timeout} s")


def abort_connection(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --------------------------------------------------------------------------- tus helpers


def call_with_deadline(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run ``fn`` in a helper thread; fail if it hasn't returned after ``timeout`` s.

    A guard against hangs (a client without timeouts, a loop that never ends), not a
    speed check: the limits are far above what the work takes.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, name=what, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"{what}: still running after {timeout} s (hung?)")
    if "error" in outcome:
        raise outcome["error"]
    return cast(T, outcome["value"])


def tuspy_upload(
    endpoint: str,
    stream: BinaryIO,
    *,
    chunk_size: int | None = None,
    metadata: dict[str, str] | None = None,
    timeout: float = HANG_TIMEOUT,
) -> Any:
    """``TusClient(endpoint).uploader(...).upload()`` under a hang guard; the uploader."""
    kwargs: dict[str, Any] = {"file_stream": stream, "metadata": metadata or {}}
    if chunk_size is not None:
        kwargs["chunk_size"] = chunk_size
    uploader = client.TusClient(endpoint).uploader(**kwargs)
    call_with_deadline(uploader.upload, timeout, f"tuspy upload to {endpoint}")
    return uploader


def upload_id(url: str) -> str:
    ident = url.rstrip("/").rsplit("/", 1)[-1]
    assert UPLOAD_ID_RE.fullmatch(ident), url
    return ident


def head_upload(url: str, *, attempts: int = 5) -> Response:
    """HEAD an upload; retry (bounded) only while the server answers 423 Locked."""
    resp = http_request("HEAD", url, tus_headers())
    for _ in range(attempts - 1):
        if resp.status != 423:
            break
        time.sleep(0.2)
        resp = http_request("HEAD", url, tus_headers())
    return resp


def patch_upload(url: str, offset: int, data: bytes, **extra: str) -> Response:
    headers = tus_headers(Upload_Offset=str(offset), Content_Type=OFFSET_OCTET_STREAM, **extra)
    return http_request("PATCH", url, headers, data)


# --------------------------------------------------------------------------- the server


@dataclass
class LiveServer:
    base_dir: Path
    data_dir: Path
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes]
    # The UPLOADSVC_* settings it was started with beyond the data dir (a restart in the
    # same base_dir passes them again: the same registry, store and locker).
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{self.origin}/files/"

    def upload_url_re(self) -> re.Pattern[str]:
        return re.compile(re.escape(self.endpoint) + r"[0-9a-f]{32}")

    def data_file(self, url_or_id: str) -> Path:
        ident = url_or_id if UPLOAD_ID_RE.fullmatch(url_or_id) else upload_id(url_or_id)
        return self.data_dir / "files" / ident

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def create(
        self,
        length: int | None,
        *,
        body: bytes | None = None,
        metadata: str | None = None,
    ) -> Response:
        """POST a new upload (deferred length when ``length`` is None)."""
        headers = tus_headers()
        if length is None:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(length)
        if metadata is not None:
            headers["Upload-Metadata"] = metadata
        if body is not None:
            headers["Content-Type"] = OFFSET_OCTET_STREAM
        return http_request("POST", self.endpoint, headers, body)

    def create_upload(
        self, length: int | None, *, body: bytes | None = None, metadata: str | None = None
    ) -> str:
        """Create an upload, assert 201 and a well-formed absolute Location; return it."""
        resp = self.create(length, body=body, metadata=metadata)
        assert resp.status == 201, (resp.status, resp.body[:300])
        location = resp.header("Location")
        assert location is not None
        assert self.upload_url_re().fullmatch(location), location
        return location

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        harness.stop(self.proc, STOP_TIMEOUT)


def start_server(base_dir: Path, env_overrides: Mapping[str, str] | None = None) -> LiveServer:
    data_dir = base_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = base_dir / "server.log"
    port = free_port()
    # The caller's settings win, a data dir of its own (a shared volume) included.
    env = harness.clean_env(**{"UPLOADSVC_DATA_DIR": str(data_dir), **(env_overrides or {})})
    cmd = harness.gunicorn_argv(GUNICORN, port, "--workers", "2")
    proc = harness.spawn(cmd, env=env, log_path=log_path)
    server = LiveServer(base_dir, data_dir, log_path, port, proc, dict(env_overrides or {}))
    try:
        _wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: LiveServer) -> None:
    def probe() -> str | None:
        resp = http_request("OPTIONS", server.endpoint, timeout=2.0)
        return None if resp.status == 204 else f"OPTIONS answered {resp.status}"

    harness.wait_ready(
        [server.proc],
        probe,
        timeout=STARTUP_TIMEOUT,
        name="gunicorn",
        log_tail=lambda: server.log_text()[-4000:],
    )


class _ServerPool:
    def __init__(
        self, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer | None = None
    ) -> None:
        self._tmp = tmp_path_factory
        self.servers: list[LiveServer] = []
        # With PostgreSQL (tests/conftest.py's ``database``), each server gets a fresh
        # database unless the test names one (several hosts share theirs).
        self.postgres = postgres
        self.databases: list[str] = []

    def start(self, **env: str) -> LiveServer:
        if self.postgres is not None and "UPLOADSVC_DATABASE_URL" not in env:
            name = self.postgres.new_database()
            self.databases.append(name)
            env = {"UPLOADSVC_DATABASE_URL": self.postgres.url(name), **env}
        server = start_server(self._tmp.mktemp("uploadsvc"), env)
        self.servers.append(server)
        return server

    def close(self) -> None:
        # At once: each gunicorn takes a second or two to stop.
        stoppers = [threading.Thread(target=server.stop) for server in self.servers]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join(timeout=STOP_TIMEOUT * 3)
        if self.postgres is not None:
            for name in self.databases:
                self.postgres.drop_database(name)
        problems = [
            f"{server.log_path}:\n{server.log_text()[-6000:]}"
            for server in self.servers
            if "Traceback" in server.log_text()
        ]
        if problems:
            pytest.fail("server log contains a traceback:\n" + "\n\n".join(problems))


def _postgres_for(database: str, request: pytest.FixtureRequest) -> PostgresServer | None:
    if database != "postgresql":
        return None
    server: PostgresServer = request.getfixturevalue("postgres")
    return server


@pytest.fixture(scope="module")
def live_server(
    tmp_path_factory: pytest.TempPathFactory, database: str, request: pytest.FixtureRequest
) -> Iterator[LiveServer]:
    """One server per test module (own data dir); its log is checked at module end."""
    pool = _ServerPool(tmp_path_factory, _postgres_for(database, request))
    try:
        yield pool.start()
    finally:
        pool.close()


@pytest.fixture
def server_factory(
    tmp_path_factory: pytest.TempPathFactory, database: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., LiveServer]]:
    """Start fresh servers (keyword args become environment, e.g. UPLOADSVC_MAX_SIZE="10");
    all are stopped, and their logs checked, when the test ends. On the PostgreSQL run of
    a module (tests/conftest.py's BOTH_DATABASES) each gets a fresh PostgreSQL database."""
    pool = _ServerPool(tmp_path_factory, _postgres_for(database, request))
    try:
        yield pool.start
    finally:
        pool.close()


# --------------------------------------------------------------------------- JavaScript clients

JS_DIR = REPO_ROOT / "tests" / "js"  # node scripts, page/
# The one Node project's packages (package.json at the top; `make install` runs npm ci):
# Node finds them from tests/js/ and web/ by walking up to the repository.
NODE_MODULES = REPO_ROOT / "node_modules"
JS_PACKAGES = ("tus-js-client", "playwright-core")


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` executable, with the Node project's packages installed.

    Skips only when node is not installed on this machine; missing packages fail."""
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not installed (apt-get install nodejs npm; .ci/run installs it)")
    missing = [p for p in JS_PACKAGES if not (NODE_MODULES / p / "package.json").is_file()]
    if missing:
        pytest.fail(f"{missing} missing under {NODE_MODULES}: run `make install`")
    return path


def run_node(
    node: str, script: str, spec: Mapping[str, Any], timeout: float
) -> list[dict[str, Any]]:
    """Run ``tests/js/<script> '<spec as JSON>'`` (bounded); return its stdout's JSON lines.

    The last line is the script's result; a failed result fails the test with the details."""
    try:
        proc = subprocess.run(
            [node, script, json.dumps(spec)],
            cwd=JS_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script} did not finish within {timeout} s; stderr: {exc.stderr!r:.3000}")
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    stderr = proc.stderr.decode(errors="replace")[-3000:]
    if not lines:
        pytest.fail(f"{script} exited {proc.returncode} without a result; stderr:\n{stderr}")
    result = lines[-1]
    if proc.returncode != 0 or not result.get("ok"):
        details = json.dumps(result, indent=1)[:12000]
        pytest.fail(f"{script} failed (exit {proc.returncode}):\n{details}\nstderr:\n{stderr}")
    return lines


# --------------------------------------------------------------------------- nginx

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@contextlib.contextmanager
def run_nginx(site: str, workdir: Path) -> Iterator[str]:
    """Run real nginx with ``site`` (a server block, its ``listen 80;`` moved to a free
    loopback port) until the block ends; yield its origin once /uploads/files/ answers."""
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (.ci/run installs Debian's nginx)")
    port = free_port()
    assert "listen 80;" in site
    site = site.replace("listen 80;", f"listen {HOST}:{port};")
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
