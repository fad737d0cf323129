"""2. Killed workers: SIGKILL the gunicorn worker serving a PATCH, at a random point.

The worker is found precisely: the one holding the server end of our TCP connection
(/proc/net/tcp gives the socket's inode, /proc/<worker>/fd the holder). It is killed
while the body streams, just after the last byte (fsync and the offset's transaction),
or before a byte of body; a third of the PATCHes carry a checksum, whose unverified
bytes must be dropped, not counted. Then, like tus-js-client, the upload resumes from
HEAD and finishes. After the kill the registry and the data file must agree (the first
request reconciles them), HEAD must not report more bytes than were sent, and the data
file must hold exactly those bytes; at the end, the stored sha256 must match.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import random
import signal
import time
from dataclasses import dataclass

from ..context import Context, deadline_after, running
from ..report import Result, timed
from ..server import Server
from ..tus import Client, patch_head
from ..wire import Conn, Hang, MiB

NAME = "killed"


@dataclass(frozen=True)
class Params:
    kills: int = 40
    max_size: int = 16 * MiB
    budget: float = 240.0


FULL = Params()
FAST = Params(kills=4, max_size=4 * MiB, budget=60.0)


def run(ctx: Context, params: Params | None = None) -> Result:
    params = params or (FAST if ctx.fast else FULL)
    result = Result(NAME)
    rng = ctx.rng(NAME)
    points: dict[str, int] = {"before body": 0, "mid body": 0, "after body": 0}
    missed = 0
    with timed(result), running(ctx, result, NAME) as server:
        client = Client(server, result)
        left = deadline_after(params.budget)
        upload_no = 0
        while result.faults < params.kills and left() > 0:
            upload_no += 1
            size = rng.randint(MiB, params.max_size)
            data = rng.randbytes(size)
            what = f"upload #{upload_no} ({size} B)"
            upload_id = client.create(size, what=f"{what} POST")
            if upload_id is None:
                break
            offset = 0
            for kill_no in range(rng.randint(1, 2)):
                point = rng.choices(["before body", "mid body", "after body"], [1, 6, 2])[0]
                checksum = rng.random() < 1 / 3
                outcome = kill_during_patch(
                    server,
                    client,
                    rng,
                    upload_id,
                    data,
                    offset,
                    point,
                    checksum,
                    f"{what} kill {kill_no + 1} {point}{' checksum' if checksum else ''}",
                )
                if outcome is None:
                    missed += 1
                    continue
                points[point] += 1
                offset = outcome
                if offset >= size:
                    break
            if client.finish(upload_id, data, what=what):
                client.verify(upload_id, data, what=what)
                row = server.rows().get(upload_id)
                if row is None or row.state.lower() != "completed" or row.offset != size:
                    result.mismatch(f"{what}: registry after completion: {row}")
        if not server.wait_workers():
            result.problem(f"workers not back after the kills: {server.worker_pids()}")
        reconciled = server.log_text().count("; fixed")
    result.figures.update({"kill points": points, "reconciled_rows": reconciled})
    if missed:
        result.figures["kills_missed"] = missed
    return result


def kill_during_patch(
    server: Server,
    client: Client,
    rng: random.Random,
    upload_id: str,
    data: bytes,
    start: int,
    point: str,
    checksum: bool,
    what: str,
) -> int | None:
    """PATCH from ``start``, SIGKILL its worker at ``point``; the offset after resuming,
    or None when the kill missed (the PATCH was over before the worker was found)."""
    result = client.result
    body = data[start:]
    extra = []
    if checksum:
        digest = base64.b64encode(hashlib.sha1(body).digest()).decode()
        extra.append(("Upload-Checksum", f"sha1 {digest}"))
    if point == "before body":
        cut = 0
    elif point == "after body":
        cut = len(body)
    else:
        cut = rng.randint(1, len(body) - 1)
    with Conn(server.port, timeout=30) as conn:
        try:
            conn.send(patch_head(upload_id, start, len(body), *extra, host=conn.host))
            conn.send(body[:cut])
        except OSError as error:
            result.problem(f"{what}: sending failed: {error!r}")
            return None
        conn.wait_delivered()
        time.sleep(rng.choice([0.0, 0.0, 0.001, 0.005, 0.02]))
        victim = None
        for _ in range(100):  # the worker accepts within milliseconds
            victim = server.worker_serving(conn.local_port)
            if victim is not None:
                break
            time.sleep(0.01)
        if victim is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        result.count(faults=1)
        with contextlib.suppress(Hang):
            conn.read_reply(timeout=10)  # a reset, or an answer that beat the kill
    offset = client.resume_offset(upload_id, what=what)
    if offset is None:
        return None
    sent = start + cut
    if offset > sent:
        result.mismatch(f"{what}: HEAD reports {offset} bytes, only {sent} sent")
    elif offset < start:
        result.mismatch(f"{what}: HEAD went back from {start} to {offset}")
    elif checksum and offset not in (start, start + len(body)):
        result.mismatch(f"{what}: {offset - start} unverified bytes of a checksummed PATCH kept")
    elif not client.stored_prefix_ok(upload_id, data, offset):
        result.mismatch(f"{what}: data file is not the first {offset} bytes sent")
    row = server.rows().get(upload_id)
    size = server.data_file(upload_id).stat().st_size
    if row is None or row.offset != offset or size != offset or row.verifying:
        result.mismatch(f"{what}: registry {row} vs data file {size} B vs HEAD {offset}")
    return offset
