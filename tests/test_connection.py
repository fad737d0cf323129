"""A body is ended early only while its request is served, never after (issue 13, item 6).

nginx reuses a kept-alive upstream connection as soon as a response has said keep-alive;
a late ``shutdown(SHUT_RD)`` on it ends the *next* request instead ("upstream prematurely
closed connection"). These pin the two guards: the transfer monitor never stops a body
whose reading has ended, and a connection never shuts once its response has begun.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any

import gunicorn.http.body as gbody  # type: ignore[import-untyped]
import gunicorn.http.unreader as gunreader  # type: ignore[import-untyped]
import pytest

from uploadsvc import body
from uploadsvc.connection import ENVIRON_KEY, LINGER, RequestConnection, _linger, send_interim
from uploadsvc.transfers import TransferMonitor

Pair = tuple[socket.socket, socket.socket]
UPLOAD = "0123456789abcdef0123456789abcdef"


class RequestEndsMeanwhile:
    """A locker whose ``release_requested`` (asked by the watcher after it listed the
    active bodies) first lets the request finish its body, then says "yes, stop it":
    the watcher's snapshot is stale by the time it acts, deterministically."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.body_ended = threading.Event()

    def hold(self, upload_id: str, *, timeout: float) -> AbstractContextManager[None]:
        return nullcontext()

    def still_held(self, upload_id: str) -> bool:
        return True

    def release_requested(self, upload_id: str) -> bool:
        self.asked.set()
        assert self.body_ended.wait(10)
        return True

    def forget(self, upload_id: str) -> None:
        pass

    def scan(self) -> list[tuple[str, datetime]]:
        return []


def test_the_watcher_never_stops_a_body_whose_reading_ended_after_it_looked() -> None:
    locker = RequestEndsMeanwhile()
    stops: list[str] = []
    monitor = TransferMonitor(
        locker, read_timeout=3600, stall_grace=0, interval=0.01, on_stop=stops.append
    )
    stopped = threading.Event()
    tracked = monitor.track(UPLOAD, iter([b"abc"]), stopped.set)
    assert next(tracked) == b"abc"  # the body is being read: the watcher lists it
    assert locker.asked.wait(10)
    tracked.close()  # the body's reading ends (its request answers, the connection moves on)
    locker.body_ended.set()
    # The watcher now acts on its stale list: it must leave the ended body alone.
    assert not stopped.wait(0.5)
    assert stops == []


def test_the_watcher_still_stops_a_stalled_body() -> None:
    """The guard's other side: a body still being read is stopped as before."""
    locker = RequestEndsMeanwhile()
    locker.body_ended.set()
    stops: list[str] = []
    monitor = TransferMonitor(
        locker, read_timeout=3600, stall_grace=0, interval=0.01, on_stop=stops.append
    )
    stopped = threading.Event()
    tracked = monitor.track(UPLOAD, iter([b"abc", b"def"]), stopped.set)
    assert next(tracked) == b"abc"
    assert stopped.wait(10)
    tracked.close()
    assert stops == ["takeover"]


def gunicorn_environ(sock: socket.socket, body_length: int) -> dict[str, object]:
    """What gunicorn puts in environ for a Content-Length body not read yet."""
    reader = gbody.LengthReader(gunreader.SocketUnreader(sock), body_length)
    return {"gunicorn.socket": sock, "wsgi.input": gbody.Body(reader)}


@pytest.fixture
def pair() -> Iterator[Pair]:
    server, client = socket.socketpair()
    with server, client:
        server.settimeout(5)
        yield server, client


def test_a_stop_after_the_response_began_leaves_the_connection_alone(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    connection = RequestConnection(server, gunicorn_environ(server, 10))
    connection._respond()  # the response has begun; the next request may follow
    connection.end_body_early()
    client.sendall(b"HEAD /files/x HTTP/1.1\r\n")
    assert server.recv(100) == b"HEAD /files/x HTTP/1.1\r\n"
    assert not connection.body_ended_early


def test_a_stop_of_a_body_read_to_its_end_leaves_the_connection_alone(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    connection = RequestConnection(server, gunicorn_environ(server, 0))
    assert not body.unread(connection.environ)
    connection.end_body_early()
    client.sendall(b"next")
    assert server.recv(100) == b"next"
    assert not connection.body_ended_early


def test_a_stop_while_the_body_is_read_ends_it(pair: Pair) -> None:
    server, _client = pair
    connection = RequestConnection(server, gunicorn_environ(server, 10))
    assert body.unread(connection.environ)
    connection.end_body_early()
    assert server.recv(100) == b""  # the blocked read sees end-of-file at once
    assert connection._respond()  # and the response will announce the close


def test_the_linger_after_a_stop_ends_when_the_peer_closes() -> None:
    """After SHUT_RD every read says end-of-file at once; the linger must still tell a
    peer that closed from one that is quiet, and not sit out its whole bound."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with server, client:
            server.shutdown(socket.SHUT_RD)
            client.sendall(b"x" * 100_000)  # what the peer still sends is read and dropped
            client.close()
            started = time.monotonic()
            _linger(server, read_side_shut=True)
            assert time.monotonic() - started < LINGER / 2


def test_interim_responses_go_out_before_the_final_one_only() -> None:
    """send_interim (the 104 of Resumable Uploads for HTTP): written whole to the
    request's socket while the final response hasn't begun; refused after, and outside
    gunicorn (no RequestConnection)."""
    ours, peer = socket.socketpair()
    with ours, peer:
        environ: dict[str, Any] = {}
        conn = RequestConnection(ours, environ)
        environ[ENVIRON_KEY] = conn
        assert send_interim(environ, b"HTTP/1.1 104 Upload Resumption Supported\r\n\r\n")
        assert peer.recv(100) == b"HTTP/1.1 104 Upload Resumption Supported\r\n\r\n"
        conn._respond()
        assert not send_interim(environ, b"HTTP/1.1 104 x\r\n\r\n")
    assert not send_interim({}, b"HTTP/1.1 104 x\r\n\r\n")
