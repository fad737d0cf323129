"""Who is asking: the current Flask request as the hooks see it.

The tus views and the page's list both hand requests to the ``authorize`` hook; this is
the one place a ``HookRequest`` is made of Flask's, below both (they are siblings that
never import each other).
"""

from __future__ import annotations

from flask import request

from .hooks import HookRequest

# Where the tus endpoints live: the page's list asks about an upload as a GET of it there.
FILES_PATH = "/files"


def hook_request() -> HookRequest:
    """The current request as the hooks see it."""
    view_args = request.view_args or {}
    return HookRequest(
        method=request.method,
        path=request.path,
        upload_id=view_args.get("upload_id"),
        headers=dict(request.headers),
        remote_addr=request.remote_addr,
    )
