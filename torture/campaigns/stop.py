"""3. Server stop: SIGTERM to the gunicorn master while 8 uploads are in flight.

Half the PATCHes are streaming when the signal comes, half are half-open (silent, never
closed). The stop must record every offset before the workers go (the registry and the
data files agree before any restart) and finish well inside graceful_timeout. After a
restart on the same data dir, each HEAD offset must equal the bytes stored (and be no
more than was sent), and every upload must finish with the sha256 of what was sent.
"""

from __future__ import annotations

import random
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

    def run(self) -> None:
        try:
            with Conn(self.server.port, timeout=60) as conn:
                conn.send(patch_head(self.upload_id, 0, len(self.data), host=conn.host))
                conn.send(self.data[: self.prefix])
                self.sent = self.prefix
                conn.wait_delivered()
                self.started.set()
                while not self.silent and self.sent < len(self.data) - 1:
                    if self.stop.is_set():
                        break
                    piece = self.data[self.sent : min(self.sent + self.piece, len(self.data) - 1)]
                    conn.send(piece)
                    self.sent += len(piece)
                    time.sleep(0.01)
                self.started.set()
                try:
                    reply = conn.read_reply(timeout=GRACEFUL_TIMEOUT + 15)
                    self.answer = str(reply.status)
                    self.told_offset = reply.offset
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
    left = deadline_after(params.budget)
    with timed(result), running(ctx, result, NAME) as server:
        client = Client(server, result)
        for round_no in range(params.rounds):
            if left() <= 0:
                result.hang(f"round {round_no}: budget of {params.budget:g} s used up")
                break
            uploads: dict[str, bytes] = {}
            for _ in range(params.uploads):
                data = rng.randbytes(rng.randint(256 * KiB, params.max_size))
                upload_id = client.create(len(data), what=f"round {round_no} POST")
                if upload_id is not None:
                    uploads[upload_id] = data
            senders = [Sender(server, uid, data, rng) for uid, data in uploads.items()]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.started.wait(30)
            time.sleep(rng.uniform(0.05, 0.5))
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
                if sender.told_offset is not None:
                    told += 1
                    if sender.told_offset != size:
                        result.mismatch(f"{what}: told offset {sender.told_offset}, stored {size}")
            server.start()
            for sender in senders:
                what = f"round {round_no} upload {sender.upload_id[:8]}"
                offset = client.resume_offset(sender.upload_id, what=what)
                if offset is None:
                    continue
                size = server.data_file(sender.upload_id).stat().st_size
                if offset != size or offset > sender.sent:
                    result.mismatch(f"{what}: HEAD {offset}, stored {size}, sent {sender.sent}")
                elif not client.stored_prefix_ok(sender.upload_id, sender.data, offset):
                    result.mismatch(f"{what}: data file is not the first {offset} bytes sent")
                if client.finish(sender.upload_id, sender.data, what=what):
                    client.verify(sender.upload_id, sender.data, what=what)
    result.figures["stop_s"] = [round(t, 2) for t in stop_times]
    result.figures["clients_told_offset"] = told
    return result
