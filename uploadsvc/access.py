"""The built-in access check for ``UPLOADSVC_AUTH=grants``: a ``hooks.Guard``.

Installed in the authorize hook point (``Hooks.access``), so it runs wherever
``authorize`` runs, before the operator's own hook: every tus request (method override
applied), each partial a final names (as a GET of it), each upload of the page's list.

- Who: ``Authorization: Bearer <token>``, a grant's token or ``UPLOADSVC_ADMIN_TOKEN``
  (which passes every check). A plain download (``GET``) may carry the grant's token in
  the ``uploadsvc_grant`` cookie instead, which the upload page sets (``SameSite=Strict``)
  because a link a browser follows can't carry a header. No token, or one that opens
  nothing: ``401`` with ``WWW-Authenticate: Bearer``. A revoked or expired grant is
  ``401`` too (RFC 6750's ``invalid_token``: the token no longer opens anything), from
  the next request on, uploads in flight included.
- What: an upload belongs to the grant that created it (``uploads.grant_id``): any
  request about it (HEAD, PATCH, DELETE, GET; a final naming it) from another grant is
  ``403``. Creations are bound to the caller's grant by the service
  (``HookRequest.grant``).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from http.cookies import CookieError, SimpleCookie

from .errors import Forbidden, Unauthorized
from .grants import GrantStore, bearer_token
from .hooks import HookRequest
from .records import UploadInfo

# The cookie the upload page sets for its download links (static/upload-page.js).
COOKIE = "uploadsvc_grant"
REALM = 'Bearer realm="uploadsvc"'
# Methods a browser makes without our headers: a download link.
COOKIE_METHODS = frozenset({"GET"})


class GrantGuard:
    def __init__(
        self,
        grants: GrantStore,
        *,
        admin_token: str | None,
        clock: Callable[[], datetime],
    ) -> None:
        self.grants = grants
        self.admin_token = admin_token
        self.clock = clock

    def authenticate(self, request: HookRequest) -> HookRequest:
        if request.admin or request.grant is not None:
            return request  # known already (a final's partials, the page's list)
        token = bearer_token(request.headers)
        if token is None and request.method in COOKIE_METHODS:
            token = _cookie_token(request.headers)
        if token is None:
            raise Unauthorized(
                "this server needs an upload link's token: Authorization: Bearer ...",
                challenge=REALM,
            )
        if self.admin_token is not None and hmac.compare_digest(
            token.encode(), self.admin_token.encode()
        ):
            return replace(request, admin=True)
        grant = self.grants.by_token(token)
        if grant is None:
            raise Unauthorized("unknown token", challenge=_invalid("unknown token"))
        problem = grant.problem(self.clock())
        if problem is not None:
            message = f"this upload link was {problem}"
            raise Unauthorized(message, challenge=_invalid(message))
        return replace(request, grant=grant)

    def authorize(self, request: HookRequest, upload: UploadInfo | None) -> HookRequest:
        request = self.authenticate(request)
        if request.admin or upload is None:
            return request
        assert request.grant is not None  # authenticate said who, or raised
        if upload.grant_id != request.grant.id:
            raise Forbidden(f"upload {upload.id} belongs to another upload link")
        return request


def _invalid(description: str) -> str:
    return f'{REALM}, error="invalid_token", error_description="{description}"'


def _cookie_token(headers: Mapping[str, str]) -> str | None:
    value = next((v for k, v in headers.items() if k.lower() == "cookie"), None)
    if not value:
        return None
    try:
        cookie = SimpleCookie(value)
    except CookieError:
        return None
    morsel = cookie.get(COOKIE)
    return morsel.value if morsel is not None and morsel.value else None
