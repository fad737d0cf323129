"""What every campaign gets: its seeded random generator, a directory, and a way to talk."""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from .report import Result
from .server import Server


def _echo(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Context:
    seed: int
    work_dir: Path
    fast: bool = False  # the subset `make test` runs: fewer rounds, same code
    echo: Callable[[str], None] = _echo
    # Extra UPLOADSVC_* settings for every server the campaigns start (--env).
    env: dict[str, str] = field(default_factory=dict)

    def rng(self, campaign: str) -> random.Random:
        """A generator of its own per campaign: replaying one campaign with the same
        seed replays it exactly, whatever ran before it."""
        return random.Random(f"{self.seed}:{campaign}")

    def directory(self, name: str) -> Path:
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def note(self, campaign: str, text: str) -> None:
        self.echo(f"  [{campaign}] {text}")


@contextlib.contextmanager
def running(
    ctx: Context, result: Result, name: str, *, data_dir: Path | None = None, **env: str
) -> Iterator[Server]:
    """A started server, always stopped afterwards; its tracebacks go into ``result``."""
    server = Server(ctx.directory(name), data_dir=data_dir, env={**ctx.env, **env})
    try:
        server.start()
        yield server
    finally:
        server.stop()
        result.count(tracebacks=server.tracebacks())
        if server.tracebacks():
            excerpt = server.log_text()
            at = excerpt.find("Traceback (most recent call last)")
            result.problem(f"traceback in {server.logs[-1].parent}: {excerpt[at : at + 1500]}")


def deadline_after(seconds: float) -> Callable[[], float]:
    """Seconds left until a fixed moment (never below zero)."""
    end = time.monotonic() + seconds
    return lambda: max(0.0, end - time.monotonic())


def run_all(
    result: Result, jobs: Sequence[Callable[[], None]], *, parallel: int, budget: float, what: str
) -> None:
    """Run ``jobs`` on ``parallel`` threads; a job still running after ``budget`` seconds
    is a hang (its socket timeouts end it soon after; it is not waited for)."""
    pool = ThreadPoolExecutor(parallel, thread_name_prefix=what)
    try:
        futures = [pool.submit(job) for job in jobs]
        done, pending = wait(futures, timeout=budget)
        for future in done:
            error = future.exception()
            if error is not None:
                result.problem(f"{what}: client crashed: {error!r}")
        if pending:
            result.hang(f"{what}: {len(pending)} of {len(jobs)} jobs unfinished after {budget:g} s")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
