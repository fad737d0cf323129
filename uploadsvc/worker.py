"""gunicorn's gthread worker, giving a connection a thread only once its request head is in.

The stock gthread worker hands a connection to a thread as soon as it is readable, and
the thread then blocks reading the request head: a client that sends half a head and a
byte now and then holds that thread as long as it likes (8 such sockets stopped a
1x8-thread server). This worker reads heads on its main loop instead, without blocking:
a connection stays in the worker's selector, its bytes gathered, until its head ends
(CRLF CRLF); then gunicorn's parser gets those bytes back (``unread``, as gunicorn does
with an h2c preface) and a thread parses the head from memory at once. A head that
isn't whole ``UPLOADSVC_HEADER_TIMEOUT`` seconds after a new connection was accepted,
or after the first byte of the next request on a kept-alive one, is answered 408 and
closed; a head larger than ``MAX_HEAD``, 431. A slow head never holds a thread.

A thread that answered a kept-alive request reads the connection's next head itself if
it arrives within ``INLINE_WAIT`` (a busy client's next request usually does), so a busy
connection doesn't go back through the main loop between requests; a head that isn't
whole by then goes back to the main loop with its bytes, and the deadline runs from there.

Reading rather than peeking (``recv(MSG_PEEK)``) for the end of the head: a peek re-reads
the whole pending head on every readable event (a byte-trickler costs the head's size per
byte), and past the peek's size the head would go to a thread unfinished. Reading costs
each byte once and is bounded by ``MAX_HEAD`` per waiting connection.

Left to gunicorn's own path (where a slow head can hold a thread): TLS (its handshake
runs in the thread; uploadsvc is meant to sit behind a TLS proxy), HTTP/2 with prior
knowledge and the uwsgi protocol, none of which uploadsvc ships. The gunicorn layout
relied on is checked when the worker starts (``layout_problem``; tests/test_worker.py
pins it): on another layout the worker logs why and behaves as the stock one.
"""

from __future__ import annotations

import contextlib
import select
import selectors
import socket
import time
from functools import partial
from typing import Any

from gunicorn.http import get_parser  # type: ignore[import-untyped]
from gunicorn.http import unreader as _unreader
from gunicorn.http2 import negotiation  # type: ignore[import-untyped]
from gunicorn.workers import gthread  # type: ignore[import-untyped]

from .config import Settings

# The largest request head read before a thread gets it: four times nginx's default
# (large_client_header_buffers 4 8k); a tus request's head is well under 2 KiB.
MAX_HEAD = 64 * 1024
_RECV_SIZE = 16 * 1024
# A stopping worker closes connections still sending a head after this long, as gunicorn
# does with kept-alive ones (STOP_KEEPALIVE_LINGER).
STOP_LINGER = 2.0
# How long a thread that answered a kept-alive request waits for the connection's next
# request before handing it back to the main loop.
INLINE_WAIT = 0.005

_TIMEOUT_ANSWER = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_TOO_LARGE_ANSWER = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Connection: close\r\nContent-Length: 0\r\n\r\n"
)


def layout_problem() -> str | None:
    """What of the gunicorn gthread layout this worker relies on is missing, or None."""
    worker = getattr(gthread, "ThreadWorker", None)
    tconn = getattr(gthread, "TConn", None)
    if worker is None or tconn is None:
        return "gunicorn.workers.gthread has no ThreadWorker or TConn"
    for name in ("enqueue_req", "murder_pending", "handle", "finish_request", "accept"):
        if not callable(getattr(worker, name, None)):
            return f"ThreadWorker.{name} is gone"
    sets = tconn.__init__.__code__.co_names
    for attr in ("sock", "client", "parser", "initialized", "data_ready", "is_http2"):
        if attr not in sets:
            return f"TConn no longer sets {attr}"
    # Bytes given back to the parser after a request (a read-ahead, or a next head read
    # inline in part) must send the connection back through enqueue_req.
    if "getvalue" not in worker.finish_request.__code__.co_names:
        return "ThreadWorker.finish_request no longer looks for buffered bytes"
    # handle() must skip its wait for readability when data_ready is set.
    if "data_ready" not in worker.handle.__code__.co_names:
        return "ThreadWorker.handle no longer looks at data_ready"
    for name in ("take_buffered", "unread"):
        if not callable(getattr(_unreader.Unreader, name, None)):
            return f"Unreader.{name} is gone"
    return None


class _HeadWait:
    """A connection whose request head is still arriving."""

    __slots__ = ("buf", "deadline", "registered", "scanned")

    def __init__(self, buf: bytes, deadline: float) -> None:
        self.buf = bytearray(buf)
        self.deadline = deadline
        self.registered = False
        self.scanned = 0  # buf[:scanned] holds no end of head

    def head_ends(self, line_limit: int) -> bool:
        """Whether gunicorn's parser can answer from what is here without reading more:
        the head has ended (CRLF CRLF; LF LF too, which gunicorn refuses), or the
        request line is already longer than gunicorn takes (``limit_request_line``)."""
        buf = self.buf
        start = 0
        # RFC 9112 section 2.2: empty lines before the request line may be ignored.
        while buf.startswith(b"\r\n", start):
            start += 2
        since = max(start, self.scanned - 3)
        self.scanned = len(buf)
        if buf.find(b"\r\n\r\n", since) >= 0 or buf.find(b"\n\n", since) >= 0:
            return True
        return 0 < line_limit < len(buf) - start - 1 and buf.find(b"\n", start) < 0


class HeaderDeadlineWorker(gthread.ThreadWorker):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # gunicorn.conf.py's on_starting validated the settings in the master.
        self.header_timeout: float = Settings.from_env().header_timeout
        self.heads: dict[Any, _HeadWait] = {}
        limit = self.cfg.limit_request_line
        self.line_limit: int = limit if isinstance(limit, int) else 0
        self.stop_deadline: float | None = None
        problem = layout_problem()
        self.reads_heads = problem is None
        if problem is not None:
            self.log.warning("uploadsvc: slow request heads hold threads: %s", problem)

    def _takes_over(self, conn: Any) -> bool:
        return bool(
            self.reads_heads
            and not conn.is_http2
            and not self.cfg.is_ssl
            and getattr(self.cfg, "protocol", "http") == "http"
            and not negotiation.prior_knowledge_allowed(self.cfg, conn.client)
        )

    def handle(self, conn: Any) -> Any:
        """gunicorn's handling of one request, then of the next ones on the same
        connection while each arrives within ``INLINE_WAIT``: a busy kept-alive client is
        served by one thread, without going back through the main loop (its selector, a
        hand-over to the pool and a wake-up of the main thread cost about a fifth of a
        HEAD's CPU here)."""
        keep = super().handle(conn)
        while keep is True and self._next_head_inline(conn):
            keep = super().handle(conn)
        return keep

    def _next_head_inline(self, conn: Any) -> bool:
        """Whether the next request's head is whole in the parser, read within
        ``INLINE_WAIT``; if not, what arrived goes back to the parser, where the main
        loop finds it (``finish_request``) and the header deadline applies from there."""
        if not self.alive or not self._takes_over(conn) or conn.parser is None:
            return False
        wait = _HeadWait(conn.parser.unreader.take_buffered(), 0.0)
        whole = bool(wait.buf) and wait.head_ends(self.line_limit)
        if not whole:
            whole = self._read_inline(conn.sock, time.monotonic() + INLINE_WAIT, wait)
        conn.parser.unreader.unread(bytes(wait.buf))
        conn.data_ready = whole
        return whole

    def _read_inline(self, sock: socket.socket, deadline: float, wait: _HeadWait) -> bool:
        """Reads into ``wait`` until its head ends (True), ``deadline`` or ``MAX_HEAD``."""
        # poll, not select: a worker's descriptors pass select's limit (1,024).
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        while len(wait.buf) <= MAX_HEAD:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                if not poller.poll(left * 1000):
                    return False
                data = sock.recv(_RECV_SIZE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return False  # the main loop's read meets the error again and drops it
            if not data:
                return False  # closed: likewise
            wait.buf += data
            if wait.head_ends(self.line_limit):
                return True
        return False

    def enqueue_req(self, conn: Any) -> None:
        """Every way to a thread goes through here (a new connection, a kept-alive one
        that became readable, one with the next request read ahead); all on the main
        thread. Only a connection whose head has ended goes on."""
        if not self._takes_over(conn):
            super().enqueue_req(conn)
            return
        # New: the deadline runs from the accept (an idle new socket holds a connection
        # slot too). Kept-alive: from now, its next request's first byte.
        buffered = b"" if conn.parser is None else conn.parser.unreader.take_buffered()
        wait = _HeadWait(buffered, time.monotonic() + self.header_timeout)
        self.heads[conn] = wait
        conn.sock.setblocking(False)
        if wait.buf and wait.head_ends(self.line_limit):
            self._hand_over(conn, wait)
        else:
            self._read_head(conn, wait)

    def _on_head_readable(self, conn: Any, _sock: socket.socket) -> None:
        wait = self.heads.get(conn)
        if wait is not None:
            self._read_head(conn, wait)

    def _read_head(self, conn: Any, wait: _HeadWait) -> None:
        while len(wait.buf) <= MAX_HEAD:
            try:
                data = conn.sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # reset
                self._drop(conn, wait)
                return
            if not data:  # closed before its head was whole
                self._drop(conn, wait)
                return
            wait.buf += data
            if wait.head_ends(self.line_limit):
                self._hand_over(conn, wait)
                return
            if len(data) < _RECV_SIZE:
                break  # the kernel's queue is empty: spare the EAGAIN
        if len(wait.buf) > MAX_HEAD:
            self._drop(conn, wait, _TOO_LARGE_ANSWER)
            return
        if not wait.registered:
            self.poller.register(
                conn.sock, selectors.EVENT_READ, partial(self._on_head_readable, conn)
            )
            wait.registered = True

    def _hand_over(self, conn: Any, wait: _HeadWait) -> None:
        self._forget(conn, wait)
        if conn.parser is None:
            conn.parser = get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(wait.buf))
        # The thread must not wait for readability: the bytes are in the parser.
        conn.data_ready = True
        super().enqueue_req(conn)

    def _forget(self, conn: Any, wait: _HeadWait) -> None:
        self.heads.pop(conn, None)
        if wait.registered:
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.poller.unregister(conn.sock)
            wait.registered = False

    def _drop(self, conn: Any, wait: _HeadWait, answer: bytes = b"") -> None:
        self._forget(conn, wait)
        if answer:
            with contextlib.suppress(OSError):  # best effort: the socket is non-blocking
                conn.sock.send(answer)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """gunicorn's sweep of connections waiting for data (every loop, at least once a
        second), and of those whose head is overdue."""
        super().murder_pending()
        now = time.monotonic()
        if not self.alive and self.stop_deadline is None:
            self.stop_deadline = now + STOP_LINGER
        stopped = self.stop_deadline is not None and self.stop_deadline <= now
        overdue = [
            (conn, wait) for conn, wait in self.heads.items() if stopped or wait.deadline <= now
        ]
        for conn, wait in overdue:
            self._drop(conn, wait, _TIMEOUT_ANSWER if wait.buf else b"")
