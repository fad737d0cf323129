"""1. Dropped clients: PATCHes cut at a random byte, then resumed like tus-js-client.

Each upload (0 B to tens of MiB) loses one to three PATCHes, each cut at a random byte
by one of:

- ``fin``: the client closes normally; every byte sent must be kept;
- ``rst``: SO_LINGER 0, the kernel resets; bytes in flight may be lost, never invented;
- ``stall``: a half-open client (no more bytes, never closed); the resuming HEAD must
  take the upload over from it (the takeover time is measured) and see every byte;
- ``timeout``: a silent client on a server with a small ``UPLOADSVC_READ_TIMEOUT``: the
  server ends the body itself and answers the silent client with the offset.

After every drop, HEAD must never report more bytes than arrived (nor fewer than were
acknowledged before), and the data file must hold exactly those bytes of what was sent.
Every upload is then finished and its stored sha256 compared with what was sent.
"""

from __future__ import annotations

import functools
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ..context import Context, run_all, running
from ..report import Result, percentiles, timed
from ..server import Server
from ..tus import Client, patch_head
from ..wire import Conn, Hang, KiB, MiB, Reply

NAME = "dropped"


@dataclass(frozen=True)
class Params:
    uploads: int = 120
    max_size: int = 32 * MiB
    max_drops: int = 3
    parallel: int = 6
    read_timeout: float = 1.5
    budget: float = 420.0  # seconds; a campaign still running then is a hang


FULL = Params()
FAST = Params(uploads=16, max_size=2 * MiB, max_drops=2, parallel=4, budget=90.0)

MODES = ("fin", "rst", "stall")


def pick_size(rng: random.Random, max_size: int) -> int:
    roll = rng.random()
    if roll < 0.08:
        return 0
    if roll < 0.35:
        return rng.randint(1, 64 * KiB)
    if roll < 0.70:
        return rng.randint(64 * KiB, min(2 * MiB, max_size))
    return rng.randint(min(2 * MiB, max_size), max_size)


@dataclass
class Plan:
    index: int
    size: int
    seed: int
    modes: list[str]  # one per drop
    cuts: list[float]  # where each drop cuts its PATCH body, as a fraction


class Campaign:
    def __init__(self, ctx: Context, params: Params, result: Result) -> None:
        self.ctx = ctx
        self.params = params
        self.result = result
        self.takeovers: list[float] = []
        self.timeouts: list[float] = []
        self.lost_to_rst = 0
        self.told_offset = 0  # dropped clients still listening that were told their offset
        self.rst_before_app = 0  # resets that ended a PATCH before it reached the app
        self._guard = threading.Lock()

    def run_upload(self, plan: Plan, server: Server) -> None:
        client = Client(server, self.result)
        what = f"upload #{plan.index} ({plan.size} B)"
        data = random.Random(plan.seed).randbytes(plan.size)
        upload_id = client.create(plan.size, what=f"{what} POST")
        if upload_id is None:
            return
        held: list[Conn] = []  # half-open connections stay open until the upload is done
        try:
            offset = 0
            for mode, cut_at in zip(plan.modes, plan.cuts, strict=True):
                if offset >= plan.size:
                    break
                cut = min(plan.size - offset - 1, int(cut_at * (plan.size - offset)))
                new = self.drop(client, upload_id, data, offset, cut, mode, held, what)
                if new is None:
                    return
                offset = new
            if client.finish(upload_id, data, what=what):
                client.verify(upload_id, data, what=what)
        finally:
            for conn in held:
                conn.close()

    def drop(
        self,
        client: Client,
        upload_id: str,
        data: bytes,
        start: int,
        cut: int,
        mode: str,
        held: list[Conn],
        what: str,
    ) -> int | None:
        """One PATCH from ``start`` cut after ``cut`` body bytes; the offset after it."""
        server = client.server
        what = f"{what} {mode} cut at {start}+{cut}"
        body = data[start:]
        request_id = f"torture-{uuid.uuid4().hex}"
        conn = Conn(server.port, timeout=30)
        try:
            head = patch_head(
                upload_id, start, len(body), ("X-Request-ID", request_id), host=conn.host
            )
            conn.send(head + body[:cut])
            delivered = conn.wait_delivered() if mode != "rst" or cut % 2 else False
        except OSError as error:
            self.result.problem(f"{what}: sending failed: {error!r}")
            conn.close()
            return None
        self.result.count(faults=1)
        stalled_at = time.monotonic()
        told: Reply | None = None
        if mode == "fin":
            if cut % 2:
                conn.close()  # gone for good
            else:
                conn.half_close()  # FIN, but still listening for the answer
                told = self.answer(conn, 30, what)
                conn.close()
        elif mode == "rst":
            conn.abort()
        elif mode == "timeout":
            held.append(conn)
            # Nobody else asks for the upload: the server's read timeout must end it.
            told = self.answer(conn, self.params.read_timeout + 15, what)
            if told is not None:
                with self._guard:
                    self.timeouts.append(time.monotonic() - stalled_at)
        else:  # stall: half-open; the resuming HEAD must take the upload over
            held.append(conn)
            if not self.wait_until(lambda: server.lock_held(upload_id), 20):
                self.result.hang(f"{what}: the PATCH never took the upload's lock")
                return None
            began = time.monotonic()
            if client.resume_offset(upload_id, what=what) is None:
                return None
            with self._guard:
                self.takeovers.append(time.monotonic() - began)
            told = self.answer(conn, 5, what)
        if told is not None and told.status is not None:
            # A body the client ended is a plain 400; one the server ended (read timeout,
            # takeover) a 503 with Retry-After, which the clients we ship retry.
            expected = (400, None) if mode == "fin" else (503, "1")
            if (told.status, told.header("Retry-After")) == expected and told.offset == start + cut:
                with self._guard:
                    self.told_offset += 1
            else:
                self.result.problem(f"{what}: the dropped client was told {told}")
        # Only once the PATCH has ended is HEAD's answer final: a resume may otherwise
        # overtake a PATCH the server hasn't started yet (tus handles that with 409).
        # A reset can kill a request before it reaches the app: then it never logs.
        if not server.wait_finished(request_id, 5 if mode == "rst" else 30):
            if mode != "rst":
                self.result.hang(f"{what}: the dropped PATCH never ended")
                return None
            with self._guard:
                self.rst_before_app += 1
        offset = client.resume_offset(upload_id, what=what)
        if offset is None:
            return None
        if offset > start + cut:
            self.result.mismatch(f"{what}: HEAD reports {offset} bytes, only {start + cut} sent")
            return None
        if offset < start:
            self.result.mismatch(f"{what}: HEAD went back from {start} to {offset}")
            return None
        if offset < start + cut:
            if mode == "rst" and not delivered:
                with self._guard:
                    self.lost_to_rst += start + cut - offset
            else:
                self.result.mismatch(
                    f"{what}: {start + cut - offset} delivered bytes lost (HEAD {offset})"
                )
                return None
        if not client.stored_prefix_ok(upload_id, data, offset):
            self.result.mismatch(f"{what}: data file is not the first {offset} bytes sent")
            return None
        return offset

    def answer(self, conn: Conn, timeout: float, what: str) -> Reply | None:
        """What the server tells a dropped client that still listens (None: hung)."""
        try:
            return conn.read_reply(timeout=timeout)
        except Hang:
            self.result.hang(f"{what}: the dropped client got no answer in {timeout:g} s")
            return None

    @staticmethod
    def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


def make_plans(rng: random.Random, params: Params) -> list[Plan]:
    plans = []
    for index in range(params.uploads):
        size = pick_size(rng, params.max_size)
        drops = rng.randint(1, params.max_drops) if size else 0
        # A quarter of the uploads go to the server with the short read timeout.
        silent = rng.random() < 0.25
        modes = ["timeout" if silent else rng.choice(MODES) for _ in range(drops)]
        cuts = [rng.choice([0.0, rng.random(), rng.random(), 0.999999]) for _ in range(drops)]
        plans.append(Plan(index, size, rng.getrandbits(64), modes, cuts))
    return plans


def run(ctx: Context, params: Params | None = None) -> Result:
    params = params or (FAST if ctx.fast else FULL)
    result = Result(NAME)
    rng = ctx.rng(NAME)
    plans = make_plans(rng, params)
    campaign = Campaign(ctx, params, result)
    with (
        timed(result),
        running(ctx, result, "dropped-main") as main,
        running(
            ctx, result, "dropped-read-timeout", UPLOADSVC_READ_TIMEOUT=str(params.read_timeout)
        ) as slow,
    ):
        jobs = [
            functools.partial(campaign.run_upload, plan, slow if "timeout" in plan.modes else main)
            for plan in plans
        ]
        run_all(result, jobs, parallel=params.parallel, budget=params.budget, what=NAME)
    result.figures.update(
        {
            "uploads": len(plans),
            "bytes": sum(plan.size for plan in plans),
            "drops": dict(
                (mode, sum(p.modes.count(mode) for p in plans)) for mode in (*MODES, "timeout")
            ),
            "told_offset": campaign.told_offset,
            "lost_to_rst_bytes": campaign.lost_to_rst,
            "rst_before_app": campaign.rst_before_app,
        }
    )
    result.figures.update(percentiles(campaign.takeovers, "takeover"))
    result.figures.update(percentiles(campaign.timeouts, "read_timeout_end", unit="s"))
    return result
