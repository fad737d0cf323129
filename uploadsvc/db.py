"""The database engine (SQLite or PostgreSQL), and the schema kept at head at start-up."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import filelock
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .config import PREFIX, ConfigError
from .errors import InsufficientStorage

# Installed from a wheel, the migrations travel inside the package (pyproject.toml);
# in a checkout (and an editable install) they are at the top of the repository.
_PACKAGED_MIGRATIONS = Path(__file__).resolve().parent / "_migrations"
MIGRATIONS_DIR = (
    _PACKAGED_MIGRATIONS
    if _PACKAGED_MIGRATIONS.is_dir()
    else Path(__file__).resolve().parent.parent / "migrations"
)
# Seconds a connection waits for SQLite's single writer before "database is locked".
BUSY_TIMEOUT = 30.0
# PostgreSQL: seconds to wait for a connection to the server before giving up.
PG_CONNECT_TIMEOUT = 10
# Seconds a starting host waits for another host's migration before giving up.
MIGRATE_TIMEOUT = 120.0
# The advisory lock that serialises migrations across hosts. The two-integer form lives
# in a key space of its own, apart from the one-bigint keys of per-upload locks
# (locking/postgres.py), so the two can never collide. 0x75706c64 is "upld".
MIGRATE_LOCK_KEY = (0x75706C64, 1)


def make_engine(url: str) -> Engine:
    if url.startswith("postgresql"):
        # pool_pre_ping: a PostgreSQL restart (or failover) costs one reconnect, not one
        # failed request per pooled connection.
        return create_engine(
            url, pool_pre_ping=True, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT}
        )
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT})
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def make_readers(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose transactions only read: on SQLite they begin DEFERRED and, in WAL
    mode, never wait for the writer (BEGIN IMMEDIATE serialises every HEAD otherwise)."""
    return sessionmaker(engine.execution_options(uploadsvc_read_only=True), expire_on_commit=False)


def libpq_conninfo(url: str) -> str:
    """The libpq connection string of a ``postgresql+psycopg://`` URL, for connections
    made with psycopg directly (advisory locks, LISTEN)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def check_connection(url: str) -> None:
    """Connect once and run ``SELECT 1``; raise ``ConfigError`` naming the setting if
    the database can't be reached (start-up check, see ``uploadsvc.check_reachable``)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        place = make_url(url).render_as_string(hide_password=True)
        reason = (str(getattr(error, "orig", None) or error).strip().splitlines() or ["?"])[0]
        raise ConfigError(f"{PREFIX}DATABASE_URL: can't connect to {place}: {reason}") from None
    finally:
        engine.dispose()


def sqlite_on_connect(dbapi_connection: Any, record: Any) -> None:
    # Let SQLAlchemy, not the driver, say when transactions begin (see _sqlite_on_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed during a write; FULL makes each commit durable, which
    # the offsets we acknowledge rely on.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    # BEGIN IMMEDIATE takes the write lock up front. A deferred transaction that reads,
    # then writes, fails at once with "database is locked" when another connection
    # wrote meanwhile: busy_timeout can't help an upgrade from reader to writer.
    read_only = connection.get_execution_options().get("uploadsvc_read_only", False)
    connection.exec_driver_sql("BEGIN DEFERRED" if read_only else "BEGIN IMMEDIATE")


def is_disk_full(error: OperationalError) -> bool:
    """SQLite's "database or disk is full": the operator's to fix (507), not a bug."""
    return getattr(error.orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def registry_full(
    error: OperationalError, *, offset: int | None = None
) -> InsufficientStorage | None:
    """The one rule for a full registry disk: the 507 to answer (``offset``: where the
    client resumes), or None when ``error`` is something else (a bug: re-raise it)."""
    if not is_disk_full(error):
        return None
    return InsufficientStorage("no space left for the upload registry", offset=offset)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, lock_path: Path) -> None:
    """Bring the schema to head; several workers starting at once take turns.

    On SQLite the turns are a lock file beside the database (one host). On PostgreSQL
    they are an advisory lock, so workers on several hosts starting at once take turns
    too; it goes with its connection if a host dies mid-migration.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            # Autocommit: the lock belongs to the session, not to a transaction, and no
            # transaction stays open on this connection while Alembic works on another.
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            timeout_ms = int(MIGRATE_TIMEOUT * 1000)
            connection.execute(text(f"SET lock_timeout = {timeout_ms}"))
            connection.execute(text("SELECT pg_advisory_lock(:a, :b)"), _migrate_key())
            try:
                command.upgrade(alembic_config(engine), "head")
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:a, :b)"), _migrate_key())
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(lock_path, timeout=MIGRATE_TIMEOUT, preserve_lock_file=True):
        command.upgrade(alembic_config(engine), "head")


def _migrate_key() -> dict[str, int]:
    return {"a": MIGRATE_LOCK_KEY[0], "b": MIGRATE_LOCK_KEY[1]}
