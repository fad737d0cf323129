"""The workloads: one big PATCH, many small uploads and HEADs, dropped PATCHes resumed,
and the disk and loopback alone."""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import socket
import struct
import termios
import threading
import time
from pathlib import Path
from typing import Any

import httpclient as hc
from capacity import percentile
from proctree import RssSampler, tree_cpu, tree_rss
from settings import CLIENT_PROCS, CLIENTS, DROP_REST, DROP_SENT, PATCH_8M, SMALL, MiB
from sources import Sources
from targets import Target


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
    measured_from: float,
    end: float,
    out: Any,
) -> None:
    """A client process: ``threads`` clients looping from ``start`` until ``end``
    (time.time()); latencies of operations begun from ``measured_from`` on."""
    done: list[float] = []
    latencies: list[float] = []  # seconds per operation (a small upload: its 3 requests)
    errors: list[str] = []
    lock = threading.Lock()
    payload = os.urandom(SMALL)

    def client(index: int) -> None:
        conn = hc.Connection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        took: list[float] = []
        while time.time() < end:
            began = time.time()
            try:
                if kind == "small":
                    path = hc.create(conn, files_path, SMALL)
                    response = conn.request("PATCH", path, hc.patch_headers(0, SMALL), payload)
                    hc.expect_offset(response, 204, SMALL, "small PATCH")
                    hc.expect_offset(conn.request("HEAD", path, hc.tus()), 200, SMALL, "HEAD")
                else:
                    path = paths[index % len(paths)]
                    hc.expect_offset(conn.request("HEAD", path, hc.tus()), 200, SMALL, "HEAD")
                finished = time.time()
                mine.append(finished)
                if began >= measured_from:  # begun after the warm-up
                    took.append(finished - began)
            except (OSError, hc.HTTPError) as error:
                conn.close()
                with lock:
                    errors.append(f"{type(error).__name__}: {error}"[:300])
                time.sleep(0.01)
        conn.close()
        with lock:
            done.extend(mine)
            latencies.extend(took)

    wait = start - time.time()
    if wait > 0:
        time.sleep(wait)
    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    times = os.times()
    out.send((done, latencies, errors, times.user + times.system))
    out.close()


def concurrent(
    target: Target, kind: str, duration: float, warmup: float, paths: list[str] | None = None
) -> dict[str, Any]:
    """CLIENTS clients in CLIENT_PROCS processes; operations per second after warm-up."""
    ctx = mp.get_context("fork")
    start = time.time() + 0.3
    measured = start + warmup
    end = measured + duration
    procs, pipes = [], []
    pids = target.pids()
    cpu = tree_cpu(pids)
    for i in range(CLIENT_PROCS):
        receiver, sender = ctx.Pipe(duplex=False)
        share = CLIENTS // CLIENT_PROCS + (i < CLIENTS % CLIENT_PROCS)
        mine = (paths or [])[i::CLIENT_PROCS]
        proc = ctx.Process(
            target=_client_process,
            args=(kind, target.port, target.files_path, mine, share, start, measured, end, sender),
        )
        proc.start()
        sender.close()
        procs.append(proc)
        pipes.append(receiver)
    done: list[float] = []
    latencies: list[float] = []
    errors: list[str] = []
    client_cpu = 0.0
    for proc, pipe in zip(procs, pipes, strict=True):
        got, took, errs, used = pipe.recv()
        done += got
        latencies += took
        errors += errs
        client_cpu += used
        proc.join()
    server_cpu = tree_cpu(pids) - cpu
    counted = sum(1 for t in done if t >= measured)
    p99 = percentile(latencies, 0.99)
    return {
        "per_s": counted / duration,
        "p99_ms": None if p99 is None else p99 * 1000,
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
