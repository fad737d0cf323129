"""What operators watch: /metrics, /healthz, and one log line per request.

Every request gets an id: the client's ``X-Request-ID`` when it is a sane token (nginx
sets one), or a fresh one. It is echoed in the response and carried by every log line
written while the request runs.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import time
from typing import Any

from flask import Blueprint, Flask, Response, g, has_request_context, request
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from werkzeug.wrappers import Response as ResponseBase

from .parts import parts
from .storage import StoreUnavailable

log = logging.getLogger("uploadsvc.requests")

bp = Blueprint("ops", __name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


# Characters that could start a line or rewrite one on an operator's terminal: C0 and C1
# controls (CR, LF, ESC...), format characters (bidi overrides) and the Unicode line and
# paragraph separators. The backslash is escaped too, so an escape always means one.
_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


def escape_controls(text: str) -> str:
    """``text`` on one line: what the client controls (paths, header values, ids from
    URLs, hook and error messages quoting them) can't forge or hide log lines."""
    return _UNSAFE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class TextFormatter(logging.Formatter):
    """The text log: one line per record, whatever its message quotes. A traceback
    follows on lines of its own, each indented, so a line break in an exception's
    message (which may quote the client) can't pass for a record of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("  " + escape_controls(line) for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line; json.dumps escapes every control character."""

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


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes each record as one ``os.write`` of its whole line,
    formatted outside any lock. ``StreamHandler`` held a lock per record around
    formatting, writing and flushing: with a worker's threads logging a line per
    request, they queued on it, each waking the next (PROFILES.md: 16 % of a loaded
    worker's samples waited there). The kernel keeps a write whole (on a pipe, up to
    PIPE_BUF bytes; to a file or terminal, in practice), so lines don't interleave."""

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + self.terminator).encode("utf-8", "backslashreplace")
            try:
                fd = self.stream.fileno()
            except (AttributeError, OSError, ValueError):  # not a file (a test's buffer)
                with self.lock:  # type: ignore[union-attr]
                    self.stream.write(line.decode())
                    self.flush()
                return
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def configure_logging(json_logs: bool) -> None:
    """One handler on the root logger, unless the host (pytest, an embedding app)
    already configured logging."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = LineHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_logs
        else TextFormatter("%(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Alembic announces its dialect at every start: under cron (`flask cleanup`) that
    # would be mail every run. Its warnings and errors still show.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.before_request(_start)
    app.after_request(_finish)


class _RequestIds:
    """Fresh request ids: this process's random prefix and a count, unique across
    processes and hosts like a UUID, at a fraction of ``uuid4``'s cost."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._count = itertools.count()

    def __call__(self) -> str:
        if self._pid != os.getpid():  # first use, or a forked worker
            self._pid = os.getpid()
            self._prefix = secrets.token_hex(8)
            self._count = itertools.count()
        return f"{self._prefix}-{next(self._count):x}"


_new_request_id = _RequestIds()


def _start() -> None:
    given = request.environ.get("HTTP_X_REQUEST_ID", "")
    g.request_id = given if given and _REQUEST_ID.fullmatch(given) else _new_request_id()
    g.started = time.monotonic()


def _finish(response: ResponseBase) -> ResponseBase:
    seconds = time.monotonic() - g.get("started", time.monotonic())
    response.headers["X-Request-ID"] = g.get("request_id", "-")
    method, status = request.method, response.status_code
    parts().metrics.request_done(method, status, seconds)
    path = request.path
    query = request.query_string
    log.info(
        "%s %s %d %.3fs",
        method,
        f"{path}?{query.decode(errors='backslashreplace')}" if query else path,
        status,
        seconds,
        extra={
            "fields": {
                "method": method,
                "path": path,
                "status": status,
                "duration": round(seconds, 6),
                "remote_addr": request.remote_addr,
            }
        },
    )
    return response


@bp.route("/metrics", methods=["GET"])
def metrics() -> Response:
    return Response(parts().metrics.exposition(), content_type=CONTENT_TYPE_LATEST)


@bp.route("/healthz", methods=["GET"])
def healthz() -> Response:
    """200 when the database answers and the store takes a write (or, for S3, answers)."""
    app_parts = parts()
    problems = []
    try:
        with app_parts.readers() as session:  # a read: never queued behind a writer
            session.execute(text("SELECT 1"))
    except Exception as error:  # any failure here is what the check is for
        problems.append(f"database: {type(error).__name__}")
    # The store says how it checks itself: a probe file in the data directory, or a
    # request to the S3 bucket (README "Running on several hosts").
    try:
        app_parts.store.check()
    except StoreUnavailable as error:
        problems.append(str(error))
    if problems:
        return Response("; ".join(problems) + "\n", status=503, mimetype="text/plain")
    return Response("ok\n", mimetype="text/plain")
