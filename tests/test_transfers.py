"""transfers.py: which bodies the server ends, and what their clients are told.

Unit tests drive the monitor with an injected clock (no waiting on real time); the app
tests feed a real socket to the views, as gunicorn does, and let the monitor cut it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask
from gunicorn.http import wsgi  # type: ignore[import-untyped]

from tests.conftest import OCTET, TUS
from tests.test_body import Conn
from uploadsvc import close_app, create_app
from uploadsvc.errors import BodyCut, BodyIncomplete
from uploadsvc.locking import Locker
from uploadsvc.locking.memory import MemoryLocker
from uploadsvc.parts import parts
from uploadsvc.transfers import ANSWERS, TransferMonitor

UPLOAD = "0" * 32


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Wanted:
    """A locker whose uploads another request always wants (a takeover is due)."""

    def release_requested(self, upload_id: str) -> bool:
        return True


def monitor(clock: FakeClock, *, read_timeout: float, stall_grace: float) -> TransferMonitor:
    locker: Locker = Wanted()  # type: ignore[assignment]
    return TransferMonitor(locker, clock=clock, read_timeout=read_timeout, stall_grace=stall_grace)


def only_transfer(mon: TransferMonitor) -> object:
    (transfer,) = mon._active
    return transfer


# ---------------------------------------------------------------- the stall clock (item 9)


def test_time_the_server_spends_on_a_block_is_not_the_clients_silence() -> None:
    """An 8 MiB S3 part upload or a stalled write between reads: no takeover, no timeout."""
    clock = FakeClock()
    mon = monitor(clock, read_timeout=5, stall_grace=1)
    reasons: list[str | None] = []

    def body() -> Iterator[bytes]:
        yield b"a" * 10
        yield b"b" * 10

    for _ in mon.track(UPLOAD, body(), lambda: None):
        clock.now += 30  # the consumer (store) works on the block for 30 s
        reasons.append(mon._reason_to_stop(only_transfer(mon))[1])  # type: ignore[arg-type]
    assert reasons == [None, None]


def test_time_waiting_on_the_client_is_silence() -> None:
    clock = FakeClock()
    mon = monitor(clock, read_timeout=5, stall_grace=1)
    seen: list[str] = []

    def body() -> Iterator[bytes]:
        yield b"a"
        transfer = only_transfer(mon)
        clock.now += 0.5  # the reader waits on the client...
        seen.append(mon._reason_to_stop(transfer)[0])  # type: ignore[arg-type]
        clock.now += 0.6  # ...past the stall grace, while another request waits
        seen.append(mon._reason_to_stop(transfer)[0])  # type: ignore[arg-type]
        clock.now += 4  # ...past the read timeout
        seen.append(mon._reason_to_stop(transfer)[0])  # type: ignore[arg-type]
        yield b"b"

    for _ in mon.track(UPLOAD, body(), lambda: None):
        clock.now += 100  # the server's own time never adds to the wait that follows
    assert seen == ["", "takeover", "read_timeout"]


# ---------------------------------------------------------------- reason -> answer


@pytest.mark.parametrize("kind", sorted(ANSWERS))
def test_every_reason_answers_a_retryable_503(kind: str) -> None:
    error = ANSWERS[kind].error()
    assert error.status == 503
    assert error.retry_after is not None and error.retry_after >= 0


def cut_by_watcher(mon: TransferMonitor) -> BaseException | None:
    """Track a body that stalls until its ``stop`` is called, then breaks off."""
    stopped = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"x" * 100
        assert stopped.wait(10), "the monitor never ended the body"
        raise BodyIncomplete("request body broke off: connection closed")

    try:
        for _ in mon.track(UPLOAD, body(), stopped.set):
            pass
    except BodyIncomplete as error:
        return error
    return None


def test_a_stop_for_shutdown_is_a_503_with_retry_after() -> None:
    mon = TransferMonitor(Wanted(), read_timeout=60, interval=0.01)  # type: ignore[arg-type]
    mon.stop_all_when(lambda: True)
    error = cut_by_watcher(mon)
    assert isinstance(error, BodyCut)
    assert (error.status, error.retry_after) == (503, 1)
    assert error.message == ANSWERS["shutdown"].message


def test_a_read_timeout_is_a_503_with_retry_after() -> None:
    mon = TransferMonitor(Wanted(), read_timeout=0.05, stall_grace=60, interval=0.01)  # type: ignore[arg-type]
    error = cut_by_watcher(mon)
    assert isinstance(error, BodyCut)
    assert error.message == ANSWERS["read_timeout"].message


def test_a_client_that_drops_its_body_stays_a_plain_400() -> None:
    mon = TransferMonitor(Wanted(), read_timeout=60, stall_grace=60)  # type: ignore[arg-type]

    def body() -> Iterator[bytes]:
        yield b"x"
        raise BodyIncomplete()

    with pytest.raises(BodyIncomplete) as caught:
        for _ in mon.track(UPLOAD, body(), lambda: None):
            pass
    assert type(caught.value) is BodyIncomplete and caught.value.status == 400


# ---------------------------------------------------------------- the watcher, on its clock
#
# The watcher thread looks every ``interval`` (real time, kept small) but judges by the
# monitor's clock alone: these tests move a fake clock and wait only for the watcher's
# next look, bounded by PATIENCE.

PATIENCE = 5.0


def watched_body(
    mon: TransferMonitor, clock: FakeClock, step: float, sent: bytes = b"x" * 100
) -> tuple[BaseException | None, list[bytes]]:
    """Track a body that sends ``sent``, then goes quiet while the clock moves ``step``
    seconds per real 10 ms, until the watcher stops it (or PATIENCE runs out)."""
    stopped = threading.Event()
    received: list[bytes] = []

    def body() -> Iterator[bytes]:
        yield sent
        deadline = time.monotonic() + PATIENCE
        while not stopped.wait(0.01):
            assert time.monotonic() < deadline, "the monitor never ended the body"
            clock.now += step
        raise BodyIncomplete("request body broke off: connection closed")

    try:
        for chunk in mon.track(UPLOAD, body(), stopped.set):
            received.append(chunk)
    except BodyIncomplete as error:
        return error, received
    return None, received


def test_a_stalled_body_is_taken_over_only_while_another_request_waits() -> None:
    clock = FakeClock()
    locker = MemoryLocker()
    mon = TransferMonitor(locker, clock=clock, read_timeout=60, stall_grace=1)
    reasons: list[str] = []
    waiter_in = threading.Event()

    def waiter() -> None:
        waiter_in.set()
        with locker.hold(UPLOAD, timeout=PATIENCE):
            pass

    def body() -> Iterator[bytes]:
        yield b"a"
        transfer = only_transfer(mon)
        clock.now += 30  # stalled well past the grace, but nobody wants the upload
        reasons.append(mon._reason_to_stop(transfer)[0])  # type: ignore[arg-type]
        thread = threading.Thread(target=waiter)
        thread.start()
        assert waiter_in.wait(PATIENCE)
        deadline = time.monotonic() + PATIENCE
        while not locker.release_requested(UPLOAD):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        reasons.append(mon._reason_to_stop(transfer)[0])  # type: ignore[arg-type]
        holding.close()  # this request lets go; the waiter gets the lock
        thread.join(PATIENCE)
        reasons.append(mon._reason_to_stop(transfer)[0])  # type: ignore[arg-type]
        yield b"b"

    holding = contextlib.ExitStack()
    holding.enter_context(locker.hold(UPLOAD, timeout=0))  # this request's lock
    assert b"".join(mon.track(UPLOAD, body(), lambda: None)) == b"ab"
    assert reasons == ["", "takeover", ""]


def test_the_watcher_takes_over_a_stalled_body_by_the_monitors_clock() -> None:
    clock = FakeClock()
    stops: list[str] = []
    locker: Locker = Wanted()  # type: ignore[assignment]
    mon = TransferMonitor(
        locker, clock=clock, read_timeout=60, stall_grace=1, interval=0.005, on_stop=stops.append
    )
    error, received = watched_body(mon, clock, step=0.25)
    assert isinstance(error, BodyCut)
    assert error.message == ANSWERS["takeover"].message
    assert received == [b"x" * 100]  # what came is kept (the service records it)
    assert stops == ["takeover"]


def test_real_time_alone_never_times_a_body_out() -> None:
    """The read timeout counts the monitor's clock: 50 ms of real silence against a
    20 ms timeout stops nothing while that clock stands still."""
    clock = FakeClock()
    mon = TransferMonitor(MemoryLocker(), clock=clock, read_timeout=0.02, interval=0.005)
    seen: list[bytes] = []

    def body() -> Iterator[bytes]:
        yield b"a"
        time.sleep(0.05)  # several looks by the watcher
        yield b"b"

    for chunk in mon.track(UPLOAD, body(), lambda: None):
        seen.append(chunk)
    assert seen == [b"a", b"b"]
    error, _ = watched_body(mon, clock, step=0.01)
    assert isinstance(error, BodyCut)
    assert error.message == ANSWERS["read_timeout"].message


def test_the_watcher_ends_a_trickle_below_the_minimum_rate() -> None:
    """Past the grace, a window with fewer than min_rate bytes/s ends the body: 503 with
    the too_slow answer's Retry-After."""
    clock = FakeClock()
    stops: list[str] = []
    mon = TransferMonitor(
        MemoryLocker(),
        clock=clock,
        read_timeout=1e9,
        interval=0.005,
        min_rate=1000,
        rate_window=10,
        rate_grace=5,
        on_stop=stops.append,
    )
    error, received = watched_body(mon, clock, step=0.5, sent=b"x" * 10)
    assert isinstance(error, BodyCut)
    assert (error.message, error.retry_after) == (ANSWERS["too_slow"].message, 5)
    assert received == [b"x" * 10]
    assert stops == ["too_slow"]


def test_shutdown_ends_even_a_body_that_keeps_sending() -> None:
    clock = FakeClock()
    stopped = threading.Event()
    mon = TransferMonitor(MemoryLocker(), clock=clock, read_timeout=60, interval=0.005)
    shutting_down = threading.Event()
    mon.stop_all_when(shutting_down.is_set)

    def body() -> Iterator[bytes]:
        deadline = time.monotonic() + PATIENCE
        while not stopped.is_set():
            assert time.monotonic() < deadline, "the monitor never ended the body"
            yield b"x"
            shutting_down.set()
            time.sleep(0.005)
        raise BodyIncomplete("request body broke off: connection closed")

    with pytest.raises(BodyCut) as caught:
        for _ in mon.track(UPLOAD, body(), stopped.set):
            pass
    assert caught.value.message == ANSWERS["shutdown"].message


# ---------------------------------------------------------------- through the views


@pytest.fixture
def make_app(data_dir: Path) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def make(**settings: str) -> Flask:
        app = create_app({"DATA_DIR": str(data_dir), "MAX_SIZE": "100000", **settings})
        app.testing = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        close_app(app)


@contextlib.contextmanager
def socket_body(sent: bytes, length: int) -> Iterator[tuple[socket.socket, dict[str, object]]]:
    """A PATCH body on a real socket, as gunicorn hands one over: ``sent`` arrives, then
    the client goes quiet with the connection open. Yields the client's end and the
    environ entries that make the views read (and the monitor stop) that socket."""
    server_end, client_end = socket.socketpair()
    with server_end, client_end, server_end.makefile("rb", buffering=0) as stream:
        client_end.sendall(sent)
        environ = {
            "wsgi.input": stream,
            "gunicorn.socket": server_end,
            "CONTENT_LENGTH": str(length),
        }
        yield client_end, environ


def patch_through_socket(app: Flask, length: int, sent: bytes) -> tuple[int, dict[str, str], str]:
    """A PATCH served as gunicorn serves it (its parser, environ and Response, so the
    connection middleware can end the body): ``sent`` arrives, then the client goes
    quiet with the connection open."""
    client = app.test_client()
    created = client.post("/files/", headers={**TUS, "Upload-Length": str(length)})
    url = created.headers["Location"]
    lines = [
        f"PATCH {urlsplit(url).path} HTTP/1.1",
        "Host: localhost",
        *(f"{name}: {value}" for name, value in TUS.items()),
        f"Content-Type: {OCTET}",
        "Upload-Offset: 0",
        f"Content-Length: {length}",
    ]
    server_end, client_end = socket.socketpair()
    with server_end, client_end:
        client_end.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + sent)
        conn = Conn(server_end)
        request = next(conn.parser)
        response, environ = wsgi.create(
            request, server_end, ("127.0.0.1", 1), ("127.0.0.1", 2), conn.cfg
        )
        # The early answer lingers (connection.LINGER, 2 s) for a client that stays.
        result = app(environ, response.start_response)
        try:
            for block in result:  # as gunicorn's worker writes the answer
                response.write(block)
            response.close()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status = int(str(response.status).split()[0])
        headers = {str(name): str(value) for name, value in response.headers}
    offset = client.head(url, headers=TUS).headers["Upload-Offset"]
    return status, headers, offset


def test_shutdown_cut_is_503_retry_after_and_the_offset(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    parts(app).transfers.stop_all_when(lambda: True)
    status, headers, offset = patch_through_socket(app, 5000, b"y" * 1234)
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert headers["Upload-Offset"] == "1234" == offset


def test_read_timeout_cut_is_503_retry_after_and_the_offset(make_app: Callable[..., Flask]) -> None:
    app = make_app(READ_TIMEOUT="0.3")
    status, headers, offset = patch_through_socket(app, 5000, b"z" * 777)
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert headers["Upload-Offset"] == "777" == offset


def test_a_client_closing_its_body_is_still_400(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    client = app.test_client()
    url = client.post("/files/", headers={**TUS, "Upload-Length": "5000"}).headers["Location"]
    headers = {**TUS, "Content-Type": OCTET, "Upload-Offset": "0", "Content-Length": "5000"}
    with socket_body(b"q" * 300, 5000) as (client_end, environ):
        client_end.shutdown(socket.SHUT_WR)  # the client is gone
        response = client.patch(url, headers=headers, environ_overrides=environ)
    assert response.status_code == 400
    assert "Retry-After" not in response.headers
    assert response.headers["Upload-Offset"] == "300"
