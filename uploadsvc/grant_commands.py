"""``flask grant create|list|revoke``: upload links for the operator (grants.py).

Thin click wrappers: the values are parsed by grants.py, the rows kept by its store.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import click
from flask.cli import AppGroup

from .grants import Grant, Usage, grant_json, parse_duration, parse_size, parse_types
from .parts import parts

# Where the link points when --base-url isn't given (make serve's address).
DEFAULT_BASE_URL = "http://127.0.0.1:8080/"
EXIT_UNKNOWN = 1

T = TypeVar("T")

grant_cli = AppGroup("grant", help="Upload links (grants): who may upload, how much, until when.")


def _parsed(parse: Callable[[str], T]) -> Callable[[click.Context, click.Parameter, Any], T | None]:
    def callback(context: click.Context, parameter: click.Parameter, value: Any) -> T | None:
        if value is None:
            return None
        try:
            return parse(str(value))
        except ValueError as error:
            raise click.BadParameter(str(error)) from None

    return callback


def _files(text: str) -> int:
    number = int(text) if text.strip().isdigit() else 0
    if not 1 <= number <= 2**31 - 1:
        raise ValueError(f"{text!r} is not a number of files (1 or more)")
    return number


@grant_cli.command("create")
@click.option("--label", required=True, help='Who or what it is for, e.g. "ACME scans".')
@click.option("--max-bytes", callback=_parsed(parse_size), help="e.g. 20G (default: no limit).")
@click.option("--max-files", callback=_parsed(_files), help="e.g. 50 (default: no limit).")
@click.option("--expires", callback=_parsed(parse_duration), help="e.g. 7d, 12h (default: never).")
@click.option(
    "--types",
    callback=_parsed(parse_types),
    help="Allowed media types, e.g. image/*,application/pdf (default: any).",
)
@click.option(
    "--base-url",
    envvar="UPLOADSVC_PUBLIC_URL",
    default=DEFAULT_BASE_URL,
    show_default=True,
    help="The upload page's public URL (env UPLOADSVC_PUBLIC_URL).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def create(
    label: str,
    max_bytes: int | None,
    max_files: int | None,
    expires: timedelta | None,
    types: tuple[str, ...] | None,
    base_url: str,
    as_json: bool,
) -> None:
    """Make an upload link: a page link for people, a token for tus clients.

    The token is shown once: only its hash is kept.
    """
    app_parts = parts()
    grant, token = app_parts.grants.create(
        label=label,
        max_bytes=max_bytes,
        max_files=max_files,
        expires_in=expires,
        types=types or (),
    )
    # The token rides in the fragment: browsers never send it to a server or proxy.
    link = base_url.rstrip("/") + "/#grant=" + token
    settings = app_parts.settings
    if settings.auth != "grants":
        _warn("UPLOADSVC_AUTH is 'open': anyone may upload without a link; set it to 'grants'")
    if not settings.web_ui:
        _warn("UPLOADSVC_WEB_UI is off: the link's page answers 404 (tus clients still work)")
    if as_json:
        data = grant_json(grant, now=app_parts.clock())
        click.echo(json.dumps({**data, "token": token, "link": link}, indent=2))
        return
    click.echo(f"grant {grant.id} {grant.label!r}: {_limits(grant)}")
    click.echo(f"link (the upload page): {link}")
    click.echo(f"token (tus clients, Authorization: Bearer ...): {token}")


@grant_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_grants(as_json: bool) -> None:
    """Every grant, with what it holds against its limits."""
    app_parts = parts()
    now = app_parts.clock()
    grants = app_parts.grants.all()
    if as_json:
        click.echo(json.dumps([grant_json(g, u, now=now) for g, u in grants], indent=2))
        return
    if not grants:
        click.echo("no grants")
        return
    rows: list[tuple[str, ...]] = [("ID", "STATE", "BYTES", "FILES", "EXPIRES", "LABEL")]
    rows.extend(_row(grant, usage, grant.problem(now) or "live") for grant, usage in grants)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]))


@grant_cli.command("revoke")
@click.argument("grant_id")
def revoke(grant_id: str) -> None:
    """Revoke a grant: its link and token stop working at once (uploads in flight at
    their next request); what it uploaded stays."""
    grant = parts().grants.revoke(grant_id)
    if grant is None:
        click.echo(f"no grant {grant_id!r}", err=True)
        raise click.exceptions.Exit(EXIT_UNKNOWN)
    assert grant.revoked_at is not None
    click.echo(f"grant {grant.id} revoked ({grant.revoked_at.isoformat(timespec='seconds')})")


def _row(grant: Grant, usage: Usage, state: str) -> tuple[str, ...]:
    return (
        grant.id,
        state,
        f"{_size(usage.used_bytes)}/{_size(grant.max_bytes)}",
        f"{usage.used_files}/{'-' if grant.max_files is None else grant.max_files}",
        grant.expires_at.strftime("%Y-%m-%d %H:%M UTC") if grant.expires_at else "never",
        grant.label,
    )


def _limits(grant: Grant) -> str:
    size = "any size" if grant.max_bytes is None else f"up to {_size(grant.max_bytes)}"
    files = "any number of files" if grant.max_files is None else f"{grant.max_files} files"
    until = grant.expires_at.strftime("%Y-%m-%d %H:%M UTC") if grant.expires_at else "no expiry"
    types = ", ".join(grant.types) if grant.types else "any type"
    return f"{size} in {files}, {types}, {until}"


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.2f} {unit}"


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)
