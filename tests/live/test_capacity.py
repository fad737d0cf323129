"""Hundreds of uploads in flight at once, and everybody else still answered (README
"Capacity"), against gunicorn with the shipped gunicorn.conf.py.

torture's ``slow`` campaign with more clients than the old default's threads (2 workers x
128): each uploads 4 KiB/s from a loopback address of its own while a probe POSTs and
HEADs every 100 ms; every probe must be answered (within torture's hang limit, 5 s: a
liveness check, not a speed one), and every upload then finishes intact. Bounded: about
20 s of trickling and finishing.
"""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from torture.campaigns import slow
from torture.context import Context

pytestmark = pytest.mark.live

SEED = 20261206
IN_FLIGHT = 384  # past the 256 threads of the old default


def test_hundreds_of_slow_uploads_leave_room_for_everybody_else(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * IN_FLIGHT + 256:
        pytest.skip(f"open-file limit {hard} too low for {IN_FLIGHT} client sockets")
    if soft != resource.RLIM_INFINITY and soft < 2 * IN_FLIGHT + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2 * IN_FLIGHT + 256, hard))
    ctx = Context(seed=SEED, work_dir=tmp_path, fast=True, echo=lambda text: None)
    result = slow.run(ctx, slow.Params(clients=IN_FLIGHT, seconds=8.0))
    print(result.details())
    assert result.ok, result.details()
    assert result.faults == IN_FLIGHT  # every trickling upload was in flight
    assert result.figures["probe_failures"] == 0
    assert result.figures["probe_answers"] > 0
