"""deploy/grafana-dashboard.json against a live gunicorn's /metrics (multiprocess mode,
2 workers): every series it queries exists on a fresh server."""

from __future__ import annotations

import pytest

from tests.test_dashboard import missing_series

from .conftest import LiveServer, http_request

pytestmark = pytest.mark.live


def test_every_series_the_dashboard_queries_is_in_a_live_metrics(live_server: LiveServer) -> None:
    response = http_request("GET", f"{live_server.origin}/metrics")
    assert response.status == 200
    assert missing_series(response.body.decode()) == []
