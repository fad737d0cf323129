"""A request's connection under gunicorn: closed only when the response said so.

A proxy with upstream keep-alive (nginx, as deploy/ ships it) sends its next request on
any connection whose last response said ``Connection: keep-alive``. A connection the
server closes after such a response races that reuse, and the proxy answers its client
502 and leaves the host out (``max_fails``). So every close the server makes is announced:

- gunicorn drops the application's own ``Connection`` header and closes anyway when a
  body was left unread (it drains at most 64 KiB first) or broke off. Here a response
  says ``Connection: close`` exactly when the connection will close: the application
  said so, the body is not read to its end, or the body was ended early.
- A body ended early (``end_body_early``, the transfer monitor's stop) shuts the
  socket's read side, and only while its request is still being served: once the
  response has begun, the connection may carry the next request, and a late shutdown
  would end that one instead (nginx: "upstream prematurely closed connection").
- After an early answer (a refusal before the body was read), the connection lingers,
  reading and discarding what the peer still sends, until it stops (nginx stops
  relaying a body once it has the answer, then closes) or for ``LINGER`` seconds at most.
  Closing with unread bytes queued makes the kernel send a reset, which can reach the
  peer before it has read the answer: nginx, still writing the body, gets EPIPE and
  answers 502 instead of the 413.

Outside gunicorn (the test client, Werkzeug's server) the middleware only passes through.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import gunicorn.http.wsgi as _gwsgi  # type: ignore[import-untyped]

from . import body

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

ENVIRON_KEY = "uploadsvc.connection"
#: How long a connection closing after an early answer keeps reading what still comes.
LINGER = 2.0
#: And at most this much (a direct client may push gigabytes; a proxy stops at once).
LINGER_MAX_BYTES = 64 * 1024 * 1024
_LINGER_BLOCK = 256 * 1024
_POLL_AFTER_SHUTDOWN = 0.02


class RequestConnection:
    """One request's view of its connection (``environ[ENVIRON_KEY]``)."""

    def __init__(self, sock: socket.socket | None, environ: WSGIEnvironment) -> None:
        self.sock = sock
        self.environ = environ
        self._guard = threading.Lock()
        self.responded = False  # the response has begun: the request is over for us
        self.body_ended_early = False

    def end_body_early(self) -> None:
        """Make the blocked body read see end-of-file, if the request is still being
        served and its body not read to the end; a no-op once its response has begun
        (the connection may be reading the next request by then)."""
        with self._guard:
            if self.responded or self.body_ended_early or self.sock is None:
                return
            if not body.unread(self.environ):
                return  # read to its end (the server is busy with it): nothing blocks
            self.body_ended_early = True
            with contextlib.suppress(OSError):  # the connection is already gone
                self.sock.shutdown(socket.SHUT_RD)

    def send_interim(self, head: bytes) -> bool:
        """Write an interim (1xx) response, whole, before the final one; False when it
        can't be sent (the final response has begun, or the connection is gone)."""
        with self._guard:
            if self.responded or self.sock is None:
                return False
            try:
                self.sock.sendall(head)
            except OSError:
                return False
            return True

    def _respond(self) -> bool:
        """Mark the response begun; whether the body was ended early."""
        with self._guard:
            self.responded = True
            return self.body_ended_early


def body_stopper(environ: Mapping[str, Any]) -> Callable[[], None]:
    """How to end this request's body early (what the transfer monitor calls): shut the
    socket's read side, so the blocked read sees end-of-file, and never once the
    response has begun. Without gunicorn's socket it can't be done: a no-op."""
    conn = environ.get(ENVIRON_KEY)
    if isinstance(conn, RequestConnection):
        return conn.end_body_early
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return lambda: None
    # A socket without AnnouncedCloses around the app (a gunicorn layout it doesn't
    # know): shut its read side all the same; the transfer monitor's own end-of-body
    # flag keeps the stop off a request that has ended.
    return lambda: sock.shutdown(socket.SHUT_RD)


def send_interim(environ: Mapping[str, Any], head: bytes) -> bool:
    """Write an interim response (``head``: its status line and fields, ending in a blank
    line) to the client before the final response. WSGI has no way to send one; under
    gunicorn its socket does, through the request's connection (AnnouncedCloses), which
    refuses once the final response has begun. Elsewhere: not sent (False)."""
    conn = environ.get(ENVIRON_KEY)
    if not isinstance(conn, RequestConnection):
        return False
    return conn.send_interim(head)


class AnnouncedCloses:
    """WSGI middleware (outermost): the response says ``Connection: close`` whenever the
    connection will close after it, and an early answer lingers before the close."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # gunicorn passes its Response's bound start_response: the object that decides
        # the Connection header and whether the connection is kept.
        server_response: Any = getattr(start_response, "__self__", None)
        sock = environ.get("gunicorn.socket")
        if type(server_response) is not _gwsgi.Response or not isinstance(sock, socket.socket):
            return self.app(environ, start_response)
        connection = RequestConnection(sock, environ)
        environ[ENVIRON_KEY] = connection
        linger: list[bool] = []

        def respond(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> object:
            ended_early = connection._respond()
            unread = body.unread(environ)
            said_close = any(
                name.lower() == "connection" and "close" in value.lower() for name, value in headers
            )
            if said_close or unread or ended_early:
                server_response.force_close()
            linger[:] = [unread or ended_early]
            return start_response(status, headers, exc_info)

        result = self.app(environ, respond)  # type: ignore[arg-type]
        if not linger or not linger[0]:
            return result
        return _Lingering(result, lambda: _linger(sock, connection.body_ended_early))


class _Lingering:
    """The response, then (once the server has written it) a linger before the close."""

    def __init__(self, result: Iterable[bytes], linger: Callable[[], None]) -> None:
        self.result = result
        self.linger = linger

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.result)

    def close(self) -> None:
        try:
            close: Any = getattr(self.result, "close", None)
            if callable(close):
                close()
        finally:
            self.linger()


def _linger(sock: socket.socket, read_side_shut: bool) -> None:
    """Read and discard what the peer still sends, until it closes or goes quiet past
    the deadline, bounded by LINGER seconds and LINGER_MAX_BYTES."""
    deadline = time.monotonic() + LINGER
    drained = 0
    try:
        while drained < LINGER_MAX_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            readable, _, _ = select.select([sock], [], [], remaining)
            if not readable:
                return
            data = sock.recv(_LINGER_BLOCK, socket.MSG_DONTWAIT)
            if data:
                drained += len(data)
            elif read_side_shut and not _peer_closed(sock):
                # After SHUT_RD a read returns what is queued, else end-of-file at
                # once, whether or not the peer is done: look again shortly.
                time.sleep(_POLL_AFTER_SHUTDOWN)
            else:
                return  # the peer closed
    except (OSError, ValueError):  # reset, or closed meanwhile: nothing left to protect
        return


_TCP_CLOSE_WAIT = 8  # include/net/tcp_states.h: the peer has closed its side


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the peer has sent its FIN (TCP_INFO's state, on Linux); False if unknown."""
    info = getattr(socket, "TCP_INFO", None)
    if info is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    return sock.getsockopt(socket.IPPROTO_TCP, info, 1)[0] == _TCP_CLOSE_WAIT
