"""3. Server stop: SIGTERM to the gunicorn master while 8 uploads are in flight.

A last round reloads instead (SIGHUP: new workers start, the old ones stop
gracefully): every upload resumes at once, on the new workers, without a restart.

Half the PATCHes are streaming when the signal comes, half are half-open (silent, never
closed). The stop must record every offset before the workers go (the registry and the
data files agree before any restart) and finish well inside graceful_timeout. After a
restart on the same data dir, each HEAD offset must equal the bytes stored (and be no
more than was sent), and every upload must finish with the sha256 of what was sent.
A client that gets an answer must get one the shipped clients retry: 503 with
Retry-After and its offset (README: "Who ends a body").
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass

from ..context import Context, deadline_after, running
from ..report import Result, timed
from ..server import Server
from ..tus import Client, patch_head
from ..wire import Conn, Hang, KiB, MiB

NAME = "stop"
GRACEFUL_TIMEOUT = 30.0  # gunicorn.conf.py


@dataclass(frozen=True)
class Params:
    rounds: int = 6
    uploads: int = 8
    max_size: int = 24 * MiB
    budget: float = 240.0


FULL = Params()
FAST = Params(rounds=1, max_size=4 * MiB, budget=60.0)


class Sender(threading.Thread):
    """One PATCH in flight: streaming in small pieces, or silent after a prefix."""

    def __init__(self, server: Server, upload_id: str, data: bytes, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.upload_id = upload_id
        self.data = data
        self.silent = rng.random() < 0.5
        self.prefix = rng.randint(0, len(data) // 2)
        self.piece = rng.choice([4 * KiB, 32 * KiB, 128 * KiB])
        self.sent = 0
        self.started = threading.Event()
        self.stop = threading.Event()
        self.answer: str = "none"
        self.told_offset: int | None = None
        self.retry_after: str | None = None

    def run(self) -> None:
        try:
            with Conn(self.server.port, timeout=60) as conn:
                conn.send(patch_head(self.upload_id, 0, len(self.data), host=conn.host))
                conn.send(self.data[: self.prefix])
                self.sent = self.prefix
                conn.wait_delivered()
                self.started.set()
                try:
                    while not self.silent and self.sent < len(self.data) - 1:
                        if self.stop.is_set():
                            break
                        end = min(self.sent + self.piece, len(self.data) - 1)
                        try:
                            conn.send(self.data[self.sent : end])
                        finally:
                            self.sent = end  # at most this much went out
                        time.sleep(0.01)
                except OSError:
                    pass  # the server ended the body; its answer may be waiting (as urllib3)
                self.started.set()
                try:
                    reply = conn.read_reply(timeout=GRACEFUL_TIMEOUT + 15)
                    self.answer = str(reply.status)
                    self.told_offset = reply.offset
                    self.retry_after = reply.header("Retry-After")
                except Hang:
                    self.answer = "hang"
        except OSError as error:
            self.answer = type(error).__name__
        finally:
            self.started.set()


def run(ctx: Context, params: Params | None = None) -> Result:
    params = params or (FAST if ctx.fast else FULL)
    result = Result(NAME)
    rng = ctx.rng(NAME)
    stop_times: list[float] = []
    told = 0
    answers: dict[str, int] = {}  # what the clients in flight got: status, or how it ended
    left = deadline_after(params.budget)
    with timed(result), running(ctx, result, NAME) as server:
        client = Client(server, result)
        for round_no in range(params.rounds):
            if left() <= 0:
                result.hang(f"round {round_no}: budget of {params.budget:g} s used up")
                break
            senders = uploads_in_flight(server, client, rng, params, f"round {round_no} POST")
            result.count(faults=1)
            took = server.stop()
            stop_times.append(took)
            for sender in senders:
                sender.stop.set()
                sender.join(timeout=GRACEFUL_TIMEOUT + 20)
                if sender.is_alive():
                    result.hang(f"round {round_no}: a client still waiting after the stop")
            if took >= GRACEFUL_TIMEOUT:
                result.problem(f"round {round_no}: stop took {took:.1f} s (graceful_timeout)")
            # Before any restart: the stop itself recorded every offset.
            rows = server.rows()
            for sender in senders:
                what = f"round {round_no} upload {sender.upload_id[:8]}"
                row = rows.get(sender.upload_id)
                size = server.data_file(sender.upload_id).stat().st_size
                if row is None or row.offset != size:
                    result.mismatch(
                        f"{what}: after the stop the registry says {row}, file {size} B"
                    )
                check_answer(result, sender, what, answers)
                if sender.told_offset is not None:
                    told += 1
                    if sender.told_offset != size:
                        result.mismatch(f"{what}: told offset {sender.told_offset}, stored {size}")
            server.start()
            for sender in senders:
                resume(server, client, result, sender, f"round {round_no} upload")
        if left() > 0:
            reload_s = reload_round(server, client, result, rng, params, answers)
            result.figures["reload_s"] = round(reload_s, 2)
    result.figures["stop_s"] = [round(t, 2) for t in stop_times]
    result.figures["clients_told_offset"] = told
    result.figures["answers"] = answers
    return result


def check_answer(result: Result, sender: Sender, what: str, answers: dict[str, int]) -> None:
    """Count what the client in flight got; a status must be one the clients retry."""
    answers[sender.answer] = answers.get(sender.answer, 0) + 1
    if sender.answer.isdigit() and (sender.answer, sender.retry_after) != ("503", "1"):
        # The body never ends on its own: any answer is the server's cut.
        result.problem(
            f"{what}: the server answered {sender.answer} "
            f"(Retry-After {sender.retry_after}), not a retryable 503"
        )


def uploads_in_flight(
    server: Server, client: Client, rng: random.Random, params: Params, what: str
) -> list[Sender]:
    """Create ``params.uploads`` uploads and start a sender on each; return once each
    is sending and a random moment has passed, so the fault lands mid-body."""
    uploads: dict[str, bytes] = {}
    for _ in range(params.uploads):
        data = rng.randbytes(rng.randint(256 * KiB, params.max_size))
        upload_id = client.create(len(data), what=what)
        if upload_id is not None:
            uploads[upload_id] = data
    senders = [Sender(server, uid, data, rng) for uid, data in uploads.items()]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.started.wait(30)
    time.sleep(rng.uniform(0.05, 0.5))
    return senders


def reload_round(
    server: Server,
    client: Client,
    result: Result,
    rng: random.Random,
    params: Params,
    answers: dict[str, int],
) -> float:
    """SIGHUP with uploads in flight; the seconds until only new workers were left."""
    old = set(server.worker_pids())
    senders = uploads_in_flight(server, client, rng, params, "reload POST")
    result.count(faults=1)
    started = time.monotonic()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    replaced = False
    while time.monotonic() - started < GRACEFUL_TIMEOUT + 10:
        workers = set(server.worker_pids())
        if not workers & old and len(workers) >= server.expected_workers:
            replaced = True
            break
        time.sleep(0.05)
    took = time.monotonic() - started
    if not replaced:
        result.hang("reload: the old workers were still there after graceful_timeout")
    for sender in senders:
        sender.stop.set()
        sender.join(timeout=GRACEFUL_TIMEOUT + 20)
        if sender.is_alive():
            result.hang("reload: a client still waiting after the reload")
    for sender in senders:
        check_answer(result, sender, f"reload upload {sender.upload_id[:8]}", answers)
        offset = resume(server, client, result, sender, "reload upload")
        if offset is not None and sender.told_offset not in (None, offset):
            result.mismatch(
                f"reload upload {sender.upload_id[:8]}: told offset {sender.told_offset},"
                f" HEAD {offset}"
            )
    return took


def resume(
    server: Server, client: Client, result: Result, sender: Sender, label: str
) -> int | None:
    """Resume an upload a fault cut as a client would (HEAD, then the rest), checking
    that HEAD's offset is what is stored, at most what was sent and a prefix of it, and
    that the finished upload is intact; HEAD's offset, or None when there was none."""
    what = f"{label} {sender.upload_id[:8]}"
    offset = client.resume_offset(sender.upload_id, what=what)
    if offset is None:
        return None
    size = server.data_file(sender.upload_id).stat().st_size
    if offset != size or offset > sender.sent:
        result.mismatch(f"{what}: HEAD {offset}, stored {size}, sent {sender.sent}")
    elif not client.stored_prefix_ok(sender.upload_id, sender.data, offset):
        result.mismatch(f"{what}: data file is not the first {offset} bytes sent")
    if client.finish(sender.upload_id, sender.data, what=what):
        client.verify(sender.upload_id, sender.data, what=what)
    return offset
