"""The operator view: ``GET /admin`` (the page), ``/admin/overview.json`` and the live
feed ``/admin/events`` (server-sent events). README "Watching it run".

Off (404) unless ``UPLOADSVC_ADMIN_TOKEN`` is set. A script sends the token as
``Authorization: Bearer TOKEN``; a person types it once into the page's form, which sets
a cookie holding no token: a time stamp and its HMAC keyed by the token, valid for
``SESSION_HOURS``, ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other
site's page sends it, so no other site can make a browser act here) and ``Secure`` when
the request came over HTTPS. A cookie, because EventSource can send no header. Any
worker or host checks it with the token alone; changing the token ends every session.
No credentials: ``401`` (the page shows the form); wrong ones: ``403``.

Each event stream holds a server thread: a worker serves at most
``UPLOADSVC_ADMIN_WATCHERS`` at once (past that ``503`` + ``Retry-After``), and each
ends after ``UPLOADSVC_ADMIN_STREAM_SECONDS`` or when the worker stops; EventSource
reconnects after the ``retry:`` the stream announces.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, render_template, request, url_for
from werkzeug.wrappers import Response as ResponseBase

from .parts import parts
from .watching import Overview

bp = Blueprint("admin", __name__, template_folder="templates")

COOKIE = "uploadsvc_admin"
SESSION_HOURS = 12
# EventSource waits this long before reconnecting to an ended stream.
RETRY_MS = 2000
# A comment line this often keeps proxies from timing the stream out and finds a
# watcher that went away (its write fails).
HEARTBEAT_SECONDS = 10.0
# Only its own scripts, styles and origin; its forms post only to itself.
ADMIN_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def init_app(app: Flask) -> None:
    if parts(app).settings.admin_token:
        app.register_blueprint(bp)


# -- who may look ---------------------------------------------------------------------------


def _token() -> str:
    token = parts().settings.admin_token
    assert token is not None  # registered only with one
    return token


def _session_mac(issued: str) -> str:
    return hmac.new(
        _token().encode(), f"admin-session:{issued}".encode(), hashlib.sha256
    ).hexdigest()


def _session_value(now: float) -> str:
    issued = str(int(now))
    return f"{issued}.{_session_mac(issued)}"


def _session_valid(value: str, now: float) -> bool:
    issued, _, mac = value.partition(".")
    if not issued.isdigit() or not hmac.compare_digest(mac, _session_mac(issued)):
        return False
    return 0 <= now - int(issued) <= SESSION_HOURS * 3600


def _credentials() -> bool | None:
    """True: the token's holder; False: wrong credentials; None: none were sent."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), _token().encode()
        )
    cookie = request.cookies.get(COOKIE)
    if cookie is not None:
        return _session_valid(cookie, time.time())
    return None


@bp.before_request
def guard() -> ResponseBase | None:
    if request.endpoint in ("admin.login", "admin.logout"):
        return None
    allowed = _credentials()
    if allowed:
        return None
    if request.endpoint == "admin.page":
        return _login_form(401 if allowed is None else 403)
    response = Response(
        "sign in: Authorization: Bearer UPLOADSVC_ADMIN_TOKEN\n"
        if allowed is None
        else "wrong credentials\n",
        status=401 if allowed is None else 403,
        mimetype="text/plain",
    )
    if allowed is None:
        response.headers["WWW-Authenticate"] = 'Bearer realm="uploadsvc admin"'
    return response


def _login_form(status: int) -> Response:
    html = render_template("admin_login.html", wrong=status == 403)
    response = _html(html, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="uploadsvc admin"'
    return response


@bp.route("/admin/login", methods=["POST"])
def login() -> Response:
    given = request.form.get("token", "")
    if not hmac.compare_digest(given.strip().encode(), _token().encode()):
        return _login_form(403)
    response = _html("", 303)
    response.headers["Location"] = url_for("admin.page")
    response.set_cookie(
        COOKIE,
        _session_value(time.time()),
        max_age=SESSION_HOURS * 3600,
        path=url_for("admin.page"),
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


@bp.route("/admin/logout", methods=["POST"])
def logout() -> Response:
    response = _html("", 303)
    response.headers["Location"] = url_for("admin.page")
    response.delete_cookie(COOKIE, path=url_for("admin.page"), httponly=True, samesite="Strict")
    return response


def _html(html: str, status: int) -> Response:
    response = Response(html, status=status, mimetype="text/html")
    response.headers["Content-Security-Policy"] = ADMIN_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


# -- what they see --------------------------------------------------------------------------


@bp.route("/admin", methods=["GET"])
def page() -> Response:
    overview = parts().watching.overview()
    html = render_template(
        "admin.html",
        o=overview,
        chart=chart(overview),
        size=human_size,
        ago=lambda moment: ago(overview.now, moment),
        grants_note=grants_note(),
    )
    return _html(html, 200)


@bp.route("/admin/overview.json", methods=["GET"])
def overview_json() -> ResponseBase:
    o = parts().watching.overview()
    response = jsonify(
        {
            "now": o.now.isoformat().replace("+00:00", "Z"),
            "stall_after": o.stall_after,
            "in_flight": [upload.json() for upload in o.in_flight],
            "idle_unfinished": o.idle_unfinished,
            "held_bytes": o.held_bytes,
            "disk": None if o.disk is None else {"free": o.disk.free, "total": o.disk.total},
            "completions": [upload.json() for upload in o.completions],
            "failures": [upload.json() for upload in o.failures],
            "terminations": [upload.json() for upload in o.terminations],
            "minutes": [[m.isoformat().replace("+00:00", "Z"), n] for m, n in o.minutes],
            "grants": None if o.grants is None else [vars(grant) for grant in o.grants],
        }
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/admin/events", methods=["GET"])
def events() -> Response:
    app_parts = parts()
    watcher = app_parts.feed.watch()
    if watcher is None:
        response = Response(
            "too many watchers on this worker; try again\n", status=503, mimetype="text/plain"
        )
        response.headers["Retry-After"] = "5"
        return response
    deadline = time.monotonic() + app_parts.settings.admin_stream_seconds
    stopping = app_parts.transfers.shutting_down

    def stream() -> Iterator[str]:
        try:
            yield f"retry: {RETRY_MS}\n\n"
            quiet_since = time.monotonic()
            while time.monotonic() < deadline and not stopping():
                found = watcher.next(timeout=min(1.0, max(deadline - time.monotonic(), 0.0)))
                if watcher.overflowed:
                    yield "event: reload\ndata: {}\n\n"
                    return
                if found:
                    yield "".join(
                        f"event: {event['type']}\ndata: {json.dumps(event)}\n\n" for event in found
                    )
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= HEARTBEAT_SECONDS:
                    yield ": still here\n\n"
                    quiet_since = time.monotonic()
        finally:
            watcher.close()

    response = Response(stream(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


# -- formatting -----------------------------------------------------------------------------


def human_size(count: int | None) -> str:
    if count is None:
        return "?"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def ago(now: datetime, moment: datetime) -> str:
    seconds = max(int((now - moment).total_seconds()), 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


CHART_WIDTH, CHART_HEIGHT = 600, 120


def chart(overview: Overview) -> dict[str, Any]:
    """Bars of the chart, server-rendered (admin.js redraws them from minute events)."""
    top = max((count for _, count in overview.minutes), default=0) or 1
    width = CHART_WIDTH / max(len(overview.minutes), 1)
    bars = []
    for index, (minute, count) in enumerate(overview.minutes):
        height = round(CHART_HEIGHT * count / top, 1)
        bars.append(
            {
                "x": round(index * width, 1),
                "y": round(CHART_HEIGHT - height, 1),
                "width": round(width - 1, 1),
                "height": height,
                "minute": minute.isoformat().replace("+00:00", "Z"),
                "count": count,
                "label": f"{minute:%H:%M} UTC: {human_size(count)}",
            }
        )
    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "bars": bars, "top": human_size(top)}


def grants_note() -> str:
    return "no grants: every client uploads as one (grants come with UPLOADSVC_AUTH)"
