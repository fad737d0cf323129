"""The table's rows: what each measures, how its runs are aggregated and compared, and
the target it must meet."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Check = Callable[[float | None, float | None, float | None], bool | None]


@dataclass
class Row:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    metric: str  # key in each run's result dict
    aggregate: str = "median"  # or "max"
    # (text, check(value, ratio to limit, ratio to baseline) -> met?, None: unknown)
    target: tuple[str, Check] | None = None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b; None when either is missing or b is too close to zero to divide by."""
    return a / b if a is not None and b is not None and abs(b) >= 0.05 else None


def paired(
    runs: dict[str, list[dict[str, Any]]],
    row: Row,
    name: str,
    other: str,
    *,
    values: dict[str, float | None],
) -> float | None:
    """``name`` relative to ``other``: the median of the per-repetition ratios (the two
    ran minutes apart at most, so slow drifts of the machine cancel out); the ratio of
    the aggregates when the runs don't pair up (RSS: worst against worst)."""
    mine = [r.get(row.metric) for r in runs.get(name, [])]
    theirs = [r.get(row.metric) for r in runs.get(other, [])]
    if row.aggregate == "median" and mine and len(mine) == len(theirs):
        ratios = [ratio(a, b) for a, b in zip(mine, theirs, strict=True)]
        known = [r for r in ratios if r is not None]
        return statistics.median(known) if known else None
    return ratio(values.get(name), values.get(other))


def _ge(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a >= b


def _le(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a <= b


ROWS = [
    Row("disk", "disk alone: write 1 GiB + fsync", "MB/s", True, "MBps"),
    Row("loopback", "loopback alone: sendfile -> recv_into", "MB/s", True, "MBps"),
    Row(
        "one_patch",
        "1 GiB in one PATCH",
        "MB/s",
        True,
        "MBps",
        target=(">= 0.7 x limit", lambda v, lim, base: _ge(lim, 0.7)),
    ),
    Row(
        "patches_8m",
        "1 GiB in 8 MiB PATCHes",
        "MB/s",
        True,
        "MBps",
        target=(">= 0.85 x limit", lambda v, lim, base: _ge(lim, 0.85)),
    ),
    Row(
        "chunked",
        "1 GiB chunked (64 KiB chunks)",
        "MB/s",
        True,
        "MBps",
        target=(">= 0.6 x limit", lambda v, lim, base: _ge(lim, 0.6)),
    ),
    Row(
        "small",
        "small uploads, 32 clients (POST+PATCH 64K+HEAD)",
        "uploads/s",
        True,
        "per_s",
        target=(">= 1.5 x baseline", lambda v, lim, base: _ge(base, 1.5)),
    ),
    Row(
        "small_p99",
        "small uploads, 32 clients: latency p99 (3 requests)",
        "ms",
        False,
        "p99_ms",
        target=("< 100 ms", lambda v, lim, base: _le(v, 100.0)),
    ),
    Row(
        "head",
        "HEAD, 32 clients",
        "req/s",
        True,
        "per_s",
        target=(">= 1.5 x baseline", lambda v, lim, base: _ge(base, 1.5)),
    ),
    Row(
        "drop_fin",
        "drop (FIN) -> resuming PATCH accepted",
        "ms",
        False,
        "ms",
        target=("< 100 ms", lambda v, lim, base: _le(v, 100.0)),
    ),
    Row(
        "drop_rst",
        "drop (RST) -> resuming PATCH accepted",
        "ms",
        False,
        "ms",
        target=("< 100 ms", lambda v, lim, base: _le(v, 100.0)),
    ),
    Row(
        "rss",
        "peak RSS - idle, during 1 GiB PATCH",
        "MB",
        False,
        "rss_delta_MB",
        aggregate="max",
        target=("<= 16 MB", lambda v, lim, base: _le(v, 16.0)),
    ),
    Row("cpu", "server CPU per GB, 1 GiB PATCH", "s/GB", False, "cpu_s_per_GB"),
    Row("cpu_8m", "server CPU per GB, 8 MiB PATCHes", "s/GB", False, "cpu_s_per_GB"),
    Row("cpu_chunked", "server CPU per GB, chunked", "s/GB", False, "cpu_s_per_GB"),
]
BIG_ROWS = [
    Row("big", "10 GiB in one PATCH", "MB/s", True, "MBps"),
    Row(
        "rss_big",
        "peak RSS - idle, during 10 GiB PATCH",
        "MB",
        False,
        "rss_delta_MB",
        aggregate="max",
        target=("<= 16 MB", lambda v, lim, base: _le(v, 16.0)),
    ),
]


def capacity_rows(counts: list[int]) -> tuple[list[Row], dict[str, str]]:
    """The capacity workload's rows (bench/capacity.py), per number of slow uploads in
    flight; and which runs each reads (all of one count's from one run)."""
    rows: list[Row] = []
    same: dict[str, str] = {}
    for n in counts:
        key = f"capacity_{n}"
        goal = n >= 1000  # issue 15: 1,000 in flight, the others' p99 under 50 ms
        rows += [
            Row(
                key,
                f"{n} slow uploads in flight: probe p99",
                "ms",
                False,
                "probe_p99_ms",
                target=("< 50 ms", lambda v, lim, base: _le(v, 50.0)) if goal else None,
            ),
            Row(
                f"{key}_p50", f"{n} slow uploads in flight: probe p50", "ms", False, "probe_p50_ms"
            ),
            Row(
                f"{key}_errors",
                f"{n} slow uploads in flight: errors",
                "count",
                False,
                "errors",
                aggregate="max",
                target=("0", lambda v, lim, base: None if v is None else v == 0) if goal else None,
            ),
            Row(
                f"{key}_rss",
                f"{n} slow uploads in flight: server RSS",
                "MB",
                False,
                "rss_MB",
                aggregate="max",
            ),
        ]
        same.update({f"{key}_p50": key, f"{key}_errors": key, f"{key}_rss": key})
    return rows, same


# Rows measured by another row's runs.
SAME_RUN = {
    "rss": "one_patch",
    "cpu": "one_patch",
    "cpu_8m": "patches_8m",
    "cpu_chunked": "chunked",
    "small_p99": "small",
    "rss_big": "big",
}
