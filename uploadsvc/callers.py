"""Who is asking: the current Flask request as the hooks see it.

The tus views and the page's list both hand requests to the ``authorize`` hook; this is
the one place a ``HookRequest`` is made of Flask's, below both (they are siblings that
never import each other).
"""

from __future__ import annotations

from flask import g, request

from .hooks import HookRequest

# Where the tus endpoints live: the page's list asks about an upload as a GET of it there.
FILES_PATH = "/files"


# Where the request, once the built-in guard knows who asks, is kept for the request.
_KNOWN = "uploadsvc_caller"


def hook_request() -> HookRequest:
    """The current request as the hooks see it (with who is asking, once known)."""
    known = g.get(_KNOWN)
    if isinstance(known, HookRequest):
        return known
    view_args = request.view_args or {}
    return HookRequest(
        method=request.method,
        path=request.path,
        upload_id=view_args.get("upload_id"),
        headers=dict(request.headers),
        remote_addr=request.remote_addr,
    )


def known_caller(asking: HookRequest) -> HookRequest:
    """Keep ``asking`` (what ``Hooks.authenticate`` made of this request) for the rest
    of the request: the service binds a creation to its grant, and a final's partials
    and the page's list are checked against it, without asking the registry again."""
    setattr(g, _KNOWN, asking)
    return asking
