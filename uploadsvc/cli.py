"""``flask cleanup`` and ``flask db``: thin click wrappers over cleanup.py and Alembic.

Made for cron: quiet when there is nothing to say, non-zero exit on any failure so that
cron mail shows it.
"""

from __future__ import annotations

import json
import sys

import click
from alembic import command
from alembic.config import Config
from flask import Flask
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import Engine

from . import db
from .cleanup import Cleaner, Report, Retention
from .parts import parts

# Exit status when cleanup failed on at least one upload (click uses 2 for bad usage).
EXIT_FAILED = 1

# Report field -> what the human summary calls it.
LABELS = {
    "expired": "expired uploads",
    "completed": "completed uploads past retention",
    "gone": "uploads whose data had vanished",
    "purged": "tombstones purged",
    "orphan_files": "orphan data files",
    "orphan_locks": "orphan lock files",
}


def init_app(app: Flask) -> None:
    app.cli.add_command(cleanup_command)
    app.cli.add_command(db_cli)


def _alembic_config(engine: Engine) -> Config:
    config = db.alembic_config(engine)
    # Alembic's default is the sys.stdout of its import time; print where click prints.
    config.stdout = sys.stdout
    return config


@click.command("cleanup")
@click.option("--dry-run", is_flag=True, help="Report what would be removed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, always.")
@with_appcontext
def cleanup_command(dry_run: bool, as_json: bool) -> None:
    """Remove expired uploads, old tombstones and orphaned files.

    Uploads busy with a request are skipped and left for the next run. Prints nothing
    when there was nothing to do; exits 1 if anything failed.
    """
    app_parts = parts()
    cleaner = Cleaner(
        sessions=app_parts.sessions,
        store=app_parts.store,
        locker=app_parts.locker,
        clock=app_parts.clock,
        resume_finish=app_parts.service.resume_finish,
        retention=Retention.from_settings(app_parts.settings),
        dry_run=dry_run,
        quota=app_parts.service.quota,
    )
    report = cleaner.run()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    elif not report.idle:
        click.echo(summary(report))
    if not report.ok:
        raise click.exceptions.Exit(EXIT_FAILED)


def summary(report: Report) -> str:
    counts = {name: count for name, count in report.counts().items() if count}
    lines = []
    if report.running_elsewhere:
        lines.append("another cleanup is running; this one did nothing")
    if counts:
        lines.append("cleanup would remove (dry run):" if report.dry_run else "cleanup removed:")
        width = max(len(LABELS[name]) for name in counts)
        lines.extend(f"  {LABELS[name]:<{width}}  {count}" for name, count in counts.items())
    if report.finished:
        verb = "would finish" if report.dry_run else "finished"
        lines.append(f"{verb} {len(report.finished)} upload(s) whose finish broke off")
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} busy upload(s); the next run retries")
    if report.failures:
        lines.append(f"FAILED on {len(report.failures)} upload(s):")
        lines.extend(f"  {f.upload_id} ({f.action}): {f.error}" for f in report.failures)
    return "\n".join(lines)


db_cli = AppGroup("db", help="The registry's schema (Alembic migrations in migrations/).")


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Migrate the registry to REVISION (default: head), then print the revision.

    The server also upgrades to head when it starts; this is for doing it beforehand.
    """
    engine = db.make_engine(parts().settings.database_url)
    try:
        config = _alembic_config(engine)
        command.upgrade(config, revision)
        command.current(config)
    finally:
        engine.dispose()


@db_cli.command("current")
def db_current() -> None:
    """Print the registry's revision ("(head)" when it is the newest)."""
    engine = db.make_engine(parts().settings.database_url)
    try:
        command.current(_alembic_config(engine))
    finally:
        engine.dispose()
