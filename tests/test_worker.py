"""Pins the gunicorn gthread layout uploadsvc.worker relies on (as tests/test_body.py does
for body.py): if a gunicorn upgrade changes it, this fails here, instead of slow request
heads quietly holding threads again (the worker falls back to the stock behaviour and
logs why). The behaviour itself is tested live: tests/live/test_slow_clients.py."""

from __future__ import annotations

import os
import resource
import runpy
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config  # type: ignore[import-untyped]
from gunicorn.workers import gthread  # type: ignore[import-untyped]

from uploadsvc import worker

ROOT = Path(__file__).resolve().parents[1]


def _calls(function: object, name: str) -> bool:
    code = getattr(function, "__code__", None)
    return code is not None and name in code.co_names


def test_the_layout_is_the_one_the_worker_knows() -> None:
    assert worker.layout_problem() is None


def test_every_way_to_a_thread_goes_through_enqueue_req() -> None:
    # A new connection, a kept-alive one that became readable, one with its next
    # request read ahead: the worker holds back heads at this one choke point.
    worker_class = gthread.ThreadWorker
    for method in ("accept", "on_client_socket_readable", "finish_request"):
        assert _calls(getattr(worker_class, method), "enqueue_req"), method
    assert not _calls(worker_class.accept, "submit")
    assert _calls(worker_class.enqueue_req, "submit")


def test_overdue_heads_are_swept_by_the_main_loop() -> None:
    assert _calls(gthread.ThreadWorker.run, "murder_pending")


def test_a_thread_skips_its_wait_when_the_head_is_in() -> None:
    assert _calls(gthread.ThreadWorker.handle, "data_ready")
    assert _calls(gthread.TConn.init, "parser")


def test_a_missing_piece_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(gthread.ThreadWorker, "murder_pending")
    assert worker.layout_problem() == "ThreadWorker.murder_pending is gone"


def test_gunicorn_conf_ships_the_worker() -> None:
    text = (ROOT / "gunicorn.conf.py").read_text()
    assert 'worker_class = "uploadsvc.worker.HeaderDeadlineWorker"' in text


@pytest.fixture
def open_file_limit() -> Iterator[tuple[int, int]]:
    """The open-file limits, restored after the test (gunicorn.conf.py raises them)."""
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield limits
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def _conf(monkeypatch: pytest.MonkeyPatch, threads: str | None) -> dict[str, Any]:
    if threads is None:
        monkeypatch.delenv("UPLOADSVC_THREADS", raising=False)
    else:
        monkeypatch.setenv("UPLOADSVC_THREADS", threads)
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


@pytest.mark.parametrize("threads", [None, "1", "4096"])
def test_every_thread_count_keeps_keepalive_on(
    monkeypatch: pytest.MonkeyPatch, open_file_limit: tuple[int, int], threads: str | None
) -> None:
    # gthread keeps a connection alive only while fewer than worker_connections - threads
    # are idle: gunicorn's default 1,000 connections under 1,024 threads turns it off.
    conf = _conf(monkeypatch, threads)
    assert conf["worker_connections"] - conf["threads"] >= 1000
    assert conf["keepalive"] > 0


def test_the_default_holds_a_thousand_uploads_per_worker(
    monkeypatch: pytest.MonkeyPatch, open_file_limit: tuple[int, int]
) -> None:
    # README "Capacity": 1,000 uploads in flight land unevenly on 2 workers; each worker
    # has a thread for every one of them.
    conf = _conf(monkeypatch, None)
    assert conf["threads"] >= 1000


def test_the_open_file_limit_is_raised_for_the_connections(
    monkeypatch: pytest.MonkeyPatch, open_file_limit: tuple[int, int]
) -> None:
    _soft, hard = open_file_limit
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"hard open-file limit {hard}: nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    conf = _conf(monkeypatch, None)
    # A socket, a data file and a lock file per upload in flight, and the idle connections.
    want = 3 * conf["threads"] + conf["KEEPALIVE_CONNECTIONS"]
    raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert raised == resource.RLIM_INFINITY or raised >= min(want, hard)


# --------------------------------------------------------------------------- next head inline


class _Conn:
    """What the worker touches of gunicorn's TConn, around one end of a socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        from gunicorn.http import get_parser  # type: ignore[import-untyped]

        self.sock = sock
        self.client = ("127.0.0.1", 40000)
        self.is_http2 = False
        self.data_ready = False
        self.parser = get_parser(Config(), sock, self.client)


@pytest.fixture
def inline() -> Iterator[tuple[worker.HeaderDeadlineWorker, _Conn, socket.socket]]:
    """A worker (only what _next_head_inline reads) and a connection to its client."""
    ours, theirs = socket.socketpair()
    subject = worker.HeaderDeadlineWorker.__new__(worker.HeaderDeadlineWorker)
    subject.cfg = Config()
    subject.alive = True
    subject.reads_heads = True
    subject.line_limit = 4094
    with ours, theirs:
        yield subject, _Conn(ours), theirs


REQUEST = b"HEAD /files/abc HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n"


def _buffered(conn: _Conn) -> bytes:
    return bytes(conn.parser.unreader.buf.getvalue())


def test_a_next_head_that_arrives_in_time_is_served_by_the_same_thread(
    inline: tuple[worker.HeaderDeadlineWorker, _Conn, socket.socket],
) -> None:
    subject, conn, client = inline
    threading.Timer(worker.INLINE_WAIT / 5, client.sendall, (REQUEST,)).start()
    assert subject._next_head_inline(conn)
    assert conn.data_ready
    request = next(conn.parser)
    assert (request.method, request.path) == ("HEAD", "/files/abc")


def test_a_head_read_ahead_is_served_without_reading(
    inline: tuple[worker.HeaderDeadlineWorker, _Conn, socket.socket],
) -> None:
    subject, conn, _client = inline
    conn.parser.unreader.unread(REQUEST + REQUEST[:7])  # pipelined, and the next begun
    assert subject._next_head_inline(conn)
    assert _buffered(conn) == REQUEST + REQUEST[:7]


def test_half_a_head_goes_back_to_the_main_loop_with_its_bytes(
    inline: tuple[worker.HeaderDeadlineWorker, _Conn, socket.socket],
) -> None:
    # finish_request finds the bytes in the parser and sends the connection through
    # enqueue_req, where the header deadline applies (tests/live/test_slow_clients.py).
    subject, conn, client = inline
    client.sendall(REQUEST[:20])
    began = time.monotonic()
    assert not subject._next_head_inline(conn)
    assert time.monotonic() - began < 1
    assert _buffered(conn) == REQUEST[:20]
    assert not conn.data_ready


@pytest.mark.parametrize("how", ["silent", "closed"])
def test_no_next_head_gives_the_connection_back(
    inline: tuple[worker.HeaderDeadlineWorker, _Conn, socket.socket], how: str
) -> None:
    subject, conn, client = inline
    if how == "closed":
        client.shutdown(socket.SHUT_WR)
    assert not subject._next_head_inline(conn)
    assert _buffered(conn) == b""


def test_descriptors_past_selects_limit_are_read(
    inline: tuple[worker.HeaderDeadlineWorker, _Conn, socket.socket],
    open_file_limit: tuple[int, int],
) -> None:
    """A worker holding 1,000 uploads has descriptors above 1,024, where select() fails."""
    subject, conn, client = inline
    if open_file_limit[1] != resource.RLIM_INFINITY and open_file_limit[1] < 2100:
        pytest.skip("the hard open-file limit is too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (2100, open_file_limit[1]))
    high = os.dup2(conn.sock.fileno(), 2000)
    with socket.socket(fileno=high) as sock:
        conn.sock = sock
        client.sendall(REQUEST)
        assert subject._next_head_inline(conn)


def test_a_stopping_worker_reads_no_next_head(
    inline: tuple[worker.HeaderDeadlineWorker, _Conn, socket.socket],
) -> None:
    subject, conn, client = inline
    subject.alive = False
    client.sendall(REQUEST)
    assert not subject._next_head_inline(conn)
    assert _buffered(conn) == b""  # still on the socket: the main loop answers it "close"
