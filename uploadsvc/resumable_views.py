"""Resumable Uploads for HTTP on ``/files/``, beside tus: thin views over UploadService.

A draft request (``resumable.is_draft_request``) is answered here, from a before-request
function on the tus blueprint that runs after the tus ones (the Host check; the tus
version check lets draft requests by), and before the tus view would. A draft upload is
an upload: created with ``UploadService.create``, written with the tus views' own
``_append`` (the transfer monitor and its takeover of a stalled body, per-client slots,
the body reader), read with ``info``, cancelled with ``terminate``, and the authorize
hook asked first, with the upload, exactly as for tus. Only the wire differs, and what
differs between interop versions is one row of ``resumable.VERSIONS``.

GET (a download) is not the draft's: it falls through to the tus view.
"""

from __future__ import annotations

import logging

from flask import Response, request
from werkzeug.http import parse_options_header
from werkzeug.wrappers import Response as ResponseBase

from . import body, connection, protocol, resumable
from .callers import hook_request
from .errors import (
    BodyCut,
    InvalidHeader,
    OffsetMismatch,
    TusError,
    UnsupportedMediaType,
    UploadGone,
    UploadLocked,
)
from .parts import parts
from .records import UploadInfo
from .resumable import InteropVersion
from .views import _append, _error_response, _location, authorize, bp

log = logging.getLogger(__name__)

# A lock the takeover could not win within the lock timeout: the draft's clients resume
# after a 5xx, never after a 4xx such as tus's 423.
LOCKED_RETRY_AFTER = 1


@bp.before_request
def draft_request() -> ResponseBase | None:
    if not resumable.is_draft_request(request.headers):
        return None
    try:
        version = resumable.interop_version(request.headers.get(resumable.INTEROP_FIELD))
    except resumable.DraftError as error:
        return _draft_error(InvalidHeader(str(error)), None)
    try:
        if request.method == "GET":
            return None  # a download: the tus view serves it (and asks authorize itself)
        if request.method != "OPTIONS":  # as for tus: preflights carry no credentials
            authorize()
        handler = _HANDLERS.get((request.method, _upload_id() is not None))
        if handler is None:
            return None  # the tus view answers (405 for a method the route lacks)
        return handler(version)
    except resumable.DraftError as error:
        return _draft_error(InvalidHeader(str(error)), version)
    except TusError as error:
        return _draft_error(error, version)


@bp.after_request
def upload_limit(response: ResponseBase) -> ResponseBase:
    """Every draft response, and every OPTIONS (the draft's discovery), says the limits."""
    asks = request.method == "OPTIONS" or resumable.is_draft_request(request.headers)
    if asks and resumable.LIMIT_FIELD not in response.headers:
        version = resumable.VERSIONS[resumable.SUPPORTED[-1]]
        response.headers[resumable.LIMIT_FIELD] = _limits(version, None)
    return response


def _upload_id() -> str | None:
    return (request.view_args or {}).get("upload_id")


def _options(version: InteropVersion) -> Response:
    response = _empty(204)
    response.headers[resumable.LIMIT_FIELD] = _limits(version, None)
    response.headers["Accept-Patch"] = resumable.PARTIAL_UPLOAD
    return response


def _create(version: InteropVersion) -> Response:
    """Upload creation: ``Upload-Complete: ?1`` with the whole content (optimistic), or
    ``?0`` with none or some (careful; appends follow)."""
    headers = request.headers
    complete = resumable.request_complete(version, headers)
    if complete is None:
        raise InvalidHeader(f"{version.complete_field} is required to create an upload")
    if resumable.OFFSET_FIELD in headers:
        raise InvalidHeader("Upload-Offset is not allowed when creating an upload")
    content_length = body.content_length(request.environ)
    with_content = body.has_body(request.environ)
    if not with_content:
        content_length = 0
    length = resumable.parse_integer(headers.get("Upload-Length"), "Upload-Length")
    if complete and content_length is not None:
        length = _same_length(length, content_length)
    svc = parts().service
    info = svc.create(length, _metadata(), request=hook_request())
    _announce(version, info)
    if with_content:
        try:
            info = _write(info.id, 0, complete, content_length, None)
        except TusError as error:
            response = _draft_error(error, version, info)
            response.headers["Location"] = _location(info.id)
            return response
    response = _answer(version, info, 201)
    response.headers["Location"] = _location(info.id)
    return response


def _head(version: InteropVersion) -> Response:
    """Offset retrieval."""
    resumable.forbid_upload_fields(version, request.headers)
    info = parts().service.info(_required_id())
    response = _answer(version, info, 204)
    if info.length is not None:
        response.headers["Upload-Length"] = str(info.length)
    response.headers["Cache-Control"] = "no-store"
    return response


def _patch(version: InteropVersion) -> Response:
    """Upload append."""
    headers = request.headers
    upload_id = _required_id()
    media_type = version.append_media_type
    if media_type is not None and not resumable.is_partial_upload(headers.get("Content-Type")):
        raise UnsupportedMediaType(f"an append's Content-Type must be {media_type}")
    offset = resumable.parse_integer(headers.get(resumable.OFFSET_FIELD), "Upload-Offset")
    if offset is None:
        raise InvalidHeader("Upload-Offset is required to append")
    complete = resumable.request_complete(version, headers)
    if complete is None:
        if version.append_requires_complete:
            raise InvalidHeader(f"{version.complete_field} is required to append")
        complete = True  # "if this is not the end, it MUST say so"
    content_length = body.content_length(request.environ)
    svc = parts().service
    current = svc.describe(upload_id)
    if current.complete:
        if current.offset == offset and not content_length and complete:
            # A completing append whose answer was lost: the same answer again.
            return _answer(version, current, version.complete_status)
        raise _Completed()
    declared = resumable.parse_integer(headers.get("Upload-Length"), "Upload-Length")
    info = _write(upload_id, offset, complete, content_length, declared)
    status = version.complete_status if info.complete else version.incomplete_status
    return _answer(version, info, status)


def _delete(version: InteropVersion) -> Response:
    """Upload cancellation."""
    resumable.forbid_upload_fields(version, request.headers)
    parts().service.terminate(_required_id())
    return _empty(204)


_HANDLERS = {
    ("OPTIONS", False): _options,
    ("OPTIONS", True): _options,
    ("POST", False): _create,
    ("HEAD", True): _head,
    ("PATCH", True): _patch,
    ("DELETE", True): _delete,
}


class _Completed(TusError):
    """An append to a completed upload (the draft: 400, problem type completed-upload)."""

    status, reason, message = 400, "Bad Request", "the upload is already complete"


def _write(
    upload_id: str,
    offset: int,
    complete: bool,
    content_length: int | None,
    declared: int | None,
) -> UploadInfo:
    """Append the request's content at ``offset``. The upload's length is set once (the
    service refuses another): ``declared`` (Upload-Length), or by a request that says it
    ends the upload, before its body when Content-Length says how long, else after a
    chunked body that ended whole."""
    svc = parts().service
    length = declared
    if complete and content_length is not None:
        length = _same_length(declared, offset + content_length)
    try:
        info = _append(svc, upload_id, offset, None, length)
    except OffsetMismatch as error:
        error.provided = offset
        raise
    if complete and not info.complete:
        # A chunked body that arrived whole: its end is the upload's end.
        info = svc.append(upload_id, info.offset, iter(()), length=info.offset, content_length=0)
    return info


def _answer(version: InteropVersion, info: UploadInfo, status: int) -> Response:
    response = _empty(status)
    response.headers[resumable.OFFSET_FIELD] = str(info.offset)
    value = version.complete_value(info.complete)
    if value is not None:
        response.headers[version.complete_field] = value
    response.headers[resumable.LIMIT_FIELD] = _limits(version, info)
    response.headers.update(info.finish_headers)
    return response


def _draft_error(
    error: TusError, version: InteropVersion | None, info: UploadInfo | None = None
) -> Response:
    """A refusal as the draft says it; the tus renderer makes the response (Retry-After,
    Upload-Offset after a cut, Connection: close over an unread body)."""
    if isinstance(error, UploadLocked):
        # tus's 423 is a 4xx the draft's clients don't retry; a 5xx they resume after.
        error = BodyCut(error.message, retry_after=LOCKED_RETRY_AFTER)
    response = _error_response(error)
    if version is None:
        return response
    if isinstance(error, UploadGone):
        response.status_code = version.gone_status
    response.headers[resumable.LIMIT_FIELD] = _limits(version, info)
    if isinstance(error, OffsetMismatch) and error.expected is not None:
        response.headers[resumable.OFFSET_FIELD] = str(error.expected)
        if version.problem_types and error.provided is not None:
            _problem(response, resumable.mismatch_problem(error.expected, error.provided))
    if isinstance(error, OffsetMismatch | _Completed):
        value = version.complete_value(False)
        if value is not None:
            response.headers[version.complete_field] = value
        if isinstance(error, _Completed) and version.problem_types:
            _problem(response, resumable.completed_problem())
    return response


def _problem(response: Response, document: bytes) -> None:
    response.set_data(document)
    response.mimetype = resumable.PROBLEM_JSON


def _announce(version: InteropVersion, info: UploadInfo) -> None:
    """The 104 (Upload Resumption Supported) interim response with the new upload's URL,
    when the operator turned it on and nothing stands between us and the client: a
    proxy may take a 104 for the final response (nginx does: nginx/nginx#1427)."""
    settings = parts().settings
    if not settings.send_104 or settings.proxy_hops:
        return
    environ = request.environ
    if "Forwarded" in request.headers or "X-Forwarded-For" in request.headers:
        return
    if environ.get("SERVER_PROTOCOL") != "HTTP/1.1":
        return  # an HTTP/1.0 client can't take an interim response
    head = resumable.interim_response(version, _location(info.id), _limits(version, info))
    if not connection.send_interim(environ, head):
        log.debug("upload %s: no 104 sent (no socket, or the response began)", info.id)


def _limits(version: InteropVersion, info: UploadInfo | None) -> str:
    """``Upload-Limit`` for an upload, or (None) for one made now: an unfinished upload
    lives ``expire_after`` past its last write; a complete one doesn't expire."""
    svc = parts().service
    max_age: int | None = None
    if info is None:
        max_age = int(svc.limits.expire_after.total_seconds())
    elif info.expires_at is not None:
        max_age = int((info.expires_at - svc.clock()).total_seconds())
    return resumable.format_limits(version, svc.limits.max_size, max_age)


def _same_length(declared: int | None, content_length: int) -> int:
    if declared is not None and declared != content_length:
        raise InvalidHeader("Upload-Length and Content-Length of a completing request differ")
    return content_length


def _metadata() -> dict[str, bytes | None]:
    """tus-js-client sends tus's ``Upload-Metadata`` in draft mode too; other clients say
    what the content is as HTTP does: the name in ``Content-Disposition``, the type in
    ``Content-Type`` (not the append media type). Kept as the page and hooks read them."""
    headers = request.headers
    if "Upload-Metadata" in headers:
        return protocol.parse_metadata(headers.get("Upload-Metadata"))
    metadata: dict[str, bytes | None] = {}
    filename = _disposition_filename(headers.get("Content-Disposition"))
    if filename:
        metadata["filename"] = filename.encode()
    content_type = headers.get("Content-Type")
    if content_type and not resumable.is_partial_upload(content_type):
        metadata["filetype"] = content_type.split(";")[0].strip().encode()
    return metadata


def _disposition_filename(value: str | None) -> str | None:
    if not value:
        return None
    _, options = parse_options_header(value)
    return options.get("filename")


def _required_id() -> str:
    upload_id = _upload_id()
    assert upload_id is not None  # the handler table routes only upload URLs here
    return upload_id


def _empty(status: int) -> Response:
    response = Response(status=status)
    del response.headers["Content-Type"]
    return response
