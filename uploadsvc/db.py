"""The database engine, its SQLite settings, and the schema kept at head at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import filelock
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Seconds a connection waits for SQLite's single writer before "database is locked".
BUSY_TIMEOUT = 30.0


def make_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT})
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, record: Any) -> None:
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
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, lock_path: Path) -> None:
    """Bring the schema to head; several workers starting at once take turns."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(lock_path, timeout=120, preserve_lock_file=True):
        command.upgrade(alembic_config(engine), "head")
