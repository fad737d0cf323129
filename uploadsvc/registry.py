"""The registry's hot paths: the few statements every tus request runs, as plain SQL
over DB-API connections, for SQLite and PostgreSQL alike.

Why not the ORM here: a read transaction loading one row through ``Session.get`` cost
about 690 us on the 2-core bench machine (loaded), through SQLAlchemy Core about 220 us,
and over the driver directly about 8 us; a small upload ran about ten of them.
Everything else (cleanup, the page's list, concatenation's bookkeeping, migrations,
tests) keeps using the ORM models in models.py: both describe the same table, and
tests/test_registry.py holds this module's SQL to them.

Transactions, by name: ``reading()`` (never waits for a writer: SQLite's BEGIN
DEFERRED in WAL mode) and ``writing()`` (on SQLite, the threads of a process take turns
and commit together: groupcommit.py). SQLite's own wait for its write lock is a busy
handler that sleeps 1, 2, 5, ... 100 ms between tries, so threads contending for it
waited far longer than the write took (half of all thread time under 16 clients, p99
over 1.5 s).

To add a column: models.Upload (and a migration), ``UploadRow`` (models.py) and
``COLUMNS`` below. To add a statement that must commit with a state change (an outbox
row, a quota): a method on ``Transaction``, called inside the ``writing()`` block that
makes the change; write its SQL with ``:name`` parameters (``_Sql`` renders them for
the driver) and convert datetimes with ``Transaction.time_in``/``time_out``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from . import db
from .groupcommit import GroupCommit
from .models import Concat, EventState, UploadRow, UploadState, Verdict

# uploads' columns in UploadRow's field order.
# SQLite read connections a process keeps for reuse (more are opened while more threads
# read at once, and closed after): reads are short, so a few cover two cores.
MAX_IDLE_READERS = 16

COLUMNS = (
    "id",
    "state",
    "length",
    "offset",
    "upload_metadata",
    "verifying",
    "created_at",
    "updated_at",
    "expires_at",
    "completed_at",
    "finished_at",
    "concat",
    "grant_id",
    "quota_bytes",
    "quota_files",
    "digest",
    "verdict",
    "verdict_reason",
)
_TIMES = frozenset({"created_at", "updated_at", "expires_at", "completed_at", "finished_at"})
_SELECT = "SELECT " + ", ".join(f'"{c}"' for c in COLUMNS) + " FROM uploads WHERE id = :id"


class _Sql:
    """A statement written with ``:name`` parameters, rendered once for the driver's
    paramstyle (sqlite3 takes ``:name`` as it is; psycopg wants ``%(name)s``)."""

    _NAMED = re.compile(r"(?<![:\w]):(\w+)")

    def __init__(self, text: str) -> None:
        self.named = text
        self.pyformat = self._NAMED.sub(r"%(\1)s", text.replace("%", "%%"))

    def text(self, paramstyle: str) -> str:
        return self.pyformat if paramstyle == "pyformat" else self.named


_GET = _Sql(_SELECT)
_GET_FOR_UPDATE = _Sql(_SELECT + " FOR UPDATE")
_INSERT = _Sql(
    "INSERT INTO uploads ("
    + ", ".join(f'"{c}"' for c in COLUMNS)
    + ") VALUES ("
    + ", ".join(f":{c}" for c in COLUMNS)
    + ")"
)
_FINISH = _Sql(
    "UPDATE uploads SET finished_at = :now, verdict = :verdict, verdict_reason = :reason"
    " WHERE id = :id AND state = :completed AND finished_at IS NULL"
)
_PARTS = _Sql("SELECT partial_id FROM upload_parts WHERE final_id = :id ORDER BY position")
_INSERT_PART = _Sql(
    "INSERT INTO upload_parts (final_id, position, partial_id)"
    " VALUES (:final_id, :position, :partial_id)"
)
_UPDATES: dict[tuple[str, ...], _Sql] = {}
# The outbox's row (outbox.py), in the transaction of its change.
_EVENT_COLUMNS = (
    "id",
    "event",
    "upload_id",
    "payload",
    "state",
    "attempts",
    "created_at",
    "due_at",
)
_INSERT_EVENT = _Sql(
    "INSERT INTO events ("
    + ", ".join(_EVENT_COLUMNS)
    + ") VALUES ("
    + ", ".join(f":{c}" for c in _EVENT_COLUMNS)
    + ")"
)
# quota.py's reads, for a refusal's message.
_QUOTA_USAGE = _Sql("SELECT used_bytes, used_files FROM quota_usage WHERE scope = :scope")
_GRANT_QUOTA = _Sql("SELECT max_bytes, max_files, label FROM grants WHERE id = :scope")
_QUOTA_CHANGES: dict[tuple[bool, bool, bool], _Sql] = {}


def _quota_change(grant: bool, check_bytes: bool, check_files: bool) -> _Sql:
    """quota.py's conditional UPDATE of a scope's usage row: a grant's limits read in
    the same statement (NULL: no limit), the open scope's given as parameters."""
    key = (grant, check_bytes, check_files)
    sql = _QUOTA_CHANGES.get(key)
    if sql is None:
        conditions = ["scope = :scope"]
        for check, used, amount, limit in (
            (check_bytes, "used_bytes", ":size", "max_bytes"),
            (check_files, "used_files", ":files", "max_files"),
        ):
            if not check:
                continue
            if grant:
                of = f"(SELECT {limit} FROM grants WHERE id = :scope)"
                conditions.append(f"({of} IS NULL OR {used} + {amount} <= {of})")
            else:
                conditions.append(f"{used} + {amount} <= :{limit}")
        sql = _QUOTA_CHANGES[key] = _Sql(
            "UPDATE quota_usage SET used_bytes = used_bytes + :size,"
            " used_files = used_files + :files WHERE " + " AND ".join(conditions)
        )
    return sql


def _update(columns: tuple[str, ...]) -> _Sql:
    sql = _UPDATES.get(columns)
    if sql is None:
        assignments = ", ".join(f'"{c}" = :{c}' for c in columns)
        sql = _UPDATES[columns] = _Sql(f"UPDATE uploads SET {assignments} WHERE id = :id")
    return sql


class Transaction:
    """One transaction's statements on the uploads table."""

    def __init__(self, cursor: Any, sqlite: bool, *, writes: bool) -> None:
        self.cursor = cursor
        self.sqlite = sqlite
        self.paramstyle = "named" if sqlite else "pyformat"
        # What each row looked like when read: ``save`` writes the columns that changed.
        self._loaded: dict[str, tuple[Any, ...]] | None = {} if writes else None

    def execute(self, sql: _Sql, params: dict[str, Any]) -> Any:
        self.cursor.execute(sql.text(self.paramstyle), params)
        return self.cursor

    # SQLite stores the ORM's datetimes as naive UTC text ("2026-12-06 22:55:25.000123",
    # SQLAlchemy's format: compared as text by cleanup's queries), PostgreSQL as
    # timestamp without time zone.
    def time_in(self, value: datetime | None) -> datetime | str | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        naive = value.astimezone(UTC).replace(tzinfo=None)
        return naive.isoformat(" ", "microseconds") if self.sqlite else naive

    @staticmethod
    def time_out(value: datetime | str | None) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC)

    def get(self, upload_id: str, *, for_update: bool = False) -> UploadRow | None:
        """The upload's row, or None. ``for_update``: lock it until the transaction
        ends (PostgreSQL; SQLite's write transactions are serial anyway)."""
        sql = _GET_FOR_UPDATE if for_update and not self.sqlite else _GET
        found = self.execute(sql, {"id": upload_id}).fetchone()
        if found is None:
            return None
        (id_, state, length, offset, metadata, verifying, *rest) = found
        created, updated, expires, completed, finished = map(self.time_out, rest[:5])
        (concat, grant_id, quota_bytes, quota_files, digest, verdict, reason) = rest[5:]
        row = UploadRow(
            id=id_,
            state=UploadState[state],
            length=length,
            offset=offset,
            upload_metadata=metadata,
            verifying=bool(verifying),
            created_at=created,  # type: ignore[arg-type]  # NOT NULL
            updated_at=updated,  # type: ignore[arg-type]  # NOT NULL
            expires_at=expires,
            completed_at=completed,
            finished_at=finished,
            concat=None if concat is None else Concat[concat],
            grant_id=grant_id,
            quota_bytes=quota_bytes,
            quota_files=quota_files,
            digest=digest,
            verdict=None if verdict is None else Verdict[verdict],
            verdict_reason=reason,
        )
        if self._loaded is not None:
            self._loaded[row.id] = _values(row)
        return row

    def _params(self, row: UploadRow, columns: Iterable[str]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for column in columns:
            value = getattr(row, column)
            if column in _TIMES:
                value = self.time_in(value)
            elif isinstance(value, UploadState | Concat | Verdict):
                value = value.name  # the ORM's Enum columns store names
            params[column] = value
        return params

    def insert(self, row: UploadRow) -> None:
        self.execute(_INSERT, self._params(row, COLUMNS))
        if self._loaded is not None:
            self._loaded[row.id] = _values(row)

    def save(self, row: UploadRow) -> None:
        """Write the columns of ``row`` (read by ``get`` in this transaction) that
        changed since, as the ORM's unit of work did; nothing when none did."""
        assert self._loaded is not None, "a save in a reading transaction"
        before = self._loaded[row.id]
        now = _values(row)
        changed = tuple(c for c, old, new in zip(COLUMNS, before, now, strict=True) if old != new)
        if not changed:
            return
        params = self._params(row, changed)
        params["id"] = row.id
        self.execute(_update(changed), params)
        self._loaded[row.id] = now

    def finish(
        self,
        upload_id: str,
        now: datetime,
        verdict: Verdict | None = None,
        reason: str | None = None,
    ) -> bool:
        """The finish's compare-and-set: ``finished_at``, with the finish's verdict, for
        a COMPLETED row that has none yet. Whether this transaction set it (see
        ``UploadService._complete``)."""
        params = {
            "id": upload_id,
            "now": self.time_in(now),
            "completed": UploadState.COMPLETED.name,
            "verdict": None if verdict is None else verdict.name,
            "reason": reason,
        }
        return int(self.execute(_FINISH, params).rowcount) == 1

    def insert_event(self, values: dict[str, Any]) -> None:
        """An outbox row (outbox.py ``record``): commits exactly when this transaction's
        change does."""
        params = {c: values[c] for c in _EVENT_COLUMNS}
        params["created_at"] = self.time_in(params["created_at"])
        params["due_at"] = self.time_in(params["due_at"])
        state = params["state"]
        params["state"] = state.name if isinstance(state, EventState) else state
        self.execute(_INSERT_EVENT, params)

    def change_quota(
        self,
        scope: str,
        size: int,
        files: int,
        *,
        open_limits: tuple[int | None, int | None] | None,
    ) -> bool:
        """quota.py's conditional UPDATE: add ``size`` bytes and ``files`` files to
        ``scope``'s usage where its limits allow (only growth is checked). A grant's
        limits are read in the statement; ``open_limits``, the open scope's (bytes,
        files; None: no limit). Whether the row was counted."""
        max_bytes, max_files = open_limits if open_limits is not None else (None, None)
        grant = open_limits is None
        check_bytes = size > 0 and (grant or max_bytes is not None)
        check_files = files > 0 and (grant or max_files is not None)
        params: dict[str, Any] = {"scope": scope, "size": size, "files": files}
        if not grant:
            params.update(max_bytes=max_bytes, max_files=max_files)
        sql = _quota_change(grant, check_bytes, check_files)
        return int(self.execute(sql, params).rowcount) == 1

    def quota_usage(self, scope: str) -> tuple[int, int] | None:
        """A scope's (used bytes, used files), None when it has no usage row."""
        found = self.execute(_QUOTA_USAGE, {"scope": scope}).fetchone()
        return None if found is None else (int(found[0]), int(found[1]))

    def grant_quota(self, grant_id: str) -> tuple[int | None, int | None, str] | None:
        """A grant's (max bytes, max files, label), None when it doesn't exist."""
        found = self.execute(_GRANT_QUOTA, {"scope": grant_id}).fetchone()
        return None if found is None else (found[0], found[1], found[2] or "")

    def insert_parts(self, final_id: str, partial_ids: list[str]) -> None:
        """A final upload's partial upload ids, in order (after its own row)."""
        self.cursor.executemany(
            _INSERT_PART.text(self.paramstyle),
            [
                {"final_id": final_id, "position": position, "partial_id": partial_id}
                for position, partial_id in enumerate(partial_ids)
            ],
        )

    def parts(self, final_id: str) -> tuple[str, ...]:
        """A final upload's partial upload ids, in order."""
        return tuple(partial for (partial,) in self.execute(_PARTS, {"id": final_id}).fetchall())


class Registry:
    """The connections and transactions of the hot paths (see the module's doc)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self._dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        # SQLite: readers' connections, kept for reuse (opening one runs four PRAGMAs)
        # but at most MAX_IDLE_READERS of them, not one per thread: a worker runs a
        # thousand threads (README "Capacity"), and each SQLite connection holds three
        # open files and its own page cache. PostgreSQL: the engine's pool, whose size
        # bounds the server's connections.
        self._idle: list[Any] = []
        self._guard = threading.Lock()
        # Set by close(): a reader handed back after it is closed, not kept idle (no one
        # would close it again: it would leak its files).
        self._closed = False
        # SQLite's one writer: the threads of this process take turns and commit
        # together, processes take turns by a lock file beside the database.
        database = engine.url.database
        on_disk = database and database != ":memory:" and not database.startswith("file:")
        turn_file = Path(f"{database}-turn") if on_disk else None
        self._writes = GroupCommit(self._new_sqlite_connection, turn_file)

    @classmethod
    def of(cls, sessions: sessionmaker[Session]) -> Registry:
        """The registry on the engine ``sessions`` are bound to."""
        bind = sessions.kw["bind"]
        assert isinstance(bind, Engine)
        return cls(bind)

    def close(self) -> None:
        """Close this registry's SQLite connections (of every thread)."""
        with self._guard:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        self._writes.close()

    @contextmanager
    def _sqlite_reader(self) -> Iterator[Any]:
        """A connection for reading, this block's alone: an idle one, or a new one when
        every kept one is in use (closed after, past ``MAX_IDLE_READERS``)."""
        with self._guard:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._new_sqlite_connection()
        try:
            yield connection
        finally:
            with self._guard:
                keep = not self._closed and len(self._idle) < MAX_IDLE_READERS
                if keep:
                    self._idle.append(connection)
            if not keep:
                connection.close()

    def _new_sqlite_connection(self) -> Any:
        dialect = self.engine.dialect
        args, kwargs = dialect.create_connect_args(self.engine.url)
        # Used by one thread at a time, but not always the same one (the writer's).
        kwargs.update(timeout=db.BUSY_TIMEOUT, check_same_thread=False)
        connection = dialect.loaded_dbapi.connect(*args, **kwargs)
        db.sqlite_on_connect(connection, None)
        return connection

    @contextmanager
    def reading(self) -> Iterator[Transaction]:
        """A transaction that only reads: it never waits for a writer."""
        if not self.sqlite:
            with self._pooled_transaction(writes=False) as transaction:
                yield transaction
            return
        with self._sqlite_reader() as connection:
            cursor = connection.cursor()
            try:
                with self._translated():
                    cursor.execute("BEGIN DEFERRED")
                    yield Transaction(cursor, True, writes=False)
            finally:
                try:
                    if connection.in_transaction:
                        connection.rollback()  # it only read: nothing to commit
                finally:
                    cursor.close()

    @contextmanager
    def writing(self) -> Iterator[Transaction]:
        """A transaction that writes, committed when the block ends without error: the
        block's writes are durable when it returns."""
        if not self.sqlite:
            with self._pooled_transaction(writes=True) as transaction:
                yield transaction
            return
        with self._translated(), self._writes.transaction() as cursor:
            yield Transaction(cursor, True, writes=True)

    def get(self, upload_id: str) -> UploadRow | None:
        """The upload's row, read on its own (SQLite: one statement is one consistent
        read; no BEGIN, no ROLLBACK)."""
        if not self.sqlite:
            with self.reading() as transaction:
                return transaction.get(upload_id)
        with self._sqlite_reader() as connection:
            cursor = connection.cursor()
            try:
                with self._translated():
                    return Transaction(cursor, True, writes=False).get(upload_id)
            finally:
                cursor.close()

    @contextmanager
    def _pooled_transaction(self, *, writes: bool) -> Iterator[Transaction]:
        with self._translated():
            connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                with self._translated():
                    yield Transaction(cursor, False, writes=writes)
                    connection.commit()
            except BaseException:
                try:
                    connection.rollback()
                except self._dbapi_error:
                    connection.invalidate()  # broken: it must not go back to the pool
                raise
            finally:
                cursor.close()
        finally:
            connection.close()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """The driver's errors as SQLAlchemy's (``OperationalError``...), which the rest
        of the app knows (``db.registry_full``, the views' 507)."""
        try:
            yield
        except self._dbapi_error as error:
            raise DBAPIError.instance(None, None, error, self._dbapi_error) from error


_values: Callable[[UploadRow], tuple[Any, ...]] = attrgetter(*COLUMNS)
