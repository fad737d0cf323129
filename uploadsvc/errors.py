"""The errors uploadsvc answers with, each carrying its HTTP status.

Everything below the views raises one of these; the views render them in one place
(status, a short text body, the tus headers). Anything else that escapes is a bug.

    TusError (400)
      UnsupportedVersion 412   InvalidHeader 400       UnsupportedMediaType 415
      UploadNotFound 404       UploadGone 410          OffsetMismatch 409
      UploadTooLarge 413       UploadLocked 423        ChecksumMismatch 460
      Unauthorized 401 (+ WWW-Authenticate)
      BodyIncomplete 400       InsufficientStorage 507 Forbidden 403
      BodyCut 503 (+ Retry-After)
      TooManyUploads 503 (+ Retry-After)
      TypeRefused 415          DigestMismatch 460      UploadRefused 403
"""

from __future__ import annotations


class TusError(Exception):
    """A request the server refuses, with the status that says why."""

    status: int = 400
    reason: str = "Bad Request"
    message: str = "bad request"
    # Seconds for a Retry-After header: set on answers the client should retry.
    retry_after: int | None = None

    def __init__(self, message: str | None = None, *, offset: int | None = None) -> None:
        super().__init__(message or self.message)
        if message is not None:
            self.message = message
        # The upload's offset after the failed request, when bytes may have been kept
        # (a body that broke off, a full disk): clients resume from it.
        self.offset = offset


class Rejected(TusError):
    """A hook said no. Hook authors raise it: ``raise Rejected(403, "not yours")``.

    The status must be a client error (4xx); anything else becomes 403.
    """

    status, reason, message = 403, "Forbidden", "refused"

    def __init__(self, status: int = 403, message: str = "refused") -> None:
        super().__init__(message)
        if not 400 <= status <= 499:
            status = 403
        self.status = status
        self.reason = _REASONS.get(status, "Refused")


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
}


class InvalidHeader(TusError):
    status, reason, message = 400, "Bad Request", "invalid header"


class BodyIncomplete(TusError):
    """The client stopped sending before the body it announced was complete."""

    status, reason, message = 400, "Bad Request", "request body ended early"


class BodyCut(BodyIncomplete):
    """The server ended the body itself (it is stopping, the client went silent, another
    request took the upload over); what arrived is kept. 503 with Retry-After is an
    answer both shipped clients retry, so such a cut never ends an upload.
    transfers.py's table says which reasons exist and what each one's answer says."""

    status, reason, message = 503, "Service Unavailable", "the server ended the body early"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unauthorized(TusError):
    """401: no credential, or one that opens nothing (unknown, revoked, expired).
    ``challenge`` goes out as ``WWW-Authenticate`` (RFC 6750)."""

    status, reason, message = 401, "Unauthorized", "a token is required"

    def __init__(self, message: str, *, challenge: str) -> None:
        super().__init__(message)
        self.challenge = challenge


class Forbidden(TusError):
    status, reason, message = 403, "Forbidden", "not allowed on this upload"


class UploadNotFound(TusError):
    status, reason, message = 404, "Not Found", "upload not found"


class OffsetMismatch(TusError):
    status, reason, message = 409, "Conflict", "Upload-Offset does not match the upload's offset"

    def __init__(
        self,
        message: str | None = None,
        *,
        expected: int | None = None,
        provided: int | None = None,
    ) -> None:
        super().__init__(message)
        # The upload's offset and the request's: the resumable-upload draft's 409 says both.
        self.expected = expected
        self.provided = provided


class UploadGone(TusError):
    status, reason, message = 410, "Gone", "upload expired or terminated"


class UnsupportedVersion(TusError):
    status, reason, message = 412, "Precondition Failed", "Tus-Resumable must be 1.0.0"


class UploadTooLarge(TusError):
    status, reason, message = 413, "Content Too Large", "upload exceeds its length or the max size"


class UnsupportedMediaType(TusError):
    status, reason, message = (
        415,
        "Unsupported Media Type",
        "Content-Type must be application/offset+octet-stream",
    )


class UploadLocked(TusError):
    status, reason, message = 423, "Locked", "upload is busy with another request; retry"


class ChecksumMismatch(TusError):
    status, reason, message = 460, "Checksum Mismatch", "checksum mismatch; chunk discarded"


class UploadExists(TusError):
    status, reason, message = 409, "Conflict", "an upload with this id exists"


class HookFailed(TusError):
    """An operator's hook raised: the request is refused, the upload left as it was."""

    status, reason, message = 500, "Internal Server Error", "a server hook failed"


class StorageFailed(TusError):
    """The store failed to write or keep bytes (an I/O error): what it kept is recorded,
    and the client resumes from ``Upload-Offset`` (a status the shipped clients retry)."""

    status, reason, message = 503, "Service Unavailable", "storage failed; resume the upload"
    retry_after = 1


class LockLost(TusError):
    """The upload's lock was lost mid-request (its PostgreSQL connection died): another
    host may hold it now, so nothing more is recorded or deleted; the client asks HEAD
    where to resume (a status the shipped clients retry)."""

    status, reason, message = 503, "Service Unavailable", "lost the upload's lock; resume"
    retry_after = 1


class InsufficientStorage(TusError):
    status, reason, message = 507, "Insufficient Storage", "no space left to store the upload"


class TooManyUploads(TusError):
    """One client address has UPLOADSVC_MAX_UPLOADS_PER_CLIENT bodies in flight here.

    503, not 429: tus-js-client (the page, and every app built on it) retries 503 but
    not 429; the CLI retries both. ``retry_after`` goes out as Retry-After."""

    status, reason, message = 503, "Service Unavailable", "too many uploads in flight; retry"
    retry_after = 5


class TypeRefused(TusError):
    """A type gate refused the upload: its declared type (at creation) or its bytes
    (its first few KiB, when they arrive) are not of a type accepted here."""

    status, reason, message = 415, "Unsupported Media Type", "this type of file is not accepted"


class DigestMismatch(TusError):
    """The whole file's bytes don't match the digest declared at its creation: the
    upload is marked corrupt and never served (its bytes stay, for the operator)."""

    status, reason, message = (
        460,
        "Checksum Mismatch",
        "the upload's bytes do not match its declared digest; it is marked corrupt",
    )


class UploadRefused(TusError):
    """The upload's finish gave it a verdict other than OK (corrupt, or rejected by a
    type gate or a check hook): it is never served. DELETE still removes it."""

    status, reason, message = 403, "Forbidden", "upload refused"
