"""tus-js-client (the reference JavaScript client, under Node) against a live gunicorn.

tests/js/node_upload.mjs does the uploading and prints what happened as JSON: every HTTP
exchange tus-js-client completed (method, offsets, status), its retries and the final
upload URL. Here we check that log and the bytes on disk (sha256 against the source).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    JS_DIR,
    DataFile,
    LiveServer,
    MiB,
    head_upload,
    http_request,
    run_node,
    sha256_file,
)

pytestmark = pytest.mark.live

SCRIPT = "node_upload.mjs"
NODE_TIMEOUT = 150.0  # seconds per node process (its own watchdog fires at 120 s)
WHOLE = None  # tus-js-client's default chunkSize: infinite, one PATCH for the whole file

Requests = list[dict[str, Any]]


def _fmt(n: int | None) -> str:
    if n is None:
        return "whole"
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB}MiB"
    if n > MiB:
        return f"{n // MiB}MiB+{n % MiB}"
    return f"{n}B"


def _upload(node: str, server: LiveServer, **spec: Any) -> dict[str, Any]:
    full = {"mode": "upload", "endpoint": server.endpoint, "timeoutSeconds": 120, **spec}
    return run_node(node, SCRIPT, full, NODE_TIMEOUT)[-1]


def _metadata(size: int) -> dict[str, str]:
    return {"filename": f"päckchen-{size}.bin", "filetype": "application/octet-stream"}


def _decode_metadata(header: str | None) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in (header or "").split(","):
        key, _, value = item.strip().partition(" ")
        if key:
            pairs[key] = base64.b64decode(value).decode("utf-8")
    return pairs


def _patches(requests: Requests) -> list[tuple[int, int]]:
    """(request Upload-Offset, response Upload-Offset) of every PATCH, in order."""
    return [(int(r["reqOffset"]), int(r["offset"])) for r in requests if r["method"] == "PATCH"]


def _methods(requests: Requests) -> list[str]:
    return [r["method"] for r in requests]


def _expected_patches(start: int, size: int, chunk: int | None) -> list[tuple[int, int]]:
    step = size - start if chunk is None else chunk
    return [(o, min(o + step, size)) for o in range(start, size, max(step, 1))]


def _assert_no_trouble(requests: Requests, retries: list[dict[str, Any]]) -> None:
    """An uncontended upload: every answer 2xx, no retry."""
    bad = [r for r in requests if not 200 <= r["status"] < 300]
    assert not bad, bad
    assert not retries, retries


def _assert_stored(
    server: LiveServer,
    url: str,
    size: int,
    sha: str,
    metadata: dict[str, str] | None = None,
) -> None:
    """The upload URL has the server's Location form; the bytes on disk are the source's."""
    assert server.upload_url_re().fullmatch(url), url
    stored = server.data_file(url)
    assert stored.is_file(), f"no stored file {stored} for {url}"
    assert stored.stat().st_size == size
    assert sha256_file(stored) == sha, f"stored bytes of {url} differ from the source"
    head = head_upload(url)
    assert head.status == 200, (head.status, head.body[:300])
    assert head.header("Upload-Offset") == str(size)
    assert head.header("Upload-Length") == str(size)
    if metadata is not None:
        assert _decode_metadata(head.header("Upload-Metadata")) == metadata


# --------------------------------------------------------------------------- whole uploads


@pytest.mark.parametrize("chunk", [WHOLE, 1 * MiB, 5 * MiB], ids=_fmt)
@pytest.mark.parametrize("size", [0, 1, 3 * MiB, 20 * MiB], ids=_fmt)
def test_upload_file(
    live_server: LiveServer, node: str, data_file: DataFile, size: int, chunk: int | None
) -> None:
    """An fs.ReadStream (tus-js-client's file source) in chunks of ``chunk`` bytes."""
    path, sha = data_file(size)
    meta = _metadata(size)
    result = _upload(node, live_server, path=str(path), chunkSize=chunk, metadata=meta)
    requests = result["requests"]
    _assert_no_trouble(requests, result["retries"])
    assert _methods(requests)[0] == "POST"
    assert requests[0]["reqLength"] == str(size)
    assert requests[0]["location"] == result["url"]  # absolute, as the server sent it
    assert _methods(requests).count("POST") == 1
    assert _patches(requests) == _expected_patches(0, size, chunk)
    _assert_stored(live_server, result["url"], size, sha, meta)


@pytest.mark.parametrize("size", [0, 1, 3 * MiB, 20 * MiB], ids=_fmt)
def test_upload_buffer_deferred_length(
    live_server: LiveServer, node: str, data_file: DataFile, size: int
) -> None:
    """A Buffer with ``uploadLengthDeferred``: ``Upload-Defer-Length: 1`` at creation, the
    length on the (only) PATCH, including a PATCH with an empty body for 0 bytes."""
    path, sha = data_file(size)
    result = _upload(node, live_server, path=str(path), source="buffer", deferred=True)
    requests = result["requests"]
    _assert_no_trouble(requests, result["retries"])
    create = requests[0]
    assert (create["method"], create["reqDeferLength"], create["reqLength"]) == ("POST", "1", None)
    assert _patches(requests) == [(0, size)]
    assert requests[-1]["reqLength"] == str(size)
    _assert_stored(live_server, result["url"], size, sha)


# Sizes that are not a multiple of the chunk size: tus-js-client 4.3.1 hangs after the
# last chunk of a deferred-length stream whose size is (tus/tus-js-client#779, open).
@pytest.mark.parametrize(
    ("size", "chunk"),
    [(1, 1 * MiB), (3 * MiB + 7, 1 * MiB), (20 * MiB + 3, 1 * MiB), (20 * MiB + 3, 5 * MiB)],
    ids=lambda v: _fmt(v),
)
def test_upload_stream_deferred_length(
    live_server: LiveServer, node: str, data_file: DataFile, size: int, chunk: int
) -> None:
    """A plain Readable stream (size unknown to the client): deferred length, chunked; the
    last PATCH carries ``Upload-Length``."""
    path, sha = data_file(size)
    spec = {"path": str(path), "source": "stream", "deferred": True, "chunkSize": chunk}
    result = _upload(node, live_server, **spec)
    requests = result["requests"]
    _assert_no_trouble(requests, result["retries"])
    assert requests[0]["reqDeferLength"] == "1"
    assert _patches(requests) == _expected_patches(0, size, chunk)
    with_length = [r["reqLength"] for r in requests if r["reqLength"] is not None]
    assert with_length == [str(size)]
    assert requests[-1]["reqLength"] == str(size)
    _assert_stored(live_server, result["url"], size, sha)


def test_upload_data_during_creation(
    live_server: LiveServer, node: str, data_file: DataFile
) -> None:
    """``uploadDataDuringCreation`` (creation-with-upload): the POST carries the first chunk."""
    size = 3 * MiB + 5
    path, sha = data_file(size)
    result = _upload(node, live_server, path=str(path), chunkSize=MiB, dataDuringCreation=True)
    requests = result["requests"]
    _assert_no_trouble(requests, result["retries"])
    assert (requests[0]["method"], requests[0]["offset"]) == ("POST", str(MiB))
    assert _patches(requests) == _expected_patches(MiB, size, MiB)
    _assert_stored(live_server, result["url"], size, sha)


# --------------------------------------------------------------------------- parallel uploads


@pytest.mark.parametrize("chunk", [WHOLE, 1 * MiB], ids=_fmt)
def test_parallel_uploads(
    live_server: LiveServer,
    node: str,
    data_file: DataFile,
    chunk: int | None,
    request: pytest.FixtureRequest,
) -> None:
    """``parallelUploads: 3``: three partial uploads, then ``Upload-Concat: final;<urls>``."""
    options = http_request("OPTIONS", live_server.endpoint)
    extensions = [e.strip() for e in (options.header("Tus-Extension") or "").split(",")]
    if "concatenation" not in extensions:
        request.applymarker(
            pytest.mark.xfail(
                reason=f"server does not advertise concatenation (Tus-Extension: {extensions})",
                strict=False,
            )
        )
    size = 20 * MiB
    path, sha = data_file(size)
    meta = _metadata(size)
    result = _upload(node, live_server, path=str(path), parallel=3, chunkSize=chunk, metadata=meta)
    requests = result["requests"]
    _assert_no_trouble(requests, result["retries"])

    posts = [r for r in requests if r["method"] == "POST"]
    partials = [r for r in posts if r["reqConcat"] == "partial"]
    assert len(partials) == 3, posts
    assert all(r["status"] == 201 for r in posts)
    final = posts[-1]
    assert final["reqConcat"] is not None
    assert final["reqLength"] is None  # the server computes the final length
    partial_urls = [r["location"] for r in partials]
    assert sorted(final["reqConcat"].removeprefix("final;").split(" ")) == sorted(partial_urls)
    assert final["location"] == result["url"]

    lengths = 0
    for url in partial_urls:
        assert live_server.upload_url_re().fullmatch(url), url
        head = head_upload(url)
        assert head.status == 200, (url, head.status)
        assert head.header("Upload-Concat") == "partial"
        assert head.header("Upload-Offset") == head.header("Upload-Length")
        lengths += int(head.header("Upload-Length") or -1)
    assert lengths == size

    # A final has no bytes of its own: it is read through its partials.
    assert live_server.data_file(result["url"]).stat().st_size == 0
    download = http_request("GET", result["url"])
    assert download.status == 200, download
    assert hashlib.sha256(download.body).hexdigest() == sha
    head = head_upload(result["url"])
    assert head.header("Upload-Offset") == head.header("Upload-Length") == str(size)
    assert _decode_metadata(head.header("Upload-Metadata")) == meta
    assert (head.header("Upload-Concat") or "").startswith("final;"), head.headers


# --------------------------------------------------------------------------- abort and resume


def _assert_resumed(
    requests: Requests, retries: list[dict[str, Any]], size: int, chunk: int | None
) -> int:
    """The second phase HEADs the upload and continues at the server's offset (no new
    upload, no byte sent twice); returns that offset."""
    assert requests, "the second phase made no request"
    head = requests[0]
    assert (head["method"], head["status"]) == ("HEAD", 200), head
    offset = int(head["offset"])
    assert 0 < offset < size, f"server offset {offset} after an abort (size {size})"
    assert "POST" not in _methods(requests), "resuming created a new upload"
    patches = _patches(requests)
    assert patches == _expected_patches(offset, size, chunk)
    sent = sum(end - start for start, end in patches)
    assert sent == size - offset < size
    # Only a still-locked upload (423) is a reason to retry here.
    assert all(r["status"] == 423 for r in retries), retries
    bad = [r for r in requests if not 200 <= r["status"] < 300]
    assert not bad, bad
    return offset


@pytest.mark.parametrize("resume_via", ["uploadUrl", "storage"])
@pytest.mark.parametrize("chunk", [WHOLE, 1 * MiB], ids=_fmt)
def test_abort_and_resume(
    live_server: LiveServer,
    node: str,
    data_file: DataFile,
    tmp_path: Path,
    chunk: int | None,
    resume_via: str,
) -> None:
    """``abort()`` after 8 MiB of 20 went out (sent at 32 MiB/s so it is mid-upload), then
    a new Upload picks it up via ``uploadUrl`` or ``findPreviousUploads()`` +
    ``resumeFromPreviousUpload()`` (FileUrlStorage) and sends only what is missing."""
    size = 20 * MiB
    path, sha = data_file(size)
    spec = {
        "mode": "abort-resume",
        "endpoint": live_server.endpoint,
        "path": str(path),
        "chunkSize": chunk,
        "abortAt": 8 * MiB,
        "rateBytesPerSecond": 32 * MiB,
        "resumeVia": resume_via,
        "storagePath": str(tmp_path / "tus-urls.json"),
        "timeoutSeconds": 120,
    }
    lines = run_node(node, SCRIPT, spec, NODE_TIMEOUT)
    result = lines[-1]
    aborted = [line for line in lines if line.get("event") == "aborted"]
    assert len(aborted) == 1, lines[:-1]
    assert 8 * MiB <= result["abortedAt"] < size

    first = result["phase1"]["requests"]
    assert _methods(first).count("POST") == 1
    assert all(200 <= r["status"] < 300 for r in first), first
    url = result["firstUrl"]
    assert live_server.upload_url_re().fullmatch(url), url
    if resume_via == "storage":
        assert result["previous"] == [{"uploadUrl": url, "size": size}]

    offset = _assert_resumed(result["phase2"]["requests"], result["phase2"]["retries"], size, chunk)
    assert offset <= result["abortedAt"]  # the server can't hold more than was sent
    assert result["url"] == url
    _assert_stored(live_server, url, size, sha)


@contextlib.contextmanager
def _node_process(node: str, spec: dict[str, Any], stderr_path: Path) -> Iterator[Any]:
    with (
        stderr_path.open("wb") as stderr,
        subprocess.Popen(
            [node, SCRIPT, json.dumps(spec)],
            cwd=JS_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        ) as proc,
    ):
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def _wait_for_event(proc: Any, name: str, timeout: float, stderr_path: Path) -> dict[str, Any]:
    """Read the process's JSON lines (bounded) until {"event": name}; fail on anything else."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    for _ in range(100_000):
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            message = json.loads(line)
            if message.get("event") == name:
                return dict(message)
            if "ok" in message:
                pytest.fail(f"node finished instead of reaching {name!r}: {message}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            break
        data = os.read(fd, 65536)
        if not data:
            break
        buf += data
    stderr = stderr_path.read_text(errors="replace")[-3000:]
    pytest.fail(f"no {name!r} event in {timeout} s (exit {proc.poll()}): {buf!r:.2000}\n{stderr}")


@pytest.mark.parametrize("chunk", [WHOLE, 1 * MiB], ids=_fmt)
def test_killed_process_resumes_from_url_storage(
    live_server: LiveServer, node: str, data_file: DataFile, tmp_path: Path, chunk: int | None
) -> None:
    """A Node process is SIGKILLed in the middle of a PATCH body; a new process finds the
    upload in the FileUrlStorage file, resumes it at the server's offset (every byte that
    reached the server was kept) and finishes it."""
    size = 20 * MiB
    stall_at = 7 * MiB + 12345
    path, sha = data_file(size)
    storage = tmp_path / "tus-urls.json"
    spec = {
        "mode": "stall",
        "endpoint": live_server.endpoint,
        "path": str(path),
        "chunkSize": chunk,
        "stallAt": stall_at,
        "storagePath": str(storage),
        "timeoutSeconds": 60,
    }
    with _node_process(node, spec, tmp_path / "stall.stderr") as proc:
        stalled = _wait_for_event(proc, "stalled", 60.0, tmp_path / "stall.stderr")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    url = stalled["url"]
    assert live_server.upload_url_re().fullmatch(url), url
    remembered = json.loads(storage.read_text())
    assert [entry["uploadUrl"] for entry in remembered.values()] == [url]

    spec = {
        "mode": "resume",
        "endpoint": live_server.endpoint,
        "path": str(path),
        "chunkSize": chunk,
        "storagePath": str(storage),
        "timeoutSeconds": 120,
    }
    result = run_node(node, SCRIPT, spec, NODE_TIMEOUT)[-1]
    assert result["previous"] == [{"uploadUrl": url, "size": size}]
    offset = _assert_resumed(result["requests"], result["retries"], size, chunk)
    assert offset == stall_at, "the server lost bytes that reached it before the client died"
    assert result["url"] == url
    _assert_stored(live_server, url, size, sha)
