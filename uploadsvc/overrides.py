"""``X-HTTP-Method-Override``: clients behind proxies that only pass GET and POST send the
real method in this header; it is applied before routing, for every method."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

ALLOWED_METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"})


class MethodOverride:
    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").strip().upper()
        if method in ALLOWED_METHODS:
            environ["REQUEST_METHOD"] = method
        return self.app(environ, start_response)
