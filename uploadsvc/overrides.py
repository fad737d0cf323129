"""``X-HTTP-Method-Override``: clients behind proxies that only pass GET and POST send the
real method in this header; it is applied before routing, for every method."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

ALLOWED_METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"})


class MethodOverride:
    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").strip().upper()
        if method in ALLOWED_METHODS:
            if method == "HEAD" and environ.get("REQUEST_METHOD") != "HEAD":
                start_response = _without_body(start_response)
            environ["REQUEST_METHOD"] = method
        return self.app(environ, start_response)


def _without_body(start_response: StartResponse) -> StartResponse:
    """A HEAD override on another method: the app sends no body (it answers a HEAD), but
    the server frames the answer for the method on the wire. Its Content-Length must say
    0, or a keep-alive client waits for bytes that never come (found by `make torture`)."""

    def respond(
        status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> object:
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", "0"))
        return start_response(status, headers, exc_info)

    return respond  # type: ignore[return-value]
