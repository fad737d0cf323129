"""The tus endpoints: one thin function per HTTP method, errors rendered in one place."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import BinaryIO

from flask import Blueprint, Response, request, url_for
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_range_header
from werkzeug.wrappers import Response as ResponseBase
from werkzeug.wsgi import FileWrapper, wrap_file

from . import (
    body,
    checksums,
    connection,
    cors,
    db,
    digests,
    downloads,
    protocol,
    resumable,
    verdicts,
)
from .callers import FILES_PATH, hook_request, known_caller
from .config import Settings
from .errors import (
    InvalidHeader,
    TusError,
    Unauthorized,
    UnsupportedVersion,
    UploadTooLarge,
)
from .parts import parts
from .records import Concat, UploadInfo, Verdict
from .service import UploadService

log = logging.getLogger(__name__)

# Where uploads live: the page's list asks the authorize hook about each as a GET here.
bp = Blueprint("tus", __name__, url_prefix=FILES_PATH)

EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
    "checksum",
    "checksum-trailer",
    "concatenation",
    "concatenation-unfinished",
)
# Request trailers reach uploadsvc only when clients talk to gunicorn directly: proxies
# (nginx, as deploy/ ships it) drop them, so behind one (UPLOADSVC_PROXY_HOPS > 0) a
# client that believed the advertisement would send whole bodies that can only fail.
NEEDS_DIRECT_CLIENTS = frozenset({"checksum-trailer"})
# Requests a browser makes without tus headers: preflights and plain downloads.
NO_TUS_HEADER_METHODS = frozenset({"OPTIONS", "GET"})


def service() -> UploadService:
    return parts().service


def settings() -> Settings:
    return parts().settings


@bp.before_request
def before_tus_request() -> None:
    """Every tus request's checks, in one handler (each one Flask runs costs a little on
    every request), before anything else and so before a byte of body is read."""
    if not resumable.is_draft_request(request.headers):
        # Resumable Uploads for HTTP: resumable_views answers (and authorizes) those.
        if request.method not in NO_TUS_HEADER_METHODS:
            protocol.require_tus_resumable(request.headers.get("Tus-Resumable"))
        if request.method != "OPTIONS":
            authorize()
    require_usable_host()


def authorize() -> None:
    """The authorize hook, for every method on every route, with the upload the request
    is about (None for a creation). An id the registry doesn't know is a 404 before the
    hook runs (there is nothing to decide on); for any known one, tombstones included,
    the hook decides before any other answer tells anything about it. A read only."""
    svc = service()
    if not svc.hooks.authorizes:
        return
    # Who asks, before anything is looked up (UPLOADSVC_AUTH=grants: 401 first).
    asking = known_caller(svc.hooks.authenticate(hook_request()))
    upload_id = (request.view_args or {}).get("upload_id")
    upload = None
    if upload_id is not None and svc.hooks.authorize_needs_upload:
        upload = svc.describe(upload_id)
    svc.hooks.authorize(asking, upload)


def require_usable_host() -> None:
    # Location and Upload-Concat URLs are made from the Host the client sent. One that
    # can't make a URL (characters Werkzeug drops, an IDNA label that won't decode) is
    # the client's mistake: 400, not a 500 or a Location without a host.
    environ = request.environ
    # What the answer depends on; clients send the same few again and again.
    key = (
        environ.get("HTTP_HOST"),
        environ.get("SERVER_NAME"),
        environ.get("SERVER_PORT"),
        environ.get("wsgi.url_scheme"),
        environ.get("SCRIPT_NAME"),
    )
    usable = _USABLE_HOSTS.get(key)
    if usable is None:
        try:
            usable = all((request.host, request.url, url_for("tus.create", _external=True)))
        except (UnicodeError, ValueError):
            usable = False
        if len(_USABLE_HOSTS) >= _MAX_USABLE_HOSTS:
            _USABLE_HOSTS.clear()  # a client inventing hosts: start over, stay bounded
        _USABLE_HOSTS[key] = usable
    if not usable:
        raise InvalidHeader("Host is missing or not a valid host[:port]")


_USABLE_HOSTS: dict[tuple[object, ...], bool] = {}
_MAX_USABLE_HOSTS = 1024


@bp.route("", methods=["OPTIONS"], strict_slashes=False)
@bp.route("/<upload_id>", methods=["OPTIONS"])
def options(upload_id: str | None = None) -> Response:
    response = _empty(204)
    response.headers["Tus-Version"] = protocol.TUS_VERSION
    direct = not settings().proxy_hops
    response.headers["Tus-Extension"] = ",".join(
        name for name in EXTENSIONS if direct or name not in NEEDS_DIRECT_CLIENTS
    )
    response.headers["Tus-Max-Size"] = str(service().limits.max_size)
    response.headers["Tus-Checksum-Algorithm"] = ",".join(checksums.ALGORITHMS)
    return response


@bp.route("", methods=["POST"], strict_slashes=False)
def create() -> Response:
    headers = request.headers
    metadata = protocol.parse_metadata(headers.get("Upload-Metadata"))
    concat = protocol.parse_concat(headers.get("Upload-Concat"))
    # The whole file's digest, checked when it finishes (digests.py).
    digest = digests.declared(headers.get(digests.HEADER), metadata)
    svc = service()
    if concat is not None and concat.final:
        if "Upload-Length" in headers or "Upload-Defer-Length" in headers:
            raise InvalidHeader("a final upload's length is computed: send no Upload-Length")
        info = svc.create_final(
            [_partial_id(url) for url in concat.urls],
            metadata,
            request=hook_request(),
            digest=digest,
        )
        return _created(info)
    length = protocol.parse_creation_length(
        headers.get("Upload-Length"), headers.get("Upload-Defer-Length")
    )
    # creation-with-upload: the content type says so, even for an empty body.
    with_upload = protocol.is_offset_content_type(headers.get("Content-Type"))
    checksum = checksums.parse_checksum(headers.get("Upload-Checksum")) if with_upload else None
    if with_upload and checksum is None:
        _announced_trailer()  # refused before the upload is made
    first_part = body.content_length(request.environ) if with_upload else None
    if length is not None and first_part is not None and first_part > length:
        raise UploadTooLarge("the body is longer than Upload-Length")
    info = svc.create(
        length, metadata, partial=concat is not None, request=hook_request(), digest=digest
    )
    if not with_upload:
        return _created(info)
    try:
        info = _append(svc, info.id, 0, checksum)
    except TusError as error:
        response = _error_response(error)
        response.headers["Location"] = _location(info.id)
        return response
    response = _created(info)
    response.headers["Upload-Offset"] = str(info.offset)
    response.headers.update(info.finish_headers)
    return response


@bp.route("/<upload_id>", methods=["HEAD"], endpoint="upload")
def head(upload_id: str) -> Response:
    info = service().info(upload_id)
    response = _upload_response(info, 200)
    # An unfinished final upload has no offset of its own (concatenation-unfinished).
    if info.concat is not Concat.FINAL or info.complete:
        response.headers["Upload-Offset"] = str(info.offset)
    if info.length is None:
        response.headers["Upload-Defer-Length"] = "1"
    else:
        response.headers["Upload-Length"] = str(info.length)
    if info.metadata:
        response.headers["Upload-Metadata"] = info.metadata
    if info.concat is Concat.PARTIAL:
        response.headers["Upload-Concat"] = "partial"
    elif info.concat is Concat.FINAL:
        response.headers["Upload-Concat"] = "final;" + " ".join(map(_location, info.parts))
    response.headers["Cache-Control"] = "no-store"
    _verified_digest(response, info)
    return response


def _verified_digest(response: ResponseBase, info: UploadInfo) -> None:
    """A declared digest, once the finish checked it, for downloaders to check too."""
    if info.digest is not None and info.verdict is Verdict.OK:
        response.headers[digests.HEADER] = info.digest


@bp.route("/<upload_id>", methods=["GET"])
def download(upload_id: str) -> ResponseBase:
    if not honoured_range(request.headers.get("Range")):
        # Ignored, as if never sent (RFC 9110): Werkzeug would answer 416.
        request.environ.pop("HTTP_RANGE", None)
    info, file = service().download(upload_id)
    metadata = protocol.parse_metadata(info.metadata)
    mimetype, inline = downloads.content_type(metadata.get("filetype"))
    response = Response(_file_body(file), content_type=mimetype, direct_passthrough=True)
    response.content_length = info.offset
    response.headers["Content-Disposition"] = downloads.content_disposition(
        metadata.get("filename"), inline
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Even an allowed type never runs scripts or loads anything in our origin.
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.set_etag(f"{info.id}-{info.offset}")  # a completed upload never changes
    _verified_digest(response, info)
    response.last_modified = info.completed_at
    response.cache_control.no_cache = True
    try:
        return response.make_conditional(
            request.environ, accept_ranges=True, complete_length=info.offset
        )
    except HTTPException:
        file.close()
        raise


def honoured_range(value: str | None) -> bool:
    """Whether a ``Range`` header is one range of bytes, the only kind served (206, or
    416 when it lies past the end). RFC 9110 section 14.2: a server ignores a Range it
    doesn't understand, so a malformed one, another unit or several ranges get the
    whole body (200), not 416."""
    if value is None:
        return False
    parsed = parse_range_header(value)
    return parsed is not None and parsed.units.lower() == "bytes" and len(parsed.ranges) == 1


def _file_body(file: BinaryIO) -> Iterable[bytes]:
    """The download's body. A range is served by seeking: Werkzeug's wrapper can, the
    server's (gunicorn's, made for sendfile) can't, and Werkzeug would read and drop
    every byte before the range: from S3, a GET of all of them."""
    if "Range" in request.headers:
        return FileWrapper(file)
    return wrap_file(request.environ, file)


@bp.route("/<upload_id>", methods=["PATCH"])
def patch(upload_id: str) -> Response:
    headers = request.headers
    protocol.require_offset_content_type(headers.get("Content-Type"))
    offset = protocol.parse_uint(headers.get("Upload-Offset"), "Upload-Offset")
    if offset is None:
        raise InvalidHeader("Upload-Offset is required")
    checksum = checksums.parse_checksum(headers.get("Upload-Checksum"))
    length = protocol.parse_uint(headers.get("Upload-Length"), "Upload-Length")
    info = _append(service(), upload_id, offset, checksum, length)
    response = _upload_response(info, 204)
    response.headers["Upload-Offset"] = str(info.offset)
    response.headers.update(info.finish_headers)
    return response


@bp.route("/<upload_id>", methods=["DELETE"])
def delete(upload_id: str) -> Response:
    service().terminate(upload_id)
    return _empty(204)


def _append(
    svc: UploadService,
    upload_id: str,
    offset: int,
    checksum: checksums.Checksum | None,
    length: int | None = None,
) -> UploadInfo:
    monitor = parts().transfers
    slots = parts().client_slots
    trailers: dict[str, str] = {}
    chunks = monitor.track(
        upload_id,
        body.read_body(request.environ, trailers=trailers),
        connection.body_stopper(request.environ),
        start=offset,
    )
    # The body holds this worker's thread until it ends: one address gets so many.
    # Closed here, not whenever the garbage collector gets to it: until then the
    # monitor watches the body and may stop it after its request has ended.
    try:
        with slots.hold(request.remote_addr), contextlib.closing(chunks):
            return svc.append(
                upload_id,
                offset,
                chunks,
                trailer=_checksum_trailer(trailers) if checksum is None else None,
                content_length=body.content_length(request.environ),
                length=length,
                checksum=checksum,
            )
    except TusError as error:
        # A checksum mismatch, a full disk...: the operator view lists them (progress.py).
        parts().progress.failed_with(upload_id, error)
        raise


def _checksum_trailer(trailers: dict[str, str]) -> Callable[[], str | None] | None:
    """checksum-trailer: a chunked body announcing ``Trailer: Upload-Checksum`` is
    hashed as it streams and checked against the trailer's value at its end."""
    if not _announced_trailer():
        return None
    if not body.trailers_supported(request.environ):
        raise InvalidHeader("Upload-Checksum as a trailer needs a chunked body")
    return lambda: trailers.get(checksums.TRAILER_FIELD)


def _announced_trailer() -> bool:
    """Whether the request announces ``Trailer: Upload-Checksum`` (see checksums.py)."""
    return checksums.announces_trailer(
        request.headers.get("Trailer"), behind_proxy=bool(settings().proxy_hops)
    )


def _location(upload_id: str) -> str:
    return url_for("tus.upload", upload_id=upload_id, _external=True)


def _partial_id(url: str) -> str:
    upload_id = protocol.upload_id_from_url(url, request.url, url_for("tus.create", _external=True))
    if upload_id is None:
        raise InvalidHeader(f"Upload-Concat: {url[:200]!r} is not an upload of this server")
    return upload_id


def _empty(status: int) -> Response:
    response = Response(status=status)
    del response.headers["Content-Type"]
    return response


def _upload_response(info: UploadInfo, status: int) -> Response:
    response = _empty(status)
    if info.expires_at is not None:
        response.headers["Upload-Expires"] = protocol.format_http_date(info.expires_at)
    return response


def _created(info: UploadInfo) -> Response:
    try:
        # Complete at birth (a final, Upload-Length 0) and refused by its finish.
        verdicts.require_servable(info, wrote_last=True)
    except TusError as error:
        response = _error_response(error)
        response.headers["Location"] = _location(info.id)
        return response
    response = _upload_response(info, 201)
    response.headers["Location"] = _location(info.id)
    # A creation that completed it (Upload-Length 0, a final made at once) finished it.
    response.headers.update(info.finish_headers)
    return response


@bp.app_errorhandler(TusError)
def tus_error(error: TusError) -> Response:
    if error.status >= 500 and error.retry_after is None:
        log.error("%s %s: %s", request.method, request.path, error.message)
    else:
        log.info("%s %s: %d %s", request.method, request.path, error.status, error.message)
    return _error_response(error)


@bp.app_errorhandler(OperationalError)
def database_error(error: OperationalError) -> Response:
    """A full disk under SQLite is the operator's to fix, not a bug: 507, like data."""
    full = db.registry_full(error)
    if full is None:
        raise error
    return tus_error(full)


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
    if isinstance(error, Unauthorized):
        response.headers["WWW-Authenticate"] = error.challenge
    if error.offset is not None:
        response.headers["Upload-Offset"] = str(error.offset)
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    if body.has_body(request.environ):
        # The body may be unread (a refusal before streaming): close rather than make
        # the server drain gigabytes to keep the connection alive.
        response.headers["Connection"] = "close"
    return response


def _is_tus_path(path: str) -> bool:
    """Whether a path is under the tus endpoints, matched route or not (a 404 or 405
    there is a tus answer too, and a browser client must be able to read it)."""
    prefix = bp.url_prefix or ""
    return path == prefix or path.startswith(prefix + "/")


@bp.after_app_request
def add_common_headers(response: ResponseBase) -> ResponseBase:
    # Only the tus endpoints speak tus, and only they are for other origins: CORS on
    # /metrics or /api/uploads (capability URLs) would let any web page read them
    # through a visitor's browser.
    if not _is_tus_path(request.path):
        return response
    response.headers["Tus-Resumable"] = protocol.TUS_VERSION
    response.headers.update(
        cors.cors_headers(
            request.headers.get("Origin"),
            request.method,
            "Access-Control-Request-Method" in request.headers,
            settings().cors_origins,
        )
    )
    return response
