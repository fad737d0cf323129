"""5. Races: many requests on one upload at once, and many creations across the workers.

- 32 PATCHes at the same offset with different bodies, released together by a barrier,
  repeated with random sizes and a random common prefix already stored: exactly one wins
  (204), the others are told 409 or 423, and the stored bytes are the prefix plus the
  winner's body exactly, never a mix.
- 64 creations at once, each followed by HEADs of its own and of others' uploads: never
  a 5xx, never "database is locked" (in an answer or in the server log).
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..context import Context, deadline_after, running
from ..report import Result, timed
from ..server import Server
from ..tus import Client, file_sha256, patch_head, sha256, tus
from ..wire import Conn, Hang, KiB, MiB, Reply

NAME = "races"
LOCKED_TEXT = "database is locked"


@dataclass(frozen=True)
class Params:
    rounds: int = 24
    clients: int = 32
    max_size: int = 2 * MiB
    creation_rounds: int = 6
    creators: int = 64
    budget: float = 240.0


FULL = Params()
FAST = Params(rounds=3, max_size=512 * KiB, creation_rounds=2, budget=60.0)


def run(ctx: Context, params: Params | None = None) -> Result:
    params = params or (FAST if ctx.fast else FULL)
    result = Result(NAME)
    rng = ctx.rng(NAME)
    statuses: dict[str, int] = {}
    left = deadline_after(params.budget)
    with timed(result), running(ctx, result, NAME) as server:
        client = Client(server, result)
        for round_no in range(params.rounds):
            if left() <= 0:
                result.hang(f"budget of {params.budget:g} s used up at round {round_no}")
                break
            race(server, client, rng, params, round_no, statuses)
        known: list[str] = []
        for round_no in range(params.creation_rounds):
            if left() <= 0:
                result.hang(f"budget of {params.budget:g} s used up at creation round {round_no}")
                break
            known = creations(server, client, params, round_no, known)
        if LOCKED_TEXT in server.log_text():
            result.problem(f"server log mentions {LOCKED_TEXT!r}")
    result.figures["race_answers"] = dict(sorted(statuses.items()))
    return result


def race(
    server: Server,
    client: Client,
    rng: random.Random,
    params: Params,
    round_no: int,
    statuses: dict[str, int],
) -> None:
    result = client.result
    size = rng.randint(1, params.max_size)
    prefix = rng.choice([b"", b"", rng.randbytes(rng.randint(1, 64 * KiB))])
    what = f"race {round_no} ({len(prefix)}+{size} B)"
    upload_id = client.create(len(prefix) + size, what=f"{what} POST")
    if upload_id is None:
        return
    if prefix:
        reply = client.call(
            "PATCH",
            f"/files/{upload_id}",
            tus(("Upload-Offset", "0"), ("Content-Type", "application/offset+octet-stream")),
            prefix,
            what=f"{what} prefix",
        )
        if reply is None or reply.status != 204:
            result.problem(f"{what}: prefix PATCH answered {reply}")
            return
    bodies = [rng.randbytes(size) for _ in range(params.clients)]
    barrier = threading.Barrier(params.clients, timeout=30)

    def contender(index: int) -> Reply | None:
        try:
            with Conn(server.port, timeout=60) as conn:
                payload = patch_head(upload_id, len(prefix), size, host=conn.host) + bodies[index]
                barrier.wait()
                conn.send_watching(payload, timeout=60)
                return conn.read_reply(timeout=60)
        except Hang as error:
            result.hang(f"{what}: contender {index}: {error}")
        except (OSError, threading.BrokenBarrierError) as error:
            result.problem(f"{what}: contender {index}: {error!r}")
        return None

    with ThreadPoolExecutor(params.clients, thread_name_prefix="race") as pool:
        answers = list(pool.map(contender, range(params.clients)))
    result.count(faults=params.clients)
    for answer in answers:
        key = "none" if answer is None or answer.status is None else str(answer.status)
        statuses[key] = statuses.get(key, 0) + 1
        if answer is not None:
            client.check(answer, what)
    winners = [i for i, a in enumerate(answers) if a is not None and a.status == 204]
    odd = [str(a) for a in answers if a is None or a.status not in (204, 409, 423)]
    if odd:
        result.problem(f"{what}: unexpected answers {odd[:5]}")
    stored = file_sha256(server.data_file(upload_id))
    if len(winners) != 1:
        result.problem(f"{what}: {len(winners)} winners")
        if stored not in {sha256(prefix + body) for body in bodies}:
            # Without one winner the file must still be the prefix and one body's start.
            data = server.data_file(upload_id).read_bytes()
            tail = data[len(prefix) :]
            if data[: len(prefix)] != prefix or not any(b.startswith(tail) for b in bodies):
                result.mismatch(f"{what}: stored bytes mix bodies")
        return
    winner = bodies[winners[0]]
    told = answers[winners[0]]
    if told is not None and told.offset != len(prefix) + size:
        result.mismatch(f"{what}: the winner was told {told}")
    if stored != sha256(prefix + winner):
        result.mismatch(f"{what}: stored bytes are not the prefix and the winner's body")
        return
    client.verify(upload_id, prefix + winner, what=what)


def creations(
    server: Server, client: Client, params: Params, round_no: int, known: list[str]
) -> list[str]:
    """``creators`` clients create at once, then HEAD their upload and an older one."""
    result = client.result
    barrier = threading.Barrier(params.creators, timeout=30)
    what = f"creations {round_no}"

    def creator(index: int) -> str | None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            result.problem(f"{what}: barrier broken")
            return None
        upload_id = client.create(index * 10, what=f"{what} POST")
        if upload_id is None:
            return None
        targets = [upload_id] + ([known[index % len(known)]] if known else [])
        for target in targets:
            reply = client.head(target, what=f"{what} HEAD")
            if reply is None or reply.status != 200:
                result.problem(f"{what}: HEAD answered {reply}")
            elif LOCKED_TEXT in reply.body.decode("utf-8", "replace"):
                result.problem(f"{what}: {LOCKED_TEXT}")
        return upload_id

    with ThreadPoolExecutor(params.creators, thread_name_prefix="create") as pool:
        made = [upload_id for upload_id in pool.map(creator, range(params.creators)) if upload_id]
    result.count(faults=params.creators)
    if len(made) != params.creators:
        result.problem(f"{what}: {len(made)} of {params.creators} creations succeeded")
    return made
