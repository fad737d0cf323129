"""deploy/grafana-dashboard.json queries only what /metrics exposes: every metric a
panel names, with the label values its matchers ask for, is there (at 0 on a fresh
server: the series exist before the first event; request series after the first
request). tests/live/test_dashboard_live.py checks the same against gunicorn's
multiprocess /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"
# A metric name and, when it has one, its {label="value",...} matcher.
_SELECTOR = re.compile(r"\b(uploadsvc_[a-z_]+)(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-z_]+)="([^"]*)"')


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def selectors() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    found = set()
    for expr in queries():
        for name, matcher in _SELECTOR.findall(expr):
            found.add((name, tuple(sorted(_MATCHER.findall(matcher or "")))))
    return found


def missing_series(exposition: str) -> list[str]:
    """The dashboard's selectors no sample of ``exposition`` matches."""
    samples = [
        (sample.name, sample.labels)
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    ]
    missing = []
    for name, wanted in sorted(selectors()):
        if not any(
            sample == name and all(labels.get(k) == v for k, v in wanted)
            for sample, labels in samples
        ):
            missing.append(f"{name}{dict(wanted) or ''}")
    return missing


def test_the_dashboard_asks_for_what_the_issue_names() -> None:
    names = {name for name, _ in selectors()}
    assert {
        "uploadsvc_bodies_in_flight",
        "uploadsvc_received_bytes_total",
        "uploadsvc_upload_events_total",
        "uploadsvc_upload_failures_total",
        "uploadsvc_request_duration_seconds_bucket",
        "uploadsvc_lock_wait_seconds_bucket",
        "uploadsvc_stopped_bodies_total",
        "uploadsvc_webhook_events",
    } <= names
    dashboard = json.loads(DASHBOARD.read_text())
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])


def test_every_series_the_dashboard_queries_exists(client: FlaskClient) -> None:
    # Request series appear with the first request (their labels are its method and status).
    client.options("/files/")
    exposition = client.get("/metrics").get_data(as_text=True)
    assert missing_series(exposition) == []
