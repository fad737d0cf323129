"""Slow clients, unit depth: the minimum body rate's windows and the per-client cap.

The live depth (a real gunicorn, real sockets) is tests/live/test_slow_clients.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from uploadsvc.clientslots import ClientSlots
from uploadsvc.errors import TooManyUploads
from uploadsvc.locking.filelock import FileLocker
from uploadsvc.transfers import TransferMonitor, _Transfer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _monitor(tmp_path: Path, clock: Clock, min_rate: int) -> TransferMonitor:
    return TransferMonitor(
        FileLocker(tmp_path),
        read_timeout=1e9,
        clock=clock,
        min_rate=min_rate,
        rate_window=10.0,
        rate_grace=5.0,
    )


def _feed(monitor: TransferMonitor, clock: Clock, per_second: list[int]) -> list[str]:
    """One transfer receiving per_second[i] bytes in second i; the stop kinds seen."""
    transfer = _Transfer("u", lambda: None, clock())
    transfer.window_start = clock() + monitor.rate_grace
    kinds = []
    for count in per_second:
        for _ in range(10):  # the watcher looks every 0.1 s
            clock.now += 0.1
            kind, reason = monitor._reason_to_stop(transfer)
            if reason:
                kinds.append(kind)
        transfer.received += count
    return kinds


@pytest.mark.parametrize(
    ("per_second", "stopped"),
    [
        # A byte a second: past the grace, the first window ends it.
        ([1] * 20, True),
        # Nothing in the grace (a slow start), then fast: kept.
        ([0] * 5 + [5000] * 30, False),
        # Exactly the minimum: kept.
        ([1000] * 40, False),
        # Fast, then a byte at a time: the window after the change ends it.
        ([5000] * 20 + [1] * 25, True),
        # Bursts that average above the minimum over each window: kept.
        ([0, 0, 0, 0, 20000] * 8, False),
    ],
)
def test_min_rate_windows(tmp_path: Path, per_second: list[int], stopped: bool) -> None:
    clock = Clock()
    kinds = _feed(_monitor(tmp_path, clock, 1000), clock, per_second)
    assert bool(kinds) is stopped
    assert set(kinds) <= {"too_slow"}


def test_no_min_rate_when_off(tmp_path: Path) -> None:
    clock = Clock()
    assert _feed(_monitor(tmp_path, clock, 0), clock, [0] * 60) == []


def test_client_slots_cap_each_address() -> None:
    slots = ClientSlots(2)
    with slots.hold("10.0.0.1"), slots.hold("10.0.0.1"):
        with pytest.raises(TooManyUploads) as refused, slots.hold("10.0.0.1"):
            pass
        assert refused.value.status == 503 and refused.value.retry_after > 0
        with slots.hold("10.0.0.2"):  # another address has its own
            assert slots.in_flight("10.0.0.2") == 1
        assert slots.in_flight("10.0.0.1") == 2
    assert slots.in_flight("10.0.0.1") == 0
    with slots.hold("10.0.0.1"):  # freed: the next one goes
        pass


def test_client_slots_freed_when_the_body_fails() -> None:
    slots = ClientSlots(1)
    with pytest.raises(RuntimeError), slots.hold("a"):
        raise RuntimeError
    with slots.hold("a"):
        assert slots.in_flight("a") == 1


def test_client_slots_off() -> None:
    slots = ClientSlots(0)
    with slots.hold("a"), slots.hold("a"), slots.hold("a"):
        assert slots.in_flight("a") == 0
