"""The upload page (``GET /``) and its list of completed uploads (``GET /api/uploads``).

Registered only when ``UPLOADSVC_WEB_UI=1``; otherwise both answer 404. The page uploads
with tus-js-client (``static/tus.min.js``, copied from npm by ``make install``) to
``files/``, a URL relative to the page, so it works under a proxy's path prefix too.

The list shows a person only the uploads the ``authorize`` hook would let them
download: each one is checked as a ``GET /files/<id>`` carrying the listing request's
headers, with its ``UploadInfo`` (a hook that takes one), and refused ones are left out.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, render_template, request
from werkzeug.wrappers import Response as ResponseBase

from . import listing
from .callers import FILES_PATH, hook_request, known_caller
from .errors import TusError
from .parts import parts

bp = Blueprint("web", __name__, template_folder="templates")

STATIC_DIR = Path(__file__).resolve().parent / "static"
TUS_BUNDLE = "tus.min.js"
PAGE_ASSETS = (TUS_BUNDLE, "upload-page.js", "upload-page.css")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# The page runs only its own scripts and talks only to its own origin.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def init_app(app: Flask) -> None:
    if parts(app).settings.web_ui:
        app.register_blueprint(bp)


def _asset_version() -> str:
    """Changes whenever a page asset does, so browsers never mix old and new files."""
    stamps = []
    for name in PAGE_ASSETS:
        try:
            stamps.append(str((STATIC_DIR / name).stat().st_mtime_ns))
        except FileNotFoundError:
            stamps.append("0")
    return hashlib.sha256("-".join(stamps).encode()).hexdigest()[:12]


@bp.route("/", methods=["GET"])
def page() -> Response:
    html = render_template(
        "upload_page.html",
        version=_asset_version(),
        have_tus=(STATIC_DIR / TUS_BUNDLE).is_file(),
        max_size=parts().settings.max_size,
        auth=parts().settings.auth,
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.cache_control.no_cache = True
    return response


@bp.route("/api/uploads", methods=["GET"])
def uploads() -> ResponseBase:
    """``{"uploads": [{id, filename, filetype, size, completed_at, url}], "next": ...}``,
    newest first; ``?limit=`` (default 50, at most 200). ``url`` is relative to the page.
    ``next`` is null on the last page, else the ``?before=`` value of the next page."""
    limit = min(max(request.args.get("limit", DEFAULT_LIMIT, type=int) or 1, 1), MAX_LIMIT)
    before = None
    if "before" in request.args:
        try:
            before = listing.parse_cursor(request.args["before"])
        except (ValueError, OverflowError):
            response = jsonify({"error": "before: not a cursor from this list's 'next'"})
            response.status_code = 400
            return response
    app_parts = parts()
    service, hooks = app_parts.service, app_parts.hooks
    # UPLOADSVC_AUTH=grants: who asks (401 first); a grant's link lists its own uploads.
    asking = known_caller(hooks.authenticate(hook_request()))
    grant_id = asking.grant.id if asking.grant is not None else None
    shown: list[dict[str, Any]] = []
    candidates = list(listing.recent_completed(app_parts.readers, before=before, grant_id=grant_id))
    # The hook decides on each upload as for its download, so it is given each one.
    infos = (
        service.describe_many(upload.id for upload in candidates)
        if hooks.authorize_needs_upload
        else {}
    )
    # The next page starts after the last row looked at, shown or not: one page reads
    # at most listing.MAX_SCAN rows however many the authorize hook leaves out.
    scanned = 0
    last: listing.CompletedUpload | None = None
    for upload in candidates:
        if len(shown) >= limit:
            break
        scanned += 1
        last = upload
        if hooks.authorize_needs_upload and upload.id not in infos:
            continue  # gone since it was listed
        try:
            hooks.authorize(asking.read_of(upload.id, FILES_PATH), infos.get(upload.id))
        except TusError:
            continue  # not theirs to see
        shown.append(
            {
                "id": upload.id,
                "filename": upload.filename,
                "filetype": upload.filetype,
                "size": upload.size,
                "completed_at": upload.completed_at.isoformat().replace("+00:00", "Z"),
                "url": f"files/{upload.id}",
            }
        )
    more = len(shown) >= limit or scanned >= listing.MAX_SCAN
    response = jsonify(
        {"uploads": shown, "next": listing.cursor(last) if more and last is not None else None}
    )
    response.headers["Cache-Control"] = "no-store"
    return response
