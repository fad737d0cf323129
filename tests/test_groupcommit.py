"""groupcommit.py: SQLite write blocks of many threads committed together, each block
rolled back alone when it raises, every block raising when their commit fails, and
processes taking turns by the lock file."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from uploadsvc.groupcommit import GroupCommit

# Bounds every wait in these tests (they end in milliseconds when all is well).
PATIENCE = 10.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "test.db"
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE parents (id INTEGER PRIMARY KEY)")
    connection.execute(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, parent INTEGER"
        " REFERENCES parents(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    connection.close()
    return path


@pytest.fixture
def group(path: Path) -> Iterator[GroupCommit]:
    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA foreign_keys=ON")
        return connection

    group = GroupCommit(connect, path.with_name("test.db-turn"))
    yield group
    group.close()


def committed(path: Path) -> list[int]:
    """The ids another connection sees."""
    connection = sqlite3.connect(path)
    try:
        return [i for (i,) in connection.execute("SELECT id FROM items ORDER BY id")]
    finally:
        connection.close()


def wait_for(condition: object) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def waiting(group: GroupCommit, count: int) -> bool:
    return group._waiting >= count


def test_many_threads_lose_nothing(group: GroupCommit, path: Path) -> None:
    def write(start: int) -> None:
        for i in range(start, start + 50):
            with group.transaction() as cursor:
                cursor.execute("INSERT INTO items (id) VALUES (?)", (i,))

    threads = [threading.Thread(target=write, args=(n * 50,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert committed(path) == list(range(400))


def run(target: object) -> tuple[threading.Thread, list[BaseException | None]]:
    """``target`` in a thread; the list gets what it raised (None: nothing)."""
    outcome: list[BaseException | None] = []

    def body() -> None:
        try:
            target()  # type: ignore[operator]
        except BaseException as error:
            outcome.append(error)
        else:
            outcome.append(None)

    thread = threading.Thread(target=body)
    thread.start()
    return thread, outcome


def run_two(
    group: GroupCommit, first: object, second: object
) -> tuple[list[BaseException | None], list[BaseException | None]]:
    """``first`` in a thread until its block has opened the group's transaction, then
    ``second`` in another; both joined. What each raised, as ``run`` gives it."""
    one, first_outcome = run(first)
    wait_for(lambda: group._group is not None)
    two, second_outcome = run(second)
    one.join(PATIENCE)
    two.join(PATIENCE)
    return first_outcome, second_outcome


def test_a_block_that_raises_is_undone_alone(group: GroupCommit, path: Path) -> None:
    seen_by_first: list[list[int]] = []

    def first() -> None:
        with group.transaction() as cursor:
            cursor.execute("INSERT INTO items (id) VALUES (1)")
            wait_for(lambda: waiting(group, 1))  # the second waits: hand it the group
        # Returns only once committed (by the second block's thread).
        seen_by_first.append(committed(path))

    def second() -> None:
        with group.transaction() as cursor:
            cursor.execute("INSERT INTO items (id) VALUES (2)")
            raise RuntimeError("refused")

    first_outcome, second_outcome = run_two(group, first, second)
    assert first_outcome == [None]
    assert isinstance(second_outcome[0], RuntimeError)
    assert seen_by_first == [[1]]
    # The connection goes on.
    with group.transaction() as cursor:
        cursor.execute("INSERT INTO items (id) VALUES (3)")
    assert committed(path) == [1, 3]


def test_a_failed_commit_fails_every_block_in_it(group: GroupCommit, path: Path) -> None:
    def first() -> None:
        with group.transaction() as cursor:
            cursor.execute("INSERT INTO items (id) VALUES (1)")
            wait_for(lambda: waiting(group, 1))

    def second() -> None:
        with group.transaction() as cursor:
            # A deferred foreign key: checked (and failed) by the COMMIT.
            cursor.execute("INSERT INTO items (id, parent) VALUES (2, 99)")

    first_outcome, second_outcome = run_two(group, first, second)
    assert isinstance(first_outcome[0], sqlite3.IntegrityError)
    assert isinstance(second_outcome[0], sqlite3.IntegrityError)
    assert first_outcome[0] is not second_outcome[0]
    assert committed(path) == []
    with group.transaction() as cursor:
        cursor.execute("INSERT INTO items (id) VALUES (3)")
    assert committed(path) == [3]


def test_processes_take_turns_by_the_lock_file(group: GroupCommit, path: Path) -> None:
    """Another process's writer (here: another GroupCommit on the same file, as another
    worker has) waits for this one's commit, woken by the lock file, not by SQLite."""

    def connect() -> sqlite3.Connection:
        # No busy timeout: without the turn, it would fail at once ("database is locked").
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)

    other = GroupCommit(connect, path.with_name("test.db-turn"))
    try:

        def first() -> None:
            with group.transaction() as cursor:
                cursor.execute("INSERT INTO items (id) VALUES (1)")
                time.sleep(0.2)

        def second() -> None:
            with other.transaction() as cursor:
                cursor.execute("INSERT INTO items (id) VALUES (2)")

        first_outcome, second_outcome = run_two(group, first, second)
        assert first_outcome == [None]
        assert second_outcome == [None]
        assert committed(path) == [1, 2]
    finally:
        other.close()
