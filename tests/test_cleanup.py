"""`flask cleanup` through Flask's CLI runner, with the injected clock at every cutoff.

Each edge is tested one second either side, and asserted on files and rows, not only on
what the command prints. File ages are set with os.utime relative to the injected
clock, which the cleaner compares them with. Runs on both registries (conftest.py);
tests about lock files use lock files whatever the registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from tests.conftest import TUS, Clock, database_settings, service
from uploadsvc import close_app, create_app
from uploadsvc.cleanup import RUN_LOCK, Retention
from uploadsvc.config import (
    DEFAULT_ORPHAN_GRACE,
    DEFAULT_TOMBSTONE_TTL,
    ConfigError,
    Settings,
)
from uploadsvc.locking import RUN_LOCKS, is_lock_name
from uploadsvc.locking.filelock import FileLocker
from uploadsvc.models import Base, Upload, UploadState, is_expired
from uploadsvc.protocol import is_upload_id

EXPIRE_AFTER = 3600
# Longer than EXPIRE_AFTER, so one timeline can pass both edges in order.
TOMBSTONE_TTL = 7200
ORPHAN_GRACE = 300
KEEP_COMPLETED = 1800
LENGTH = 10
ID_LENGTH = 32
ROOT = Path(__file__).resolve().parents[1]

AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(data_dir: Path, clock: Clock, database_url: str | None) -> Iterator[AppFactory]:
    """A fresh app on ``data_dir`` with the test clock; keyword args are settings."""
    apps: list[Flask] = []

    def make(**settings: str) -> Flask:
        app = create_app(
            {
                "DATA_DIR": str(data_dir),
                "MAX_SIZE": "1000",
                "EXPIRE_AFTER": str(EXPIRE_AFTER),
                "LOCK_TIMEOUT": "0.2",
                "TOMBSTONE_TTL": str(TOMBSTONE_TTL),
                "ORPHAN_GRACE": str(ORPHAN_GRACE),
                **database_settings(database_url),
                **settings,
            },
            clock=clock,
        )
        apps.append(app)
        app.testing = True
        return app

    yield make
    for app in apps:
        close_app(app)


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as client:
        yield client


# -- helpers ------------------------------------------------------------------------------


def cleanup(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["cleanup", *args])


def cleanup_json(app: Flask, *args: str) -> dict[str, Any]:
    result = cleanup(app, "--json", *args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert isinstance(report, dict)
    return report


def new_upload(app: Flask, *, written: int = 3, length: int = LENGTH) -> str:
    """An upload with ``written`` bytes (so its lock file exists too)."""
    svc = service(app)
    upload_id = svc.create(length, {}).id
    svc.append(upload_id, 0, [b"x" * written], content_length=written)
    return upload_id


def row(app: Flask, upload_id: str) -> Upload | None:
    with service(app).sessions.begin() as session:
        return session.get(Upload, upload_id)


def state(app: Flask, upload_id: str) -> UploadState | None:
    found = row(app, upload_id)
    return None if found is None else found.state


def data_file(data_dir: Path, upload_id: str) -> Path:
    return data_dir / "files" / upload_id


def lock_file(data_dir: Path, upload_id: str) -> Path:
    return data_dir / "locks" / f"{upload_id}.lock"


def lock_files(data_dir: Path) -> list[Path]:
    """Upload lock files left (none ever with PostgreSQL's advisory locks: no locks/ at
    all); not the run lock's, which stays like any lock file of something that lives."""
    folder = data_dir / "locks"
    found = list(folder.iterdir()) if folder.exists() else []
    return [path for path in found if path.name != f"{RUN_LOCK}.lock"]


def set_age(path: Path, now: datetime, seconds: float) -> None:
    """Make ``path`` ``seconds`` old as seen from the injected clock's ``now``."""
    stamp = (now - timedelta(seconds=seconds)).timestamp()
    os.utime(path, (stamp, stamp))


def head_status(client: FlaskClient, upload_id: str) -> int:
    return client.head(f"/files/{upload_id}", headers=TUS).status_code


def snapshot(app: Flask, data_dir: Path) -> tuple[dict[str, float], list[tuple[Any, ...]]]:
    """Every file under the data dir's files/ and locks/ with its mtime, and every row."""
    files = {
        str(path.relative_to(data_dir)): path.stat().st_mtime
        for folder in ("files", "locks")
        if (data_dir / folder).exists()  # no locks/ with PostgreSQL's advisory locks
        for path in sorted((data_dir / folder).iterdir())
    }
    with service(app).sessions.begin() as session:
        rows = [
            (r.id, r.state, r.offset, r.updated_at, r.expires_at)
            for r in session.query(Upload).order_by(Upload.id)
        ]
    return files, rows


def stray_id(digit: str) -> str:
    return digit * ID_LENGTH


# -- quiet, settings ------------------------------------------------------------------------


def test_nothing_to_do_prints_nothing(app: Flask) -> None:
    new_upload(app)
    result = cleanup(app)
    assert result.exit_code == 0
    assert result.output == ""


def test_settings_defaults_and_validation(tmp_path: Path) -> None:
    settings = Settings.from_env({"UPLOADSVC_DATA_DIR": str(tmp_path)})
    assert settings.tombstone_ttl == DEFAULT_TOMBSTONE_TTL == 7 * 24 * 3600
    assert settings.orphan_grace == DEFAULT_ORPHAN_GRACE == 3600
    assert settings.keep_completed is None
    assert Retention.from_settings(settings).keep_completed is None
    settings = Settings.from_env({"UPLOADSVC_KEEP_COMPLETED": "90", "UPLOADSVC_ORPHAN_GRACE": "5"})
    retention = Retention.from_settings(settings)
    assert retention.keep_completed == timedelta(seconds=90)
    assert retention.orphan_grace == timedelta(seconds=5)


@pytest.mark.parametrize("name", ["TOMBSTONE_TTL", "ORPHAN_GRACE", "KEEP_COMPLETED"])
@pytest.mark.parametrize("value", ["soon", "0", "-5", "1.5"])
def test_bad_cleanup_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^UPLOADSVC_{name}: "):
        Settings.from_env({f"UPLOADSVC_{name}": value})


# -- expiry -------------------------------------------------------------------------------


def test_expired_uploads_become_tombstones(
    app: Flask, client: FlaskClient, clock: Clock, data_dir: Path
) -> None:
    old = new_upload(app)
    clock.advance(2)
    young = new_upload(app)
    # One second before the first upload's expiry: nothing is due.
    clock.advance(EXPIRE_AFTER - 2 - 1)
    assert cleanup(app).output == ""
    assert state(app, old) is UploadState.ACTIVE
    assert data_file(data_dir, old).exists()
    # One second after it; the second upload still has a second to live.
    clock.advance(2)
    report = cleanup_json(app)
    assert report["expired"] == [old]
    assert report["counts"]["expired"] == 1
    assert not data_file(data_dir, old).exists()
    assert not lock_file(data_dir, old).exists()
    tombstone = row(app, old)
    assert tombstone is not None
    assert tombstone.state is UploadState.EXPIRED
    assert tombstone.updated_at == clock.now
    assert head_status(client, old) == 410
    assert state(app, young) is UploadState.ACTIVE
    assert data_file(data_dir, young).read_bytes() == b"xxx"
    assert head_status(client, young) == 200


def test_a_write_extends_life_so_cleanup_spares_it(app: Flask, clock: Clock) -> None:
    upload_id = new_upload(app)
    clock.advance(EXPIRE_AFTER - 1)
    service(app).append(upload_id, 3, [b"y"], content_length=1)
    clock.advance(2)  # past the first expiry, well before the new one
    assert cleanup(app).output == ""
    assert state(app, upload_id) is UploadState.ACTIVE


# -- tombstones ---------------------------------------------------------------------------


def test_tombstones_are_purged_after_the_ttl(
    app: Flask, client: FlaskClient, clock: Clock, data_dir: Path
) -> None:
    svc = service(app)
    old, young, expired = new_upload(app), new_upload(app), new_upload(app)
    svc.terminate(old)
    clock.advance(2)
    svc.terminate(young)
    clock.advance(EXPIRE_AFTER - 2)
    # ``expired`` becomes a tombstone at this run's "now"; the others are young tombstones.
    assert cleanup_json(app)["expired"] == [expired]
    assert {state(app, i) for i in (old, young)} == {UploadState.TERMINATED}
    assert head_status(client, expired) == 410

    # One second after ``old``'s TTL, one second before ``young``'s.
    clock.advance(TOMBSTONE_TTL - EXPIRE_AFTER + 1)
    assert cleanup_json(app)["purged"] == [old]
    assert row(app, old) is None
    assert head_status(client, old) == 404
    assert state(app, young) is UploadState.TERMINATED
    assert head_status(client, young) == 410
    clock.advance(2)
    assert cleanup_json(app)["purged"] == [young]
    assert row(app, young) is None

    # One second before, then after, the expired upload's tombstone TTL.
    clock.advance(EXPIRE_AFTER - 3 - 1)
    assert cleanup_json(app)["purged"] == []
    assert head_status(client, expired) == 410
    clock.advance(2)
    assert cleanup_json(app)["purged"] == [expired]
    assert row(app, expired) is None
    # Nothing is left of them: purging took any lock file the 410 answers made.
    assert list((data_dir / "files").iterdir()) == []
    assert lock_files(data_dir) == []


# -- orphans ------------------------------------------------------------------------------


def test_orphans_older_than_the_grace_are_removed(
    make_app: AppFactory, clock: Clock, data_dir: Path
) -> None:
    app = make_app(LOCKER="file")
    now = clock.now
    files, locks = data_dir / "files", data_dir / "locks"
    old_file, young_file, old_lock, young_lock = (stray_id(d) for d in "1234")
    for name in (old_file, young_file):
        (files / name).write_bytes(b"left behind")
    for name in (old_lock, young_lock):
        (locks / f"{name}.lock").touch()
    set_age(files / old_file, now, ORPHAN_GRACE + 1)
    set_age(files / young_file, now, ORPHAN_GRACE - 1)
    set_age(locks / f"{old_lock}.lock", now, ORPHAN_GRACE + 1)
    set_age(locks / f"{young_lock}.lock", now, ORPHAN_GRACE - 1)
    # A live upload's old files are never orphans, however old.
    live = new_upload(app)
    set_age(data_file(data_dir, live), now, 100 * ORPHAN_GRACE)
    set_age(lock_file(data_dir, live), now, 100 * ORPHAN_GRACE)
    # Names the store could not have made are not ours to judge.
    (files / "notes-1.txt").write_text("operator's")
    set_age(files / "notes-1.txt", now, 100 * ORPHAN_GRACE)

    report = cleanup_json(app)
    assert report["orphan_files"] == [old_file]
    assert report["orphan_locks"] == [old_lock]
    assert sorted(p.name for p in files.iterdir()) == sorted([young_file, live, "notes-1.txt"])
    assert sorted(p.name for p in lock_files(data_dir)) == sorted(
        [f"{young_lock}.lock", f"{live}.lock"]
    )
    assert state(app, live) is UploadState.ACTIVE


def test_a_tombstones_leftover_data_goes_without_grace(
    app: Flask, data_dir: Path, clock: Clock
) -> None:
    upload_id = new_upload(app)
    service(app).terminate(upload_id)
    # As if terminate crashed between committing the tombstone and deleting the data.
    data_file(data_dir, upload_id).write_bytes(b"xxx")
    set_age(data_file(data_dir, upload_id), clock.now, 0)
    report = cleanup_json(app)
    assert report["orphan_files"] == [upload_id]
    assert not data_file(data_dir, upload_id).exists()
    assert not lock_file(data_dir, upload_id).exists()
    assert state(app, upload_id) is UploadState.TERMINATED


def test_a_tombstones_leftover_lock_file_goes_without_grace(
    make_app: AppFactory, clock: Clock, data_dir: Path
) -> None:
    app = make_app(LOCKER="file")
    upload_id = new_upload(app)
    service(app).terminate(upload_id)
    # As if a request had still been waiting for the lock when terminate removed it.
    lock_file(data_dir, upload_id).touch()
    set_age(lock_file(data_dir, upload_id), clock.now, 0)
    assert cleanup_json(app)["orphan_locks"] == [upload_id]
    assert lock_files(data_dir) == []
    assert state(app, upload_id) is UploadState.TERMINATED


def test_rows_whose_data_vanished_become_tombstones(
    app: Flask, client: FlaskClient, data_dir: Path
) -> None:
    active = new_upload(app)
    complete = new_upload(app, written=LENGTH)
    intact = new_upload(app)
    for upload_id in (active, complete):
        data_file(data_dir, upload_id).unlink()
    report = cleanup_json(app)
    assert sorted(report["gone"]) == sorted([active, complete])
    for upload_id in (active, complete):
        assert state(app, upload_id) is UploadState.EXPIRED
        assert not lock_file(data_dir, upload_id).exists()
        assert head_status(client, upload_id) == 410
    assert state(app, intact) is UploadState.ACTIVE


# -- completed retention ------------------------------------------------------------------


def test_completed_uploads_are_kept_forever_by_default(app: Flask, clock: Clock) -> None:
    upload_id = new_upload(app, written=LENGTH)
    clock.advance(10 * 365 * 24 * 3600)
    assert cleanup(app).output == ""
    assert state(app, upload_id) is UploadState.COMPLETED


def test_completed_uploads_go_after_the_retention(
    make_app: AppFactory, clock: Clock, data_dir: Path
) -> None:
    app = make_app(KEEP_COMPLETED=str(KEEP_COMPLETED))
    old = new_upload(app, written=LENGTH)
    clock.advance(2)
    young = new_upload(app, written=LENGTH)
    clock.advance(KEEP_COMPLETED - 2 - 1)
    assert cleanup(app).output == ""
    clock.advance(2)
    report = cleanup_json(app)
    assert report["completed"] == [old]
    assert state(app, old) is UploadState.EXPIRED
    assert not data_file(data_dir, old).exists()
    assert state(app, young) is UploadState.COMPLETED
    assert data_file(data_dir, young).read_bytes() == b"x" * LENGTH
    with app.test_client() as client:
        assert head_status(client, old) == 410


def test_a_partial_that_a_live_final_names_outlives_the_retention(
    make_app: AppFactory, clock: Clock, data_dir: Path
) -> None:
    app = make_app(KEEP_COMPLETED=str(KEEP_COMPLETED))
    svc = service(app)
    done, waiting = (svc.create(LENGTH, {}, partial=True).id for _ in range(2))
    svc.append(done, 0, [b"a" * LENGTH], content_length=LENGTH)
    final = svc.create_final([done, waiting], {}).id
    clock.advance(KEEP_COMPLETED + 1)
    svc.append(waiting, 0, [b"b" * 3], content_length=3)  # keeps it from expiring
    assert cleanup_json(app)["completed"] == []
    assert state(app, done) is UploadState.COMPLETED
    assert data_file(data_dir, done).exists()

    svc.append(waiting, 3, [b"b" * (LENGTH - 3)], content_length=LENGTH - 3)
    assert state(app, final) is UploadState.COMPLETED
    # The final is read through its partials: complete, it still needs them.
    assert cleanup_json(app)["completed"] == []
    assert data_file(data_dir, final).read_bytes() == b""
    _, file = svc.download(final)
    with file:
        assert file.read() == b"a" * LENGTH + b"b" * LENGTH
    # Once the final is gone, the retention applies again.
    svc.terminate(final)
    assert cleanup_json(app)["completed"] == [done]
    assert not data_file(data_dir, done).exists()


def test_terminated_partials_keep_their_bytes_while_a_final_reads_them(
    app: Flask, clock: Clock, data_dir: Path
) -> None:
    """terminate and every cleanup step leave a partial's bytes to the live final that
    names it; once it is gone, they go."""
    svc = service(app)
    used, unused = (svc.create(LENGTH, {}, partial=True).id for _ in range(2))
    for partial_id in (used, unused):
        svc.append(partial_id, 0, [b"p" * LENGTH], content_length=LENGTH)
    final = svc.create_final([used, used], {}).id
    svc.terminate(used)
    svc.terminate(unused)
    assert data_file(data_dir, used).exists()
    assert not data_file(data_dir, unused).exists()
    with app.test_client() as client:
        assert head_status(client, used) == 410
    # Past every grace and TTL: the tombstone is neither purged nor its data swept.
    clock.advance(TOMBSTONE_TTL + ORPHAN_GRACE + 1)
    set_age(data_file(data_dir, used), clock.now, ORPHAN_GRACE + 1)
    report = cleanup_json(app)
    assert report["purged"] == [unused]
    assert report["orphan_files"] == []
    assert data_file(data_dir, used).exists()
    _, file = svc.download(final)
    with file:
        assert file.read() == b"p" * LENGTH * 2
    # Nothing names the partial any more: its bytes and row go.
    svc.terminate(final)
    clock.advance(TOMBSTONE_TTL + 1)
    report = cleanup_json(app)
    assert sorted(report["purged"]) == sorted([used, final])
    assert not data_file(data_dir, used).exists()


# -- dry run, busy uploads, failures, output ----------------------------------------------


def test_dry_run_changes_nothing_and_predicts_the_real_run(
    make_app: AppFactory, clock: Clock, data_dir: Path
) -> None:
    app = make_app(KEEP_COMPLETED=str(KEEP_COMPLETED))
    svc = service(app)
    expired, complete, terminated = (new_upload(app) for _ in range(3))
    svc.append(complete, 3, [b"x" * (LENGTH - 3)], content_length=LENGTH - 3)
    svc.terminate(terminated)
    clock.advance(EXPIRE_AFTER + TOMBSTONE_TTL)
    vanished = new_upload(app)  # not expired: an expired one would count as expired
    data_file(data_dir, vanished).unlink()
    orphan = stray_id("9")
    (data_dir / "files" / orphan).write_bytes(b"?")
    set_age(data_dir / "files" / orphan, clock.now, ORPHAN_GRACE + 1)

    before = snapshot(app, data_dir)
    predicted = cleanup_json(app, "--dry-run")
    assert snapshot(app, data_dir) == before
    assert predicted["dry_run"] is True
    expected = {
        "expired": [expired],
        "completed": [complete],
        "gone": [vanished],
        "purged": [terminated],
        "orphan_files": [orphan],
    }
    for name, ids in expected.items():
        assert predicted[name] == ids, name

    human = cleanup(app, "--dry-run")
    assert human.exit_code == 0
    assert "would remove (dry run)" in human.output
    assert snapshot(app, data_dir) == before

    real = cleanup_json(app)
    assert real["dry_run"] is False
    for name, ids in expected.items():
        assert real[name] == ids, name
    assert snapshot(app, data_dir) != before


def test_a_busy_upload_is_skipped_and_retried_next_run(
    app: Flask, clock: Clock, data_dir: Path
) -> None:
    svc = service(app)
    busy, idle = new_upload(app), new_upload(app)
    clock.advance(EXPIRE_AFTER + 1)
    with svc.locker.hold(busy, timeout=0):
        result = cleanup(app)
        assert result.exit_code == 0, result.output
        assert "skipped 1 busy upload(s)" in result.output
        assert state(app, busy) is UploadState.ACTIVE
        assert data_file(data_dir, busy).exists()
        assert state(app, idle) is UploadState.EXPIRED
        assert not data_file(data_dir, idle).exists()
    report = cleanup_json(app)
    assert report["expired"] == [busy]
    assert report["skipped"] == []
    assert not data_file(data_dir, busy).exists()


def test_a_failure_exits_non_zero_and_the_next_run_finishes_the_job(
    app: Flask, clock: Clock, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = new_upload(app), new_upload(app)
    clock.advance(EXPIRE_AFTER + 1)
    store = service(app).store
    real_delete = store.delete

    def refuse(upload_id: str) -> None:
        if upload_id == first:
            raise PermissionError(13, "Permission denied")
        real_delete(upload_id)

    monkeypatch.setattr(store, "delete", refuse)
    result = cleanup(app)
    assert result.exit_code == 1
    assert f"FAILED on 1 upload(s):\n  {first} (expired): PermissionError" in result.output
    # The row was buried before the data went: never a live row without its data.
    assert state(app, first) is UploadState.EXPIRED
    assert data_file(data_dir, first).exists()
    assert state(app, second) is UploadState.EXPIRED
    assert not data_file(data_dir, second).exists()

    monkeypatch.undo()
    report = cleanup_json(app)
    assert report["orphan_files"] == [first]
    assert not data_file(data_dir, first).exists()


def test_a_cleanup_while_another_runs_does_nothing_and_says_so(
    app: Flask, clock: Clock, data_dir: Path
) -> None:
    upload_id = new_upload(app)
    clock.advance(EXPIRE_AFTER + 1)
    assert not is_upload_id(RUN_LOCK)  # no request can ever hold it
    with service(app).locker.hold(RUN_LOCK, timeout=0):
        result = cleanup(app)
        assert result.exit_code == 0, result.output
        assert result.output == "another cleanup is running; this one did nothing\n"
        assert cleanup_json(app)["running_elsewhere"] is True
        assert state(app, upload_id) is UploadState.ACTIVE
        # A dry run changes nothing, so it doesn't wait its turn.
        assert cleanup_json(app, "--dry-run")["expired"] == [upload_id]
    report = cleanup_json(app)
    assert report["running_elsewhere"] is False
    assert report["expired"] == [upload_id]
    # The run lock's own file is no orphan for a later run.
    clock.advance(ORPHAN_GRACE + 1)
    assert cleanup(app).output == ""


def test_human_summary(app: Flask, clock: Clock) -> None:
    for _ in range(2):
        new_upload(app)
    clock.advance(EXPIRE_AFTER + 1)
    result = cleanup(app)
    assert result.exit_code == 0
    assert result.output == "cleanup removed:\n  expired uploads  2\n"


def test_json_report_shape(app: Flask) -> None:
    report = cleanup_json(app)
    assert report == {
        "dry_run": False,
        "ok": True,
        "running_elsewhere": False,
        "counts": dict.fromkeys(
            ["expired", "completed", "gone", "purged", "orphan_files", "orphan_locks"], 0
        ),
        "expired": [],
        "completed": [],
        "gone": [],
        "purged": [],
        "orphan_files": [],
        "orphan_locks": [],
        "finished": [],
        "skipped": [],
        "failures": [],
        "events_trimmed": 0,
    }


def test_a_broken_setup_fails_loudly_under_cron(tmp_path: Path) -> None:
    # Before any command runs, the app must load: a bad setting is a non-zero exit with
    # the variable named on stderr (cron mail), never a silent success.
    flask = Path(sys.executable).parent / "flask"
    result = subprocess.run(
        [str(flask), "--app", "wsgi", "cleanup"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "UPLOADSVC_DATA_DIR": str(tmp_path),
            "UPLOADSVC_TOMBSTONE_TTL": "a week",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "UPLOADSVC_TOMBSTONE_TTL: 'a week' is not an integer" in result.stderr


@pytest.mark.parametrize(
    ("name", "lockable"),
    [
        ("0123456789abcdef0123456789abcdef", True),  # an id the server makes
        ("ChosenBy8", True),  # one a pre-create hook may choose
        (RUN_LOCK, True),  # a run lock: not an upload id, but a lock name
        ("clean", False),  # alphanumeric, but neither
        ("short", False),
        ("../../etc", False),
        ("a" * 65, False),
        ("abcdéfgh", False),  # isalnum() alone would take it
    ],
)
def test_the_file_locker_locks_upload_ids_and_run_locks_only(
    tmp_path: Path, name: str, lockable: bool
) -> None:
    locker = FileLocker(tmp_path / "locks")
    assert is_lock_name(name) is lockable
    if not lockable:
        with pytest.raises(ValueError), locker.hold(name, timeout=0):
            pass
        return
    with locker.hold(name, timeout=0):
        assert locker.still_held(name)
    # What it scans for cleanup is upload locks only: never a run lock's file.
    assert [found for found, _ in locker.scan()] == ([name] if is_upload_id(name) else [])


def test_run_lock_names_are_never_upload_ids() -> None:
    assert RUN_LOCKS and not any(is_upload_id(name) for name in RUN_LOCKS)


def test_expired_means_the_same_in_python_and_in_sql(tmp_path: Path) -> None:
    """``is_expired`` (service, cleanup's re-check) and ``Upload.expired_by`` (cleanup's
    query) are one rule: on every state and expiry around ``now`` they agree."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    engine = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    Base.metadata.create_all(engine)
    expiries = [None, now - timedelta(seconds=1), now, now + timedelta(seconds=1)]
    rows = [
        Upload(
            id=f"{number:032x}",
            state=state,
            expires_at=expires_at,
            created_at=now,
            updated_at=now,
        )
        for number, (state, expires_at) in enumerate(
            (state, expires_at) for state in UploadState for expires_at in expiries
        )
    ]
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.add_all(rows)
    expected = {row.id for row in rows if is_expired(row.state, row.expires_at, now)}
    assert expected == {f"{number:032x}" for number in (1, 2)}  # ACTIVE, at or past it
    with Session(engine) as session:
        found = set(session.scalars(select(Upload.id).where(Upload.expired_by(now))))
        assert found == expected
        assert {
            row.id for row in session.scalars(select(Upload)) if row.expired_at(now)
        } == expected
    engine.dispose()
