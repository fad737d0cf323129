"""Request bodies as a stream of bounded blocks, straight from the connection.

Never ``request.data``: an upload body may be gigabytes. A body that stops short (the
client closed or reset the connection, or chunked framing broke) ends the stream with
``BodyIncomplete`` after every byte that did arrive has been yielded.

Two ways to read:

- **Under gunicorn's HTTP/1 workers** the body is read from the client socket itself
  (``environ["gunicorn.socket"]``), in blocks of up to 1 MiB. gunicorn's own reader
  passes every byte through several ``BytesIO`` buffers and slices; reading the socket
  directly takes about half the server's CPU per uploaded byte (bench/). What gunicorn
  already holds of the body (read ahead with the headers) is taken first, through
  gunicorn's readers, in amounts they serve from their buffers. gunicorn's bookkeeping
  is kept true throughout, so the connection stays correct for keep-alive; see
  ``_sized_from_socket`` and ``_chunked_from_socket``.
- **Anywhere else** (Werkzeug's test client and dev server, HTTP/2, an unknown gunicorn
  layout) ``environ["wsgi.input"]`` is read in blocks.

Every block is a ``bytes`` object of its own (never a view of a reused buffer), so a
consumer may keep one as long as it likes; memory stays at about one block per request
in flight.
"""

from __future__ import annotations

import inspect
import io
import re
import socket
from collections.abc import Generator, Iterator, Mapping
from typing import Any

# The gunicorn layout the socket path relies on; checked per request in _gunicorn().
import gunicorn.http.body as _gbody  # type: ignore[import-untyped]
import gunicorn.http.unreader as _gunreader  # type: ignore[import-untyped]

from .errors import BodyIncomplete

#: Block size of the generic path (reads of ``wsgi.input``).
BLOCK_SIZE = 256 * 1024
#: The socket path's largest ``recv``, and so the largest block it yields.
SOCKET_BLOCK_SIZE = 1024 * 1024
#: The socket path never asks the kernel for less than this while it decodes chunks.
_MIN_RECV = 64 * 1024

# Chunked framing, RFC 9112 section 7.1, exactly as strict as gunicorn's own reader.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED_STRING = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_EXT_VALUE = rb"(?:" + _TOKEN + rb"|" + _QUOTED_STRING + rb")"
_CHUNK_EXT = re.compile(
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*" + _EXT_VALUE + rb")?)*"
)
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_TRAILER_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*[^\x00-\x08\x0a-\x1f\x7f]*")
# RFC 9110 section 6.5.1: fields a trailer must not carry (gunicorn refuses them too).
_FORBIDDEN_TRAILERS = frozenset(
    (b"host", b"content-length", b"transfer-encoding", b"trailer", b"authorization", b"te")
)
_DEFAULT_CHUNK_LINE_LIMIT = 8190
_DEFAULT_TRAILER_LIMIT = 8190 * 32


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


def read_body(
    environ: Mapping[str, Any],
    block_size: int = BLOCK_SIZE,
    trailers: dict[str, str] | None = None,
) -> Generator[bytes]:
    """The body in blocks; nothing is read until the first block is asked for.

    ``block_size`` bounds the blocks of the generic path; the socket path yields blocks
    of up to ``SOCKET_BLOCK_SIZE``. ``trailers`` receives a chunked body's trailer
    fields (lower-case names) once the body has ended, on the socket path.
    """
    source = _gunicorn(environ)
    if source is None:
        yield from _from_wsgi_input(environ, block_size)
    elif isinstance(source.reader, _gbody.LengthReader):
        yield from _sized_from_socket(source)
    else:
        yield from _chunked_from_socket(source, trailers)


def unread(environ: Mapping[str, Any]) -> bool:
    """Whether gunicorn would have to drain (or close over) body bytes still on the
    connection after the response: a body not read to its end, or one that broke off.

    False outside gunicorn's HTTP/1 layout (nothing to announce there)."""
    stream: Any = environ.get("wsgi.input")
    if type(stream) is not _gbody.Body:
        return False
    if getattr(stream, "failed", False) is True:
        return True
    reader: Any = getattr(stream, "reader", None)
    if type(reader) is _gbody.LengthReader:
        length = getattr(reader, "length", 0)
        return isinstance(length, int) and length > 0
    if type(reader) is _gbody.ChunkedReader:
        return getattr(reader, "parser", None) is not None  # None once the body ended
    if type(reader) is _gbody.EOFReader:  # a body that runs to the close
        return getattr(reader, "finished", False) is not True
    return False


def trailers_supported(environ: Mapping[str, Any]) -> bool:
    """Whether ``read_body`` can hand over trailer fields for this request."""
    source = _gunicorn(environ)
    return source is not None and not isinstance(source.reader, _gbody.LengthReader)


def _from_wsgi_input(environ: Mapping[str, Any], block_size: int) -> Iterator[bytes]:
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


# --------------------------------------------------------------------------- socket path


class _Source:
    """gunicorn's objects for one HTTP/1 request body, checked to be the known layout."""

    def __init__(self, sock: Any, body: Any, reader: Any, unreader: Any) -> None:
        self.sock: socket.socket = sock  # or a socket-like object of the worker class
        self.body = body  # gunicorn.http.body.Body: wsgi.input, with its own buffer
        self.reader = reader  # its LengthReader or ChunkedReader
        self.unreader = unreader  # SocketUnreader: the connection's read-ahead buffer


def _gunicorn(environ: Mapping[str, Any]) -> _Source | None:
    """gunicorn's body objects when the body can be read from the socket, else None.

    Exact types, not isinstance: a subclass may buffer or frame differently. The
    attributes used are checked too, so another gunicorn layout falls back to the
    generic path instead of breaking (tests/test_body.py pins the layout we expect).
    """
    sock: Any = environ.get("gunicorn.socket")
    body: Any = environ.get("wsgi.input")
    if sock is None or type(body) is not _gbody.Body:
        return None
    reader: Any = getattr(body, "reader", None)
    if type(reader) is _gbody.LengthReader:
        unreader: Any = getattr(reader, "unreader", None)
        if not isinstance(getattr(reader, "length", None), int):
            return None
    elif type(reader) is _gbody.ChunkedReader:
        # Only a chunked body nobody has started to read: gunicorn's parser (a
        # generator over the request's unreader) must not have taken any framing off
        # the connection yet.
        unreader = getattr(getattr(reader, "req", None), "unreader", None)
        parser = getattr(reader, "parser", None)
        if not (
            inspect.isgenerator(parser)
            and inspect.getgeneratorstate(parser) == inspect.GEN_CREATED
            and getattr(parser.gi_frame, "f_locals", {}).get("unreader") is unreader
            and isinstance(getattr(reader, "buf", None), io.BytesIO)
            and not reader.buf.getvalue()
            and isinstance(getattr(body, "buf", None), io.BytesIO)
            and not body.buf.getvalue()
        ):
            return None
    else:
        return None
    if not (
        type(unreader) is _gunreader.SocketUnreader
        and getattr(unreader, "sock", None) is sock
        and isinstance(getattr(unreader, "buf", None), io.BytesIO)
        and isinstance(getattr(body, "buf", None), io.BytesIO)
        and isinstance(getattr(body, "failed", None), bool)
    ):
        return None
    return _Source(sock, body, reader, unreader)


def _sized_from_socket(src: _Source) -> Iterator[bytes]:
    """A Content-Length body: gunicorn's buffers first, then the socket, never past the end.

    Keep-alive: gunicorn's LengthReader counts the body bytes still on the connection
    (``reader.length``); before it parses the next request it drains that many. Every
    byte this function takes off the socket is subtracted from that count at once, so
    gunicorn's view stays exact whatever happens: at the end it drains nothing, and if
    the consumer stops early it drains (or gives up and closes) exactly the rest. The
    socket is never asked for more than ``reader.length``, so the next request on the
    connection stays where gunicorn will look for it.

    ``recv`` rather than ``recv_into``: the kernel copies straight into the bytes object
    that is handed on, where a reused buffer would need a copy out of it (measured: the
    same CPU as yielding views of a buffer; one block in flight per request).
    """
    body, reader, sock = src.body, src.reader, src.sock
    # What gunicorn read ahead with the headers: asking for exactly what its buffers
    # hold serves the bytes from them without a recv (Body.read; then LengthReader.read,
    # which stops at the body's end and leaves a pipelined request's bytes buffered).
    held = body.read(_held(body)) + reader.read(min(_held(src.unreader), reader.length))
    if held:
        yield held
    while reader.length > 0:
        try:
            block = sock.recv(min(SOCKET_BLOCK_SIZE, reader.length))
        except OSError as error:  # a reset, a timeout
            body.failed = True  # the connection ends with this request
            raise BodyIncomplete(f"request body broke off: {type(error).__name__}") from error
        if not block:
            body.failed = True
            raise BodyIncomplete("request body broke off: connection closed")
        reader.length -= len(block)
        yield block


def _chunked_from_socket(src: _Source, trailers: dict[str, str] | None = None) -> Iterator[bytes]:
    """A chunked body, decoded from the socket in place, data moved to the buffer's front.

    Keep-alive: once this takes over, gunicorn's ChunkedReader no longer knows where the
    body ends, so ``body.failed`` is set first; gunicorn then closes the connection after
    the response instead of reading on. Only when the last chunk and the trailer section
    are consumed does the reader become an empty, finished one (``parser = None``), the
    bytes read past the body go back to gunicorn (``unread``: a pipelined request), and
    ``failed`` is cleared. A consumer that stops early, broken framing or a disconnect
    all leave the connection to close. The request's ``must_close`` follows ``failed``,
    so that an answer sent meanwhile (a 413 for a body past Upload-Length) says
    ``Connection: close``: gunicorn drops the application's own Connection header.
    """
    body, reader, unreader = src.body, src.reader, src.unreader
    line_limit = _int_attr(reader, "limit_chunk_size_line", _DEFAULT_CHUNK_LINE_LIMIT)
    trailer_limit = _int_attr(reader, "limit_trailer_section", _DEFAULT_TRAILER_LIMIT)
    req: Any = getattr(reader, "req", None)
    must_close = getattr(req, "must_close", None)
    if isinstance(must_close, bool):
        req.must_close = True
    body.failed = True
    reader.parser.close()
    reader.parser = None
    first = _take_buffered(unreader)
    size = max(SOCKET_BLOCK_SIZE, len(first) + _MIN_RECV)
    buf = bytearray(size)
    view = memoryview(buf)
    view[: len(first)] = first
    out = 0  # decoded data is buf[:out]
    pos = 0  # framing not yet parsed is buf[pos:end]
    end = len(first)
    chunk_left = -1  # bytes of the current chunk still to come; -1: a size line is due
    crlf_due = False  # a chunk's data ended; its CRLF is due
    short = False  # the last recv returned less than there was room for
    failure: str | BaseException | None = None
    done = False
    while not done and failure is None:
        # Parse what is in the buffer as far as it goes.
        if chunk_left > 0:
            n = min(chunk_left, end - pos)
            if n:
                if pos != out:
                    view[out : out + n] = view[pos : pos + n]
                out += n
                pos += n
                chunk_left -= n
                if chunk_left == 0:
                    crlf_due = True
                continue
        elif crlf_due:
            if end - pos >= 2:
                if buf[pos : pos + 2] != b"\r\n":
                    failure = "chunk data not followed by CRLF"
                    break
                pos += 2
                crlf_due = False
                chunk_left = -1
                continue
        elif chunk_left < 0:
            idx = buf.find(b"\r\n", pos, end)
            if idx >= 0:
                parsed = _chunk_size(bytes(buf[pos:idx])) if idx - pos <= line_limit else None
                if parsed is None:
                    failure = "invalid chunk size line"
                    break
                pos = idx + 2
                chunk_left = parsed
                continue
            if end - pos > line_limit:
                failure = "chunk size line too long"
                break
        else:  # chunk_left == 0 after the last chunk: the trailer section
            if end - pos >= 2 and buf[pos : pos + 2] == b"\r\n":
                pos += 2
                done = True
                continue
            idx = buf.find(b"\r\n\r\n", pos, end)
            if idx >= 0:
                section = bytes(buf[pos:idx])
                if not _valid_trailers(section):
                    failure = "invalid trailer section"
                    break
                if trailers is not None:
                    trailers.update(_trailer_fields(section))
                pos = idx + 4
                done = True
                continue
            if end - pos > trailer_limit:
                failure = "trailer section too long"
                break
        # More bytes needed. Hand the decoded data on first when the last read emptied
        # the kernel's queue (the write overlaps the wait) or space runs short; then
        # move the unparsed rest to the front if the space left is too small.
        if out and (short or size - end < _MIN_RECV):
            yield bytes(view[:out])
            out = 0
        if pos == end:
            pos = end = out
        elif size - end < _MIN_RECV:
            view[out : out + end - pos] = view[pos:end]
            end -= pos - out
            pos = out
            if size - end < _MIN_RECV:  # framing alone fills the buffer: over the limits
                failure = "chunk framing too long"
                break
        try:
            received = src.sock.recv_into(view[end:size])
        except OSError as error:
            failure = error
            break
        if not received:
            failure = EOFError("connection closed")
            break
        short = received < size - end
        end += received
    if out:
        yield bytes(view[:out])
    if failure is not None:
        why = failure if isinstance(failure, str) else type(failure).__name__
        cause = failure if isinstance(failure, BaseException) else None
        raise BodyIncomplete(f"request body broke off: {why}") from cause
    if pos < end:
        unreader.unread(bytes(view[pos:end]))  # the next request's first bytes
    body.failed = False
    if isinstance(must_close, bool):
        req.must_close = must_close


def _held(stream: Any) -> int:
    """Bytes buffered in a gunicorn Body or Unreader (their BytesIO ``buf``)."""
    return len(stream.buf.getvalue())


def _take_buffered(unreader: Any) -> bytes:
    if not _held(unreader):
        return b""
    take = getattr(unreader, "take_buffered", None)
    data = take() if callable(take) else unreader.read()
    return data if isinstance(data, bytes) else bytes(data)


def _int_attr(obj: object, name: str, default: int) -> int:
    value = getattr(obj, name, None)
    return value if isinstance(value, int) and value > 0 else default


def _chunk_size(line: bytes) -> int | None:
    """A chunk-size line (without its CRLF): the size, or None when malformed."""
    size, semicolon, extension = line.partition(b";")
    if semicolon:
        if not _CHUNK_EXT.fullmatch(b";" + extension):
            return None
        size = size.rstrip(b" \t")  # BWS before the extension, and only there
    if not size or not _HEX_DIGITS.issuperset(size):
        return None
    return int(size, 16)


def _trailer_fields(section: bytes) -> dict[str, str]:
    """Validated trailer fields as ``{lower-case name: value}``."""
    fields = {}
    for line in section.split(b"\r\n"):
        name, _, value = line.partition(b":")
        fields[name.decode("ascii").lower()] = value.strip(b" \t").decode("latin-1")
    return fields


def _valid_trailers(section: bytes) -> bool:
    """Trailer fields, CRLF-separated (the final CRLF CRLF already cut off)."""
    for line in section.split(b"\r\n"):
        match = _TRAILER_FIELD.fullmatch(line)
        if match is None or match.group(1).lower() in _FORBIDDEN_TRAILERS:
            return False
    return True
