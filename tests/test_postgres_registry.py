"""The registry on PostgreSQL: settings, start-up checks, and migrations that take turns
when several hosts start at once (against a real PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from tests.pg import PostgresServer
from tests.s3 import AWS_ENV
from uploadsvc import check_reachable, close_app, create_app, db
from uploadsvc.config import ConfigError, Settings
from uploadsvc.locking.filelock import FileLocker
from uploadsvc.locking.postgres import PostgresLocker
from uploadsvc.parts import parts

ROOT = Path(__file__).resolve().parents[1]
GUNICORN = Path(sys.executable).parent / "gunicorn"


def test_database_and_locker_settings(tmp_path: Path) -> None:
    url = "postgresql+psycopg://uploads@db.internal:5432/uploads"
    settings = Settings.from_env({"UPLOADSVC_DATABASE_URL": url})
    assert (settings.database_url, settings.locker, settings.postgres) == (url, "postgres", True)
    # Plain postgresql:// means psycopg 3 as well.
    plain = Settings.from_env({"UPLOADSVC_DATABASE_URL": "postgresql://u@h/d"})
    assert plain.database_url == "postgresql+psycopg://u@h/d"
    # Lock files with PostgreSQL: one host, or a shared volume.
    shared = Settings.from_env({"UPLOADSVC_DATABASE_URL": url, "UPLOADSVC_LOCKER": "file"})
    assert shared.locker == "file"
    local = Settings.from_env({"UPLOADSVC_DATA_DIR": str(tmp_path)})
    assert (local.locker, local.postgres) == ("file", False)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"UPLOADSVC_DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"UPLOADSVC_DATABASE_URL": "postgresql+psycopg2://u@h/d"}, "DATABASE_URL"),
        ({"UPLOADSVC_DATABASE_URL": "postgresql://"}, "DATABASE_URL"),
        ({"UPLOADSVC_LOCKER": "redis"}, "LOCKER"),
        ({"UPLOADSVC_LOCKER": "postgres"}, "LOCKER"),  # needs a PostgreSQL registry
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=f"^UPLOADSVC_{name}: ") as caught:
        Settings.from_env(env)
    assert "\n" not in str(caught.value)


def test_the_app_picks_the_locker(tmp_path: Path, postgres: PostgresServer) -> None:
    with postgres.database() as url:
        for locker, kind in (("postgres", PostgresLocker), ("file", FileLocker)):
            app = create_app({"DATA_DIR": str(tmp_path), "DATABASE_URL": url, "LOCKER": locker})
            try:
                assert isinstance(parts(app).locker, kind)
            finally:
                close_app(app)
    assert not (tmp_path / "migrate.lock").exists()  # PostgreSQL takes turns in the server


def test_an_unreachable_database_is_one_line(postgres: PostgresServer) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{postgres.port}/no_such_database"
    with pytest.raises(ConfigError, match=r"^UPLOADSVC_DATABASE_URL: can't connect to ") as caught:
        check_reachable(Settings.from_env({"UPLOADSVC_DATABASE_URL": url}))
    assert "\n" not in str(caught.value) and "no_such_database" in str(caught.value)
    with postgres.database() as good:
        check_reachable(Settings.from_env({"UPLOADSVC_DATABASE_URL": good}))


def run_gunicorn(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GUNICORN), "-c", "gunicorn.conf.py", "-b", "127.0.0.1:0", "wsgi:app"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "UPLOADSVC_DATA_DIR": str(tmp_path), **AWS_ENV, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_gunicorn_stops_with_one_line_when_postgres_is_unreachable(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{postgres.port}/missing"
    result = run_gunicorn(tmp_path, UPLOADSVC_DATABASE_URL=url)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("uploadsvc:")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("uploadsvc: UPLOADSVC_DATABASE_URL: can't connect to ")
    assert "Traceback" not in result.stderr


def test_gunicorn_stops_with_one_line_when_the_store_is_unreachable(tmp_path: Path) -> None:
    result = run_gunicorn(
        tmp_path, UPLOADSVC_STORE="s3://uploads/tus", UPLOADSVC_S3_ENDPOINT_URL="http://127.0.0.1:9"
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("uploadsvc:")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "uploadsvc: UPLOADSVC_STORE: s3://uploads/tus/ at http://127.0.0.1:9"
    )
    assert "Traceback" not in result.stderr


def test_hosts_starting_at_once_migrate_in_turns(tmp_path: Path, postgres: PostgresServer) -> None:
    """Eight "hosts" (own data dirs) start on one empty database at the same moment."""
    head = ScriptDirectory(str(db.MIGRATIONS_DIR)).get_current_head()
    with postgres.database() as url:
        barrier = threading.Barrier(8, timeout=30)
        errors: list[BaseException] = []

        def host(number: int) -> None:
            try:
                barrier.wait()
                app = create_app({"DATA_DIR": str(tmp_path / f"host{number}"), "DATABASE_URL": url})
                close_app(app)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=host, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        engine = db.make_engine(url)
        try:
            with engine.connect() as connection:
                assert MigrationContext.configure(connection).get_current_revision() == head
            assert {"uploads", "upload_parts"} <= set(inspect(engine).get_table_names())
        finally:
            engine.dispose()


def test_flask_db_upgrade_on_postgres(tmp_path: Path, postgres: PostgresServer) -> None:
    with postgres.database() as url:
        app = create_app({"DATA_DIR": str(tmp_path), "DATABASE_URL": url})
        try:
            result = app.test_cli_runner().invoke(args=["db", "current"])
            assert result.exit_code == 0, result.output
            assert result.stdout.strip().endswith("(head)")
        finally:
            close_app(app)
