"""4. Disk full: the data dir, database included, on a 16 MiB tmpfs.

Uploads larger together than the disk are sent one after the other. The PATCH that runs
out of space must get a prompt ``507 Insufficient Storage`` with a short message and its
``Upload-Offset`` (no hang, no traceback); HEAD must then report exactly the bytes stored;
SQLite's ``PRAGMA integrity_check`` must say ok. Then a filler file takes whatever space
is left: every PATCH and every POST must answer 507, POST leaving nothing behind (no row,
no data file), and HEAD must still answer with the bytes stored. After
``mount -o remount,size=64m`` every upload resumes and finishes intact.

Mounting needs root; without it the campaign is skipped with the reason. The tmpfs is
always unmounted at the end, server stopped first.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..context import Context, running
from ..report import Result, timed
from ..server import Server
from ..tus import OCTET, Client, patch_head, tus
from ..wire import Conn, Hang, MiB

NAME = "diskfull"
PROMPT = 5.0  # seconds a 507 may take once the disk is full
SHORT = 200  # bytes: a refusal's body is one line, never a traceback


@dataclass(frozen=True)
class Params:
    rounds: int = 3
    uploads: int = 4
    size: int = 6 * MiB
    small: str = "16m"
    large: str = "64m"


FULL = Params()
FAST = Params(rounds=1)


class CannotMount(Exception):
    pass


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise CannotMount(f"`{' '.join(command)}` failed: {done.stderr.strip() or done.returncode}")


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        raise CannotMount("mounting a tmpfs needs root")
    directory.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory))
    try:
        yield directory
    finally:
        for attempt in range(20):
            done = subprocess.run(
                ["umount", str(directory)], capture_output=True, timeout=30, check=False
            )
            if done.returncode == 0:
                break
            time.sleep(0.25)
            if attempt == 19:
                subprocess.run(["umount", "-l", str(directory)], timeout=30, check=False)


def run(ctx: Context, params: Params | None = None) -> Result:
    params = params or (FAST if ctx.fast else FULL)
    result = Result(NAME)
    rng = ctx.rng(NAME)
    prompt: list[float] = []
    with timed(result):
        for round_no in range(params.rounds):
            mount = ctx.directory(f"{NAME}-{round_no}") / "data"
            try:
                with (
                    tmpfs(mount, params.small),
                    running(ctx, result, f"{NAME}-{round_no}", data_dir=mount) as server,
                ):
                    one_round(server, result, rng, params, prompt, round_no)
            except CannotMount as error:
                result.skipped = str(error)
                return result
    result.figures["first_507_s"] = [round(t, 2) for t in prompt]
    return result


def one_round(
    server: Server,
    result: Result,
    rng: random.Random,
    params: Params,
    prompt: list[float],
    round_no: int,
) -> None:
    client = Client(server, result, allowed_5xx=frozenset({507}))
    uploads: dict[str, bytes] = {}
    for _ in range(params.uploads):
        data = rng.randbytes(params.size)
        upload_id = client.create(len(data), what=f"round {round_no} POST")
        if upload_id is not None:
            uploads[upload_id] = data
    full = False
    for upload_id, data in uploads.items():
        what = f"round {round_no} upload {upload_id[:8]}"
        status, took, reply_text = patch_all(server, upload_id, data, result, what)
        if status == 204:
            continue
        if status != 507:
            result.problem(f"{what}: PATCH on a filling disk answered {reply_text}")
            continue
        result.count(faults=1)
        if not full:
            prompt.append(took)
            full = True
        if took > PROMPT:
            result.problem(f"{what}: 507 took {took:.1f} s")
        check_stored(server, client, upload_id, data, what)
    if not full:
        result.problem(f"round {round_no}: {len(uploads)} uploads never filled the disk")
        return
    check_integrity(server, result, f"round {round_no} after the first 507")
    # What the server freed to stay consistent, a filler takes: now the disk is full
    # for everybody, and stays so until the remount.
    fill(server.data_dir / "filler")
    for upload_id, data in uploads.items():
        what = f"round {round_no} upload {upload_id[:8]} on a full disk"
        offset = client.resume_offset(upload_id, what=what)
        if offset is None or offset >= len(data):
            continue
        status, took, reply_text = patch_all(server, upload_id, data[offset:], result, what, offset)
        result.count(faults=1)
        if status != 507 or took > PROMPT:
            result.problem(f"{what}: PATCH answered {reply_text} in {took:.1f} s")
        check_stored(server, client, upload_id, data, what)
    check_refused_creations(server, client, result, round_no)
    check_integrity(server, result, f"round {round_no} while full")
    mount = server.data_dir
    subprocess.run(
        ["mount", "-o", f"remount,size={params.large}", str(mount)], timeout=30, check=True
    )
    for upload_id, data in uploads.items():
        what = f"round {round_no} upload {upload_id[:8]} after remount"
        if client.finish(upload_id, data, what=what):
            client.verify(upload_id, data, what=what)
    check_integrity(server, result, f"round {round_no} after remount")


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system says no more."""
    block = bytes(64 * 1024)
    with contextlib.suppress(OSError), path.open("wb") as filler:
        for _ in range(100_000):  # bounded: 6 GiB, far past any tmpfs used here
            filler.write(block)
            filler.flush()


def patch_all(
    server: Server, upload_id: str, data: bytes, result: Result, what: str, offset: int = 0
) -> tuple[int | None, float, str]:
    """One PATCH with the whole body, sent by a thread while the answer is awaited:
    a 507 may come long before the body is sent. (status, seconds, answer in words)."""
    started = time.monotonic()
    with Conn(server.port, timeout=30) as conn:
        head = patch_head(upload_id, offset, len(data), host=conn.host)

        def send() -> None:
            with contextlib.suppress(OSError):
                conn.send_watching(head + data)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            reply = conn.read_reply(timeout=30)
        except Hang:
            result.hang(f"{what}: no answer on a filling disk")
            return None, time.monotonic() - started, "hang"
        took = time.monotonic() - started
        sender.join(timeout=10)
    if reply.status is not None and reply.status >= 500 and reply.status != 507:
        result.server_error(f"{what}: {reply}")
    if reply.status == 507:
        if len(reply.body) > SHORT or b"Traceback" in reply.body:
            result.problem(f"{what}: 507 body is not a short message: {reply.body[:300]!r}")
        if reply.offset is None:
            result.problem(f"{what}: 507 without Upload-Offset")
    return reply.status, took, str(reply)


def check_stored(server: Server, client: Client, upload_id: str, data: bytes, what: str) -> None:
    """HEAD reports exactly the bytes stored, and they are the first bytes sent."""
    reply = client.head(upload_id, what=f"{what} HEAD")
    size = server.data_file(upload_id).stat().st_size
    if reply is None or reply.status != 200:
        client.result.problem(f"{what}: HEAD on a full disk answered {reply}")
        return
    if reply.offset != size:
        client.result.mismatch(f"{what}: HEAD offset {reply.offset}, {size} B stored")
    elif not client.stored_prefix_ok(upload_id, data, size):
        client.result.mismatch(f"{what}: stored bytes are not the first {size} sent")


def check_integrity(server: Server, result: Result, what: str) -> None:
    try:
        verdict = server.integrity()
    except Exception as error:  # sqlite3.Error, or the file can't be opened at all
        result.problem(f"{what}: PRAGMA integrity_check failed: {error!r}")
        return
    if verdict != "ok":
        result.mismatch(f"{what}: PRAGMA integrity_check: {verdict[:300]}")


def check_refused_creations(server: Server, client: Client, result: Result, round_no: int) -> None:
    """POST on a full disk: 507 and nothing left behind."""
    files_before = set(os.listdir(server.data_dir / "files"))
    rows_before = set(server.rows())
    attempts = [
        ("POST", tus(("Upload-Length", "1000"))),
        (
            "POST with metadata",
            tus(("Upload-Length", "1000"), ("Upload-Metadata", "filename YS5iaW4=")),
        ),
        ("POST deferred", tus(("Upload-Defer-Length", "1"))),
        ("POST with a body", tus(("Upload-Length", "3"), ("Content-Type", OCTET))),
    ]
    for what, headers in attempts:
        body = b"abc" if "body" in what else b""
        reply = client.call("POST", "/files/", headers, body, what=f"round {round_no} {what}")
        result.count(faults=1)
        if reply is not None and reply.header("Location"):
            # Created, then its first bytes refused: the client got the URL to resume.
            keep = reply.header("Location") or ""
            files_before.add(keep.rsplit("/", 1)[-1])
            rows_before.add(keep.rsplit("/", 1)[-1])
        if reply is None or reply.status != 507:
            result.problem(f"round {round_no} {what} on a full disk answered {reply}")
        elif len(reply.body) > SHORT:
            result.problem(f"round {round_no} {what}: 507 body too long: {reply.body[:300]!r}")
    left_files = set(os.listdir(server.data_dir / "files")) - files_before
    left_rows = set(server.rows()) - rows_before
    if left_files or left_rows:
        result.mismatch(
            f"round {round_no}: refused creations left files {sorted(left_files)} "
            f"and rows {sorted(left_rows)}"
        )
