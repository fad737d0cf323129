"""PostgreSQL advisory locks and release requests, against a real PostgreSQL.

Two ``PostgresLocker`` objects stand for two hosts: they share nothing but the server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.pg import PostgresServer
from uploadsvc import db
from uploadsvc.errors import UploadLocked
from uploadsvc.locking.postgres import (
    MAX_IDLE,
    REQUEST_TTL,
    PostgresLocker,
    lock_key,
)
from uploadsvc.transfers import TransferMonitor

UPLOAD = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def conninfo(postgres: PostgresServer) -> Iterator[str]:
    with postgres.database() as url:
        yield db.libpq_conninfo(url)


@pytest.fixture
def make_locker(conninfo: str) -> Iterator[Callable[..., PostgresLocker]]:
    made: list[PostgresLocker] = []

    def make(**kwargs: object) -> PostgresLocker:
        locker = PostgresLocker(conninfo, **kwargs)  # type: ignore[arg-type]
        made.append(locker)
        return locker

    yield make
    for locker in made:
        locker.close()


def wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition()`` held (bounded); fails after ``timeout``."""
    started = time.monotonic()
    for _ in range(int(timeout / 0.01) + 1):
        if condition():
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"not within {timeout} s")


def test_lock_key_is_a_stable_signed_64_bit_hash() -> None:
    assert lock_key(UPLOAD) == lock_key(UPLOAD)
    assert lock_key(UPLOAD) != lock_key(OTHER)
    keys = {lock_key(f"{n:032x}") for n in range(1000)}
    assert len(keys) == 1000
    assert all(-(2**63) <= key < 2**63 for key in keys)
    # Stable across processes and releases: hosts of different versions must agree.
    assert lock_key(UPLOAD) == 7523246298285630522


def test_two_hosts_exclude_each_other(make_locker: Callable[..., PostgresLocker]) -> None:
    a, b = make_locker(), make_locker()
    with a.hold(UPLOAD, timeout=0):
        with pytest.raises(UploadLocked), b.hold(UPLOAD, timeout=0):
            pass
        with b.hold(OTHER, timeout=0):  # other uploads are free
            pass
    with b.hold(UPLOAD, timeout=0), pytest.raises(UploadLocked), a.hold(UPLOAD, timeout=0):
        pass


def test_threads_of_one_host_exclude_each_other(
    make_locker: Callable[..., PostgresLocker],
) -> None:
    locker = make_locker()
    inside = 0
    most = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(5):
            with locker.hold(UPLOAD, timeout=10):
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.005)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert most == 1


def test_a_waiter_asks_the_holder_and_gets_the_lock_when_it_lets_go(
    make_locker: Callable[..., PostgresLocker],
) -> None:
    waits: list[tuple[float, bool]] = []
    holder = make_locker()
    waiter = make_locker(on_wait=lambda seconds, acquired: waits.append((seconds, acquired)))
    released = threading.Event()
    got_it_after: list[float] = []

    def wait() -> None:
        with waiter.hold(UPLOAD, timeout=5):
            got_it_after.append(time.monotonic())

    with holder.hold(UPLOAD, timeout=0):
        assert not holder.release_requested(UPLOAD)
        thread = threading.Thread(target=wait)
        thread.start()
        # The request crosses "hosts": NOTIFY from the waiter, LISTEN in the holder.
        asked_after = wait_for(lambda: holder.release_requested(UPLOAD), 3)
        assert not holder.release_requested(OTHER)
        released_at = time.monotonic()
        released.set()
    thread.join(timeout=10)
    assert got_it_after, "the waiter never got the lock"
    handover = got_it_after[0] - released_at
    print(f"release request seen after {asked_after:.3f} s; handover took {handover:.3f} s")
    assert handover < 2  # the server wakes the waiter at once; no polling (printed)
    assert len(waits) == 1 and waits[0][1] is True
    # The request fades once nobody asks any more.
    wait_for(lambda: not holder.release_requested(UPLOAD), REQUEST_TTL + 2)


def test_a_waiter_gives_up_with_423_after_its_timeout(
    make_locker: Callable[..., PostgresLocker],
) -> None:
    waits: list[tuple[float, bool]] = []
    holder = make_locker()
    waiter = make_locker(on_wait=lambda seconds, acquired: waits.append((seconds, acquired)))
    with holder.hold(UPLOAD, timeout=0):
        started = time.monotonic()
        with pytest.raises(UploadLocked), waiter.hold(UPLOAD, timeout=0.7):
            pass
        waited = time.monotonic() - started
        assert 0.6 <= waited < 2.0
        assert holder.release_requested(UPLOAD)
    assert len(waits) == 1 and waits[0][1] is False
    # The waiter's connection went back clean: it takes the lock at once now.
    with waiter.hold(UPLOAD, timeout=0):
        pass


def test_a_stalled_body_is_stopped_for_a_waiter_on_another_host(
    make_locker: Callable[..., PostgresLocker],
) -> None:
    """transfers.py on host A ends A's stalled PATCH because B asked: B proceeds in time."""
    a, b = make_locker(), make_locker()
    monitor = TransferMonitor(a, read_timeout=60, stall_grace=0.5)
    stopped = threading.Event()
    body_done = threading.Event()

    def stalled_body() -> Iterator[bytes]:
        yield b"some bytes"
        stopped.wait(30)  # a half-open connection: nothing more until stopped

    def patch_on_a() -> None:
        with a.hold(UPLOAD, timeout=0):
            for _ in monitor.track(UPLOAD, stalled_body(), stopped.set):
                pass
        body_done.set()

    thread = threading.Thread(target=patch_on_a)
    thread.start()
    wait_for(lambda: monitor._active != set(), 5)
    started = time.monotonic()
    with b.hold(UPLOAD, timeout=3):
        took = time.monotonic() - started
    thread.join(timeout=10)
    print(f"cross-host takeover of a stalled body: {took:.2f} s")
    # Within the hold's 3 s (or it would have raised UploadLocked); the time is printed.
    assert stopped.is_set() and body_done.is_set()


HOLDER = """
import sys, time
from uploadsvc.locking.postgres import PostgresLocker
locker = PostgresLocker(sys.argv[1])
with locker.hold(sys.argv[2], timeout=0):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_host_that_dies_releases_its_locks(
    make_locker: Callable[..., PostgresLocker], conninfo: str
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, conninfo, UPLOAD],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        waiter = make_locker()
        with pytest.raises(UploadLocked), waiter.hold(UPLOAD, timeout=0):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        started = time.monotonic()
        with waiter.hold(UPLOAD, timeout=3):
            took = time.monotonic() - started
        print(f"lock of a SIGKILLed holder taken after {took:.3f} s")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_connections_are_pooled_and_survive_a_server_side_reset(
    make_locker: Callable[..., PostgresLocker], postgres: PostgresServer, conninfo: str
) -> None:
    locker = make_locker()
    for _ in range(20):
        with locker.hold(UPLOAD, timeout=0):
            pass
    assert len(locker._idle) == 1

    held = [locker.hold(f"{n:032x}", timeout=0) for n in range(MAX_IDLE + 4)]
    for hold in held:
        hold.__enter__()
    for hold in held:
        hold.__exit__(None, None, None)
    assert len(locker._idle) == MAX_IDLE

    # The server drops every lock connection (a restart, a failover): the next hold
    # connects again instead of failing.
    with postgres.admin() as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'uploadsvc-locks' AND query NOT ILIKE 'LISTEN%'"
        )
    with locker.hold(UPLOAD, timeout=0):
        pass


def kill_lock_holder(postgres: PostgresServer, upload_id: str) -> int:
    """Terminate the session holding the upload's advisory lock (as a restart, a
    failover or a cut network would end it); return how many were ended."""
    key = lock_key(upload_id) & 0xFFFF_FFFF_FFFF_FFFF
    with postgres.admin() as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted AND objsubid = 1 AND classid::bigint = %s AND objid::bigint = %s",
            [key >> 32, key & 0xFFFF_FFFF],
        ).fetchone()
    assert row is not None
    return int(str(row[0]))


def test_still_held_fences_a_lost_lock(
    make_locker: Callable[..., PostgresLocker], postgres: PostgresServer
) -> None:
    a, b = make_locker(), make_locker()
    assert not a.still_held(UPLOAD)
    with a.hold(UPLOAD, timeout=0):
        assert a.still_held(UPLOAD)
        assert not a.still_held(OTHER)
        assert not b.still_held(UPLOAD)
        assert kill_lock_holder(postgres, UPLOAD) == 1
        assert not a.still_held(UPLOAD)  # its holder learns it lost it...
        with b.hold(UPLOAD, timeout=0):  # ...and another host may hold it meanwhile
            assert b.still_held(UPLOAD)
    assert not a.still_held(UPLOAD)
    with a.hold(UPLOAD, timeout=0):  # a new connection: the pool dropped the dead one
        assert a.still_held(UPLOAD)


def test_advisory_locks_leave_nothing_for_cleanup(
    make_locker: Callable[..., PostgresLocker],
) -> None:
    locker = make_locker()
    with locker.hold(UPLOAD, timeout=0):
        pass
    locker.forget(UPLOAD)
    assert locker.scan() == []


def test_close_stops_the_listener_promptly(make_locker: Callable[..., PostgresLocker]) -> None:
    locker = make_locker()
    with locker.hold(UPLOAD, timeout=0):
        pass
    listener = locker._listener
    assert listener is not None and listener.is_alive()
    started = time.monotonic()
    locker.close()
    assert not listener.is_alive()
    assert time.monotonic() - started < 1.0


def test_short_waits_racing_a_release_never_leak_the_lock(
    make_locker: Callable[..., PostgresLocker],
) -> None:
    """PostgreSQL may grant a lock just as lock_timeout fires, keep it, and still raise:
    the locker must notice, or a pooled connection would hold the upload forever."""
    hosts = [make_locker(), make_locker()]
    outcomes = {"held": 0, "locked": 0}
    guard = threading.Lock()

    def worker(number: int) -> None:
        locker = hosts[number % 2]
        for attempt in range(15):
            try:
                with locker.hold(UPLOAD, timeout=0.002 + 0.004 * ((number + attempt) % 4)):
                    time.sleep(0.002)
                    kind = "held"
            except UploadLocked:
                kind = "locked"
            with guard:
                outcomes[kind] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert outcomes["held"] + outcomes["locked"] == 12 * 15
    # Free now, for either host, at once.
    for locker in hosts:
        with locker.hold(UPLOAD, timeout=0):
            pass
