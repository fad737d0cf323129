"""Request bodies as a stream of bounded blocks, straight from the WSGI input.

Never ``request.data``: an upload body may be gigabytes. A body that stops short (the
client closed or reset the connection, or chunked framing broke) ends the stream with
``BodyIncomplete`` after every byte that did arrive has been yielded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .errors import BodyIncomplete

BLOCK_SIZE = 256 * 1024


def has_body(environ: Mapping[str, Any]) -> bool:
    return content_length(environ) != 0 if not is_chunked(environ) else True


def is_chunked(environ: Mapping[str, Any]) -> bool:
    return "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def content_length(environ: Mapping[str, Any]) -> int | None:
    """The announced body size; None for chunked bodies. Servers reject a malformed
    Content-Length before we run, so a bad value here means "no body"."""
    if is_chunked(environ):
        return None
    raw = environ.get("CONTENT_LENGTH", "")
    return int(raw) if raw.isdigit() else 0


def read_body(environ: Mapping[str, Any], block_size: int = BLOCK_SIZE) -> Iterator[bytes]:
    stream = environ["wsgi.input"]
    remaining = content_length(environ)
    while remaining is None or remaining > 0:
        want = block_size if remaining is None else min(block_size, remaining)
        try:
            block = stream.read(want)
        except Exception as error:  # a reset, a timeout, broken chunked framing
            raise BodyIncomplete(f"request body broke off: {type(error).__name__}") from error
        if not block:
            if remaining is None:
                return  # chunked body: the terminating chunk arrived
            raise BodyIncomplete()
        if remaining is not None:
            remaining -= len(block)
        yield block
