"""Pins the gunicorn gthread layout uploadsvc.worker relies on (as tests/test_body.py does
for body.py): if a gunicorn upgrade changes it, this fails here, instead of slow request
heads quietly holding threads again (the worker falls back to the stock behaviour and
logs why). The behaviour itself is tested live: tests/live/test_slow_clients.py."""

from __future__ import annotations

from pathlib import Path

import pytest
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
