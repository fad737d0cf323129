"""`make bench`: uploadsvc against the limit of this machine and a plain Flask baseline.

Targets, all on 127.0.0.1, all fsyncing what they store before they answer:

- **limit**: bench/limit_server.py, a minimal threaded socket-to-file receiver (recv_into
  one buffer, pwrite, early writeback as uploadsvc's FileStore, fsync); plus two figures
  without any HTTP: the disk alone (write 1 GiB + fsync, like ``dd conv=fsync``) and
  loopback alone (sendfile -> recv_into, nothing stored).
- **baseline**: bench/baseline_app.py, the obvious Flask app reading ``request.stream``
  to a file, under gunicorn with uploadsvc's worker model (worker class, workers,
  threads and keepalive as its gunicorn.conf.py resolves them).
- **uploadsvc**: ``gunicorn -c gunicorn.conf.py wsgi:app`` as shipped, UPLOADSVC_FSYNC=1.
- **nginx+uploadsvc**: deploy/nginx.conf in front of another uploadsvc (skipped, with a
  note, when that file or nginx is missing).

Every repetition runs every workload on every target, the target order rotating, so
machine noise (other work, a disk whose speed varies) hits all targets alike; the table
shows medians, and ratios are medians of per-repetition ratios (RSS: the worst run).
The load generator (bench/httpclient.py) sends bodies from /dev/shm with sendfile. Prints
the table and writes bench-results/latest.json.

    .venv/bin/python bench/run.py [--reps N] [--big] [--quick] [--also NAME=DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpclient as hc

REPO = Path(__file__).resolve().parents[1]
# `python bench/run.py` puts bench/ on the path, not the repository: testsupport lives there.
sys.path.insert(0, str(REPO))
from testsupport import server as harness  # noqa: E402
from testsupport.server import clean_env, free_port  # noqa: E402

BENCH = REPO / "bench"
BIN = Path(sys.executable).parent
RESULTS = REPO / "bench-results"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")

MAIN = ("limit", "baseline", "uploadsvc", "nginx+uploadsvc")  # the columns of the table
SMALL = 64 * KiB  # the small uploads' size
PATCH_8M = 8 * MiB
CHUNK = 64 * KiB  # chunk size of the chunked workload
CLIENTS = 32  # concurrent clients of the small-upload and HEAD workloads
CLIENT_PROCS = 2  # ... spread over this many client processes
DROP_SENT = 16 * MiB  # bytes a dropped PATCH delivers before it goes
DROP_REST = 64 * KiB  # what the resuming PATCH sends


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- /proc


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/statm", "rb") as fh:
            total += int(fh.read().split()[1]) * PAGE
    return total


def tree_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (all their threads)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICK


class RssSampler:
    """Peak RSS of a process tree, sampled every few milliseconds in a thread."""

    def __init__(self, pids: list[int], interval: float = 0.005) -> None:
        self.pids = pids
        self.interval = interval
        self.peak = tree_rss(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, tree_rss(self.pids))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pids))


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    port: int
    files_path: str  # where POST goes: "/files/"
    data_files: Path  # where the uploads' data files land
    commands: list[tuple[list[str], dict[str, str], Path]]  # (argv, env, cwd), started in order
    log_path: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    note: str = ""

    def start(self) -> None:
        for argv, env, cwd in self.commands:
            proc = harness.spawn(argv, env=env, log_path=self.log_path, cwd=cwd, append=True)
            self.procs.append(proc)

        def probe() -> str | None:
            try:
                with hc.Connection("127.0.0.1", self.port, timeout=2) as conn:
                    response = conn.request("HEAD", self.files_path + "0" * 32, hc.tus())
            except hc.HTTPError as error:
                return repr(error)
            if response.status < 500:  # nginx answers 502 until gunicorn is up
                return None
            return f"HEAD answered {response.status}"

        harness.wait_ready(
            self.procs, probe, timeout=30, name=self.name, log_tail=lambda: f"see {self.log_path}"
        )

    def pids(self) -> list[int]:
        return [pid for proc in self.procs for pid in tree_pids(proc.pid)]

    def stop(self) -> None:
        # Every process group at once, then wait for each (SIGKILL after 20 s).
        for proc in reversed(self.procs):
            harness.terminate(proc, group=True)
        for proc in reversed(self.procs):
            harness.wait_or_kill(proc, 20)

    def data_file(self, path: str) -> Path:
        return self.data_files / path.rstrip("/").rsplit("/", 1)[-1]


def limit_target(work: Path) -> Target:
    port, data = free_port(), work / "limit"
    argv = [sys.executable, str(BENCH / "limit_server.py"), str(port), str(data)]
    return Target("limit", port, "/files/", data, [(argv, clean_env(), REPO)], work / "limit.log")


def shipped_worker_model(work: Path) -> dict[str, str]:
    """worker_class, workers, threads and keepalive as uploadsvc's gunicorn.conf.py
    resolves them (``gunicorn --print-config``), for the baseline to use the same."""
    model = {"worker_class": "gthread", "workers": "2", "threads": "32", "keepalive": "75"}
    scratch = work / "print-config"
    scratch.mkdir()
    out = subprocess.run(
        [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "--print-config", "wsgi:app"],
        cwd=REPO,
        env=clean_env(UPLOADSVC_DATA_DIR=str(scratch), PROMETHEUS_MULTIPROC_DIR=str(scratch)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    for line in out.stdout.splitlines():
        name, _, value = line.partition("=")
        if name.strip() in model and value.strip():
            model[name.strip()] = value.strip()
    return model


def baseline_target(work: Path) -> Target:
    port, data = free_port(), work / "baseline"
    model = shipped_worker_model(work)
    workers = ["-k", model["worker_class"], "-w", model["workers"]]
    workers += ["--threads", model["threads"], "--keep-alive", model["keepalive"]]
    argv = [str(BIN / "gunicorn"), *workers, "--no-control-socket"]
    argv += ["-b", f"127.0.0.1:{port}", "--chdir", str(BENCH), "baseline_app:app"]
    env = clean_env(BENCH_DATA_DIR=str(data))
    note = f"{model['worker_class']} {model['workers']}x{model['threads']}, as uploadsvc's"
    return Target(
        "baseline", port, "/files/", data, [(argv, env, REPO)], work / "baseline.log", note=note
    )


def uploadsvc_command(
    work: Path, name: str, port: int, tree: Path = REPO, **env: str
) -> tuple[list[str], dict[str, str], Path]:
    argv = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "wsgi:app"]
    environ = clean_env(
        UPLOADSVC_DATA_DIR=str(work / name),
        UPLOADSVC_FSYNC="1",
        UPLOADSVC_MAX_SIZE=str(64 * GiB),
        **env,
    )
    return argv, environ, tree


def uploadsvc_target(work: Path, name: str = "uploadsvc", tree: Path = REPO) -> Target:
    """uploadsvc as shipped; ``tree``: another checkout of it (``--also``)."""
    port = free_port()
    command = uploadsvc_command(work, name, port, tree)
    note = "" if tree == REPO else f"uploadsvc from {tree}"
    return Target(
        name, port, "/files/", work / name / "files", [command], work / f"{name}.log", note=note
    )


def nginx_target(work: Path, site: Path) -> Target | str:
    """uploadsvc behind ``site`` (deploy/nginx.conf), or why not."""
    if not site.exists():
        return f"{site.relative_to(REPO) if site.is_relative_to(REPO) else site} absent"
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        log("nginx not found: installing it (apt-get install nginx-light)")
        install = subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive"
            " apt-get install -y -qq nginx-light",
            shell=True,
            check=False,
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if install.returncode != 0 or not Path(nginx).exists():
            return "nginx missing and apt-get could not install it"
    port, upstream = free_port(), free_port()
    prefix = work / "nginx"
    prefix.mkdir()
    text = site.read_text()
    text = text.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream};")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{port};")
    if f"127.0.0.1:{upstream}" not in text or f"127.0.0.1:{port}" not in text:
        return "deploy/nginx.conf: could not set its listen/upstream addresses"
    (prefix / "site.conf").write_text(text)
    user = "user root;\n" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(
        f"""{user}worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log {prefix}/access.log;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/site.conf;
}}
"""
    )
    check = subprocess.run(
        [nginx, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        return f"nginx -t failed: {check.stderr.strip()[-300:]}"
    gunicorn = uploadsvc_command(work, "nginx-uploadsvc", upstream, UPLOADSVC_PROXY_HOPS="1")
    nginx_cmd = ([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], clean_env(), prefix)
    return Target(
        "nginx+uploadsvc",
        port,
        "/uploads/files/",
        work / "nginx-uploadsvc" / "files",
        [gunicorn, nginx_cmd],
        work / "nginx.log",
        note=f"{site.name} (listen and upstream ports changed), access log on",
    )


# --------------------------------------------------------------------------- data


@dataclass
class Sources:
    """Request bodies in /dev/shm: sendfile reads them without touching the disk."""

    directory: Path
    plain: Path  # 1 GiB of random bytes
    chunked: Path  # the same, framed in CHUNK-sized chunks

    @classmethod
    def make(cls, size: int) -> Sources:
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        directory = Path(tempfile.mkdtemp(prefix="uploadsvc-bench-", dir=base))
        plain, chunked = directory / "plain.bin", directory / "chunked.bin"
        block = os.urandom(16 * MiB)
        with plain.open("wb") as fh:
            for _ in range(size // len(block)):
                fh.write(block)
        with plain.open("rb") as src, chunked.open("wb") as out:
            for piece in iter(lambda: src.read(CHUNK), b""):
                out.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            out.write(b"0\r\n\r\n")
        return cls(directory, plain, chunked)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


# --------------------------------------------------------------------------- workloads


def send_repeating(conn: hc.Connection, fd: int, file_size: int, count: int) -> None:
    """``count`` bytes of the file, starting over at its end (bodies over 1 GiB)."""
    offset = 0
    while count > 0:
        n = min(count, file_size - offset)
        conn.sendfile(fd, offset, n)
        count -= n
        offset = 0


def same_content(stored: Path, source: Path, size: int) -> bool:
    with stored.open("rb") as a, source.open("rb") as b:
        if os.fstat(a.fileno()).st_size != size:
            return False
        source_size = os.fstat(b.fileno()).st_size
        position = 0
        while position < size:
            n = min(8 * MiB, size - position)
            b.seek(position % source_size)
            if a.read(n) != b.read(n):
                return False
            position += n
        return True


def big_upload(
    target: Target, src: Sources, mode: str, size: int, *, verify: bool
) -> dict[str, Any]:
    """One upload of ``size`` bytes: one PATCH, 8 MiB PATCHes, or one chunked PATCH."""
    with hc.Connection("127.0.0.1", target.port, timeout=600) as conn:
        path = hc.create(conn, target.files_path, size)
        conn.close()  # the upload itself on a fresh connection
        plain_fd = os.open(src.plain, os.O_RDONLY)
        chunked_fd = os.open(src.chunked, os.O_RDONLY)
        try:
            pids = target.pids()
            idle = tree_rss(pids)
            cpu = tree_cpu(pids)
            with RssSampler(pids) as rss:
                started = time.perf_counter()
                if mode == "8m":
                    for offset in range(0, size, PATCH_8M):
                        n = min(PATCH_8M, size - offset)
                        conn.send(conn.request_head("PATCH", path, hc.patch_headers(offset, n)))
                        conn.sendfile(plain_fd, offset % os.fstat(plain_fd).st_size, n)
                        hc.expect_offset(conn.response(), 204, offset + n, "8 MiB PATCH")
                elif mode == "chunked":
                    conn.send(conn.request_head("PATCH", path, hc.patch_headers(0, None)))
                    conn.sendfile(chunked_fd, 0, os.fstat(chunked_fd).st_size)
                    hc.expect_offset(conn.response(), 204, size, "chunked PATCH")
                else:
                    conn.send(conn.request_head("PATCH", path, hc.patch_headers(0, size)))
                    send_repeating(conn, plain_fd, os.fstat(plain_fd).st_size, size)
                    hc.expect_offset(conn.response(), 204, size, "PATCH")
                seconds = time.perf_counter() - started
            cpu = tree_cpu(pids) - cpu
        finally:
            os.close(plain_fd)
            os.close(chunked_fd)
        result: dict[str, Any] = {
            "MBps": size / seconds / 1e6,
            "seconds": seconds,
            "rss_delta_MB": (rss.peak - idle) / 1e6,
            "rss_idle_MB": idle / 1e6,
            "cpu_s_per_GB": cpu / (size / 1e9),
        }
        if verify:
            result["content_ok"] = same_content(target.data_file(path), src.plain, size)
    # At once: files left behind would fill the page cache, and a machine short of free
    # memory writes several times slower (direct reclaim), whoever comes next.
    delete_uploads(target, [path])
    return result


def delete_uploads(target: Target, paths: list[str]) -> None:
    with hc.Connection("127.0.0.1", target.port) as conn:
        for path in paths:
            conn.request("DELETE", path, hc.tus())


def _client_process(
    kind: str,
    port: int,
    files_path: str,
    paths: list[str],
    threads: int,
    start: float,
    end: float,
    out: Any,
) -> None:
    """A client process: ``threads`` clients looping until ``end`` (time.time())."""
    done: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    payload = os.urandom(SMALL)

    def client(index: int) -> None:
        conn = hc.Connection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        while time.time() < end:
            try:
                if kind == "small":
                    path = hc.create(conn, files_path, SMALL)
                    response = conn.request("PATCH", path, hc.patch_headers(0, SMALL), payload)
                    hc.expect_offset(response, 204, SMALL, "small PATCH")
                    hc.expect_offset(conn.request("HEAD", path, hc.tus()), 200, SMALL, "HEAD")
                else:
                    path = paths[index % len(paths)]
                    hc.expect_offset(conn.request("HEAD", path, hc.tus()), 200, SMALL, "HEAD")
                mine.append(time.time())
            except (OSError, hc.HTTPError) as error:
                conn.close()
                with lock:
                    errors.append(f"{type(error).__name__}: {error}"[:300])
                time.sleep(0.01)
        conn.close()
        with lock:
            done.extend(mine)

    wait = start - time.time()
    if wait > 0:
        time.sleep(wait)
    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    times = os.times()
    out.send((done, errors, times.user + times.system))
    out.close()


def concurrent(
    target: Target, kind: str, duration: float, warmup: float, paths: list[str] | None = None
) -> dict[str, Any]:
    """CLIENTS clients in CLIENT_PROCS processes; operations per second after warm-up."""
    ctx = mp.get_context("fork")
    start = time.time() + 0.3
    end = start + warmup + duration
    procs, pipes = [], []
    pids = target.pids()
    cpu = tree_cpu(pids)
    for i in range(CLIENT_PROCS):
        receiver, sender = ctx.Pipe(duplex=False)
        share = CLIENTS // CLIENT_PROCS + (i < CLIENTS % CLIENT_PROCS)
        mine = (paths or [])[i::CLIENT_PROCS]
        proc = ctx.Process(
            target=_client_process,
            args=(kind, target.port, target.files_path, mine, share, start, end, sender),
        )
        proc.start()
        sender.close()
        procs.append(proc)
        pipes.append(receiver)
    done: list[float] = []
    errors: list[str] = []
    client_cpu = 0.0
    for proc, pipe in zip(procs, pipes, strict=True):
        got, errs, used = pipe.recv()
        done += got
        errors += errs
        client_cpu += used
        proc.join()
    server_cpu = tree_cpu(pids) - cpu
    counted = sum(1 for t in done if t >= start + warmup)
    return {
        "per_s": counted / duration,
        "errors": len(errors),
        "first_errors": errors[:3],
        "client_cpu_share": client_cpu / (warmup + duration),  # of one core
        "server_cpu_share": server_cpu / (warmup + duration),
    }


def unsent(sock: socket.socket) -> int:
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", raw)[0])


def drop_resume(target: Target, src: Sources, how: str) -> dict[str, Any]:
    """A PATCH delivers DROP_SENT bytes and its client vanishes (FIN or RST); the client
    comes back: HEAD (again at once while 423), then PATCH the rest. Time from the drop
    until that PATCH is answered 204."""
    length = DROP_SENT + DROP_REST
    with hc.Connection("127.0.0.1", target.port, timeout=60) as conn:
        path = hc.create(conn, target.files_path, length)
    fd = os.open(src.plain, os.O_RDONLY)
    try:
        dropped = hc.Connection("127.0.0.1", target.port, timeout=60)
        dropped.send(dropped.request_head("PATCH", path, hc.patch_headers(0, length)))
        dropped.sendfile(fd, 0, DROP_SENT)
        sock = dropped.connect()
        deadline = time.monotonic() + 20
        while unsent(sock) and time.monotonic() < deadline:
            time.sleep(0.001)
        if how == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        started = time.perf_counter()
        dropped.close()
        heads = 0
        with hc.Connection("127.0.0.1", target.port, timeout=60) as conn:
            for _ in range(100_000):
                heads += 1
                response = conn.request("HEAD", path, hc.tus())
                if response.status == 423:
                    continue
                offset = int(response.header("Upload-Offset") or -1)
                if response.status != 200 or offset < 0:
                    raise hc.HTTPError(f"HEAD after drop: {response.status}")
                conn.send(
                    conn.request_head("PATCH", path, hc.patch_headers(offset, length - offset))
                )
                conn.sendfile(fd, offset, length - offset)
                response = conn.response()
                if response.status in (409, 423):
                    continue
                hc.expect_offset(response, 204, length, "resuming PATCH")
                break
            seconds = time.perf_counter() - started
            conn.request("DELETE", path, hc.tus())
    finally:
        os.close(fd)
    return {"ms": seconds * 1000, "offset_kept": offset == DROP_SENT, "heads": heads}


def disk_write(directory: Path, size: int) -> dict[str, Any]:
    """dd if=/dev/zero bs=1M conv=fsync, in Python: write + fsync on the bench's disk."""
    block = os.urandom(MiB)
    path = directory / "disk.bin"
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(size // MiB):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - started
    path.unlink()
    return {"MBps": size / seconds / 1e6}


def loopback(src: Sources, size: int) -> dict[str, Any]:
    """sendfile -> recv_into over loopback, nothing stored: the network alone, and proof
    that the load generator outpaces every server."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    result: dict[str, float] = {}

    def receive() -> None:
        sock, _ = listener.accept()
        buf = memoryview(bytearray(MiB))
        got = 0
        started = time.perf_counter()
        with sock:
            while n := sock.recv_into(buf):
                got += n
        result["seconds"] = time.perf_counter() - started
        result["bytes"] = got

    thread = threading.Thread(target=receive)
    thread.start()
    fd = os.open(src.plain, os.O_RDONLY)
    try:
        with hc.Connection("127.0.0.1", port) as conn:
            send_repeating(conn, fd, os.fstat(fd).st_size, size)
    finally:
        os.close(fd)
    thread.join()
    listener.close()
    return {"MBps": result["bytes"] / result["seconds"] / 1e6}


# --------------------------------------------------------------------------- the run


Check = Callable[[float | None, float | None, float | None], bool | None]


@dataclass
class Row:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    metric: str  # key in each run's result dict
    aggregate: str = "median"  # or "max"
    # (text, check(value, ratio to limit, ratio to baseline) -> met?, None: unknown)
    target: tuple[str, Check] | None = None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b; None when either is missing or b is too close to zero to divide by."""
    return a / b if a is not None and b is not None and abs(b) >= 0.05 else None


def paired(
    runs: dict[str, list[dict[str, Any]]],
    row: Row,
    name: str,
    other: str,
    *,
    values: dict[str, float | None],
) -> float | None:
    """``name`` relative to ``other``: the median of the per-repetition ratios (the two
    ran minutes apart at most, so slow drifts of the machine cancel out); the ratio of
    the aggregates when the runs don't pair up (RSS: worst against worst)."""
    mine = [r.get(row.metric) for r in runs.get(name, [])]
    theirs = [r.get(row.metric) for r in runs.get(other, [])]
    if row.aggregate == "median" and mine and len(mine) == len(theirs):
        ratios = [ratio(a, b) for a, b in zip(mine, theirs, strict=True)]
        known = [r for r in ratios if r is not None]
        return statistics.median(known) if known else None
    return ratio(values.get(name), values.get(other))


def _ge(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a >= b


def _le(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a <= b


ROWS = [
    Row("disk", "disk alone: write 1 GiB + fsync", "MB/s", True, "MBps"),
    Row("loopback", "loopback alone: sendfile -> recv_into", "MB/s", True, "MBps"),
    Row(
        "one_patch",
        "1 GiB in one PATCH",
        "MB/s",
        True,
        "MBps",
        target=(">= 0.7 x limit", lambda v, lim, base: _ge(lim, 0.7)),
    ),
    Row(
        "patches_8m",
        "1 GiB in 8 MiB PATCHes",
        "MB/s",
        True,
        "MBps",
        target=(">= 0.6 x limit", lambda v, lim, base: _ge(lim, 0.6)),
    ),
    Row(
        "chunked",
        "1 GiB chunked (64 KiB chunks)",
        "MB/s",
        True,
        "MBps",
        target=(">= 0.6 x limit", lambda v, lim, base: _ge(lim, 0.6)),
    ),
    Row(
        "small",
        "small uploads, 32 clients (POST+PATCH 64K+HEAD)",
        "uploads/s",
        True,
        "per_s",
        target=(">= baseline", lambda v, lim, base: _ge(base, 1.0)),
    ),
    Row(
        "head",
        "HEAD, 32 clients",
        "req/s",
        True,
        "per_s",
        target=(">= 1.2 x baseline", lambda v, lim, base: _ge(base, 1.2)),
    ),
    Row(
        "drop_fin",
        "drop (FIN) -> resuming PATCH accepted",
        "ms",
        False,
        "ms",
        target=("< 100 ms", lambda v, lim, base: _le(v, 100.0)),
    ),
    Row(
        "drop_rst",
        "drop (RST) -> resuming PATCH accepted",
        "ms",
        False,
        "ms",
        target=("< 100 ms", lambda v, lim, base: _le(v, 100.0)),
    ),
    Row(
        "rss",
        "peak RSS - idle, during 1 GiB PATCH",
        "MB",
        False,
        "rss_delta_MB",
        aggregate="max",
        target=("<= 16 MB", lambda v, lim, base: _le(v, 16.0)),
    ),
    Row("cpu", "server CPU per GB, 1 GiB PATCH", "s/GB", False, "cpu_s_per_GB"),
    Row("cpu_8m", "server CPU per GB, 8 MiB PATCHes", "s/GB", False, "cpu_s_per_GB"),
    Row("cpu_chunked", "server CPU per GB, chunked", "s/GB", False, "cpu_s_per_GB"),
]
BIG_ROWS = [
    Row("big", "10 GiB in one PATCH", "MB/s", True, "MBps"),
    Row(
        "rss_big",
        "peak RSS - idle, during 10 GiB PATCH",
        "MB",
        False,
        "rss_delta_MB",
        aggregate="max",
        target=("<= 16 MB", lambda v, lim, base: _le(v, 16.0)),
    ),
]
# Rows measured by another row's runs.
SAME_RUN = {
    "rss": "one_patch",
    "cpu": "one_patch",
    "cpu_8m": "patches_8m",
    "cpu_chunked": "chunked",
    "rss_big": "big",
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="uploadsvc-bench-", dir=args.work_dir))
    log(f"work dir {work} (on {fs_type(work)}); bodies in /dev/shm")
    src = Sources.make(size)
    targets = [limit_target(work), baseline_target(work), uploadsvc_target(work)]
    for also in args.also:
        name, _, tree = also.partition("=")
        targets.append(uploadsvc_target(work, name, Path(tree).resolve()))
    skipped: dict[str, str] = {}
    nginx = nginx_target(work, Path(args.nginx_conf)) if not args.no_nginx else "--no-nginx given"
    if isinstance(nginx, str):
        skipped["nginx+uploadsvc"] = nginx
        log(f"nginx+uploadsvc skipped: {nginx}")
    else:
        targets.append(nginx)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def record(key: str, name: str, result: dict[str, Any]) -> None:
        result["load1"] = os.getloadavg()[0]  # other work on the machine meanwhile
        runs.setdefault(key, {}).setdefault(name, []).append(result)

    try:
        for target in targets:
            target.start()
        head_paths = {t.name: make_complete_uploads(t, CLIENTS + 8) for t in targets}
        for rep in range(args.reps):
            order = targets[rep % len(targets) :] + targets[: rep % len(targets)]
            log(f"-- repetition {rep + 1}/{args.reps}: {', '.join(t.name for t in order)}")
            os.sync()
            record("disk", "limit", disk_write(work, size))
            record("loopback", "limit", loopback(src, size))
            for key, mode in (("one_patch", "one"), ("patches_8m", "8m"), ("chunked", "chunked")):
                for target in order:
                    os.sync()
                    result = big_upload(target, src, mode, size, verify=rep == 0)
                    record(key, target.name, result)
                    log(
                        f"   {key:11s} {target.name:16s} {result['MBps']:7.0f} MB/s"
                        f"  rss +{result['rss_delta_MB']:.1f} MB"
                        f"  cpu {result['cpu_s_per_GB']:.2f} s/GB"
                    )
            for target in order:
                result = concurrent(target, "small", args.duration, args.warmup)
                record("small", target.name, result)
                log(
                    f"   small       {target.name:16s} {result['per_s']:7.0f} uploads/s"
                    f"  errors {result['errors']}  client cpu {result['client_cpu_share']:.0%}"
                )
            for target in order:
                result = concurrent(
                    target, "head", args.duration, args.warmup, head_paths[target.name]
                )
                record("head", target.name, result)
                log(
                    f"   head        {target.name:16s} {result['per_s']:7.0f} req/s"
                    f"  errors {result['errors']}  client cpu {result['client_cpu_share']:.0%}"
                )
            for how in ("fin", "rst"):
                for target in order:
                    result = drop_resume(target, src, how)
                    record(f"drop_{how}", target.name, result)
                    log(
                        f"   drop_{how}    {target.name:16s} {result['ms']:7.1f} ms"
                        f"  offset kept: {result['offset_kept']}  HEADs {result['heads']}"
                    )
        if args.big:
            for target in targets:
                if target.name == "baseline" and not args.big_baseline:
                    continue
                os.sync()
                result = big_upload(target, src, "one", 10 * GiB, verify=False)
                record("big", target.name, result)
                log(
                    f"   10 GiB      {target.name:16s} {result['MBps']:7.0f} MB/s"
                    f"  rss +{result['rss_delta_MB']:.1f} MB"
                )
    finally:
        for target in targets:
            target.stop()
        src.remove()
        tracebacks = [
            t.name
            for t in targets
            if t.name != "baseline"
            and t.log_path.exists()
            and "Traceback" in t.log_path.read_text(errors="replace")
        ]
        if tracebacks:
            log(f"tracebacks in the logs of: {', '.join(tracebacks)} (see {work})")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for key, source in SAME_RUN.items():
        if source in runs:
            runs[key] = runs[source]
    rows = ROWS + (BIG_ROWS if args.big else [])
    return summarize(rows, runs, targets, skipped, args, work)


def make_complete_uploads(target: Target, count: int) -> list[str]:
    """``count`` complete small uploads (for the HEAD workload), each on a connection
    of its own so that every worker process gets some; they warm the servers up too,
    with a few 16 MiB PATCHes, so that first-use costs don't count as memory growth."""
    paths = []
    for i in range(count):
        with hc.Connection("127.0.0.1", target.port) as conn:
            size = SMALL if i >= 8 else 16 * MiB
            path = hc.create(conn, target.files_path, size)
            response = conn.request("PATCH", path, hc.patch_headers(0, size), os.urandom(size))
            hc.expect_offset(response, 204, size, "PATCH")
            if size == SMALL:
                paths.append(path)
            else:
                conn.request("DELETE", path, hc.tus())
    return paths


def fs_type(path: Path) -> str:
    best, kind = "", "?"
    with open("/proc/mounts") as fh:
        for line in fh:
            _, mount, fstype, *_ = line.split()
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    return kind


def summarize(
    rows: list[Row],
    runs: dict[str, dict[str, list[dict[str, Any]]]],
    targets: list[Target],
    skipped: dict[str, str],
    args: argparse.Namespace,
    work: Path,
) -> dict[str, Any]:
    names = [t.name for t in targets]
    loopback_runs = runs.get("loopback", {}).get("limit", [])
    loopback_MBps = statistics.median(r["MBps"] for r in loopback_runs) if loopback_runs else None
    table = []
    kept = {
        name: all(
            r["offset_kept"]
            for key in ("drop_fin", "drop_rst")
            for r in runs.get(key, {}).get(name, [])
        )
        for name in names
    }
    for row in rows:
        values: dict[str, float | None] = {}
        for name in dict.fromkeys(["limit", "baseline", "uploadsvc", "nginx+uploadsvc", *names]):
            results = runs.get(row.key, {}).get(name, [])
            numbers = [r[row.metric] for r in results if row.metric in r]
            if not numbers:
                values[name] = None
            elif row.aggregate == "max":
                values[name] = max(numbers)
            else:
                values[name] = statistics.median(numbers)

        row_runs = runs.get(row.key, {})
        vs = functools.partial(paired, row_runs, row, values=values)
        entry: dict[str, Any] = {
            "key": row.key,
            "label": row.label,
            "unit": row.unit,
            "higher_is_better": row.higher_is_better,
            "aggregate": row.aggregate,
            "values": values,
            "runs": {name: runs.get(row.key, {}).get(name, []) for name in names},
            "uploadsvc_vs_limit": vs("uploadsvc", "limit"),
            "uploadsvc_vs_baseline": vs("uploadsvc", "baseline"),
            "nginx_vs_limit": vs("nginx+uploadsvc", "limit"),
            "nginx_vs_baseline": vs("nginx+uploadsvc", "baseline"),
            "extras_vs_uploadsvc": {
                name: vs(name, "uploadsvc") for name in names if name not in MAIN
            },
        }
        if row.target is not None:
            text, check = row.target
            entry["target"] = text
            entry["pass"] = check(
                values["uploadsvc"], entry["uploadsvc_vs_limit"], entry["uploadsvc_vs_baseline"]
            )
            entry["nginx_pass"] = check(
                values["nginx+uploadsvc"], entry["nginx_vs_limit"], entry["nginx_vs_baseline"]
            )
        table.append(entry)
    return {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "git": git_describe(),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "data_fs": fs_type(work),
            "load_average": {
                "start": args.load_at_start,
                "end": list(os.getloadavg()),
                "during": sorted(
                    r["load1"] for rs in runs.values() for v in rs.values() for r in v
                ),
            },
            "args": vars(args),
            "skipped": skipped,
            "extras": {t.name: t.note for t in targets if t.name not in MAIN},
            "drops_kept_every_byte": kept,
            "content_mismatch": sorted(
                {
                    f"{name} ({key})"
                    for key in ("one_patch", "patches_8m", "chunked", "big")
                    for name, results in runs.get(key, {}).items()
                    for r in results
                    if r.get("content_ok") is False
                }
            ),
            "client": client_load(runs, loopback_MBps),
            "notes": [
                "All targets fsync before answering (uploadsvc: UPLOADSVC_FSYNC=1).",
                "Ratios (u: uploadsvc, n: nginx+uploadsvc): median of the per-repetition"
                " ratios to limit and to baseline; for ms, MB and s/GB lower is better.",
                "limit = bench/limit_server.py on the same workload; baseline = Flask"
                " copyfileobj(request.stream) under gunicorn with uploadsvc's worker model ("
                + next((t.note for t in targets if t.name == "baseline"), "?")
                + ").",
                f"Values: median of {args.reps} runs (RSS: worst run); small uploads"
                f" and HEAD: {CLIENTS} keep-alive clients in {CLIENT_PROCS} processes,"
                f" {args.duration:g} s after {args.warmup:g} s warm-up.",
            ],
        },
        "table": table,
    }


def client_load(
    runs: dict[str, dict[str, list[dict[str, Any]]]], loopback_MBps: float | None
) -> dict[str, Any]:
    """How hard the load generator worked: it must not be what limits a server."""
    shares = {
        name: max(
            r["client_cpu_share"]
            for key in ("small", "head")
            for r in runs.get(key, {}).get(name, [])
        )
        for name in runs.get("small", {})
    }
    return {"loopback_MBps": loopback_MBps, "max_client_cpu_share": shares}


def git_describe() -> str:
    out = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "?"


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in ("ms", "MB", "s/GB"):
        return (
            f"{value:.2f}"
            if abs(value) < 10
            else f"{value:.1f}"
            if abs(value) < 100
            else f"{value:.0f}"
        )
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(result: dict[str, Any]) -> str:
    with_nginx = any(e["values"].get("nginx+uploadsvc") is not None for e in result["table"])
    header = ["figure", "unit", "limit", "baseline", "uploadsvc"]
    if with_nginx:
        header.append("nginx+u")
    header += ["u/limit", "u/base"]
    if with_nginx:
        header += ["n/limit", "n/base"]
    header += ["target", "uploadsvc"]
    if with_nginx:
        header.append("nginx+u")
    lines = []
    for e in result["table"]:
        v = e["values"]
        cells = [
            e["label"],
            e["unit"],
            fmt(v["limit"], e["unit"]),
            fmt(v["baseline"], e["unit"]),
            fmt(v["uploadsvc"], e["unit"]),
        ]
        if with_nginx:
            cells.append(fmt(v["nginx+uploadsvc"], e["unit"]))
        cells += [fmt_ratio(e["uploadsvc_vs_limit"]), fmt_ratio(e["uploadsvc_vs_baseline"])]
        if with_nginx:
            cells += [fmt_ratio(e["nginx_vs_limit"]), fmt_ratio(e["nginx_vs_baseline"])]
        verdict = {True: "PASS", False: "MISS", None: "-"}
        cells += [e.get("target") or "", verdict[e.get("pass")] if "pass" in e else ""]
        if with_nginx:
            cells.append(verdict[e.get("nginx_pass")] if "nginx_pass" in e else "")
        lines.append(cells)
    out = [markdown(header, lines)]
    meta = result["meta"]
    if meta["extras"]:
        out += ["", render_extras(result)]
    out.append("")
    out += [f"- {note}" for note in meta["notes"]]
    client = meta["client"]
    if client["loopback_MBps"] is not None:
        busiest = {n: v for n, v in client["max_client_cpu_share"].items() if n != "limit"}
        out.append(
            f"- Load generator: sendfile pushes {client['loopback_MBps']:.0f} MB/s over loopback;"
            " during the concurrent runs its processes used at most "
            + ", ".join(f"{v:.0%} ({n})" for n, v in busiest.items())
            + " of one core."
        )
    bad = meta["content_mismatch"]
    out.append(
        "- Stored bytes compared with what was sent (first repetition, every 1 GiB upload): "
        + ("all identical." if not bad else f"MISMATCH for {', '.join(bad)}.")
    )
    kept = meta["drops_kept_every_byte"]
    out.append(
        "- After a drop, the offset equalled the bytes delivered in every run for: "
        + (", ".join(n for n, ok in kept.items() if ok) or "none")
        + "; not for: "
        + (", ".join(n for n, ok in kept.items() if not ok) or "none")
        + "."
    )
    for name, why in meta["skipped"].items():
        out.append(f"- {name} skipped: {why}")
    load = meta["load_average"]
    out.append(
        f"- {meta['date']}, git {meta['git']}, {meta['cpus']} CPUs, kernel {meta['kernel']},"
        f" Python {meta['python']}, data on {meta['data_fs']}; load average (1 min) while"
        f" measuring: median {statistics.median(load['during'] or [0]):.1f},"
        f" max {max(load['during'] or [0]):.1f}."
    )
    return "\n".join(out)


def render_extras(result: dict[str, Any]) -> str:
    """The ``--also`` targets: values, and their ratio to uploadsvc."""
    extras = list(result["meta"]["extras"])
    header = ["figure", "unit", "uploadsvc", *extras, *(f"{n}/u" for n in extras)]
    lines = []
    for e in result["table"]:
        if e["values"]["uploadsvc"] is None:
            continue
        cells = [e["label"], e["unit"], fmt(e["values"]["uploadsvc"], e["unit"])]
        cells += [fmt(e["values"][n], e["unit"]) for n in extras]
        cells += [fmt_ratio(e["extras_vs_uploadsvc"][n]) for n in extras]
        lines.append(cells)
    return markdown(header, lines)


def markdown(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for cells in lines:
        out.append(
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per concurrent run")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="warm-up seconds per concurrent run"
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the big uploads (MiB)")
    parser.add_argument("--big", action="store_true", help="also one 10 GiB PATCH per target")
    parser.add_argument("--big-baseline", action="store_true", help="... including the baseline")
    parser.add_argument("--no-nginx", action="store_true", help="skip nginx+uploadsvc")
    parser.add_argument(
        "--nginx-conf",
        default=str(REPO / "deploy" / "nginx.conf"),
        help="the nginx site in front of uploadsvc (default deploy/nginx.conf)",
    )
    parser.add_argument("--quick", action="store_true", help="1 repetition, 256 MiB, 3 s runs")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, data)")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also measure the uploadsvc checkout in DIR, as NAME (repeatable)",
    )
    parser.add_argument("--work-dir", default=None, help="where data lands (default: $TMPDIR)")
    parser.add_argument("--out", default=str(RESULTS / "latest.json"), help="JSON output")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.size_mib, args.duration = 1, 256, 3.0
    started = time.monotonic()
    args.load_at_start = list(os.getloadavg())
    result = run(args)
    result["meta"]["seconds"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    log(f"\n{out} written; {result['meta']['seconds']:.0f} s")


if __name__ == "__main__":
    main()
