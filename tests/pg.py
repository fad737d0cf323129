"""A real PostgreSQL for the tests: Debian's ``postgresql`` package, one throwaway cluster
per test session on a free loopback port, one fresh database per test (or per server).

Tests run as root and PostgreSQL refuses to: the cluster's directory belongs to the
``postgres`` user and its programs run as that user (``runuser``). Authentication is
``trust`` on 127.0.0.1 only, durability is off (it is thrown away), and the cluster is
stopped (``pg_ctl stop -m immediate``) and deleted when the session ends.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from testsupport.server import free_port

HOST = "127.0.0.1"
SUPERUSER = "postgres"
START_TIMEOUT = 60  # seconds for pg_ctl start -w
# Every test database comes from this template: empty, so each test starts from nothing
# and its app migrates it like a fresh installation would.
TEMPLATE = "template0"
# Servers under test open many connections (per worker: the SQLAlchemy pool, a lock
# connection per request in flight, the release-request listener); two hosts of two
# workers each, plus the tests' own.
MAX_CONNECTIONS = 400


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    return Path(candidates[-1]).parent if candidates else None


@dataclass
class PostgresServer:
    """A running throwaway cluster; ``new_database()`` makes an empty database."""

    bindir: Path
    base: Path
    port: int
    _names: Iterator[int] = field(default_factory=itertools.count)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    def url(self, database: str) -> str:
        """The UPLOADSVC_DATABASE_URL of ``database``."""
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        return f"host={HOST} port={self.port} user={SUPERUSER} dbname={database}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.conninfo(), autocommit=True)

    def new_database(self) -> str:
        """Create an empty database; return its name."""
        with self._guard:
            name = f"test_{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE}')
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any session still connected to it (a killed server's)."""
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database's URL for the ``with`` block; dropped afterwards."""
        name = self.new_database()
        try:
            yield self.url(name)
        finally:
            self.drop_database(name)


def _as_postgres(command: list[str]) -> list[str]:
    """Run ``command`` as the ``postgres`` user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SUPERUSER, "--", *command]


def start_postgres() -> PostgresServer:
    bindir = pg_bindir()
    if bindir is None:
        message = "PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # Not under pytest's tmp dir: that is root's and mode 0700, out of postgres' reach.
    base = Path(tempfile.mkdtemp(prefix="uploadsvc-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(SUPERUSER)
        os.chown(base, user.pw_uid, user.pw_gid)
    server = PostgresServer(bindir, base, free_port())
    log = base / "server.log"
    try:
        subprocess.run(
            _as_postgres(
                [
                    str(bindir / "initdb"),
                    "--pgdata",
                    str(server.datadir),
                    "--username",
                    SUPERUSER,
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = " ".join(
            [
                f"-p {server.port}",
                f"-c listen_addresses={HOST}",
                f"-c unix_socket_directories={base}",
                f"-c max_connections={MAX_CONNECTIONS}",
                # Thrown away at the end: durability buys nothing here.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        )
        subprocess.run(
            _as_postgres(
                [
                    str(bindir / "pg_ctl"),
                    "--pgdata",
                    str(server.datadir),
                    "--log",
                    str(log),
                    "--options",
                    options,
                    "--wait",
                    f"--timeout={START_TIMEOUT}",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT + 30,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        details = getattr(error, "stderr", b"") or b""
        server_log = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(
            f"PostgreSQL did not start: {error}\n{details.decode(errors='replace')}\n{server_log}"
        ) from None
    return server


def stop_postgres(server: PostgresServer) -> None:
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(
            _as_postgres(
                [
                    str(server.bindir / "pg_ctl"),
                    "--pgdata",
                    str(server.datadir),
                    "--mode",
                    "immediate",
                    "--wait",
                    "stop",
                ]
            ),
            check=False,
            capture_output=True,
            timeout=60,
        )
    shutil.rmtree(server.base, ignore_errors=True)
