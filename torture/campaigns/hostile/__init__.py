"""6. Hostile input: ten thousand generated requests against a stateful model.

Several lanes run at once, each on keep-alive connections with uploads of its own. Each
lane keeps a model of its uploads: the exact bytes stored, the length (or none yet) and
whether they were terminated. A step is either a valid tus request, whose answer the
model predicts exactly, or a hostile one: a valid request mutated with every method and
X-HTTP-Method-Override, missing, empty, negative, huge, non-numeric and non-ASCII header
values, duplicate and oversized headers, bodies shorter or longer than Content-Length,
broken chunked framing, ids with ``..``, ``%2e%2e%2f``, absolute paths, NUL, 4,000
characters and look-alike characters, Upload-Concat finals naming other hosts,
X-Forwarded-* from an untrusted client, and metadata that tries to put header lines into
Content-Disposition.

After every step that touched a modelled upload, HEAD (and the data file) must show it
unchanged, or changed exactly as the answer said (a 204, or an answer carrying the
``Upload-Offset`` of a body that broke off) and only with bytes that were sent. Never a
5xx; never a traceback; no outbound connection (a canary listens on the loopback ports
the Upload-Concat URLs name); no file outside the data dir; downloads never carry an
injected header line; and a clean upload still works at the end.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ...context import Context, run_all, running
from ...report import Result, timed
from ...server import REPO_ROOT, Server
from ...tus import Client
from ...wire import MiB
from .lane import Hostile, Lane
from .model import FORGED, HEX_ID, Canary

NAME = "hostile"


@dataclass(frozen=True)
class Params:
    requests: int = 14_000  # about three in four are hostile
    lanes: int = 4
    max_size: int = MiB  # UPLOADSVC_MAX_SIZE, so "too large" is reachable
    budget: float = 420.0


FULL = Params()
FAST = Params(requests=1_200, budget=90.0)
# The methods /metrics may name; any other counts as "other" (bounded label values).
METRIC_METHODS = {"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS", "PUT", "other"}


def _listing(root: Path) -> set[str]:
    try:
        return set(os.listdir(root))
    except OSError:
        return set()


def run(ctx: Context, params: Params | None = None) -> Result:
    params = params or (FAST if ctx.fast else FULL)
    result = Result(NAME)
    rng = ctx.rng(NAME)
    marker = f"torture-pwned-{ctx.seed}"
    statuses: Counter[str] = Counter()
    checks = explained = unannounced = early_keepalive = 0
    canary = Canary()
    try:
        with (
            timed(result),
            running(ctx, result, NAME, UPLOADSVC_MAX_SIZE=str(params.max_size)) as server,
        ):
            watched = {
                "repo": REPO_ROOT,
                "server dir": server.base_dir,
                "work dir": ctx.work_dir,
                "temp dir": ctx.work_dir.parent,  # where a ``..`` out of the work dir lands
                "/tmp": Path("/tmp"),
            }
            before = {name: _listing(path) for name, path in watched.items()}
            campaign = Hostile(server, result, canary, marker)
            steps = params.requests // params.lanes
            lanes = [
                Lane(campaign, i, random.Random(rng.getrandbits(64)), steps)
                for i in range(params.lanes)
            ]
            run_all(
                result,
                [lane.run for lane in lanes],
                parallel=params.lanes,
                budget=params.budget,
                what=NAME,
            )
            campaign.stop.set()
            checks = sum(lane.checks for lane in lanes)
            unannounced = sum(lane.unannounced_closes for lane in lanes)
            early_keepalive = sum(lane.early_keepalive for lane in lanes)
            explained = sum(lane.explained for lane in lanes)
            for lane in lanes:
                statuses.update(lane.statuses)
                if lane.conn is not None:
                    lane.conn.close()
            # A clean upload still works.
            client = Client(server, result)
            data = rng.randbytes(MiB - 3)
            upload_id = client.create(len(data), what="clean upload")
            if upload_id is not None and client.finish(upload_id, data, what="clean upload"):
                client.verify(upload_id, data, what="clean upload")
            for name, path in watched.items():
                new = {
                    n
                    for n in _listing(path) - before[name]
                    if marker in n or name in ("repo", "server dir")
                }
                new -= {
                    "__pycache__",
                    ".pytest_cache",
                    ".ruff_cache",
                    ".mypy_cache",
                    "torture-results",
                }
                if new:
                    result.mismatch(f"new entries in {name} {path}: {sorted(new)[:10]}")
            check_data_dir(server, result)
            check_log_lines(server, result)
            check_metric_labels(server, result)
            check_marked_paths(ctx.work_dir, marker, result)
    finally:
        canary.close()
    if canary.calls:
        result.mismatch(f"the server connected out {canary.calls} times (Upload-Concat URLs)")
    result.figures["answers"] = dict(sorted(statuses.items(), key=lambda kv: -kv[1]))
    result.figures["outbound_connections"] = canary.calls
    result.figures["model_checks"] = checks
    result.figures["changes_explained"] = explained
    result.figures["keepalive_closed_unannounced"] = unannounced
    result.figures["early_answers_saying_keepalive"] = early_keepalive
    return result


def check_marked_paths(work_dir: Path, marker: str, result: Result) -> None:
    """No file or directory named by a hostile path anywhere in the campaign's own work
    dir (the server's dir and data dir, and every dir a ``..`` from them reaches inside
    it). Shared dirs (/tmp, the repo) are watched by their own new entries only: walking
    all of /tmp met other processes' files as they were deleted (FileNotFoundError).
    os.walk skips a directory that goes while it walks (our server still runs)."""
    for parent, dirs, files in os.walk(work_dir):
        for name in dirs + files:
            if name.startswith(marker):
                result.mismatch(f"a hostile path made {Path(parent, name)}")


def check_data_dir(server: Server, result: Result) -> None:
    """Only upload files, lock files and SQLite's own files inside the data dir."""
    for path in server.data_dir.rglob("*"):
        rel = path.relative_to(server.data_dir)
        parts = rel.parts
        if parts[0] == "files" and len(parts) == 2 and HEX_ID.fullmatch(parts[1]):
            continue
        if (
            parts[0] == "locks"
            and len(parts) == 2
            and re.fullmatch(r"[0-9A-Za-z]{8,64}\.(lock|release)", parts[1])
        ):
            continue
        if len(parts) == 1 and (
            parts[0] in ("files", "locks", "migrate.lock") or parts[0].startswith("uploadsvc.db")
        ):
            continue
        result.mismatch(f"unexpected file in the data dir: {rel}")


def check_log_lines(server: Server, result: Result) -> None:
    """What the client sent after a line break stays on its request's line: every log
    line naming FORGED is a record of uploadsvc (``LEVEL logger [id] ...``) or of
    gunicorn (``[time] [pid] [LEVEL] ...``)."""
    forged = 0
    for line in server.log_text().splitlines():
        if FORGED not in line:
            continue
        forged += 1
        if not re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ \[|\[\d{4}-", line):
            result.mismatch(f"a forged log line: {line[:200]!r}")
    result.figures["log_lines_with_forging_attempts"] = forged


def check_metric_labels(server: Server, result: Result) -> None:
    """Made-up methods add no series: /metrics names only known methods and "other"."""
    reply = Client(server, result).call("GET", "/metrics", what="GET /metrics")
    if reply is None or reply.status != 200:
        result.problem(f"GET /metrics: {reply}")
        return
    methods = set(re.findall(r'method="([^"]*)"', reply.body.decode("utf-8", "replace")))
    if methods - METRIC_METHODS:
        result.mismatch(f"/metrics names made-up methods: {sorted(methods - METRIC_METHODS)[:10]}")
    result.figures["metric_series"] = reply.body.count(b"\n")
