"""7. Many slow clients: 1,000 uploads (the fast profile: 128) trickling a few KiB/s while
a probe measures how long everybody else waits.

Every upload in flight holds a gunicorn thread for its whole PATCH. While the trickling
clients hold theirs, a probe creates an upload and HEADs it every 100 ms on fresh
connections; each answer's latency is recorded (p50/p99/max). A probe answer slower than
``PROBE_LIMIT`` counts as a hang: the server let slow clients lock everybody else out.
Each trickling client connects from a loopback address of its own (127.1.x.y): they are
honest, different people, each under the per-client cap (the slowloris campaign covers
one address with many uploads).
At the end every trickling upload sends the rest of its body at full speed, and all of
them must finish intact.
"""

from __future__ import annotations

import contextlib
import re
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..context import Context, running
from ..report import Result, percentiles, timed
from ..server import Server
from ..tus import Client, patch_head
from ..wire import Conn, Hang, KiB

NAME = "slow"
PROBE_LIMIT = 5.0  # seconds: slower than this, a probe answer counts as a hang


@dataclass(frozen=True)
class Params:
    clients: int = 1000  # README "Capacity": what the shipped configuration holds
    rate: int = 4 * KiB  # bytes per second per client
    piece: int = 512  # bytes per send
    seconds: float = 30.0  # the measured window
    probe_every: float = 0.1


FULL = Params()
FAST = Params(clients=128, seconds=8.0)


def client_address(index: int, block: int = 1) -> str:
    """A loopback address of its own for client ``index`` (127.<block>.x.y): honest
    clients are many people, each under UPLOADSVC_MAX_UPLOADS_PER_CLIENT."""
    return f"127.{block}.{index // 250}.{1 + index % 250}"


class Trickle:
    def __init__(self, server: Server, upload_id: str, data: bytes, source: str) -> None:
        self.upload_id = upload_id
        self.data = data
        self.conn = Conn(server.port, timeout=30, source=source)
        self.conn.send(patch_head(upload_id, 0, len(data), host=self.conn.host))
        self.sent = 0

    def step(self, amount: int) -> None:
        piece = self.data[self.sent : min(self.sent + amount, len(self.data))]
        self.conn.send(piece)
        self.sent += len(piece)


def _raise_open_files(want: int) -> None:
    """One socket per trickling client (and the probe's): past the soft limit (often
    1,024) connect fails. Raised towards the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def run(ctx: Context, params: Params | None = None) -> Result:
    params = params or (FAST if ctx.fast else FULL)
    _raise_open_files(params.clients + 256)
    result = Result(NAME)
    rng = ctx.rng(NAME)
    latencies: list[float] = []
    failures: list[str] = []
    rss = 0
    with timed(result), running(ctx, result, NAME) as server:
        client = Client(server, result)
        # Long enough that no upload finishes inside the window.
        size = int(params.rate * (params.seconds + 20))
        trickles: list[Trickle] = []
        try:
            # Every upload is created first: once the trickles hold their threads, even
            # this would wait.
            created = []
            for index in range(params.clients):
                upload_id = client.create(size, what=f"trickle {index} POST")
                if upload_id is None:
                    return result
                created.append(upload_id)
            for index, upload_id in enumerate(created):
                data = rng.randbytes(size)
                trickles.append(Trickle(server, upload_id, data, client_address(index)))
            result.count(faults=len(trickles))
            stop = threading.Event()
            probe = threading.Thread(
                target=probe_loop,
                args=(server, result, params, stop, latencies, failures),
                daemon=True,
            )
            probe.start()
            trickle_loop(trickles, params, result)
            rss = sum(_rss_kib(pid) for pid in server.worker_pids())
            stop.set()
            probe.join(timeout=PROBE_LIMIT * 3)
            # Everything that was sent slowly must arrive whole: send the rest at once.
            for trickle in trickles:
                with contextlib.suppress(OSError):
                    trickle.step(len(trickle.data))
            for index, trickle in enumerate(trickles):
                what = f"trickle {index}"
                try:
                    reply = trickle.conn.read_reply(timeout=60)
                except Hang:
                    result.hang(f"{what}: no answer after the whole body")
                    continue
                client.check(reply, what)
                if reply.status != 204:
                    result.problem(f"{what}: answered {reply}")
                    continue
                client.verify(trickle.upload_id, trickle.data, what=what)
        finally:
            for trickle in trickles:
                trickle.conn.close()
    for failure in failures[:10]:
        result.hang(failure)
    if len(failures) > 10:
        result.count(hangs=len(failures) - 10)
    result.figures["probe_answers"] = len(latencies)
    result.figures["probe_failures"] = len(failures)
    result.figures["workers_rss_mib"] = round(rss / 1024)
    result.figures.update(percentiles(latencies, "probe"))
    return result


def _rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) if match else 0


def trickle_loop(trickles: list[Trickle], params: Params, result: Result) -> None:
    """Send every client's next piece on schedule, staggered, for ``params.seconds``."""
    interval = params.piece / params.rate
    started = time.monotonic()
    count = len(trickles)
    ticks = 0
    while time.monotonic() - started < params.seconds:
        for index, trickle in enumerate(trickles):
            due = started + (ticks + index / count) * interval
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            try:
                trickle.step(params.piece)
            except OSError as error:
                result.problem(f"trickle {index}: {error!r}")
        ticks += 1


def probe_loop(
    server: Server,
    result: Result,
    params: Params,
    stop: threading.Event,
    latencies: list[float],
    failures: list[str],
) -> None:
    """Every ``probe_every`` s: create an upload, then HEAD it, each on a new connection."""
    client = Client(server, result, timeout=PROBE_LIMIT)
    number = 0
    while not stop.is_set():
        number += 1
        began = time.monotonic()
        upload_id: str | None = None
        for method in ("POST", "HEAD"):
            started = time.monotonic()
            try:
                with Conn(server.port, timeout=PROBE_LIMIT) as conn:
                    if method == "POST":
                        reply = conn.request(
                            "POST", "/files/", [("Tus-Resumable", "1.0.0"), ("Upload-Length", "10")]
                        )
                    else:
                        reply = conn.request(
                            "HEAD", f"/files/{upload_id}", [("Tus-Resumable", "1.0.0")]
                        )
            except (Hang, OSError) as error:
                failures.append(
                    f"probe {number} {method}: no answer in {PROBE_LIMIT:g} s ({error!r})"
                )
                break
            latencies.append(time.monotonic() - started)
            client.check(reply, f"probe {number} {method}")
            if method == "POST":
                location = reply.header("Location")
                if reply.status != 201 or location is None:
                    result.problem(f"probe {number}: POST answered {reply}")
                    break
                upload_id = location.rsplit("/", 1)[-1]
            elif reply.status != 200:
                result.problem(f"probe {number}: HEAD answered {reply}")
        stop.wait(max(0.0, params.probe_every - (time.monotonic() - began)))
