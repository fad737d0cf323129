"""What operators watch: /metrics, /healthz, and one log line per request.

Every request gets an id: the client's ``X-Request-ID`` when it is a sane token (nginx
sets one), or a fresh one. It is echoed in the response and carried by every log line
written while the request runs.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import cast

from flask import Blueprint, Flask, Response, current_app, g, has_request_context, request
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from werkzeug.wrappers import Response as ResponseBase

from .metrics import Metrics
from .service import UploadService
from .storage import StoreUnavailable

log = logging.getLogger("uploadsvc.requests")

bp = Blueprint("ops", __name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(json_logs: bool) -> None:
    """One handler on the root logger, unless the host (pytest, an embedding app)
    already configured logging."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_logs
        else logging.Formatter("%(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Alembic announces its dialect at every start: under cron (`flask cleanup`) that
    # would be mail every run. Its warnings and errors still show.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def init_app(app: Flask, metrics: Metrics) -> None:
    app.extensions["uploadsvc.metrics"] = metrics
    app.register_blueprint(bp)
    app.before_request(_start)
    app.after_request(_finish)


def _metrics() -> Metrics:
    return cast(Metrics, current_app.extensions["uploadsvc.metrics"])


def _start() -> None:
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    g.started = time.monotonic()


def _finish(response: ResponseBase) -> ResponseBase:
    seconds = time.monotonic() - g.get("started", time.monotonic())
    response.headers["X-Request-ID"] = g.get("request_id", "-")
    _metrics().request_done(request.method, response.status_code, seconds)
    log.info(
        "%s %s %d %.3fs",
        request.method,
        request.full_path.rstrip("?"),
        response.status_code,
        seconds,
        extra={
            "fields": {
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration": round(seconds, 6),
                "remote_addr": request.remote_addr,
            }
        },
    )
    return response


@bp.route("/metrics", methods=["GET"])
def metrics() -> Response:
    return Response(_metrics().exposition(), content_type=CONTENT_TYPE_LATEST)


@bp.route("/healthz", methods=["GET"])
def healthz() -> Response:
    """200 when the database answers and the store takes a write (or, for S3, answers)."""
    service = cast(UploadService, current_app.extensions["uploadsvc"])
    problems = []
    try:
        with service.sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as error:  # any failure here is what the check is for
        problems.append(f"database: {type(error).__name__}")
    # The store says how it checks itself: a probe file in the data directory, or a
    # request to the S3 bucket (README "Running on several hosts").
    try:
        service.store.check()
    except StoreUnavailable as error:
        problems.append(str(error))
    if problems:
        return Response("; ".join(problems) + "\n", status=503, mimetype="text/plain")
    return Response("ok\n", mimetype="text/plain")
