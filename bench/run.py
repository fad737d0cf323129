"""`make bench`: uploadsvc against the limit of this machine and a plain Flask baseline.

Targets, all on 127.0.0.1, all fsyncing what they store before they answer:

- **limit**: bench/limit_server.py, a minimal threaded socket-to-file receiver (recv_into
  one buffer, pwrite, early writeback as uploadsvc's FileStore, fsync); plus two figures
  without any HTTP: the disk alone (write 1 GiB + fsync, like ``dd conv=fsync``) and
  loopback alone (sendfile -> recv_into, nothing stored).
- **baseline**: bench/baseline_app.py, the obvious Flask app reading ``request.stream``
  to a file, under gunicorn's stock gthread worker, 2 workers x 8 threads (issue 15's
  "naive Flask": what a Flask shop runs first).
- **uploadsvc**: ``gunicorn -c gunicorn.conf.py wsgi:app`` as shipped, UPLOADSVC_FSYNC=1.
- **nginx+uploadsvc**: deploy/nginx.conf in front of another uploadsvc (skipped, with a
  note, when that file or nginx is missing).
- **@tus/server**: the Node tus server users would pick instead (bench/tus_server.mjs,
  pinned by bench/tus-node/package-lock.json; skipped, with a note, without node or
  its node_modules). It doesn't fsync.

After the repetitions, the capacity workload (bench/capacity.py) runs once per target
(not nginx+uploadsvc) for each N of ``--capacity``: N slow uploads in flight for
``--capacity-hold`` seconds while a probe measures everybody else's latency.

Every repetition runs every workload on every target, the target order rotating, so
machine noise (other work, a disk whose speed varies) hits all targets alike; the table
shows medians, and ratios are medians of per-repetition ratios (RSS: the worst run).
The load generator (bench/httpclient.py) sends bodies from /dev/shm with sendfile. Prints
the table and writes bench-results/latest.json.

    .venv/bin/python bench/run.py [--reps N] [--big] [--quick] [--also NAME=DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpclient as hc
from capacity import capacity, raise_fd_limit
from render import render
from rows import BIG_ROWS, ROWS, SAME_RUN, capacity_rows
from settings import CLIENTS, REPO, RESULTS, SMALL, GiB, MiB, log
from sources import Sources
from summary import fs_type, summarize
from targets import (
    Target,
    baseline_target,
    limit_target,
    nginx_target,
    tus_node_target,
    uploadsvc_target,
)
from workloads import big_upload, concurrent, disk_write, drop_resume, loopback


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="uploadsvc-bench-", dir=args.work_dir))
    log(f"work dir {work} (on {fs_type(work)}); bodies in /dev/shm")
    src = Sources.make(size)
    targets = [limit_target(work), baseline_target(work), uploadsvc_target(work)]
    for also in args.also:
        name, _, tree = also.partition("=")
        targets.append(uploadsvc_target(work, name, Path(tree).resolve()))
    skipped: dict[str, str] = {}
    nginx = nginx_target(work, Path(args.nginx_conf)) if not args.no_nginx else "--no-nginx given"
    if isinstance(nginx, str):
        skipped["nginx+uploadsvc"] = nginx
        log(f"nginx+uploadsvc skipped: {nginx}")
    else:
        targets.append(nginx)
    tus = tus_node_target(work)
    if isinstance(tus, str):
        skipped["@tus/server"] = tus
        log(f"@tus/server skipped: {tus}")
    else:
        targets.append(tus)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def record(key: str, name: str, result: dict[str, Any]) -> None:
        result["load1"] = os.getloadavg()[0]  # other work on the machine meanwhile
        runs.setdefault(key, {}).setdefault(name, []).append(result)

    try:
        for target in targets:
            target.start()
        head_paths = {t.name: make_complete_uploads(t, CLIENTS + 8) for t in targets}
        for rep in range(args.reps):
            order = targets[rep % len(targets) :] + targets[: rep % len(targets)]
            log(f"-- repetition {rep + 1}/{args.reps}: {', '.join(t.name for t in order)}")
            os.sync()
            record("disk", "limit", disk_write(work, size))
            record("loopback", "limit", loopback(src, size))
            for key, mode in (("one_patch", "one"), ("patches_8m", "8m"), ("chunked", "chunked")):
                for target in order:
                    os.sync()
                    result = big_upload(target, src, mode, size, verify=rep == 0)
                    record(key, target.name, result)
                    log(
                        f"   {key:11s} {target.name:16s} {result['MBps']:7.0f} MB/s"
                        f"  rss +{result['rss_delta_MB']:.1f} MB"
                        f"  cpu {result['cpu_s_per_GB']:.2f} s/GB"
                    )
            for target in order:
                result = concurrent(target, "small", args.duration, args.warmup)
                record("small", target.name, result)
                log(
                    f"   small       {target.name:16s} {result['per_s']:7.0f} uploads/s"
                    f"  errors {result['errors']}  client cpu {result['client_cpu_share']:.0%}"
                )
            for target in order:
                result = concurrent(
                    target, "head", args.duration, args.warmup, head_paths[target.name]
                )
                record("head", target.name, result)
                log(
                    f"   head        {target.name:16s} {result['per_s']:7.0f} req/s"
                    f"  errors {result['errors']}  client cpu {result['client_cpu_share']:.0%}"
                )
            for how in ("fin", "rst"):
                for target in order:
                    result = drop_resume(target, src, how)
                    record(f"drop_{how}", target.name, result)
                    log(
                        f"   drop_{how}    {target.name:16s} {result['ms']:7.1f} ms"
                        f"  offset kept: {result['offset_kept']}  HEADs {result['heads']}"
                    )
        capacity_targets = [t for t in targets if t.name != "nginx+uploadsvc"]
        for index, count in enumerate(args.capacity):
            shift = index % len(capacity_targets)
            for target in capacity_targets[shift:] + capacity_targets[:shift]:
                result = capacity(target, count, args.capacity_hold, head_paths[target.name][0])
                record(f"capacity_{count}", target.name, result)
                log(
                    f"   capacity {count:4d} {target.name:16s} probe p50"
                    f" {result['probe_p50_ms'] or 0:6.1f} ms p99 {result['probe_p99_ms'] or 0:7.1f}"
                    f" ms  errors {result['errors']}  rss {result['rss_MB']:.0f} MB"
                    f"  cpu {result['server_cpu_share']:.0%}"
                )
                for error in result["first_errors"][:2]:
                    log(f"      {error}")
        if args.big:
            for target in targets:
                if target.name == "baseline" and not args.big_baseline:
                    continue
                os.sync()
                result = big_upload(target, src, "one", 10 * GiB, verify=False)
                record("big", target.name, result)
                log(
                    f"   10 GiB      {target.name:16s} {result['MBps']:7.0f} MB/s"
                    f"  rss +{result['rss_delta_MB']:.1f} MB"
                )
    finally:
        for target in targets:
            target.stop()
        src.remove()
        tracebacks = [
            t.name
            for t in targets
            if t.name != "baseline"
            and t.log_path.exists()
            and "Traceback" in t.log_path.read_text(errors="replace")
        ]
        if tracebacks:
            log(f"tracebacks in the logs of: {', '.join(tracebacks)} (see {work})")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for key, source in SAME_RUN.items():
        if source in runs:
            runs[key] = runs[source]
    more_rows, same_run = capacity_rows(args.capacity)
    for key, source in same_run.items():
        if source in runs:
            runs[key] = runs[source]
    rows = ROWS + more_rows + (BIG_ROWS if args.big else [])
    return summarize(rows, runs, targets, skipped, args, work)


def make_complete_uploads(target: Target, count: int) -> list[str]:
    """``count`` complete small uploads (for the HEAD workload), each on a connection
    of its own so that every worker process gets some; they warm the servers up too,
    with a few 16 MiB PATCHes, so that first-use costs don't count as memory growth."""
    paths = []
    for i in range(count):
        with hc.Connection("127.0.0.1", target.port) as conn:
            size = SMALL if i >= 8 else 16 * MiB
            path = hc.create(conn, target.files_path, size)
            response = conn.request("PATCH", path, hc.patch_headers(0, size), os.urandom(size))
            hc.expect_offset(response, 204, size, "PATCH")
            if size == SMALL:
                paths.append(path)
            else:
                conn.request("DELETE", path, hc.tus())
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per concurrent run")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="warm-up seconds per concurrent run"
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the big uploads (MiB)")
    parser.add_argument("--big", action="store_true", help="also one 10 GiB PATCH per target")
    parser.add_argument("--big-baseline", action="store_true", help="... including the baseline")
    parser.add_argument("--no-nginx", action="store_true", help="skip nginx+uploadsvc")
    parser.add_argument(
        "--nginx-conf",
        default=str(REPO / "deploy" / "nginx.conf"),
        help="the nginx site in front of uploadsvc (default deploy/nginx.conf)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 repetition, 256 MiB, 3 s runs, 10 s capacity holds"
    )
    parser.add_argument(
        "--capacity",
        default="128,512,1000",
        help="slow uploads in flight, per capacity run (comma-separated; '' skips them)",
    )
    parser.add_argument(
        "--capacity-hold",
        type=float,
        default=60.0,
        help="seconds each capacity run holds its uploads in flight (default 60)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, data)")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also measure the uploadsvc checkout in DIR, as NAME (repeatable)",
    )
    parser.add_argument("--work-dir", default=None, help="where data lands (default: $TMPDIR)")
    parser.add_argument("--out", default=str(RESULTS / "latest.json"), help="JSON output")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.size_mib, args.duration = 1, 256, 3.0
        args.capacity_hold = min(args.capacity_hold, 10.0)
    args.capacity = [int(n) for n in args.capacity.split(",") if n.strip()]
    # Every capacity client and the server's end of it is an open file; gunicorn.conf.py
    # raises the server's own limit.
    raise_fd_limit(4 * max(args.capacity, default=0) + 4096)
    started = time.monotonic()
    args.load_at_start = list(os.getloadavg())
    result = run(args)
    result["meta"]["seconds"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    log(f"\n{out} written; {result['meta']['seconds']:.0f} s")


if __name__ == "__main__":
    main()
