"""uploadsvc: a resumable-upload server speaking tus 1.0.0.

The server's entry points (``create_app``, ``check_reachable``, ``close_app``) live in
app.py and are imported on first use (PEP 562): ``import uploadsvc.upload.cli`` (the
uploader) must not import Flask, SQLAlchemy and Alembic, which take half a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import check_reachable, close_app, create_app

__all__ = ["check_reachable", "close_app", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
