"""tus-js-client speaking Resumable Uploads for HTTP (``protocol: 'ietf-draft-03'`` sends
interop 5, ``'ietf-draft-05'`` interop 6) under Node against a live gunicorn: whole
uploads verified by sha256, and an upload aborted half way and resumed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import DataFile, LiveServer, MiB, http_request
from .test_js_client import _assert_stored, _fmt, _upload

pytestmark = pytest.mark.live

PROTOCOLS = {"ietf-draft-03": "5", "ietf-draft-05": "6"}


def _draft_head(url: str, interop: str) -> dict[str, str | None]:
    response = http_request("HEAD", url, {"Upload-Draft-Interop-Version": interop})
    assert response.status == 204, (response.status, response.body[:300])
    return {
        name: response.header(name) for name in ("Upload-Offset", "Upload-Complete", "Upload-Limit")
    }


def _check_draft_requests(requests: list[dict[str, Any]], interop: str) -> None:
    assert requests, "no request made"
    assert all(r["reqInterop"] == interop for r in requests), requests
    bad = [r for r in requests if not 200 <= r["status"] < 300]
    assert not bad, bad


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("size", [0, 1, 5 * MiB, 64 * MiB], ids=_fmt)
def test_upload(
    live_server: LiveServer, node: str, data_file: DataFile, size: int, protocol: str
) -> None:
    path, sha = data_file(size)
    result = _upload(
        node,
        live_server,
        path=str(path),
        protocol=protocol,
        metadata={"filename": f"draft-{size}.bin"},
    )
    assert result["ok"], result
    interop = PROTOCOLS[protocol]
    requests = result["requests"]
    _check_draft_requests(requests, interop)
    assert not result["retries"], result["retries"]
    # Careful creation: an empty POST saying more is to come, then the content.
    assert (requests[0]["method"], requests[0]["reqComplete"]) == ("POST", "?0")
    if size:
        assert requests[-1]["method"] == "PATCH"
        assert requests[-1]["reqComplete"] == "?1"
        assert requests[-1]["complete"] == "?1"
    _assert_stored(live_server, result["url"], size, sha, {"filename": f"draft-{size}.bin"})
    head = _draft_head(result["url"], interop)
    assert (head["Upload-Offset"], head["Upload-Complete"]) == (str(size), "?1")


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_upload_data_during_creation(
    live_server: LiveServer, node: str, data_file: DataFile, protocol: str
) -> None:
    """``uploadDataDuringCreation`` in 1 MiB chunks: the POST carries the first chunk
    (``Upload-Complete: ?0``), PATCHes the rest. tus-js-client marks a file stream's
    last chunk ``?0`` too (it learns the end only by reading past it): the length it
    told at creation completes the upload, as the server's answer says."""
    size = 3 * MiB + 5
    path, sha = data_file(size)
    result = _upload(
        node,
        live_server,
        path=str(path),
        protocol=protocol,
        chunkSize=MiB,
        dataDuringCreation=True,
    )
    assert result["ok"], result
    requests = result["requests"]
    _check_draft_requests(requests, PROTOCOLS[protocol])
    assert [r["method"] for r in requests] == ["POST", "PATCH", "PATCH", "PATCH"]
    assert (requests[0]["reqComplete"], requests[0]["offset"]) == ("?0", str(MiB))
    assert [r["reqComplete"] for r in requests[1:3]] == ["?0", "?0"]
    assert [r["complete"] for r in requests] == ["?0", "?0", "?0", "?1"]
    _assert_stored(live_server, result["url"], size, sha)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_abort_and_resume(
    live_server: LiveServer, node: str, data_file: DataFile, tmp_path: Path, protocol: str
) -> None:
    """``abort()`` after 8 MiB of 20 went out, then a new Upload resumes from the
    server's offset (HEAD) and sends only the rest."""
    size = 20 * MiB
    path, sha = data_file(size)
    result = _upload(
        node,
        live_server,
        mode="abort-resume",
        path=str(path),
        protocol=protocol,
        abortAt=8 * MiB,
        rateBytesPerSecond=32 * MiB,
        resumeVia="uploadUrl",
        storagePath=str(tmp_path / "tus-urls.json"),
    )
    assert result["ok"], result
    interop = PROTOCOLS[protocol]
    second = result["phase2"]["requests"]
    _check_draft_requests(second, interop)
    head = second[0]
    assert head["method"] == "HEAD"
    offset = int(head["offset"])
    assert 0 < offset <= result["abortedAt"] < size
    assert "POST" not in [r["method"] for r in second], "resuming created a new upload"
    assert second[-1]["reqOffset"] == str(offset)
    assert result["url"] == result["firstUrl"]
    _assert_stored(live_server, result["url"], size, sha)
    assert _draft_head(result["url"], interop)["Upload-Complete"] == "?1"
