"""Resumable Uploads for HTTP (draft-ietf-httpbis-resumable-upload): what each interop
version says on the wire, as one table, and its header fields as pure functions.

tus 1.0 and the draft share ``/files/``; a request is the draft's when it carries
``Upload-Draft-Interop-Version`` and no ``Tus-Resumable``. Every interop version a client
in the field sends is one row of ``VERSIONS``: the views read the row, never the number,
so a version is added by adding a row. Each row was read from the draft revision that
announces it ("The current interop version is N"):

    3   draft -01   Upload-Incomplete (true = more to come); no media type for appends
    5   draft -03   Upload-Complete replaces it (true = this request ends the upload)
    6   draft -04, -05   appends need application/partial-upload; Upload-Limit;
                    problem types (mismatching-upload-offset); Upload-Length
    8   draft -09 .. -11 and the editor's copy of July 2026: Upload-Complete required on
                    appends; 404 no longer the only answer for an inactive upload (410)
    9   draft -12 (July 2026): the issue names it; its text as stored here is the editor's
                    copy above, so it is read like 8

Standard library only (the protocol layer).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Protocol

# The request and response fields.
INTEROP_FIELD = "Upload-Draft-Interop-Version"
COMPLETE_FIELD = "Upload-Complete"
INCOMPLETE_FIELD = "Upload-Incomplete"  # interop 3: the inverse of Upload-Complete
OFFSET_FIELD = "Upload-Offset"
LENGTH_FIELD = "Upload-Length"
LIMIT_FIELD = "Upload-Limit"
PARTIAL_UPLOAD = "application/partial-upload"
PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"

# An sf-integer has at most 15 digits (RFC 9651 section 3.3.1).
_SF_INTEGER = re.compile(r"-?[0-9]{1,15}")


@dataclass(frozen=True)
class InteropVersion:
    """What one interop version says where the versions differ."""

    number: int
    drafts: str  # the draft revisions that announce it
    # The completeness field: Upload-Complete, or interop 3's inverted Upload-Incomplete.
    complete_field: str
    # The media type an append must carry, when the version requires one.
    append_media_type: str | None
    # Whether an append must carry the completeness field (else its absence means "the
    # last request": "if this is not the end, it MUST be set").
    append_requires_complete: bool
    # Whether the version defines the problem types (a 409's JSON body).
    problem_types: bool
    # The Upload-Limit key for the remaining lifetime ("expires" became "max-age").
    age_limit_key: str
    # The answer for an expired or cancelled upload: the early drafts say 404 for any
    # upload "not active"; later ones leave it to HTTP, and 410 says what happened.
    gone_status: int
    # Successful append: not yet complete, and complete.
    incomplete_status: int
    complete_status: int

    def complete_value(self, complete: bool) -> str | None:
        """The completeness field's value for a response (None: leave it out)."""
        if self.complete_field == INCOMPLETE_FIELD:
            # "MUST NOT include Upload-Incomplete: ?1" on a completing response.
            return None if complete else "?1"
        return format_boolean(complete)


# What differs, one row per interop version. Columns, as InteropVersion names them:
# number, drafts, complete_field, append_media_type, append_requires_complete,
# problem_types, age_limit_key, gone_status, incomplete_status, complete_status.
# fmt: off
_TABLE = (
    (3, "-01",           INCOMPLETE_FIELD, None,           False, False, "expires", 404, 201, 201),
    (5, "-03",           COMPLETE_FIELD,   None,           False, False, "expires", 404, 201, 201),
    (6, "-04, -05",      COMPLETE_FIELD,   PARTIAL_UPLOAD, False, True,  "expires", 404, 201, 201),
    (8, "-09, -10, -11", COMPLETE_FIELD,   PARTIAL_UPLOAD, True,  True,  "max-age", 410, 204, 200),
    (9, "-12",           COMPLETE_FIELD,   PARTIAL_UPLOAD, True,  True,  "max-age", 410, 204, 200),
)
# fmt: on
VERSIONS: dict[int, InteropVersion] = {row[0]: InteropVersion(*row) for row in _TABLE}
SUPPORTED = tuple(sorted(VERSIONS))


class Fields(Protocol):
    """A request's header fields (Werkzeug's Headers, a dict)."""

    def get(self, key: str, /) -> str | None: ...

    def __contains__(self, key: str, /) -> bool: ...


class DraftError(ValueError):
    """A draft header field that can't be used (the views answer 400)."""


def is_draft_request(headers: Fields) -> bool:
    """Whether a request speaks the draft: it names an interop version and not tus
    (a request naming both is tus's, whose clients always send Tus-Resumable)."""
    return INTEROP_FIELD in headers and "Tus-Resumable" not in headers


def interop_version(value: str | None) -> InteropVersion:
    """The row for a request's ``Upload-Draft-Interop-Version``."""
    try:
        number = parse_integer(value, INTEROP_FIELD)
    except DraftError:
        number = None
    if number is None or number not in VERSIONS:
        spoken = ", ".join(map(str, SUPPORTED))
        raise DraftError(f"{INTEROP_FIELD} {str(value)[:20]!r}: this server speaks {spoken}")
    return VERSIONS[number]


def speaks(value: str | None) -> bool:
    """Whether ``value`` names an interop version we speak (the 104 rule: never for a
    missing or mismatching one)."""
    try:
        interop_version(value)
    except DraftError:
        return False
    return True


def parse_integer(value: str | None, name: str) -> int | None:
    """A non-negative sf-integer field (None when absent)."""
    if value is None:
        return None
    text = value.strip(" \t")
    if not _SF_INTEGER.fullmatch(text) or text.startswith("-"):
        raise DraftError(f"{name} must be a non-negative integer")
    return int(text)


def parse_boolean(value: str | None, name: str) -> bool | None:
    """An sf-boolean field, ``?1`` or ``?0`` (None when absent)."""
    if value is None:
        return None
    text = value.strip(" \t")
    if text == "?1":
        return True
    if text == "?0":
        return False
    raise DraftError(f"{name} must be ?1 or ?0")


def format_boolean(value: bool) -> str:
    return "?1" if value else "?0"


def request_complete(version: InteropVersion, headers: Fields) -> bool | None:
    """Whether the request says its content ends the upload (None: it doesn't say)."""
    value = parse_boolean(headers.get(version.complete_field), version.complete_field)
    if value is None or version.complete_field == COMPLETE_FIELD:
        return value
    return not value  # Upload-Incomplete


def forbid_upload_fields(version: InteropVersion, headers: Fields) -> None:
    """Offset retrieval and cancellation carry neither offset nor completeness (400)."""
    for name in (OFFSET_FIELD, version.complete_field):
        if name in headers:
            raise DraftError(f"{name} is not allowed on this request")


def is_partial_upload(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == PARTIAL_UPLOAD


def format_limits(version: InteropVersion, max_size: int, max_age: int | None) -> str:
    """``Upload-Limit``: the maximum size and, while the upload (or one made now) would
    expire, its remaining lifetime in whole seconds."""
    limits = f"max-size={max_size}"
    if max_age is not None:
        limits += f", {version.age_limit_key}={max(0, max_age)}"
    return limits


def mismatch_problem(expected: int, provided: int) -> bytes:
    """The body of a 409 for an append at the wrong offset (RFC 9457 problem details)."""
    return json.dumps(
        {
            "type": PROBLEM_BASE + "mismatching-upload-offset",
            "title": "offset from request does not match offset of resource",
            "expected-offset": expected,
            "provided-offset": provided,
        }
    ).encode()


def completed_problem() -> bytes:
    return json.dumps(
        {"type": PROBLEM_BASE + "completed-upload", "title": "upload is already completed"}
    ).encode()


def interim_response(version: InteropVersion, location: str, limits: str) -> bytes:
    """The bytes of a ``104 (Upload Resumption Supported)`` interim response announcing
    an upload's URL (written to the socket before the final response)."""
    fields = {INTEROP_FIELD: str(version.number), "Location": location, LIMIT_FIELD: limits}
    for value in fields.values():
        if "\r" in value or "\n" in value:
            raise DraftError("a header value can't hold a line break")
    lines = [f"{name}: {value}" for name, value in fields.items()]
    head = "HTTP/1.1 104 Upload Resumption Supported\r\n" + "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("latin-1")
