"""5. Races: many requests on one upload at once, and many creations across the workers.

- 32 PATCHes at the same offset with different bodies, released together by a barrier,
  repeated with random sizes and a random common prefix already stored: exactly one wins
  (204), the others are told 409 or 423, and the stored bytes are the prefix plus the
  winner's body exactly, never a mix.
- 64 creations at once, each followed by HEADs of its own and of others' uploads: never
  a 5xx, never "database is locked" (in an answer or in the server log).
- Concatenation abuse, on a server with the owner hooks of README's "Hooks" section
  (tests/hookmods/owner.py): finals naming another client's partials are refused and
  leave nothing behind; finals naming one partial many times, many times over, add no
  stored bytes (a final reads through its partials) and download whole; a final and a
  DELETE of its partial, released together, answer 201 or 410 and 204, never a 5xx,
  and a final that was made downloads whole.
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
from ..wire import Conn, Hang, Header, KiB, MiB, Reply

NAME = "races"
LOCKED_TEXT = "database is locked"


@dataclass(frozen=True)
class Params:
    rounds: int = 24
    clients: int = 32
    max_size: int = 2 * MiB
    creation_rounds: int = 6
    creators: int = 64
    concat_rounds: int = 12
    budget: float = 240.0


FULL = Params()
FAST = Params(rounds=3, max_size=512 * KiB, creation_rounds=2, concat_rounds=3, budget=60.0)
OWNER_HOOKS = "tests.hookmods.owner:OwnerHooks"
ALICE = ("Authorization", "Bearer alice")
BOB = ("Authorization", "Bearer bob")


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
    concat_answers: dict[str, int] = {}
    with running(ctx, result, f"{NAME}-concat", UPLOADSVC_HOOKS=OWNER_HOOKS) as server:
        client = Client(server, result)
        for round_no in range(params.concat_rounds):
            if left() <= 0:
                result.hang(f"budget of {params.budget:g} s used up at concat round {round_no}")
                break
            concat_abuse(server, client, rng, params, round_no, concat_answers)
    result.figures["race_answers"] = dict(sorted(statuses.items()))
    result.figures["concat_answers"] = dict(sorted(concat_answers.items()))
    return result


def stored_bytes(server: Server) -> int:
    return sum(path.stat().st_size for path in (server.data_dir / "files").iterdir())


def concat_abuse(
    server: Server,
    client: Client,
    rng: random.Random,
    params: Params,
    round_no: int,
    answers: dict[str, int],
) -> None:
    result = client.result
    what = f"concat {round_no}"
    octet = ("Content-Type", "application/offset+octet-stream")

    def partial(owner: Header, data: bytes) -> str | None:
        upload_id = client.create(
            len(data), owner, ("Upload-Concat", "partial"), what=f"{what} partial"
        )
        if upload_id is not None:
            reply = client.call(
                "PATCH",
                f"/files/{upload_id}",
                tus(owner, ("Upload-Offset", "0"), octet),
                data,
                what=f"{what} partial PATCH",
            )
            if reply is None or reply.status != 204:
                result.problem(f"{what}: partial PATCH answered {reply}")
                return None
        return upload_id

    def final(owner: Header, names: list[str]) -> Reply | None:
        urls = " ".join(f"{server.endpoint}{name}" for name in names)
        return client.call(
            "POST", "/files/", tus(owner, ("Upload-Concat", f"final;{urls}")), what=f"{what} final"
        )

    def downloads_as(owner: Header, location: str | None, data: bytes) -> None:
        upload_id = (location or "").rsplit("/", 1)[-1]
        reply = client.call("GET", f"/files/{upload_id}", tus(owner), what=f"{what} GET")
        if reply is None or reply.status != 200 or sha256(reply.body) != sha256(data):
            result.mismatch(f"{what}: final {upload_id} downloads as {reply}")

    alices = rng.randbytes(rng.randint(1, params.max_size))
    bobs = rng.randbytes(rng.randint(1, 64 * KiB))
    theirs, mine = partial(ALICE, alices), partial(BOB, bobs)
    if theirs is None or mine is None:
        return
    before = stored_bytes(server)
    files = len(list((server.data_dir / "files").iterdir()))
    # Bob names Alice's partial, alone, among his, repeated: refused as unknown.
    for names in ([theirs], [mine, theirs], [theirs] * rng.randint(2, 10)):
        reply = final(BOB, names)
        key = f"stranger's partial: {reply.status if reply else None}"
        answers[key] = answers.get(key, 0) + 1
        if reply is None or reply.status != 404:
            result.problem(f"{what}: a final of another's partial answered {reply}")
    if len(list((server.data_dir / "files").iterdir())) != files:
        result.problem(f"{what}: refused finals left files behind")
    # Alice names hers up to 10 times in each of several finals: no byte is copied.
    for _ in range(rng.randint(2, 10)):
        times = rng.randint(1, 10)
        reply = final(ALICE, [theirs] * times)
        if reply is None or reply.status != 201:
            result.problem(f"{what}: a final naming a partial {times} times answered {reply}")
            continue
        downloads_as(ALICE, reply.header("Location"), alices * times)
    grown = stored_bytes(server) - before
    result.figures["concat_bytes_written_max"] = max(
        grown, int(result.figures.get("concat_bytes_written_max", 0))
    )
    if grown > 0:
        result.mismatch(f"{what}: finals stored {grown} new bytes")
    # A final and a DELETE of its partial, released together.
    barrier = threading.Barrier(2, timeout=30)
    raced: dict[str, Reply | None] = {}

    def contend(kind: str) -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        if kind == "final":
            raced[kind] = final(ALICE, [theirs, theirs])
        else:
            raced[kind] = client.call(
                "DELETE", f"/files/{theirs}", tus(ALICE), what=f"{what} DELETE"
            )

    with ThreadPoolExecutor(2, thread_name_prefix="concat") as pool:
        list(pool.map(contend, ["final", "delete"]))
    made, deleted = raced.get("final"), raced.get("delete")
    key = f"final {made.status if made else None} / DELETE {deleted.status if deleted else None}"
    answers[key] = answers.get(key, 0) + 1
    result.count(faults=2)
    if made is None or made.status not in (201, 410) or deleted is None or deleted.status != 204:
        result.problem(f"{what}: final vs DELETE answered {made} and {deleted}")
    elif made.status == 201:
        downloads_as(ALICE, made.header("Location"), alices * 2)


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
