"""Per-upload locks as PostgreSQL advisory locks, for hosts that share one registry.

Each ``hold`` takes a session-level advisory lock keyed by a stable 64-bit hash of the
upload id, on a connection of its own (autocommit, so no transaction stays open for the
minutes a PATCH may stream) that it keeps until the ``with`` block ends. Connections
are pooled per process. A host that dies takes its locks with it: the server ends its
sessions when their connections drop (TCP keepalives, set below, notice a host that
vanished without closing them).

Release requests across hosts: a request that finds the lock busy NOTIFYs the channel
``uploadsvc_release`` with the upload id, again every ``RENOTIFY_INTERVAL`` while it
waits. Every process LISTENs on a dedicated connection in a background thread and
remembers the ids asked for; ``release_requested`` is True for an id asked for within
``REQUEST_TTL`` seconds, so transfers.py ends a stalled body holding it, wherever it is.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..errors import UploadLocked

log = logging.getLogger(__name__)

CHANNEL = "uploadsvc_release"
# A waiter repeats its release request this often; a holder counts a request as live
# for REQUEST_TTL after the last one, so requests end soon after their waiter does.
RENOTIFY_INTERVAL = 0.5
REQUEST_TTL = 1.5
# Idle lock connections kept per process; more are opened when more requests run at
# once (each request on an upload holds one) and closed when they come back.
MAX_IDLE = 8
# How long the listener waits in one go, and after a lost connection before it retries.
LISTEN_POLL = 0.5
RECONNECT_DELAY = 1.0
# How long the first hold waits for the listener to be listening.
LISTEN_START_TIMEOUT = 5.0
CONNECT_TIMEOUT = 10
# Server-side TCP keepalives on lock connections: a holder's host that vanished without
# closing its connections (power loss, a cut network) loses its locks after about
# idle + interval * count = 25 s instead of the kernel's default two hours.
SERVER_KEEPALIVES = (
    "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
)
REQUESTS_KEPT = 10_000  # bound on remembered release requests (pruned when passed)

Connection = psycopg.Connection[tuple[Any, ...]]


def lock_key(upload_id: str) -> int:
    """The upload's advisory lock key: a stable, signed 64-bit hash of its id."""
    digest = hashlib.blake2b(upload_id.encode(), digest_size=8, person=b"uploadsvc").digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresLocker:
    def __init__(
        self,
        conninfo: str,
        *,
        on_wait: Callable[[float, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        params = conninfo_to_dict(conninfo)
        options = " ".join(filter(None, [str(params.get("options") or ""), SERVER_KEEPALIVES]))
        params.update(
            options=options,
            connect_timeout=params.get("connect_timeout") or CONNECT_TIMEOUT,
            application_name=params.get("application_name") or "uploadsvc-locks",
        )
        self.conninfo = make_conninfo("", **params)
        # Told of every wait for a busy lock: (seconds waited, whether it was acquired).
        self.on_wait = on_wait
        self.clock = clock
        self._idle: list[Connection] = []
        # The connection holding each upload's lock in this process (one holder each).
        self._held: dict[str, Connection] = {}
        self._requests: dict[str, float] = {}  # upload id -> when last asked (clock)
        self._guard = threading.Lock()
        self._listener: threading.Thread | None = None
        self._listening = threading.Event()
        self._closed = threading.Event()

    # -- the lock -----------------------------------------------------------------------

    @contextmanager
    def hold(self, upload_id: str, *, timeout: float) -> Iterator[None]:
        self._start_listener()
        key = lock_key(upload_id)
        conn = self._acquire(upload_id, key, timeout)
        with self._guard:
            self._held[upload_id] = conn
        try:
            yield
        finally:
            with self._guard:
                self._held.pop(upload_id, None)
            self._release(conn, key)

    def still_held(self, upload_id: str) -> bool:
        """Asks the server: a lock connection that died (a restart, a network cut, an
        administrator's pg_terminate_backend) took the lock with it, maybe minutes ago,
        and another host may hold it now. Called by the holder's thread, the only user
        of its connection."""
        with self._guard:
            conn = self._held.get(upload_id)
        if conn is None:
            return False
        key = lock_key(upload_id) & 0xFFFF_FFFF_FFFF_FFFF
        try:
            # pg_locks shows a bigint advisory key as two oids (high, low) and 1.
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
                " AND pid = pg_backend_pid() AND granted AND objsubid = 1"
                " AND classid::bigint = %s AND objid::bigint = %s)",
                [key >> 32, key & 0xFFFF_FFFF],
            ).fetchone()
        except psycopg.Error:
            log.warning("lock connection for upload %s is gone: the lock is lost", upload_id)
            return False
        return bool(row and row[0])

    def _acquire(self, upload_id: str, key: int, timeout: float) -> Connection:
        conn, pooled = self._connection()
        try:
            try:
                locked = self._try_lock(conn, key)
            except psycopg.OperationalError:
                if not pooled:
                    raise
                # A pooled connection died while idle (say, the server restarted).
                conn.close()
                conn, pooled = self._connect(), False
                locked = self._try_lock(conn, key)
            if not locked:
                self._wait(conn, upload_id, key, timeout)
        except UploadLocked:
            self._put_back(conn)  # not acquired: a clean timeout
            raise
        except BaseException:
            # Interrupted mid-query the session might hold the lock unbeknownst to us:
            # never pool it; closing the connection ends its locks.
            conn.close()
            raise
        return conn

    def _try_lock(self, conn: Connection, key: int) -> bool:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
        return bool(row and row[0])

    def _wait(self, conn: Connection, upload_id: str, key: int, timeout: float) -> None:
        """Busy: ask the holder to let go, and wait (bounded) for the lock."""
        if timeout <= 0:
            raise UploadLocked()
        started = self.clock()
        deadline = started + timeout
        acquired = False
        try:
            # Bounded: each round waits up to RENOTIFY_INTERVAL, or returns at once.
            for _ in range(int(timeout / RENOTIFY_INTERVAL) + 2):
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                conn.execute("SELECT pg_notify(%s, %s)", [CHANNEL, upload_id])
                if self._lock_within(conn, key, min(remaining, RENOTIFY_INTERVAL)):
                    acquired = True
                    return
            raise UploadLocked()
        finally:
            if self.on_wait is not None:
                self.on_wait(self.clock() - started, acquired)

    def _lock_within(self, conn: Connection, key: int, seconds: float) -> bool:
        """Wait up to ``seconds`` for the lock: the server wakes us the moment it is free."""
        try:
            # A session-level advisory lock outlives the transaction it was taken in;
            # the transaction only scopes lock_timeout to this one wait.
            with conn.transaction():
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)",
                    [f"{max(1, int(seconds * 1000))}"],
                )
                conn.execute("SELECT pg_advisory_lock(%s)", [key])
        except pg_errors.LockNotAvailable:
            # The lock may have been granted just as the timeout fired: PostgreSQL then
            # keeps it for the session and raises all the same. Ask again without
            # waiting: True if we hold it after all (or it just came free).
            return self._try_lock(conn, key)
        return True

    def _release(self, conn: Connection, key: int) -> None:
        try:
            # All of them: a connection serves one hold at a time, and a lock granted
            # twice over (see _lock_within) is counted twice by the server.
            conn.execute("SELECT pg_advisory_unlock_all()")
        except psycopg.Error:
            # The session is gone, and its locks with it; so is this connection.
            log.warning("lost the lock connection while holding lock %d", key, exc_info=True)
            conn.close()
        self._put_back(conn)

    # -- connections --------------------------------------------------------------------

    def _connection(self) -> tuple[Connection, bool]:
        """An idle pooled connection (True), or a new one (False)."""
        with self._guard:
            conn = self._idle.pop() if self._idle else None
        if conn is not None and not (conn.closed or conn.broken):
            return conn, True
        return self._connect(), False

    def _connect(self) -> Connection:
        return psycopg.connect(self.conninfo, autocommit=True)

    def _put_back(self, conn: Connection) -> None:
        if conn.closed or conn.broken:
            conn.close()
            return
        with self._guard:
            if not self._closed.is_set() and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    # -- release requests ---------------------------------------------------------------

    def release_requested(self, upload_id: str) -> bool:
        with self._guard:
            asked = self._requests.get(upload_id)
        return asked is not None and self.clock() - asked < REQUEST_TTL

    def _requested(self, upload_id: str) -> None:
        now = self.clock()
        with self._guard:
            if len(self._requests) >= REQUESTS_KEPT:
                self._requests = {
                    key: asked for key, asked in self._requests.items() if now - asked < REQUEST_TTL
                }
            self._requests[upload_id] = now

    def _start_listener(self) -> None:
        """Start listening before the first lock is held, so no request goes unheard."""
        with self._guard:
            if self._listener is not None or self._closed.is_set():
                return
            self._listener = threading.Thread(
                target=self._listen, name="uploadsvc-release-listener", daemon=True
            )
            self._listener.start()
        if not self._listening.wait(LISTEN_START_TIMEOUT):
            log.warning("release-request listener not connected yet; takeovers may wait")

    def _listen(self) -> None:
        # Bounded by the process's life: it ends when close() is called.
        while not self._closed.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    while not self._closed.is_set():
                        for notify in conn.notifies(timeout=LISTEN_POLL):
                            if self._closed.is_set():
                                break  # close() woke us (see there)
                            self._requested(notify.payload)
            except psycopg.Error as error:
                self._listening.clear()
                if not self._closed.is_set():
                    log.warning("release-request listener lost its connection: %s", error)
                    self._closed.wait(RECONNECT_DELAY)

    # -- the rest of the Locker interface -------------------------------------------------

    def forget(self, upload_id: str) -> None:
        """Advisory locks leave nothing behind."""

    def scan(self) -> list[tuple[str, datetime]]:
        """Advisory locks leave nothing behind for cleanup to find."""
        return []

    def close(self) -> None:
        """Stop listening and close the pooled connections (tests; a server just exits)."""
        self._closed.set()
        with self._guard:
            idle, self._idle = self._idle, []
        listener = self._listener
        if listener is not None and listener.is_alive():
            # Wake the listener now rather than at its next poll: an empty request.
            try:
                if idle:
                    idle[0].execute("SELECT pg_notify(%s, '')", [CHANNEL])
            except psycopg.Error:
                pass  # it wakes at its next poll anyway
            listener.join(timeout=LISTEN_POLL * 4 + CONNECT_TIMEOUT)
        for conn in idle:
            conn.close()
