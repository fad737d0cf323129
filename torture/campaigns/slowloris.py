"""8. Slowloris: a few hundred sockets of each slow kind against the shipped config, while
a probe measures how long everybody else waits.

- heads: sockets that send half a request head, then a byte every ``interval`` s. The
  header deadline must close each (408) within UPLOADSVC_HEADER_TIMEOUT of its accept,
  and none may hold a thread meanwhile; a closed one reconnects and starts over.
- bodies: uploads from ``body_clients`` loopback addresses of their own (a distributed
  attacker), each a PATCH whose body comes a byte every ``interval`` s. The minimum
  rate must end each one, answering the exact offset with every byte that came kept;
  the client then goes on trickling from there.
- crowd: ``crowd`` uploads from one address, all trickled. The per-client cap must
  answer 503 with Retry-After to all but workers x cap of them (those go on and are
  ended by the minimum rate); a refused one tries again a second later.

A probe (slow.probe_loop) creates and HEADs an upload every 100 ms on fresh connections
from 127.0.0.1 throughout: nothing it sends may go unanswered (``PROBE_LIMIT``); its
p50/p99/max go in the README. At the end every trickled upload is finished at full
speed from its offset, the way tus-js-client resumes, and verified.

The full profile runs the shipped settings (header deadline 10 s, 1 KiB/s over 20 s
after 10 s, 32 uploads per client per worker); the fast one shortens the timers.
"""

from __future__ import annotations

import contextlib
import functools
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..context import Context, running
from ..report import Result, percentiles, timed
from ..server import Server
from ..tus import Client, patch_head
from ..wire import Conn, Hang, KiB
from . import slow

NAME = "slowloris"
WORKERS = 2  # the shipped default (gunicorn.conf.py)
SHIPPED = {
    "UPLOADSVC_HEADER_TIMEOUT": 10.0,
    "UPLOADSVC_MIN_RATE_GRACE": 10.0,
    "UPLOADSVC_MIN_RATE_WINDOW": 20.0,
    "UPLOADSVC_MAX_UPLOADS_PER_CLIENT": 32.0,
}
SLACK = 3.0  # seconds past a deadline before its miss counts (the sweep runs each second)
CROWD_ADDRESS = "127.3.0.1"


@dataclass(frozen=True)
class Params:
    heads: int = 300
    body_clients: int = 100
    crowd: int = 300
    interval: float = 1.0  # seconds between one socket's bytes
    seconds: float = 45.0  # the measured window: past grace + window of the minimum rate
    size: int = 64 * KiB  # each trickled upload's length (never reached at this pace)
    env: dict[str, str] = field(default_factory=dict)


FULL = Params()
FAST = Params(
    heads=300,
    body_clients=40,
    crowd=150,
    seconds=10.0,
    env={
        "UPLOADSVC_HEADER_TIMEOUT": "2",
        "UPLOADSVC_MIN_RATE_GRACE": "1",
        "UPLOADSVC_MIN_RATE_WINDOW": "2",
    },
)


@dataclass(eq=False)
class Slow:
    """One slow socket: what it trickles, and for bodies which upload from which offset."""

    kind: str  # "head", "body" or "crowd"
    conn: Conn
    payload: bytes
    opened: float
    source: str
    upload: int = -1  # index into the uploads, for bodies
    offset: int = 0  # where this PATCH started
    sent: int = 0  # bytes of payload sent
    due: float = 0.0


@dataclass
class Tally:
    heads_closed: int = 0
    heads_408: int = 0
    head_lifetime_max: float = 0.0
    bodies_ended: int = 0
    body_lifetime_max: float = 0.0
    crowd_refused: int = 0
    crowd_ended: int = 0
    crowd_admitted_peak: int = 0
    opened: int = 0


def run(ctx: Context, params: Params | None = None) -> Result:
    params = params or (FAST if ctx.fast else FULL)
    result = Result(NAME)
    rng = ctx.rng(NAME)
    settings = {**SHIPPED, **{key: float(value) for key, value in params.env.items()}}
    header_timeout = settings["UPLOADSVC_HEADER_TIMEOUT"]
    rate_deadline = settings["UPLOADSVC_MIN_RATE_GRACE"] + settings["UPLOADSVC_MIN_RATE_WINDOW"]
    cap = int(settings["UPLOADSVC_MAX_UPLOADS_PER_CLIENT"])
    latencies: list[float] = []
    failures: list[str] = []
    tally = Tally()
    with timed(result), running(ctx, result, NAME, data_dir=None, **params.env) as server:
        client = Client(server, result, allowed_5xx=frozenset({503}))
        count = params.body_clients + params.crowd
        uploads: list[tuple[str, bytes]] = []
        for index in range(count):
            upload_id = client.create(params.size, what=f"upload {index} POST")
            if upload_id is None:
                return result
            uploads.append((upload_id, rng.randbytes(params.size)))
        offsets = [0] * count  # what the server said it kept, per upload
        attack = Attack(server, params, uploads, offsets, result, tally)
        stop = threading.Event()
        probe = threading.Thread(
            target=slow.probe_loop,
            args=(server, result, slow.Params(), stop, latencies, failures),
            daemon=True,
        )
        try:
            for index in range(params.heads):
                attack.open_head(index)
            for index in range(params.body_clients):
                attack.open_body(index, slow.client_address(index, block=2))
            for index in range(params.body_clients, count):
                attack.open_body(index, CROWD_ADDRESS)
            probe.start()
            attack.loop(params.seconds)
        finally:
            stop.set()
            probe.join(timeout=slow.PROBE_LIMIT * 3)
            attack.close_all()
        result.count(faults=tally.opened)
        # Every trickled upload goes on at full speed from where the server says it is.
        for index, (upload_id, data) in enumerate(uploads):
            what = f"upload {index}"
            if client.finish(upload_id, data, what=what):
                client.verify(upload_id, data, what=what)
    for failure in failures[:10]:
        result.hang(failure)
    if len(failures) > 10:
        result.count(hangs=len(failures) - 10)
    # The defenses did their work, in time.
    if params.heads and params.seconds > header_timeout + SLACK and not tally.heads_closed:
        result.problem("the header deadline closed no half-sent head")
    if tally.head_lifetime_max > header_timeout + SLACK:
        result.problem(f"a half-sent head stayed open {tally.head_lifetime_max:.1f} s")
    if params.body_clients and params.seconds > rate_deadline + SLACK and not tally.bodies_ended:
        result.problem("the minimum rate ended no trickled body")
    if tally.body_lifetime_max > rate_deadline + params.seconds:
        result.problem(f"a trickled body stayed open {tally.body_lifetime_max:.1f} s")
    if params.crowd > WORKERS * cap and not tally.crowd_refused:
        result.problem("the per-client cap refused no upload from the crowd's address")
    if tally.crowd_admitted_peak > WORKERS * cap:
        result.problem(f"{tally.crowd_admitted_peak} uploads of one address went on at once")
    result.figures.update(
        {
            "probe_answers": len(latencies),
            "probe_failures": len(failures),
            "heads_closed": tally.heads_closed,
            "heads_408": tally.heads_408,
            "head_open_max_s": round(tally.head_lifetime_max, 1),
            "bodies_ended": tally.bodies_ended,
            "body_open_max_s": round(tally.body_lifetime_max, 1),
            "crowd_refused": tally.crowd_refused,
            "crowd_ended": tally.crowd_ended,
            "crowd_admitted_peak": tally.crowd_admitted_peak,
        }
    )
    result.figures.update(percentiles(latencies, "probe"))
    return result


class Attack:
    """Every slow socket, trickled from one thread; answers are read as they come."""

    def __init__(
        self,
        server: Server,
        params: Params,
        uploads: list[tuple[str, bytes]],
        offsets: list[int],
        result: Result,
        tally: Tally,
    ) -> None:
        self.server = server
        self.params = params
        self.uploads = uploads
        self.offsets = offsets
        self.result = result
        self.tally = tally
        self.selector = selectors.DefaultSelector()
        self.sockets: set[Slow] = set()
        self.retry: list[tuple[float, int, str]] = []  # (when, upload, source)

    # ------------------------------------------------------------------ opening

    def _open(self, slow_sock: Slow, first: bytes) -> None:
        slow_sock.conn.send(first)
        slow_sock.due = time.monotonic() + self.params.interval
        self.sockets.add(slow_sock)
        self.selector.register(slow_sock.conn.sock, selectors.EVENT_READ, slow_sock)
        self.tally.opened += 1

    def open_head(self, index: int) -> None:
        target = f"/files/{'0' * 32}"
        head = f"PATCH {target} HTTP/1.1\r\nHost: {self.server.port}\r\nX-Pad: ".encode()
        conn = Conn(self.server.port, timeout=30)
        # The trickled rest never ends the head (no CRLF), and stays far under 64 KiB.
        self._open(Slow("head", conn, b"a" * 4096, time.monotonic(), "127.0.0.1"), head)

    def open_body(self, upload: int, source: str) -> None:
        upload_id, data = self.uploads[upload]
        offset = self.offsets[upload]
        conn = Conn(self.server.port, timeout=30, source=source)
        kind = "crowd" if source == CROWD_ADDRESS else "body"
        head = patch_head(upload_id, offset, len(data) - offset, host=conn.host)
        body = data[offset:]
        self._open(Slow(kind, conn, body, time.monotonic(), source, upload, offset), head)

    # ------------------------------------------------------------------ the loop

    def loop(self, seconds: float) -> None:
        started = time.monotonic()
        end = started + seconds
        peak_at = started + min(3.0, seconds / 2)
        for _ in range(int(seconds * 5000) + 1000):  # bounded; passes take 0.2 to 20 ms
            now = time.monotonic()
            if now >= end:
                break
            for key, _events in self.selector.select(timeout=0.02):
                self._answered(key.data)
            now = time.monotonic()
            for slow_sock in [s for s in self.sockets if s.due <= now]:
                self._trickle(slow_sock, now)
            for when, upload, source in [r for r in self.retry if r[0] <= now]:
                self.retry.remove((when, upload, source))
                self._reopen(functools.partial(self.open_body, upload, source))
            if now >= peak_at and not self.tally.crowd_admitted_peak:
                # The refusals are in by now: the crowd's sockets still open went on.
                self.tally.crowd_admitted_peak = sum(
                    s.kind == "crowd" and now - s.opened > 1.0 for s in self.sockets
                )

    def _trickle(self, slow_sock: Slow, now: float) -> None:
        slow_sock.due = now + self.params.interval
        if slow_sock.sent >= len(slow_sock.payload):
            return
        try:
            slow_sock.conn.send(slow_sock.payload[slow_sock.sent : slow_sock.sent + 1])
        except OSError:
            self._answered(slow_sock)  # closed: read what it said
            return
        slow_sock.sent += 1

    def _answered(self, slow_sock: Slow) -> None:
        if slow_sock not in self.sockets:
            return
        self._forget(slow_sock)
        lifetime = time.monotonic() - slow_sock.opened
        try:
            reply = slow_sock.conn.read_reply(timeout=5)
        except (Hang, OSError) as error:
            self.result.hang(f"{slow_sock.kind}: readable but no answer ({error!r})")
            slow_sock.conn.close()
            return
        slow_sock.conn.close()
        tally = self.tally
        if slow_sock.kind == "head":
            tally.heads_closed += 1
            tally.heads_408 += reply.status == 408
            tally.head_lifetime_max = max(tally.head_lifetime_max, lifetime)
            if reply.status not in (None, 408):
                self.result.problem(f"half-sent head: answered {reply}")
            self._reopen(lambda: self.open_head(0))
            return
        what = f"upload {slow_sock.upload} ({slow_sock.kind})"
        if reply.status == 503 and reply.offset is None:
            # The per-client cap: refused before a byte of the body was read.
            if reply.header("Retry-After") is None:
                self.result.problem(f"{what}: 503 without Retry-After")
            tally.crowd_refused += slow_sock.kind == "crowd"
            if slow_sock.kind != "crowd":
                self.result.problem(f"{what}: refused by the cap from an address of its own")
        elif reply.status == 503 and reply.offset is not None:
            # Ended by the minimum rate: every byte that came is kept. A byte or two
            # sent as the server shut the read side may not have been read.
            expected = slow_sock.offset + slow_sock.sent
            if not expected - 2 <= reply.offset <= expected:
                self.result.mismatch(f"{what}: ended at {reply.offset}, {expected} were sent")
            self.offsets[slow_sock.upload] = reply.offset
            if slow_sock.kind == "crowd":
                tally.crowd_ended += 1
            else:
                tally.bodies_ended += 1
                tally.body_lifetime_max = max(tally.body_lifetime_max, lifetime)
        elif reply.status in (409, 423):
            pass  # the previous PATCH's end not yet recorded: go on from HEAD's offset
        else:
            self.result.problem(f"{what}: answered {reply} after {lifetime:.1f} s")
            return
        # A client goes on: at once after a cut, a second after a refusal.
        delay = 1.0 if reply.offset is None else 0.0
        self.retry.append((time.monotonic() + delay, slow_sock.upload, slow_sock.source))

    def _reopen(self, opener: Callable[[], None]) -> None:
        try:
            opener()
        except OSError as error:
            self.result.problem(f"could not reconnect: {error!r}")

    def _forget(self, slow_sock: Slow) -> None:
        self.sockets.discard(slow_sock)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(slow_sock.conn.sock)

    def close_all(self) -> None:
        for slow_sock in list(self.sockets):
            self._forget(slow_sock)
            slow_sock.conn.close()
        self.selector.close()
