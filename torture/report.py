"""What a campaign found: counts for the closing table, figures, and the problems in words."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

MAX_PROBLEMS = 50  # kept in words; the rest are only counted


@dataclass
class Result:
    name: str
    faults: int = 0  # faults injected: drops, kills, stops, full disks, races, hostile requests
    verified: int = 0  # uploads whose stored bytes had the sha256 of what was sent
    mismatches: int = 0  # stored bytes or offsets that disagree with what was sent
    server_errors: int = 0  # 5xx answers nobody asked for (507 on a full disk is asked for)
    hangs: int = 0  # requests neither answered nor closed in time
    tracebacks: int = 0  # Python tracebacks in the server logs
    seconds: float = 0.0
    skipped: str | None = None
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    figures: dict[str, Any] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.skipped is not None or (
            self.mismatches == 0
            and self.server_errors == 0
            and self.hangs == 0
            and self.tracebacks == 0
            and self.problem_count == 0
        )

    @property
    def verdict(self) -> str:
        if self.skipped is not None:
            return "SKIP"
        return "ok" if self.ok else "FAIL"

    # Thread-safe updates: campaigns run many clients at once.

    def problem(self, text: str) -> None:
        with self._guard:
            self.problem_count += 1
            if len(self.problems) < MAX_PROBLEMS:
                self.problems.append(text)

    def count(self, **amounts: int) -> None:
        with self._guard:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def mismatch(self, text: str) -> None:
        self.count(mismatches=1)
        self.problem(f"mismatch: {text}")

    def server_error(self, text: str) -> None:
        self.count(server_errors=1)
        self.problem(f"5xx: {text}")

    def hang(self, text: str) -> None:
        self.count(hangs=1)
        self.problem(f"hang: {text}")

    def line(self) -> str:
        """One line for the campaign's end."""
        if self.skipped is not None:
            return f"{self.name}: SKIP ({self.skipped})"
        shown = ", ".join(f"{key} {_fmt(value)}" for key, value in self.figures.items())
        return (
            f"{self.name}: {self.verdict} in {self.seconds:.1f} s: {self.faults} faults, "
            f"{self.verified} verified, {self.mismatches} mismatches, {self.server_errors} 5xx, "
            f"{self.hangs} hangs, {self.tracebacks} tracebacks" + (f"; {shown}" if shown else "")
        )

    def details(self) -> str:
        """The line, then every problem kept in words."""
        lines = [self.line()]
        lines.extend(f"  - {text}" for text in self.problems)
        if self.problem_count > len(self.problems):
            lines.append(f"  - ... and {self.problem_count - len(self.problems)} more")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        data["ok"] = self.ok
        data["verdict"] = self.verdict
        data["seconds"] = round(self.seconds, 2)
        return data


@contextmanager
def timed(result: Result) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        result.seconds = time.monotonic() - started


def percentiles(samples: Sequence[float], prefix: str, unit: str = "ms") -> dict[str, float]:
    """p50/p99/max of ``samples`` (seconds), in milliseconds by default."""
    if not samples:
        return {}
    scale = 1000.0 if unit == "ms" else 1.0
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        f"{prefix}_p50_{unit}": round(statistics.median(ordered) * scale, 1),
        f"{prefix}_p99_{unit}": round(p99 * scale, 1),
        f"{prefix}_max_{unit}": round(ordered[-1] * scale, 1),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


COLUMNS = ("campaign", "faults", "verified", "mismatches", "5xx", "hangs", "tracebacks", "time")


def table(results: Sequence[Result]) -> str:
    """The closing table, as Markdown (it reads in a terminal and pastes into README)."""
    rows = [(*COLUMNS, "result")]
    for r in results:
        rows.append(
            (
                r.name,
                str(r.faults),
                str(r.verified),
                str(r.mismatches),
                str(r.server_errors),
                str(r.hangs),
                str(r.tracebacks),
                f"{r.seconds:.1f} s",
                r.verdict if r.skipped is None else f"SKIP: {r.skipped}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for index, row in enumerate(rows):
        out.append(
            "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |"
        )
        if index == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def write_json(
    path: Path, seed: int, profile: str, results: Sequence[Result], seconds: float
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "seed": seed,
        "profile": profile,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 1),
        "ok": all(r.ok for r in results),
        "campaigns": [r.as_json() for r in results],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
