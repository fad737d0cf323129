"""tus 1.0.0 headers: parsing and formatting as pure functions.

No Flask and no I/O here, so every rule is covered by table tests. Each parser takes the
raw header value (``None`` when the header is absent) and returns a typed value or
raises ``InvalidHeader``/``UnsupportedVersion``/``UnsupportedMediaType``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from urllib.parse import urljoin, urlsplit

from .errors import InvalidHeader, UnsupportedMediaType, UnsupportedVersion

TUS_VERSION = "1.0.0"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"

# Any header value longer than this is refused: nothing legitimate comes close, and it
# keeps hostile input from turning into large integers or long loops.
MAX_NUMBER_DIGITS = 64
MAX_METADATA_BYTES = 8 * 1024
# More partials than any client sends in parallel; bounds the work one POST can cause.
MAX_CONCAT_PARTS = 256

_DIGITS = re.compile(r"[0-9]+")
# A metadata key: printable ASCII without space or comma (the pair separators).
_METADATA_KEY = re.compile(r"[!-+\--~]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
# Ids we make are 32 hex digits; a pre-create hook may choose others of this form, which
# is also what storage and locks accept as a path component.
UPLOAD_ID = re.compile(r"[0-9A-Za-z]{8,64}")


def is_upload_id(text: str) -> bool:
    """Whether ``text`` is an upload id: the one definition the views, the service, the
    stores and cleanup share, and the reason an id is always a safe path component."""
    return UPLOAD_ID.fullmatch(text) is not None


def require_tus_resumable(value: str | None) -> None:
    """Every request but OPTIONS must speak our version, or nothing is processed."""
    if value is None or value.strip() != TUS_VERSION:
        raise UnsupportedVersion()


def parse_uint(value: str | None, name: str) -> int | None:
    """A non-negative decimal integer header, or ``None`` when absent.

    Only ASCII digits: ``-1``, ``+1``, ``1e3``, ``0x10``, `` 1 2`` and non-ASCII digits
    (``int()`` would take Arabic-Indic digits) are all refused.
    """
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > MAX_NUMBER_DIGITS or not _DIGITS.fullmatch(text):
        raise InvalidHeader(f"{name} must be a non-negative integer")
    return int(text)


def parse_defer_length(value: str | None) -> bool:
    """``Upload-Defer-Length`` is either absent or exactly ``1``."""
    if value is None:
        return False
    if value.strip() != "1":
        raise InvalidHeader("Upload-Defer-Length must be 1")
    return True


def parse_creation_length(length: str | None, defer: str | None) -> int | None:
    """The length a POST announces: an integer, or ``None`` when deferred.

    Exactly one of ``Upload-Length`` and ``Upload-Defer-Length: 1`` must be present.
    """
    upload_length = parse_uint(length, "Upload-Length")
    deferred = parse_defer_length(defer)
    if upload_length is None and not deferred:
        raise InvalidHeader("Upload-Length or Upload-Defer-Length: 1 is required")
    if upload_length is not None and deferred:
        raise InvalidHeader("Upload-Length and Upload-Defer-Length are exclusive")
    return upload_length


def parse_metadata(value: str | None) -> dict[str, bytes | None]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs; value optional.

    Values stay bytes (the spec allows binary); keys are unique, non-empty ASCII
    without spaces or commas.
    """
    if value is None:
        return {}
    if len(value) > MAX_METADATA_BYTES:
        raise InvalidHeader("Upload-Metadata is too long")
    if not value.strip():
        return {}
    result: dict[str, bytes | None] = {}
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        if len(parts) > 2:
            raise InvalidHeader("Upload-Metadata pairs are 'key value'")
        key = parts[0]
        if not _METADATA_KEY.fullmatch(key):
            raise InvalidHeader("Upload-Metadata has an invalid key")
        if key in result:
            raise InvalidHeader(f"Upload-Metadata repeats the key {key!r}")
        result[key] = decode_base64(parts[1], "Upload-Metadata") if len(parts) == 2 else None
    return result


def format_metadata(metadata: Mapping[str, bytes | None]) -> str:
    """The canonical ``Upload-Metadata`` form of parsed metadata (for HEAD)."""
    pairs = []
    for key, raw in metadata.items():
        if raw is None:
            pairs.append(key)
        else:
            pairs.append(f"{key} {base64.b64encode(raw).decode('ascii')}")
    return ",".join(pairs)


@dataclass(frozen=True)
class ConcatRequest:
    """An ``Upload-Concat`` header: ``partial``, or ``final`` with its partials' URLs."""

    final: bool
    urls: tuple[str, ...] = ()


def parse_concat(value: str | None) -> ConcatRequest | None:
    """``Upload-Concat: partial`` or ``Upload-Concat: final;<url> <url> ...``."""
    if value is None:
        return None
    text = value.strip()
    if text == "partial":
        return ConcatRequest(final=False)
    kind, _, rest = text.partition(";")
    urls = tuple(rest.split())
    if kind.strip() != "final" or not urls:
        raise InvalidHeader("Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
    if len(urls) > MAX_CONCAT_PARTS:
        raise InvalidHeader(f"Upload-Concat names more than {MAX_CONCAT_PARTS} partial uploads")
    return ConcatRequest(final=True, urls=urls)


def upload_id_from_url(url: str, request_url: str, files_url: str) -> str | None:
    """The upload id an ``Upload-Concat`` URL names, if it is an upload of this server.

    ``url`` may be absolute or relative to ``request_url``; it must then sit directly
    under ``files_url`` (this server's ``.../files/``, scheme and host included), so a
    URL of another host is never followed: the server makes no outbound requests.
    """
    try:
        # urllib raises ValueError on some malformed forms (``http://[zz]/``, bad
        # IPv6 brackets); they name no upload of this server, like any other mistake.
        base = urlsplit(files_url)
        target = urlsplit(urljoin(request_url, url))
    except ValueError:
        return None
    if (target.scheme, target.netloc.lower()) != (base.scheme, base.netloc.lower()):
        return None
    prefix = base.path.rstrip("/") + "/"
    if target.query or target.fragment or not target.path.startswith(prefix):
        return None
    upload_id = target.path[len(prefix) :]
    return upload_id if is_upload_id(upload_id) else None


def require_offset_content_type(value: str | None) -> None:
    """PATCH bodies must be ``application/offset+octet-stream`` (parameters ignored)."""
    if not is_offset_content_type(value):
        raise UnsupportedMediaType()


def is_offset_content_type(value: str | None) -> bool:
    return value is not None and value.split(";")[0].strip().lower() == OFFSET_CONTENT_TYPE


def format_http_date(moment: datetime) -> str:
    """RFC 9110 IMF-fixdate, as ``Upload-Expires`` needs: ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    return format_datetime(moment, usegmt=True)


def decode_base64(text: str, name: str) -> bytes:
    if not _BASE64.fullmatch(text) or len(text) % 4:
        raise InvalidHeader(f"{name} has invalid base64")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise InvalidHeader(f"{name} has invalid base64") from None
