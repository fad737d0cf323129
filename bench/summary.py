"""The runs reduced to the table: medians, ratios to the limit and the baseline, targets
met, and what the machine was."""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from rows import Row, paired
from settings import CLIENT_PROCS, CLIENTS, MAIN, REPO, TUS
from targets import Target


def fs_type(path: Path) -> str:
    best, kind = "", "?"
    with open("/proc/mounts") as fh:
        for line in fh:
            _, mount, fstype, *_ = line.split()
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    return kind


def summarize(
    rows: list[Row],
    runs: dict[str, dict[str, list[dict[str, Any]]]],
    targets: list[Target],
    skipped: dict[str, str],
    args: argparse.Namespace,
    work: Path,
) -> dict[str, Any]:
    names = [t.name for t in targets]
    loopback_runs = runs.get("loopback", {}).get("limit", [])
    loopback_MBps = statistics.median(r["MBps"] for r in loopback_runs) if loopback_runs else None
    table = []
    kept = {
        name: all(
            r["offset_kept"]
            for key in ("drop_fin", "drop_rst")
            for r in runs.get(key, {}).get(name, [])
        )
        for name in names
    }
    for row in rows:
        values: dict[str, float | None] = {}
        for name in dict.fromkeys([*MAIN, *names]):
            results = runs.get(row.key, {}).get(name, [])
            numbers = [r[row.metric] for r in results if row.metric in r]
            if not numbers:
                values[name] = None
            elif row.aggregate == "max":
                values[name] = max(numbers)
            else:
                values[name] = statistics.median(numbers)

        row_runs = runs.get(row.key, {})
        vs = functools.partial(paired, row_runs, row, values=values)
        entry: dict[str, Any] = {
            "key": row.key,
            "label": row.label,
            "unit": row.unit,
            "higher_is_better": row.higher_is_better,
            "aggregate": row.aggregate,
            "values": values,
            "runs": {name: runs.get(row.key, {}).get(name, []) for name in names},
            "uploadsvc_vs_limit": vs("uploadsvc", "limit"),
            "uploadsvc_vs_baseline": vs("uploadsvc", "baseline"),
            "uploadsvc_vs_tus": vs("uploadsvc", TUS),
            "nginx_vs_limit": vs("nginx+uploadsvc", "limit"),
            "nginx_vs_baseline": vs("nginx+uploadsvc", "baseline"),
            "extras_vs_uploadsvc": {
                name: vs(name, "uploadsvc") for name in names if name not in MAIN
            },
        }
        if row.target is not None:
            text, check = row.target
            entry["target"] = text
            entry["pass"] = check(
                values["uploadsvc"], entry["uploadsvc_vs_limit"], entry["uploadsvc_vs_baseline"]
            )
            entry["nginx_pass"] = check(
                values["nginx+uploadsvc"], entry["nginx_vs_limit"], entry["nginx_vs_baseline"]
            )
        table.append(entry)
    return {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "git": git_describe(),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "data_fs": fs_type(work),
            "load_average": {
                "start": args.load_at_start,
                "end": list(os.getloadavg()),
                "during": sorted(
                    r["load1"] for rs in runs.values() for v in rs.values() for r in v
                ),
            },
            "args": vars(args),
            "skipped": skipped,
            "extras": {t.name: t.note for t in targets if t.name not in MAIN},
            "drops_kept_every_byte": kept,
            "content_mismatch": sorted(
                {
                    f"{name} ({key})"
                    for key in ("one_patch", "patches_8m", "chunked", "big")
                    for name, results in runs.get(key, {}).items()
                    for r in results
                    if r.get("content_ok") is False
                }
            ),
            "client": client_load(runs, loopback_MBps),
            "notes": [
                "All targets fsync before answering (uploadsvc: UPLOADSVC_FSYNC=1).",
                "Ratios (u: uploadsvc, n: nginx+uploadsvc, tus: @tus/server): median of the"
                " per-repetition ratios to limit, baseline and @tus/server; for ms, MB, s/GB"
                " and counts lower is better.",
                "limit = bench/limit_server.py on the same workload; baseline = Flask"
                " copyfileobj(request.stream) under "
                + next((t.note for t in targets if t.name == "baseline"), "?")
                + ".",
                f"Values: median of {args.reps} runs (RSS: worst run); small uploads"
                f" and HEAD: {CLIENTS} keep-alive clients in {CLIENT_PROCS} processes,"
                f" {args.duration:g} s after {args.warmup:g} s warm-up.",
                *capacity_notes(args, targets),
            ],
        },
        "table": table,
    }


def capacity_notes(args: argparse.Namespace, targets: list[Target]) -> list[str]:
    notes = [f"{TUS}: " + next((t.note for t in targets if t.name == TUS), "not measured") + "."]
    if args.capacity:
        notes.append(
            "Capacity (bench/capacity.py): N uploads trickling 4 KiB/s (1 KiB sends), each"
            " from a loopback address of its own, held in flight"
            f" {args.capacity_hold:g} s after they all started, once per target; the probe"
            " HEADs a complete upload every 50 ms and runs a small upload (POST + PATCH"
            " 64 KiB + HEAD) every 250 ms, fresh connections from other addresses; p50/p99"
            " over every probe request (one unanswered in 10 s counts as 10 s and an"
            " error). Errors also count bodies with over 16 KiB (4 s) unread in the server's"
            " receive queue at the end of the hold and uploads not then finished 204 at"
            " their length."
            " RSS: the server's process tree, peak. nginx+uploadsvc not measured here."
        )
    return notes


def client_load(
    runs: dict[str, dict[str, list[dict[str, Any]]]], loopback_MBps: float | None
) -> dict[str, Any]:
    """How hard the load generator worked: it must not be what limits a server."""
    shares = {
        name: max(
            r["client_cpu_share"]
            for key in ("small", "head")
            for r in runs.get(key, {}).get(name, [])
        )
        for name in runs.get("small", {})
    }
    return {"loopback_MBps": loopback_MBps, "max_client_cpu_share": shares}


def git_describe() -> str:
    out = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "?"
