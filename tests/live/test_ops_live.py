"""Metrics summed across gunicorn workers, health, and request logs, live."""

from __future__ import annotations

import re

from tests.live.conftest import LiveServer, head_upload, http_request, tus_headers


def test_metrics_add_up_across_workers(live_server: LiveServer) -> None:
    url = live_server.create_upload(10)
    for _ in range(40):  # each on a fresh connection: both workers serve some
        assert head_upload(url).status == 200
    counts = set()
    for _ in range(6):  # whichever worker answers the scrape, the sum is the same
        text = http_request("GET", f"{live_server.origin}/metrics").body.decode()
        match = re.search(
            r'^uploadsvc_requests_total\{method="HEAD",status="200"\} (\S+)$', text, re.MULTILINE
        )
        assert match, text[:2000]
        counts.add(float(match.group(1)))
    assert counts == {40.0}
    assert re.search(r'^uploadsvc_uploads\{state="active"\} 1\.0$', text, re.MULTILINE)


def test_health_and_request_ids(live_server: LiveServer) -> None:
    response = http_request("GET", f"{live_server.origin}/healthz")
    assert (response.status, response.body) == (200, b"ok\n")
    response = http_request(
        "HEAD",
        f"{live_server.endpoint}0123456789abcdef0123456789abcdef",
        tus_headers(X_Request_ID="trace-42"),
    )
    assert response.status == 404
    assert response.header("X-Request-ID") == "trace-42"
    log = live_server.log_text()
    assert re.search(r"INFO uploadsvc\.requests \[trace-42\] HEAD /files/\S+ 404", log), log[-2000:]
    assert "ERROR" not in log
