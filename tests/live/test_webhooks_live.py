"""Webhooks on a real gunicorn (two workers, each running a dispatcher) posting to the
receiver on 127.0.0.1: nothing lost to a SIGKILL, nothing delivered twice by the two
workers, and a receiver that holds its requests holds up no upload."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Receiver, deliveries
from tests.pg import PostgresServer
from tests.test_webhooks import SECRET, verify
from testsupport import server as harness
from uploadsvc import close_app, create_app

from .conftest import (
    VENV_BIN,
    LiveServer,
    head_upload,
    patch_upload,
    run_flask,
    start_server,
    upload_id,
)

pytestmark = pytest.mark.live

WAIT = 90.0  # seconds: a claim left by a killed worker runs out after 60 (delivery.LEASE)


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def complete_upload(server: LiveServer, size: int = 3) -> str:
    url = server.create_upload(size)
    response = patch_upload(url, 0, b"x" * size)
    assert response.status == 204, response
    return upload_id(url)


def test_a_sigkill_loses_no_event(server_factory: Callable[..., LiveServer], receiver: str) -> None:
    """The receiver fails while the server lives; the whole server (master and
    workers) is SIGKILLed right after an upload finished, with its events not yet
    delivered; the restarted server delivers them, each once, in order."""
    Receiver.failures_left = 10**6
    server = server_factory(UPLOADSVC_WEBHOOK_URL=receiver, UPLOADSVC_WEBHOOK_SECRET=SECRET)
    ident = complete_upload(server)
    assert wait_for(lambda: len(Receiver.requests) >= 1, 20)  # a dispatcher is trying
    harness.kill_group(server.proc)
    server.proc.wait(timeout=30)
    assert Receiver.received == []
    Receiver.failures_left = 0
    restarted = start_server(server.base_dir, server.env)
    try:
        assert wait_for(lambda: deliveries("post-finish", ident) == 1)
        time.sleep(1.0)  # room for a duplicate to show
        assert [item["event"] for item in Receiver.received] == ["post-create", "post-finish"]
        (finished,) = [r for r in Receiver.requests if r.status == 204][1:]
        assert verify(SECRET.encode(), finished.headers, finished.body)
    finally:
        restarted.stop()
    assert "Traceback" not in restarted.log_text()


def workers_of(server: LiveServer) -> list[int]:
    """The gunicorn master's children: its workers."""
    pid = server.proc.pid
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_sigkilled_workers_are_replaced_and_their_events_delivered(
    server_factory: Callable[..., LiveServer], receiver: str
) -> None:
    """Both workers SIGKILLed right after an upload finished (the master lives and
    forks new ones): the new workers' dispatchers deliver what the dead left."""
    Receiver.failures_left = 10**6
    server = server_factory(UPLOADSVC_WEBHOOK_URL=receiver, UPLOADSVC_WEBHOOK_SECRET=SECRET)
    before = workers_of(server)
    assert len(before) == 2
    ident = complete_upload(server)
    assert wait_for(lambda: len(Receiver.requests) >= 1, 20)
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    Receiver.failures_left = 0
    assert wait_for(lambda: deliveries("post-finish", ident) == 1)
    assert not set(before) & set(workers_of(server))  # delivered by their successors
    time.sleep(1.0)
    assert [item["event"] for item in Receiver.received] == ["post-create", "post-finish"]


def test_two_workers_deliver_each_event_once(
    server_factory: Callable[..., LiveServer], receiver: str
) -> None:
    Receiver.delay = 0.02  # long enough for both workers' dispatchers to want each event
    server = server_factory(UPLOADSVC_WEBHOOK_URL=receiver, UPLOADSVC_WEBHOOK_SECRET=SECRET)
    idents: list[str] = []
    guard = threading.Lock()

    def uploads(count: int) -> None:
        for _ in range(count):
            ident = complete_upload(server)
            with guard:
                idents.append(ident)

    threads = [threading.Thread(target=uploads, args=(5,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(idents) == 20
    assert wait_for(lambda: len(Receiver.received) >= 40)
    time.sleep(1.5)  # room for a duplicate to show
    ids = Counter(request.headers["x-uploadsvc-event-id"] for request in Receiver.requests)
    assert len(ids) == 40 and set(ids.values()) == {1}, ids.most_common(3)
    assert all(verify(SECRET.encode(), r.headers, r.body) for r in Receiver.requests)
    for ident in idents:
        mine = [item["event"] for item in Receiver.received if item["upload"]["id"] == ident]
        assert mine == ["post-create", "post-finish"]
    listed = server_cli(server, "webhooks", "list", "--json")
    assert {event["state"] for event in json.loads(listed)} == {"delivered"}


def test_a_receiver_holding_its_requests_holds_up_no_upload(
    server_factory: Callable[..., LiveServer], receiver: str
) -> None:
    gate = threading.Event()
    Receiver.gate = gate
    server = server_factory(UPLOADSVC_WEBHOOK_URL=receiver)
    try:
        complete_upload(server)
        assert wait_for(lambda: Receiver.waiting >= 1, 20)
        for _ in range(6):
            complete_upload(server)  # each answered while the receiver holds its request
        assert head_upload(server.create_upload(1)).header("Upload-Offset") == "0"
        assert Receiver.received == []  # still held: every upload above went on without it
    finally:
        gate.set()
    assert wait_for(lambda: len(Receiver.received) == 15)


def server_cli(server: LiveServer, *args: str) -> str:
    """``flask --app wsgi ARGS`` against the live server's registry: what it printed."""
    result = run_flask(server, *args, timeout=60)
    result.check_returncode()
    return result.stdout


def test_flask_webhooks_deliver_runs_until_sigterm(receiver: str, tmp_path: Path) -> None:
    """For operators without gunicorn: events recorded by an app that runs no
    dispatcher are delivered by ``flask webhooks deliver``, which stops on SIGTERM."""
    data_dir = tmp_path / "data"
    settings = {"DATA_DIR": str(data_dir), "WEBHOOK_URL": receiver}
    app = create_app(settings)
    try:
        for _ in range(3):
            response = app.test_client().post(
                "/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "0"}
            )
            assert response.status_code == 201
    finally:
        close_app(app)
    assert Receiver.requests == []
    env = harness.clean_env(**{f"UPLOADSVC_{key}": value for key, value in settings.items()})
    log_path = tmp_path / "deliver.log"
    proc = harness.spawn(
        [str(VENV_BIN / "flask"), "--app", "wsgi", "webhooks", "deliver"],
        env=env,
        log_path=log_path,
    )
    try:
        assert wait_for(lambda: len(Receiver.received) == 6, 30)
    finally:
        harness.terminate(proc)
        harness.wait_or_kill(proc, 20)
    assert proc.returncode == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text()


def test_two_hosts_on_postgresql_deliver_each_event_once(
    server_factory: Callable[..., LiveServer], receiver: str, postgres: PostgresServer
) -> None:
    """Two hosts (two gunicorns of two workers: four dispatchers) sharing one
    PostgreSQL registry: uploads on both, every event delivered exactly once."""
    Receiver.delay = 0.02
    with postgres.database() as database_url:
        env = {
            "UPLOADSVC_WEBHOOK_URL": receiver,
            "UPLOADSVC_WEBHOOK_SECRET": SECRET,
            "UPLOADSVC_DATABASE_URL": database_url,
        }
        hosts = [server_factory(**env), server_factory(**env)]
        idents: list[str] = []
        guard = threading.Lock()

        def uploads(host: LiveServer) -> None:
            for _ in range(8):
                ident = complete_upload(host)
                with guard:
                    idents.append(ident)

        threads = [threading.Thread(target=uploads, args=(host,)) for host in hosts * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(idents) == 32
        assert wait_for(lambda: len(Receiver.received) >= 64)
        time.sleep(1.5)  # room for a duplicate to show
        ids = Counter(request.headers["x-uploadsvc-event-id"] for request in Receiver.requests)
        assert len(ids) == 64 and set(ids.values()) == {1}, ids.most_common(3)
        for host in hosts:
            host.stop()  # before the database goes
