"""Prometheus metrics, correct across gunicorn workers.

Under gunicorn, gunicorn.conf.py points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before the workers start; each worker writes its counters there and a scrape
of any worker sums them all. Elsewhere (tests, one process) the app's own registry is
used. The number of uploads in each state is read from the registry at scrape time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from .models import FAILURE_REASONS, Event, EventState, Upload, UploadState

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Upload requests last from milliseconds (HEAD) to many minutes (a big PATCH).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
LOCK_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10)
# Label values come from a bounded set, or every made-up method would add a counter and
# a histogram (about 19 series) to every scrape, forever: anything else is "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS", "PUT"})
OTHER_METHOD = "other"
# Statuses: the registered ones (and tus's 460) as they are, others by class ("5xx").
KNOWN_STATUSES = frozenset(status.value for status in HTTPStatus) | {460}
# Made-up methods map to one label, but each would be a key of the children's cache.
_MAX_CACHED_CHILDREN = 256


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


def status_label(status: int) -> str:
    if status in KNOWN_STATUSES:
        return str(status)
    return f"{status // 100}xx" if 100 <= status <= 599 else OTHER_METHOD


class UploadStates(Collector):
    """``uploadsvc_uploads{state=...}``: rows per state, counted when scraped, in a
    read-only transaction (``db.make_readers``): a scrape never waits for a writer."""

    def __init__(self, readers: sessionmaker[Session]) -> None:
        self.sessions = readers

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "uploadsvc_uploads", "Uploads in the registry, by state.", labels=["state"]
        )
        with self.sessions() as session:
            counts = dict(
                session.execute(select(Upload.state, func.count()).group_by(Upload.state)).all()
            )
            # The webhook backlog (outbox.py), from the same read.
            events = dict(
                session.execute(select(Event.state, func.count()).group_by(Event.state)).all()
            )
            oldest = session.scalar(
                select(func.min(Event.created_at)).where(Event.state == EventState.PENDING)
            )
        for state in UploadState:
            gauge.add_metric([state.value], counts.get(state, 0))
        yield gauge
        backlog = GaugeMetricFamily(
            "uploadsvc_webhook_events",
            "Webhook events in the outbox, by state (pending: owed to the receiver).",
            labels=["state"],
        )
        for event_state in EventState:
            backlog.add_metric([event_state.value], events.get(event_state, 0))
        yield backlog
        age = 0.0 if oldest is None else (datetime.now(UTC) - oldest).total_seconds()
        yield GaugeMetricFamily(
            "uploadsvc_webhook_oldest_pending_seconds",
            "Age of the oldest webhook event not delivered yet (0: none pending).",
            value=max(0.0, age),
        )


class Metrics:
    def __init__(self, readers: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.states = UploadStates(readers)
        self.registry.register(self.states)
        registry = self.registry
        self.uploads = Counter(
            "uploadsvc_upload_events",
            "Upload lifecycle events (created, finished, terminated).",
            ["event"],
            registry=registry,
        )
        self.bytes_received = Counter(
            "uploadsvc_received_bytes", "Body bytes received by PATCH and POST.", registry=registry
        )
        self.requests = Counter(
            "uploadsvc_requests",
            "HTTP requests by method and status.",
            ["method", "status"],
            registry=registry,
        )
        self.durations = Histogram(
            "uploadsvc_request_duration_seconds",
            "HTTP request durations by method.",
            ["method"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.lock_waits = Histogram(
            "uploadsvc_lock_wait_seconds",
            "Waits for a busy upload lock, by outcome.",
            ["outcome"],
            buckets=LOCK_WAIT_BUCKETS,
            registry=registry,
        )
        self.stopped_bodies = Counter(
            "uploadsvc_stopped_bodies",
            "PATCH bodies ended early: takeover, read_timeout, shutdown or too_slow.",
            ["reason"],
            registry=registry,
        )
        # Labelled children by label values: ``labels()`` takes a lock and builds a key
        # per call, on every request. The label sets are small and bounded (above).
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}

        self.failures = Counter(
            "uploadsvc_upload_failures",
            "Upload failures by reason (checksum, disk_full, storage, quota, type, digest).",
            ["reason"],
            registry=registry,
        )
        # Every reason from the start: a dashboard's query finds the series at 0.
        for reason in FAILURE_REASONS:
            if reason != "expired":  # read from the registry: uploadsvc_uploads{state}
                self.failures.labels(reason)
        for event in ("create", "finish", "terminate"):
            self.uploads.labels(event)
        for outcome in ("acquired", "timed_out"):
            self.lock_waits.labels(outcome)
        # Bodies being read now, summed over the live workers (set by progress.py's
        # reporter about once a second, so the request path pays nothing for it).
        self.bodies_in_flight = Gauge(
            "uploadsvc_bodies_in_flight",
            "PATCH and POST bodies being received now.",
            multiprocess_mode="livesum",
            registry=registry,
        )

    def upload_failed(self, reason: str) -> None:
        self.failures.labels(reason).inc()

    def upload_event(self, event: str, upload: object) -> None:
        self.uploads.labels(event.removeprefix("post-")).inc()

    def lock_waited(self, seconds: float, acquired: bool) -> None:
        self.lock_waits.labels("acquired" if acquired else "timed_out").observe(seconds)

    def body_stopped(self, reason: str) -> None:
        self.stopped_bodies.labels(reason).inc()

    def request_done(self, method: str, status: int, seconds: float) -> None:
        children = self._request_children.get((method, status))
        if children is None:
            label = method_label(method)
            children = (
                self.requests.labels(label, status_label(status)),
                self.durations.labels(label),
            )
            if len(self._request_children) < _MAX_CACHED_CHILDREN:
                self._request_children[method, status] = children
        counter, histogram = children
        counter.inc()
        histogram.observe(seconds)

    def exposition(self) -> bytes:
        if not os.environ.get(MULTIPROC_ENV):
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(self.states)
        return generate_latest(registry)
