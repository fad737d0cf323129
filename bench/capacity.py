"""The capacity workload: N honest slow uploads in flight at once, and a probe.

Every trickling client has a loopback address of its own (127.1.x.y; Linux routes all
of 127/8 to lo): they are N different people, each under uploadsvc's per-client cap.
Each sends its PATCH body at ``RATE`` bytes/s in ``PIECE``-byte sends, staggered, for the
ramp (the servers start N PATCHes) and then the hold. During the hold a probe, from
other addresses (127.2.x.y), HEADs a complete upload every ``HEAD_EVERY`` s and runs a
small upload (POST + PATCH 64 KiB + HEAD) every ``SMALL_EVERY`` s, each on a fresh
connection, and records every request's latency (a request unanswered within
``PROBE_TIMEOUT`` counts as an error, at that latency). At the end of the hold:

- the server's connections from the trickling clients that hold unread bytes in their
  kernel receive queue (/proc/net/tcp) are counted: bodies nobody was reading (a server
  that accepted more connections than it serves);
- every client sends the rest of its body at full speed and must be answered 204 with
  the whole length as Upload-Offset (an upload the server ended early, or refused, is an
  error).

The server's RSS is sampled throughout (peak) and its CPU counted over the hold.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import resource
import selectors
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpclient as hc
from proctree import RssSampler, tree_cpu, tree_rss
from settings import SMALL, KiB
from targets import Target

RATE = 4 * KiB  # bytes/s per trickling client
PIECE = 1 * KiB  # bytes per send (a few TCP segments of a slow link)
HEAD_EVERY = 0.05
SMALL_EVERY = 0.25
PROBE_TIMEOUT = 10.0
SETTLE = 2.0  # seconds after the last PATCH head before the hold begins
FINISH_TIMEOUT = 120.0
# A body with more than this waiting in the server's receive queue at the end of the hold
# is one nobody reads: 4 s of its data. (A server thread merely late on a loaded machine,
# or under a profiler, holds half a second's; one without a thread, the whole hold's.)
UNREAD = 16 * KiB


def raise_fd_limit(want: int) -> None:
    """Raise this process's open-file limit to ``want`` (or the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def address(index: int, block: int) -> str:
    """Loopback address ``index`` of ``block`` (127.<block>.x.y)."""
    return f"127.{block}.{index // 250}.{1 + index % 250}"


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@dataclass
class Plan:
    port: int
    files_path: str
    paths: list[str]  # the trickling uploads
    size: int  # each one's length
    start: float  # time.time(): first sends
    hold_start: float  # the probe begins
    hold_end: float  # trickling ends, the rest is sent


# --------------------------------------------------------------------------- trickling


class _Trickle:
    __slots__ = ("answer", "buf", "done", "sent", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0
        self.buf = b""
        self.answer: str | None = None
        self.done = False


def _trickle_process(plan: Plan, out: Any) -> None:
    raise_fd_limit(len(plan.paths) + 256)
    errors: list[str] = []
    body = os.urandom(plan.size)
    trickles: list[_Trickle] = []
    for index, path in enumerate(plan.paths):
        try:
            sock = socket.create_connection(
                ("127.0.0.1", plan.port), timeout=30, source_address=(address(index, 1), 0)
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = hc.Connection("127.0.0.1", plan.port)
            sock.sendall(conn.request_head("PATCH", path, hc.patch_headers(0, plan.size)))
            sock.setblocking(False)
            trickles.append(_Trickle(sock))
        except OSError as error:
            errors.append(f"trickle {index} connect: {error!r}")
    connected = len(trickles)
    # Staggered: client i sends at start + (k + i/N) * interval.
    interval = PIECE / RATE
    count = max(1, len(trickles))
    tick = 0
    sends = 0
    stalled = 0
    while time.time() < plan.hold_end:
        for index, trickle in enumerate(trickles):
            if trickle.done:
                continue
            due = plan.start + (tick + index / count) * interval
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            if time.time() >= plan.hold_end:
                break
            piece = body[trickle.sent : min(trickle.sent + PIECE, plan.size - 1)]
            try:
                sent = trickle.sock.send(piece)
            except BlockingIOError:
                sent = 0
            except OSError as error:
                trickle.done = True
                errors.append(f"trickle {index} send: {error!r}")
                continue
            sends += 1
            stalled += sent < len(piece)
            trickle.sent += sent
        tick += 1
    unread = _unread_server_sockets(plan.port)
    # The rest of every body at full speed; every upload must end 204 at its length.
    ok = _finish(trickles, body, plan.size, errors)
    for trickle in trickles:
        trickle.sock.close()
    out.send(
        {
            "connected": connected,
            "sends": sends,
            "short_sends": stalled,
            "unread_bodies": unread,
            "finished_ok": ok,
            "errors": errors,
        }
    )
    out.close()


def _unread_server_sockets(port: int) -> int:
    """Server-side connections from the trickling clients' addresses (127.1.x.y) with
    more than ``UNREAD`` bytes waiting in their receive queue."""
    unread = 0
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.split(":")[1], 16) != port or fields[3] != "01":  # ESTABLISHED
                continue
            remote_ip = bytes.fromhex(remote.split(":")[0])[::-1]  # little-endian IPv4
            if remote_ip[:2] != b"\x7f\x01":
                continue
            if int(queues.split(":")[1], 16) > UNREAD:
                unread += 1
    return unread


def _finish(trickles: list[_Trickle], body: bytes, size: int, errors: list[str]) -> int:
    selector = selectors.DefaultSelector()
    for index, trickle in enumerate(trickles):
        if not trickle.done:
            selector.register(trickle.sock, selectors.EVENT_WRITE | selectors.EVENT_READ, index)
    deadline = time.time() + FINISH_TIMEOUT
    ok = 0
    while selector.get_map() and time.time() < deadline:
        for key, events in selector.select(timeout=1.0):
            index = key.data
            trickle = trickles[index]
            try:
                if events & selectors.EVENT_WRITE and trickle.sent < size:
                    trickle.sent += trickle.sock.send(body[trickle.sent : trickle.sent + 256 * KiB])
                    if trickle.sent >= size:
                        selector.modify(trickle.sock, selectors.EVENT_READ, index)
                if events & selectors.EVENT_READ:
                    data = trickle.sock.recv(64 * KiB)
                    trickle.buf += data
                    if not data or b"\r\n\r\n" in trickle.buf:
                        selector.unregister(trickle.sock)
                        head = trickle.buf.split(b"\r\n\r\n", 1)[0].decode("latin-1")
                        status = head.split(" ", 2)[1] if head.count(" ") >= 1 else "none"
                        offset = next(
                            (
                                line.split(":", 1)[1].strip()
                                for line in head.split("\r\n")
                                if line.lower().startswith("upload-offset:")
                            ),
                            None,
                        )
                        early = "" if trickle.sent >= size else f" after {trickle.sent} bytes"
                        if status == "204" and offset == str(size) and not early:
                            ok += 1
                        else:
                            errors.append(
                                f"trickle {index}: answered {status} Upload-Offset {offset}{early}"
                            )
            except BlockingIOError:
                continue
            except OSError as error:
                selector.unregister(trickle.sock)
                errors.append(f"trickle {index} finish: {error!r}")
    if selector.get_map():
        errors.append(f"{len(selector.get_map())} uploads not answered in {FINISH_TIMEOUT:g} s")
    selector.close()
    return ok


# --------------------------------------------------------------------------- probe


def _probe_process(plan: Plan, head_path: str, out: Any) -> None:
    latencies: dict[str, list[float]] = {"head": [], "small": []}
    errors: list[str] = []
    lock = threading.Lock()
    payload = os.urandom(SMALL)
    counter = iter(range(10**9))

    def timed(kind: str, expect: int, conn: hc.Connection, *request: Any) -> hc.Response | None:
        """One probe request on ``conn``, its latency recorded under ``kind``."""
        started = time.perf_counter()
        try:
            response = conn.request(*request)
        except (OSError, hc.HTTPError) as error:
            with lock:
                latencies[kind].append(PROBE_TIMEOUT * 1000)
                errors.append(f"{kind}: {type(error).__name__}: {error}"[:200])
            return None
        with lock:
            latencies[kind].append((time.perf_counter() - started) * 1000)
            if response.status != expect:
                errors.append(f"{kind}: answered {response.status}")
        return response if response.status == expect else None

    def connection() -> hc.Connection:
        conn = hc.Connection("127.0.0.1", plan.port, timeout=PROBE_TIMEOUT)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(PROBE_TIMEOUT)
        sock.bind((address(next(counter) % 60000, 2), 0))
        sock.connect(("127.0.0.1", plan.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock = sock
        return conn

    def head_loop() -> None:
        while time.time() < plan.hold_end:
            began = time.time()
            try:
                with connection() as conn:
                    timed("head", 200, conn, "HEAD", head_path, hc.tus())
            except OSError as error:
                with lock:
                    errors.append(f"head connect: {error!r}")
            time.sleep(max(0.0, HEAD_EVERY - (time.time() - began)))

    def small_loop() -> None:
        while time.time() < plan.hold_end:
            began = time.time()
            try:
                with connection() as conn:
                    length = hc.tus(("Upload-Length", str(SMALL)))
                    created = timed("small", 201, conn, "POST", plan.files_path, length)
                    location = created.header("Location") if created else None
                    if location:
                        path = hc.path_of(location)
                        headers = hc.patch_headers(0, SMALL)
                        timed("small", 204, conn, "PATCH", path, headers, payload)
                        timed("small", 200, conn, "HEAD", path, hc.tus())
            except OSError as error:
                with lock:
                    errors.append(f"small connect: {error!r}")
            time.sleep(max(0.0, SMALL_EVERY - (time.time() - began)))

    time.sleep(max(0.0, plan.hold_start - time.time()))
    threads = [threading.Thread(target=loop) for loop in (head_loop, small_loop)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.send((latencies, errors))
    out.close()


# --------------------------------------------------------------------------- the run


def capacity(target: Target, count: int, hold: float, head_path: str) -> dict[str, Any]:
    """``count`` slow uploads held in flight for ``hold`` seconds, with the probe."""
    raise_fd_limit(count + 1024)
    ramp = max(5.0, count / 100)  # time for the server to start count PATCHes
    size = int(RATE * (ramp + hold + SETTLE + 5))
    paths = _create(target, count, size)
    ctx = mp.get_context("fork")
    now = time.time()
    plan = Plan(
        target.port,
        target.files_path,
        paths,
        size,
        start=now + 0.5,
        hold_start=now + 0.5 + ramp + SETTLE,
        hold_end=now + 0.5 + ramp + SETTLE + hold,
    )
    pids = target.pids()
    idle = tree_rss(pids)
    trickle_rx, trickle_tx = ctx.Pipe(duplex=False)
    probe_rx, probe_tx = ctx.Pipe(duplex=False)
    trickler = ctx.Process(target=_trickle_process, args=(plan, trickle_tx))
    prober = ctx.Process(target=_probe_process, args=(plan, head_path, probe_tx))
    trickler.start()
    prober.start()
    trickle_tx.close()
    probe_tx.close()
    time.sleep(max(0.0, plan.hold_start - time.time()))
    cpu = tree_cpu(pids)
    with RssSampler(pids, interval=0.25) as rss:
        latencies, probe_errors = probe_rx.recv()
        cpu = tree_cpu(pids) - cpu
        rss_at_hold_end = tree_rss(pids)
    trickled = trickle_rx.recv()
    trickler.join()
    prober.join()
    _delete(target, paths)
    probe = latencies["head"] + latencies["small"]
    errors = probe_errors + trickled["errors"]
    return {
        "uploads": count,
        "connected": trickled["connected"],
        "hold_s": hold,
        "probe_requests": len(probe),
        "probe_p50_ms": percentile(probe, 0.5),
        "probe_p99_ms": percentile(probe, 0.99),
        "probe_max_ms": max(probe) if probe else None,
        "head_p99_ms": percentile(latencies["head"], 0.99),
        "small_p99_ms": percentile(latencies["small"], 0.99),
        "probe_errors": len(probe_errors),
        "unread_bodies": trickled["unread_bodies"],
        "finished_ok": trickled["finished_ok"],
        "errors": len(errors) + trickled["unread_bodies"],
        "first_errors": errors[:5],
        "rss_MB": rss.peak / 1e6,
        "rss_hold_end_MB": rss_at_hold_end / 1e6,
        "rss_idle_MB": idle / 1e6,
        "rss_per_upload_KB": (rss.peak - idle) / 1e3 / count,
        "server_cpu_share": cpu / hold,
        "short_sends": trickled["short_sends"],
        "probe_median_ms": statistics.median(probe) if probe else None,
    }


def _create(target: Target, count: int, size: int) -> list[str]:
    """``count`` uploads of ``size`` bytes, created by 8 clients at once."""

    def create_some(share: range) -> list[str]:
        with hc.Connection("127.0.0.1", target.port, timeout=60) as conn:
            return [hc.create(conn, target.files_path, size) for _ in share]

    shares = [range(i, count, 8) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        return [path for paths in pool.map(create_some, shares) for path in paths]


def _delete(target: Target, paths: list[str]) -> None:
    """Remove the uploads (their files would crowd the page cache of later runs)."""

    def delete_some(share: list[str]) -> None:
        with hc.Connection("127.0.0.1", target.port, timeout=60) as conn:
            for path in share:
                for _ in range(20):
                    with contextlib.suppress(OSError, hc.HTTPError):
                        if conn.request("DELETE", path, hc.tus()).status < 400:
                            break
                    conn.close()
                    time.sleep(0.1)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(delete_some, [paths[i::8] for i in range(8)]))
