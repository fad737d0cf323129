"""SQLite write transactions of one process, committed together (group commit).

SQLite has one writer at a time, and with ``synchronous=FULL`` each commit waits for an
fsync of the write-ahead log: writers queue for the disk, one fsync each. On the
bench's machine an fsync takes 0.2 to 4 ms, so the registry took at most a few hundred
to a few thousand writes a second, and a small upload makes three.

Here the threads of a process write through one connection, taking turns: each
transaction runs in a savepoint of a shared ``BEGIN IMMEDIATE`` transaction, and when
its block ends while other threads wait for their turn, it hands the open transaction on
instead of committing. The last one (no one waiting, or ``MAX_BATCH`` blocks in)
commits them all with one fsync. Every thread returns only once the commit that holds
its writes is durable; if that commit fails, every block in it raises, as if its own
commit had failed. A block that raises is rolled back to its savepoint alone.

What a block must not do: wait for another thread's write (that thread may be waiting
for its turn), or open a second write transaction inside itself.

Across processes (gunicorn's workers), the turn is an ``flock`` on a file beside the
database, taken for the whole group: the next process's writer is woken the moment the
last one commits, where SQLite's own wait for its lock (a busy handler) sleeps 1, 2,
5 ... 100 ms between tries. SQLite's lock stays the guarantee; writers that don't take
the turn (the ORM's sessions, ``flask cleanup``) still meet the busy handler.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Blocks committed together at most: bounds the wait of the first of them.
MAX_BATCH = 64


class _Group:
    """The blocks of one open transaction, waiting for its commit."""

    __slots__ = ("committed", "error", "members")

    def __init__(self) -> None:
        self.committed = threading.Event()
        self.error: sqlite3.Error | None = None
        self.members = 0


class GroupCommit:
    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        turn_file: Path | None,
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._connect = connect
        self._turn_file = turn_file
        self.max_batch = max_batch
        self._turn = threading.Lock()  # this process's writer
        self._guard = threading.Lock()
        self._waiting = 0  # threads waiting for the turn
        self._group: _Group | None = None
        self._connection: sqlite3.Connection | None = None
        self._turn_fd: int | None = None
        self._pid = os.getpid()

    def close(self) -> None:
        with self._turn:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            if self._turn_fd is not None:
                os.close(self._turn_fd)
                self._turn_fd = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """A write transaction's block; returns once its writes are committed."""
        with self._guard:
            self._waiting += 1
        self._turn.acquire()
        with self._guard:
            self._waiting -= 1
        joined: _Group | None = None
        try:
            group = self._group or self._begin()
            cursor = self._writer().cursor()
            try:
                cursor.execute("SAVEPOINT block")
                try:
                    yield cursor
                    cursor.execute("RELEASE block")
                except BaseException as error:
                    self._undo(group, cursor, error)
                    raise
                group.members += 1
                joined = group
            finally:
                cursor.close()
        finally:
            self._end_turn()
        assert joined is not None  # the block ended without raising
        joined.committed.wait()
        if joined.error is not None:
            raise _again(joined.error)

    def _writer(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # forked (gunicorn --preload): nothing crosses
            self._connection = self._turn_fd = None
            self._pid = os.getpid()
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    def _begin(self) -> _Group:
        connection = self._writer()
        self._take_process_turn()
        try:
            connection.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._give_process_turn()
            raise
        self._group = _Group()
        return self._group

    def _undo(self, group: _Group, cursor: sqlite3.Cursor, error: BaseException) -> None:
        """Roll a failed block back to its savepoint; if SQLite rolled the whole
        transaction back itself (a full disk, an I/O error), the group is lost."""
        connection = self._writer()
        if connection.in_transaction:
            try:
                cursor.execute("ROLLBACK TO block")
                cursor.execute("RELEASE block")
                return
            except sqlite3.Error as undo_error:
                error = undo_error
        lost = error if isinstance(error, sqlite3.Error) else sqlite3.OperationalError(str(error))
        self._finish(group, lost)

    def _end_turn(self) -> None:
        """Hand the open transaction to the next waiting thread, or commit it."""
        try:
            group = self._group
            if group is None:
                return
            with self._guard:
                waiting = self._waiting
            if waiting and group.members < self.max_batch:
                return  # the next holder of the turn adds to it (and commits, in time)
            self._finish(group, None)
        finally:
            self._turn.release()

    def _finish(self, group: _Group, error: sqlite3.Error | None) -> None:
        """Commit the group (or roll it back, with ``error``); wake its members."""
        connection = self._writer()
        self._group = None
        try:
            if error is None and group.members:
                connection.execute("COMMIT")
        except sqlite3.Error as commit_error:
            error = commit_error
        finally:
            try:
                if connection.in_transaction:
                    connection.rollback()
            finally:
                group.error = error
                self._give_process_turn()
                group.committed.set()

    def _take_process_turn(self) -> None:
        if self._turn_file is None:
            return
        if self._turn_fd is None:
            self._turn_fd = os.open(self._turn_file, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._turn_fd, fcntl.LOCK_EX)

    def _give_process_turn(self) -> None:
        if self._turn_fd is not None:
            fcntl.flock(self._turn_fd, fcntl.LOCK_UN)


def _again(error: sqlite3.Error) -> sqlite3.Error:
    """The group's error, for one more of its members: a copy, as each thread raising
    the one object would tangle their tracebacks."""
    copy = type(error)(*error.args)
    for name in ("sqlite_errorcode", "sqlite_errorname"):
        if hasattr(error, name):
            setattr(copy, name, getattr(error, name))
    return copy
