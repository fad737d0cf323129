"""CORS for browser uploads (tus-js-client, Uppy) from the origins the operator allows.

Preflights never need ``Tus-Resumable`` (browsers don't send it), and error responses
carry the CORS headers too, or a browser client can't read the status it must act on.
"""

from __future__ import annotations

ALLOWED_METHODS = "POST, GET, HEAD, PATCH, DELETE, OPTIONS"
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Tus-Resumable, Upload-Length, Upload-Metadata, "
    "Upload-Offset, Upload-Defer-Length, Upload-Concat, Upload-Checksum, Repr-Digest, "
    "X-HTTP-Method-Override, X-Requested-With, X-Request-ID, "
    # Resumable Uploads for HTTP (tus-js-client's 'ietf-draft-*' protocols).
    "Upload-Draft-Interop-Version, Upload-Complete, Upload-Incomplete"
)
EXPOSED_HEADERS = (
    "Location, Upload-Offset, Upload-Length, Tus-Version, Tus-Resumable, Tus-Max-Size, "
    "Tus-Extension, Tus-Checksum-Algorithm, Upload-Metadata, Upload-Defer-Length, "
    "Upload-Concat, Upload-Expires, Content-Disposition, Content-Length, Content-Range, "
    "ETag, Retry-After, X-Request-ID, Repr-Digest, "
    "Upload-Complete, Upload-Incomplete, Upload-Limit, Upload-Draft-Interop-Version"
)
# Browsers cache a preflight this long (Chromium caps it at 2 hours).
PREFLIGHT_MAX_AGE = "86400"


def allowed_origin(origin: str | None, allowed: tuple[str, ...]) -> str | None:
    """The value for ``Access-Control-Allow-Origin``, or None when not allowed."""
    if not origin or not allowed:
        return None
    if "*" in allowed:
        return "*"
    return origin if origin.rstrip("/") in allowed else None


def cors_headers(
    origin: str | None, method: str, preflight: bool, allowed: tuple[str, ...]
) -> dict[str, str]:
    """The CORS headers for a response; ``preflight``: the request carried
    ``Access-Control-Request-Method``."""
    headers = {}
    if allowed and "*" not in allowed:
        headers["Vary"] = "Origin"
    allow = allowed_origin(origin, allowed)
    if allow is None:
        return headers
    headers["Access-Control-Allow-Origin"] = allow
    if method == "OPTIONS" and preflight:
        headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    else:
        headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    return headers
