"""``flask cleanup``, ``flask db`` and ``flask webhooks``: thin click wrappers over
cleanup.py, Alembic, and the events outbox (outbox.py, delivery.py).

Made for cron: quiet when there is nothing to say, non-zero exit on any failure so that
cron mail shows it.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from types import FrameType

import click
from alembic import command
from alembic.config import Config
from flask import Flask
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import Engine

from . import db, outbox
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
    app.cli.add_command(webhooks_cli)


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
        outbox=app_parts.outbox,
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
    if report.events_trimmed:
        verb = "would delete" if report.dry_run else "deleted"
        lines.append(f"{verb} {report.events_trimmed} webhook event(s) past their retention")
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


# -- flask webhooks ------------------------------------------------------------------------

webhooks_cli = AppGroup(
    "webhooks", help="The webhook events outbox: list, replay, deliver (README: Webhooks)."
)


@webhooks_cli.command("list")
@click.option("--failed", is_flag=True, help="Only events whose every attempt failed.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@with_appcontext
def webhooks_list(failed: bool, as_json: bool, limit: int) -> None:
    """The newest events, newest first: id, event, upload, state, attempts, last answer."""
    events = outbox.list_events(parts().readers, failed_only=failed, limit=limit)
    if as_json:
        click.echo(json.dumps([event.as_dict() for event in events], indent=2))
        return
    for event in events:
        last = (
            str(event.last_status) if event.last_status is not None else (event.last_error or "-")
        )
        click.echo(
            f"{event.created_at:%Y-%m-%dT%H:%M:%SZ}  {event.id}  {event.event:<14}"
            f"  {event.upload_id}  {event.state:<9}  {event.attempts:>2}  {last}"
        )


@webhooks_cli.command("replay")
@click.argument("event_id", required=False)
@click.option(
    "--since",
    metavar="T",
    help="Every event recorded since T: an ISO time (2026-12-06T10:00Z) or an age (90m, 7d).",
)
@with_appcontext
def webhooks_replay(event_id: str | None, since: str | None) -> None:
    """Send an event (by its id), or every event since T, again: it becomes pending,
    due now, with the same id and body. Pending events are left as they are."""
    if (event_id is None) == (since is None):
        raise click.UsageError("give an event id or --since T (one of them)")
    app_parts = parts()
    now = app_parts.clock()
    when = None if since is None else parse_since(since, now)
    count = outbox.replay(app_parts.sessions, now, event_id=event_id, since=when)
    if event_id is not None and count == 0:
        raise click.ClickException(f"no delivered or failed event {event_id}")
    click.echo(f"{count} event(s) to deliver again")


@webhooks_cli.command("deliver")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit.")
@with_appcontext
def webhooks_deliver(once: bool) -> None:
    """Deliver the outbox's events, for a server that runs no dispatcher of its own
    (gunicorn.conf.py's workers each run one). Runs until SIGINT or SIGTERM; several
    may run at once, on several hosts."""
    dispatcher = parts().dispatcher
    if dispatcher is None:
        raise click.UsageError("UPLOADSVC_WEBHOOK_URL is not set: there is nowhere to deliver")
    if once:
        total = 0
        while attempted := dispatcher.deliver_due():
            total += attempted
        click.echo(f"{total} attempt(s); {dispatcher.pending()} event(s) pending")
        return
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    dispatcher.start()
    while not stopping and dispatcher.running:
        time.sleep(0.2)
    dispatcher.stop(timeout=10.0)


_AGE = re.compile(r"([0-9]{1,9})([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime) -> datetime:
    """``--since``: an age (``90m``) before ``now``, or an ISO time (UTC if it says no
    zone)."""
    age = _AGE.fullmatch(text.strip())
    if age:
        return now - timedelta(seconds=int(age[1]) * _UNITS[age[2]])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an ISO time or an age like 90m", param_hint="--since"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
