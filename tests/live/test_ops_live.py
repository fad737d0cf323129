"""Metrics summed across gunicorn workers, health, and request logs, live."""

from __future__ import annotations

import re

from tests.live.conftest import (
    LiveServer,
    build_request,
    exchange,
    head_upload,
    http_request,
    tus_headers,
)


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


FORGING_TARGETS = [
    "/files/abc%0aINFO%20uploadsvc.requests%20[-]%20FORGED",
    "/files/abc%0d%0aINFO%20FORGED",
    "/files/abc%1b[2K%1b[1GFORGED",
    "/files/abc%c2%85FORGED%e2%80%a8FORGED",
    "/files/0123456789abcdef0123456789abcdef?x=%0aFORGED",
    "/metrics%0aFORGED",
    "/healthz/%0d%0aFORGED",
]


def test_client_text_never_forges_a_log_line(live_server: LiveServer) -> None:
    """Paths (decoded), queries and header values with line breaks and terminal escapes
    come out on the one line of their request."""
    for number, target in enumerate(FORGING_TARGETS):
        for method in ("GET", "HEAD", "PATCH"):
            request = build_request(
                method,
                target,
                [
                    ("Tus-Resumable", "1.0.0"),
                    ("X-Request-ID", f"forge-{number}-{method}"),
                    ("Upload-Checksum", b"md5\xc2\x85\xe2\x80\xaeFORGED AAAA"),
                    ("Content-Length", "0"),
                    ("Connection", "close"),
                ],
                port=live_server.port,
            )
            response = exchange(live_server.port, request)
            assert response.status is not None and 400 <= response.status < 500, target
    lines = live_server.log_text().splitlines()
    forged = [line for line in lines if "FORGED" in line]
    assert len(forged) >= len(FORGING_TARGETS) * 3
    for line in forged:
        assert re.match(r"INFO uploadsvc\.\w+ \[forge-\d+-[A-Z]+\] ", line), line
        assert line.isprintable(), line
