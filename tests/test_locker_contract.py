"""The Locker contract, run against the file locker and the in-memory double alike, so
the double the service tests use can't drift from the locker it stands in for."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from uploadsvc.errors import UploadLocked
from uploadsvc.locking import Locker
from uploadsvc.locking.filelock import FileLocker
from uploadsvc.locking.memory import MemoryLocker

A = "a" * 32
B = "b" * 32
# Bounds for the waits below: generous (2 shared cores), never slept in full.
PATIENCE = 5.0


@pytest.fixture(params=["file", "memory"])
def locker(request: pytest.FixtureRequest, tmp_path: Path) -> Locker:
    if request.param == "file":
        return FileLocker(tmp_path / "locks")
    return MemoryLocker()


def eventually(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_one_holder_at_a_time(locker: Locker) -> None:
    with locker.hold(A, timeout=0):
        with pytest.raises(UploadLocked), locker.hold(A, timeout=0):
            pass  # pragma: no cover
        with locker.hold(B, timeout=0):  # another upload is another lock
            pass
    with locker.hold(A, timeout=0):  # released
        pass


def test_holding_is_per_hold_not_per_thread(locker: Locker) -> None:
    """Two requests on one thread in turn, or on two threads, exclude each other alike:
    the lock is not reentrant."""
    with locker.hold(A, timeout=0), pytest.raises(UploadLocked), locker.hold(A, timeout=0.05):
        pass  # pragma: no cover


def test_a_wait_that_runs_out_is_upload_locked(locker: Locker) -> None:
    with locker.hold(A, timeout=0):
        started = time.monotonic()
        with pytest.raises(UploadLocked), locker.hold(A, timeout=0.1):
            pass  # pragma: no cover
        assert 0.09 <= time.monotonic() - started < PATIENCE
        # The waiter that gave up withdrew its request.
        assert not locker.release_requested(A)


def test_a_waiter_asks_the_holder_to_release_and_gets_the_lock(locker: Locker) -> None:
    got: list[bool] = []

    def waiter() -> None:
        with locker.hold(A, timeout=PATIENCE):
            got.append(locker.still_held(A))

    assert not locker.release_requested(A)
    with locker.hold(A, timeout=0):
        thread = threading.Thread(target=waiter)
        thread.start()
        assert eventually(lambda: locker.release_requested(A))
        assert not locker.release_requested(B)
    thread.join(PATIENCE)
    assert got == [True]
    assert not locker.release_requested(A)


def test_still_held_is_true_only_inside_the_hold(locker: Locker) -> None:
    assert not locker.still_held(A)
    with locker.hold(A, timeout=0):
        assert locker.still_held(A)
        assert not locker.still_held(B)
    assert not locker.still_held(A)


def test_an_error_inside_the_hold_releases_it(locker: Locker) -> None:
    with pytest.raises(RuntimeError), locker.hold(A, timeout=0):
        raise RuntimeError
    assert not locker.still_held(A)
    with locker.hold(A, timeout=0):
        pass


def test_scan_lists_lock_resources_until_forgotten(locker: Locker) -> None:
    before = datetime.now(UTC) - timedelta(seconds=2)
    assert locker.scan() == []
    with locker.hold(A, timeout=0):
        pass
    with locker.hold(B, timeout=0):
        locker.forget(B)  # terminate forgets under the lock
    scanned = dict(locker.scan())
    assert set(scanned) == {A}
    assert scanned[A].tzinfo is not None
    assert before <= scanned[A] <= datetime.now(UTC) + timedelta(seconds=2)
    locker.forget(A)
    locker.forget(A)  # idempotent
    assert locker.scan() == []
    with locker.hold(A, timeout=0):  # a forgotten lock can be held again
        pass


@pytest.mark.parametrize("unsafe", ["../" + A, A + "/x", ""])
def test_ids_that_are_not_path_components_are_refused(locker: Locker, unsafe: str) -> None:
    with pytest.raises(ValueError), locker.hold(unsafe, timeout=0):
        pass  # pragma: no cover


def test_a_lock_forgotten_while_waited_for_still_excludes(locker: Locker) -> None:
    """``forget`` (a terminated upload) while a request waits: the waiter ends up holding
    the lock a newcomer must wait for, not one on a file nobody else can find."""
    got = threading.Event()
    done = threading.Event()

    def waiter() -> None:
        with locker.hold(A, timeout=PATIENCE):
            got.set()
            done.wait(PATIENCE)

    with locker.hold(A, timeout=0):
        thread = threading.Thread(target=waiter)
        thread.start()
        assert eventually(lambda: locker.release_requested(A))
        locker.forget(A)
    try:
        assert got.wait(PATIENCE)
        with pytest.raises(UploadLocked), locker.hold(A, timeout=0):
            pass  # pragma: no cover
    finally:
        done.set()
        thread.join(PATIENCE)


def test_other_processes_are_excluded(tmp_path: Path) -> None:
    """The file lock holds across processes (gunicorn's workers, ``flask cleanup``)."""
    locker = FileLocker(tmp_path / "locks")
    script = (
        "import sys; from pathlib import Path; from uploadsvc.errors import UploadLocked;"
        "from uploadsvc.locking.filelock import FileLocker;"
        "locker = FileLocker(Path(sys.argv[1]))\n"
        "try:\n"
        "    with locker.hold(sys.argv[2], timeout=0): print('held')\n"
        "except UploadLocked: print('locked')\n"
    )

    def other() -> str:
        argv = [sys.executable, "-c", script, str(tmp_path / "locks"), A]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout.strip()

    with locker.hold(A, timeout=0):
        assert other() == "locked"
    assert other() == "held"
