"""/metrics, /healthz and request ids through the test client."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.conftest import TUS
from tests.test_views import create, patch
from uploadsvc import metrics, ops


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name} not in metrics"
    return float(match.group(1))


def test_metrics_count_uploads_bytes_and_requests(client: FlaskClient) -> None:
    url = create(client, 5)
    patch(client, url, b"abc")
    patch(client, url, b"de", 3)
    other = create(client, 1)
    client.delete(other, headers=TUS)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.text
    assert metric(text, 'uploadsvc_upload_events_total{event="create"}') == 2
    assert metric(text, 'uploadsvc_upload_events_total{event="finish"}') == 1
    assert metric(text, 'uploadsvc_upload_events_total{event="terminate"}') == 1
    assert metric(text, "uploadsvc_received_bytes_total") == 5
    assert metric(text, 'uploadsvc_requests_total{method="PATCH",status="204"}') == 2
    assert metric(text, 'uploadsvc_uploads{state="completed"}') == 1
    assert metric(text, 'uploadsvc_uploads{state="terminated"}') == 1
    assert 'uploadsvc_request_duration_seconds_bucket{le="0.005",method="POST"}' in text


def test_healthz(client: FlaskClient, data_dir: Path) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.text) == (200, "ok\n")
    # Tests run as root, which ignores permissions: take the directory away instead.
    (data_dir / "files").rename(data_dir / "files-moved")
    try:
        response = client.get("/healthz")
        assert response.status_code == 503
        assert response.text.startswith("data directory:")
    finally:
        (data_dir / "files-moved").rename(data_dir / "files")


@pytest.mark.parametrize(
    ("given", "echoed"),
    [("abc-123", True), ("x" * 129, False), ("bad id\u00e9", False), ("", False)],
)
def test_request_id(client: FlaskClient, given: str, echoed: bool) -> None:
    headers = {"X-Request-ID": given} if given.isascii() else {}
    response = client.options("/files/", headers=headers)
    request_id = response.headers["X-Request-ID"]
    assert (request_id == given) is echoed
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", request_id)


def test_json_log_lines_carry_the_request_id() -> None:
    record = logging.LogRecord(
        "uploadsvc.requests", logging.INFO, __file__, 1, "GET / 200", (), None
    )
    record.request_id = "r-1"
    record.fields = {"status": 200}
    line = json.loads(ops.JsonFormatter().format(record))
    assert line["request_id"] == "r-1"
    assert line["status"] == 200
    assert line["message"] == "GET / 200"


CLIENT_TEXTS = [
    pytest.param("/files/x\nINFO uploadsvc.requests [-] GET /admin 200", id="lf"),
    pytest.param("/files/x\rINFO forged", id="cr"),
    pytest.param("/files/x\r\nINFO forged", id="crlf"),
    pytest.param("/files/x\x1b[2K\x1b[1GINFO forged", id="ansi-escape"),
    pytest.param("/files/x\x85INFO forged", id="nel"),
    pytest.param("/files/x\u2028INFO forged\u2029", id="unicode-separators"),
    pytest.param("/files/x\u202eforged", id="bidi-override"),
    pytest.param("/files/x\x00\x0b\x0c\x1c\x1d\x1eforged", id="other-breaks"),
    pytest.param("/files/x\\nforged", id="literal-backslash-n"),
]


def _text_log(record: logging.LogRecord) -> str:
    record.request_id = "r-1"
    return ops.TextFormatter("%(levelname)s %(name)s [%(request_id)s] %(message)s").format(record)


@pytest.mark.parametrize("text", CLIENT_TEXTS)
def test_text_log_line_escapes_what_the_client_controls(text: str) -> None:
    """The text log's line stays one line, and the escapes say what came: a forged
    record or a terminal control sequence can't be written through a path, header
    value, upload id or hook message."""
    record = logging.LogRecord(
        "uploadsvc.requests", logging.INFO, __file__, 1, "%s %s: %s", ("GET", text, text), None
    )
    line = _text_log(record)
    assert len(line.splitlines()) == 1 and line.isprintable()
    assert line.startswith("INFO uploadsvc.requests [r-1] GET /files/x")
    # Unambiguous: each backslash doubled, each unsafe character one escape (the text
    # is in the message twice).
    escapes = 2 * text.count("\\") + sum(not char.isprintable() for char in text)
    assert line.count("\\") == 2 * escapes


def test_text_log_traceback_lines_are_indented_and_escaped() -> None:
    try:
        raise ValueError("bad value\nINFO uploadsvc.requests [-] forged\x1b[2J")
    except ValueError:
        record = logging.LogRecord(
            "uploadsvc", logging.ERROR, __file__, 1, "failed %s", ("a\nb",), sys.exc_info()
        )
    first, *rest = _text_log(record).split("\n")
    assert first == "ERROR uploadsvc [r-1] failed a\\x0ab"
    assert rest and all(line.startswith("  ") and line.isprintable() for line in rest)


@pytest.mark.parametrize("text", CLIENT_TEXTS)
def test_json_log_line_escapes_what_the_client_controls(text: str) -> None:
    record = logging.LogRecord("uploadsvc", logging.INFO, __file__, 1, "%s", (text,), None)
    record.fields = {"path": text}
    line = ops.JsonFormatter().format(record)
    assert len(line.splitlines()) == 1 and line.isprintable() and line.isascii()
    assert json.loads(line)["message"] == json.loads(line)["path"] == text


def _series(text: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_made_up_methods_and_statuses_add_no_series(client: FlaskClient) -> None:
    """Label values are bounded: a stranger's made-up methods all count as "other", so
    /metrics doesn't grow by a counter and a histogram per method, forever."""
    for path in ("/files/", "/nowhere", "/metrics"):  # the "other" series exist
        client.open(path, method="BREW", headers=TUS).close()
    client.get("/metrics").close()
    before = _series(client.get("/metrics").text)
    for number in range(60):
        for path in ("/files/", "/nowhere", "/metrics"):
            client.open(path, method=f"X{number}", headers=TUS).close()
            client.open(path, method=f"get{number}", headers=TUS).close()
    after = _series(client.get("/metrics").text)
    assert after == before
    assert (
        metric(client.get("/metrics").text, 'uploadsvc_requests_total{method="other",status="405"}')
        >= 120
    )


@pytest.mark.parametrize(
    ("status", "label"),
    [(200, "200"), (460, "460"), (499, "4xx"), (599, "5xx"), (799, "other"), (-1, "other")],
)
def test_status_labels_are_bounded(status: int, label: str) -> None:
    assert metrics.status_label(status) == label


def test_the_log_handler_writes_each_line_whole_without_its_lock(tmp_path: Path) -> None:
    """One write per record, and no lock per record: a thread holding the handler's lock
    (as StreamHandler took it around format, write and flush) doesn't stop a line."""
    path = tmp_path / "log"
    with path.open("w") as stream:
        handler = ops.LineHandler(stream)
        handler.setFormatter(ops.TextFormatter("%(levelname)s %(message)s"))
        record = logging.LogRecord("t", logging.INFO, __file__, 1, "a\nb %s", ("c",), None)
        done = threading.Event()
        handler.acquire()
        try:

            def log() -> None:
                handler.handle(record)
                done.set()

            thread = threading.Thread(target=log)
            thread.start()
            assert done.wait(10)
        finally:
            handler.release()
        thread.join(10)
    assert path.read_text() == "INFO a\\x0ab c\n"


def test_fresh_request_ids_are_unique(client: FlaskClient) -> None:
    ids = {client.options("/files/").headers["X-Request-ID"] for _ in range(20)}
    assert len(ids) == 20
