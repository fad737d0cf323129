"""The tus endpoints: one thin function per HTTP method, errors rendered in one place."""

from __future__ import annotations

import logging
from typing import cast

from flask import Blueprint, Response, current_app, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as ResponseBase

from . import body, protocol
from .errors import TusError, UnsupportedVersion, UploadTooLarge
from .service import UploadInfo, UploadService

log = logging.getLogger(__name__)

bp = Blueprint("tus", __name__, url_prefix="/files")

EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
    "checksum",
)


def service() -> UploadService:
    return cast(UploadService, current_app.extensions["uploadsvc"])


@bp.before_request
def require_tus_version() -> None:
    # Before anything else, and so before a byte of body is read.
    if request.method != "OPTIONS":
        protocol.require_tus_resumable(request.headers.get("Tus-Resumable"))


@bp.route("", methods=["OPTIONS"], strict_slashes=False)
@bp.route("/<upload_id>", methods=["OPTIONS"])
def options(upload_id: str | None = None) -> Response:
    response = _empty(204)
    response.headers["Tus-Version"] = protocol.TUS_VERSION
    response.headers["Tus-Extension"] = ",".join(EXTENSIONS)
    response.headers["Tus-Max-Size"] = str(service().limits.max_size)
    response.headers["Tus-Checksum-Algorithm"] = ",".join(protocol.CHECKSUM_ALGORITHMS)
    return response


@bp.route("", methods=["POST"], strict_slashes=False)
def create() -> Response:
    headers = request.headers
    length = protocol.parse_creation_length(
        headers.get("Upload-Length"), headers.get("Upload-Defer-Length")
    )
    metadata = protocol.parse_metadata(headers.get("Upload-Metadata"))
    # creation-with-upload: the content type says so, even for an empty body.
    with_upload = protocol.is_offset_content_type(headers.get("Content-Type"))
    checksum = protocol.parse_checksum(headers.get("Upload-Checksum")) if with_upload else None
    first_part = body.content_length(request.environ) if with_upload else None
    if length is not None and first_part is not None and first_part > length:
        raise UploadTooLarge("the body is longer than Upload-Length")
    svc = service()
    info = svc.create(length, metadata)
    location = url_for("tus.upload", upload_id=info.id, _external=True)
    if with_upload:
        try:
            info = _append(svc, info.id, 0, checksum)
        except TusError as error:
            response = _error_response(error)
            response.headers["Location"] = location
            return response
    response = _upload_response(info, 201)
    response.headers["Location"] = location
    if with_upload:
        response.headers["Upload-Offset"] = str(info.offset)
    return response


@bp.route("/<upload_id>", methods=["HEAD"], endpoint="upload")
def head(upload_id: str) -> Response:
    info = service().info(upload_id)
    response = _upload_response(info, 200)
    response.headers["Upload-Offset"] = str(info.offset)
    if info.length is None:
        response.headers["Upload-Defer-Length"] = "1"
    else:
        response.headers["Upload-Length"] = str(info.length)
    if info.metadata:
        response.headers["Upload-Metadata"] = info.metadata
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/<upload_id>", methods=["PATCH"])
def patch(upload_id: str) -> Response:
    headers = request.headers
    protocol.require_offset_content_type(headers.get("Content-Type"))
    offset = protocol.parse_uint(headers.get("Upload-Offset"), "Upload-Offset")
    if offset is None:
        raise TusError("Upload-Offset is required")
    checksum = protocol.parse_checksum(headers.get("Upload-Checksum"))
    length = protocol.parse_uint(headers.get("Upload-Length"), "Upload-Length")
    info = _append(service(), upload_id, offset, checksum, length)
    response = _upload_response(info, 204)
    response.headers["Upload-Offset"] = str(info.offset)
    return response


@bp.route("/<upload_id>", methods=["DELETE"])
def delete(upload_id: str) -> Response:
    service().terminate(upload_id)
    return _empty(204)


def _append(
    svc: UploadService,
    upload_id: str,
    offset: int,
    checksum: protocol.Checksum | None,
    length: int | None = None,
) -> UploadInfo:
    return svc.append(
        upload_id,
        offset,
        body.read_body(request.environ),
        content_length=body.content_length(request.environ),
        length=length,
        checksum=checksum,
    )


def _empty(status: int) -> Response:
    response = Response(status=status)
    del response.headers["Content-Type"]
    return response


def _upload_response(info: UploadInfo, status: int) -> Response:
    response = _empty(status)
    if info.expires_at is not None:
        response.headers["Upload-Expires"] = protocol.format_http_date(info.expires_at)
    return response


@bp.app_errorhandler(TusError)
def tus_error(error: TusError) -> Response:
    if error.status >= 500:
        log.error("%s %s: %s", request.method, request.path, error.message)
    else:
        log.info("%s %s: %d %s", request.method, request.path, error.status, error.message)
    return _error_response(error)


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException) -> ResponseBase:
    response = error.get_response()
    text = f"{error.description or error.name}\n" if error.code != 405 else "method not allowed\n"
    response.set_data(text)
    response.mimetype = "text/plain"
    return response


def _error_response(error: TusError) -> Response:
    response = Response(
        f"{error.message}\n", status=f"{error.status} {error.reason}", mimetype="text/plain"
    )
    if isinstance(error, UnsupportedVersion):
        response.headers["Tus-Version"] = protocol.TUS_VERSION
    if error.offset is not None:
        response.headers["Upload-Offset"] = str(error.offset)
    if body.has_body(request.environ):
        # The body may be unread (a refusal before streaming): close rather than make
        # the server drain gigabytes to keep the connection alive.
        response.headers["Connection"] = "close"
    return response


@bp.after_app_request
def add_tus_resumable(response: Response) -> Response:
    response.headers["Tus-Resumable"] = protocol.TUS_VERSION
    return response
