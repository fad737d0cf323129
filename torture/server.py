"""The real thing: gunicorn with the shipped gunicorn.conf.py on a loopback port.

Every start logs to its own file under the server's directory; ``tracebacks`` counts
Python tracebacks across all of them. The server runs in its own process group, so a
stop that goes wrong can always end the master and its workers together.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from testsupport import server as harness
from testsupport.server import free_port

from .wire import HOST, Conn

REPO_ROOT = harness.REPO_ROOT
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 45.0  # graceful_timeout (30 s) and some
TRACEBACK = "Traceback (most recent call last)"
# uploadsvc's request log line, with the client's X-Request-ID: written when a request ends.
_REQUEST_LINE = re.compile(rb"uploadsvc\.requests \[(torture-[A-Za-z0-9._:-]+)\] ")


def gunicorn_path() -> str:
    beside = Path(sys.executable).parent / "gunicorn"
    if beside.exists():
        return str(beside)
    found = shutil.which("gunicorn")
    if found is None:
        raise RuntimeError("gunicorn not found: run `make install` and use .venv/bin/python")
    return found


@dataclass(frozen=True)
class Row:
    """An upload as the registry (SQLite) has it."""

    id: str
    state: str
    length: int | None
    offset: int
    verifying: bool


class Server:
    def __init__(
        self,
        base_dir: Path,
        *,
        data_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.data_dir = data_dir or base_dir / "data"
        self.env_overrides = dict(env or {})
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self._log_guard = threading.Lock()
        self._log_pos = 0
        self._finished: set[str] = set()

    # -- addresses ------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{self.origin}/files/"

    def url(self, upload_id: str) -> str:
        return f"{self.endpoint}{upload_id}"

    def data_file(self, upload_id: str) -> Path:
        return self.data_dir / "files" / upload_id

    @property
    def db_path(self) -> Path:
        return self.data_dir / "uploadsvc.db"

    def conn(self, timeout: float = 30.0) -> Conn:
        return Conn(self.port, timeout=timeout)

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.base_dir / f"server-{len(self.logs) + 1}.log"
        self.logs.append(log_path)
        with self._log_guard:
            self._log_pos = 0
        env = harness.clean_env(
            drop=("PROMETHEUS_MULTIPROC_DIR",),
            UPLOADSVC_DATA_DIR=str(self.data_dir),
            **self.env_overrides,
        )
        command = harness.gunicorn_argv(gunicorn_path(), self.port)
        self.proc = harness.spawn(command, env=env, log_path=log_path)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        assert self.proc is not None

        def probe() -> str | None:
            with self.conn(timeout=2.0) as conn:
                reply = conn.request("OPTIONS", "/files/")
            if reply.status == 204 and len(self.worker_pids()) >= self.expected_workers:
                return None
            return f"OPTIONS answered {reply}"

        harness.wait_ready(
            [self.proc],
            probe,
            timeout=STARTUP_TIMEOUT,
            name="gunicorn",
            log_tail=lambda: self.log_text()[-3000:],
        )

    @property
    def expected_workers(self) -> int:
        return int(self.env_overrides.get("UPLOADSVC_WORKERS", "2"))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> float:
        """SIGTERM the master and wait; SIGKILL the group if it takes too long.
        Returns the seconds the graceful stop took."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        harness.terminate(self.proc)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
        took = time.monotonic() - started
        self._reap_group()
        return took

    def kill(self) -> None:
        if self.proc is None:
            return
        harness.kill_group(self.proc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def _reap_group(self) -> None:
        """Workers outlive a master only by mistake; never leave one behind."""
        if self.proc is not None:
            harness.kill_group(self.proc)

    # -- processes ------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the master's children."""
        if self.proc is None:
            return []
        master = self.proc.pid
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 1 and int(fields[1]) == master and fields[0] != "Z":
                found.append(int(entry))
        return sorted(found)

    def worker_serving(self, client_port: int) -> int | None:
        """The worker holding the server end of our connection from ``client_port``."""
        inode = _socket_inode(self.port, client_port)
        if inode is None:
            return None
        target = f"socket:[{inode}]"
        for pid in self.worker_pids():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
        return None

    def wait_workers(self, count: int | None = None, timeout: float = 20.0) -> bool:
        want = self.expected_workers if count is None else count
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.worker_pids()) >= want:
                return True
            time.sleep(0.05)
        return False

    # -- what it left -----------------------------------------------------------------

    def log_text(self) -> str:
        return "".join(path.read_text("utf-8", "replace") for path in self.logs if path.exists())

    def finished(self, request_id: str) -> bool:
        """Whether the request sent with ``X-Request-ID: request_id`` (``torture-...``)
        has ended: uploadsvc logs one line per request as it ends."""
        with self._log_guard:
            if request_id in self._finished:
                return True
            with self.logs[-1].open("rb") as log:
                log.seek(self._log_pos)
                chunk = log.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self._log_pos += len(complete)
            self._finished.update(m.group(1).decode() for m in _REQUEST_LINE.finditer(complete))
            return request_id in self._finished

    def wait_finished(self, request_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.finished(request_id):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def lock_held(self, upload_id: str) -> bool:
        """Whether a request holds the upload's lock (a non-blocking flock fails)."""
        try:
            fd = os.open(self.data_dir / "locks" / f"{upload_id}.lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def tracebacks(self) -> int:
        return self.log_text().count(TRACEBACK)

    def rows(self) -> dict[str, Row]:
        """The registry, read directly (read-only) from the SQLite file."""
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            cursor = db.execute("SELECT id, state, length, offset, verifying FROM uploads")
            return {
                row[0]: Row(row[0], row[1], row[2], int(row[3]), bool(row[4]))
                for row in cursor.fetchall()
            }
        finally:
            db.close()

    def integrity(self) -> str:
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            return ", ".join(str(row[0]) for row in db.execute("PRAGMA integrity_check"))
        finally:
            db.close()


def _socket_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the server side of 127.0.0.1:client_port -> 127.0.0.1:server_port."""
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 9 and fields[1] == local and fields[2] == remote:
            return int(fields[9])
    return None
