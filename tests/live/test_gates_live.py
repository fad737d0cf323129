"""Type gates, the check hook and whole-file digests against a live gunicorn, with the
clients we ship and test with: uploadsvc-upload (Repr-Digest by default, --verify),
tuspy and tus-js-client under Node. The server runs with
``UPLOADSVC_ALLOWED_TYPES=image/*,application/pdf`` and tests/hookmods/gatekeeper.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tusclient.exceptions import TusCommunicationError

from tests.hookmods.gatekeeper import EICAR
from tests.test_gates import EXE, PDF
from uploadsvc.typegate import SNIFF_BYTES

from .conftest import (
    JS_DIR,
    LiveServer,
    head_upload,
    http_request,
    patch_upload,
    tus_headers,
    tuspy_upload,
)
from .test_page import page_tools, run_page  # noqa: F401 (a fixture)
from .test_upload_cli_live import run_cli

GATED = {
    "UPLOADSVC_ALLOWED_TYPES": "image/*,application/pdf",
    "UPLOADSVC_HOOKS": "tests.hookmods.gatekeeper:Gatekeeper",
}
NODE_TIMEOUT = 120.0


@pytest.fixture
def gated(server_factory: Callable[..., LiveServer]) -> Iterator[LiveServer]:
    yield server_factory(**GATED)


def stored_sizes(server: LiveServer) -> list[int]:
    return sorted(path.stat().st_size for path in (server.data_dir / "files").iterdir())


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_tuspy_an_exe_renamed_pdf_is_refused_in_its_first_patch(gated: LiveServer) -> None:
    with pytest.raises(TusCommunicationError) as refused:
        tuspy_upload(
            gated.endpoint,
            io.BytesIO(EXE),
            chunk_size=1024 * 1024,
            metadata={"filename": "invoice.pdf", "filetype": "application/pdf"},
        )
    assert refused.value.status_code == 415
    assert stored_sizes(gated) == [0]  # its bytes were removed in that PATCH


def test_cli_declares_the_digest_and_verifies_with_it(gated: LiveServer, tmp_path: Path) -> None:
    source = tmp_path / "report.pdf"
    source.write_bytes(PDF)
    result = run_cli(str(source), "-e", gated.endpoint, "--verify", state=tmp_path / "s.json")
    assert result.status == 0, result.err
    assert "verified" in result.err
    (url,) = result.urls
    head = head_upload(url)
    assert head.header("Repr-Digest") == f"sha-256=:{sha256_b64(PDF)}:"
    get = http_request("GET", url)
    assert get.status == 200 and get.body == PDF
    assert get.header("Repr-Digest") == f"sha-256=:{sha256_b64(PDF)}:"


def test_cli_an_exe_renamed_pdf_is_refused(gated: LiveServer, tmp_path: Path) -> None:
    source = tmp_path / "invoice.pdf"
    source.write_bytes(EXE)
    result = run_cli(str(source), "-e", gated.endpoint, "-c", "1M", state=tmp_path / "s.json")
    assert result.status == 1, result.err
    assert "415" in result.err and "not application/pdf" in result.err
    assert stored_sizes(gated) == [0]
    # A type the gate doesn't take is refused before a byte is sent.
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"plain text\n")
    result = run_cli(str(notes), "-e", gated.endpoint, state=tmp_path / "s.json")
    assert result.status == 1 and "text/plain is not accepted" in result.err
    assert stored_sizes(gated) == [0]


def test_cli_a_digest_mismatch_ends_corrupt_and_unserved(gated: LiveServer, tmp_path: Path) -> None:
    """A wrong digest (sent by hand) is 460 at the last byte; the CLI retries 460, and
    HEAD then says the upload is corrupt: it stops with the server's reason."""
    source = tmp_path / "report.pdf"
    source.write_bytes(PDF)
    wrong = f"Repr-Digest: sha-256=:{sha256_b64(b'another file')}:"
    result = run_cli(
        str(source), "-e", gated.endpoint, "--no-digest", "-H", wrong, state=tmp_path / "s.json"
    )
    assert result.status == 1, result.err
    assert "corrupt" in result.err
    (path,) = (gated.data_dir / "files").iterdir()
    url = gated.endpoint + path.name
    assert path.stat().st_size == len(PDF)  # kept, for the operator: offsets never lie
    assert http_request("GET", url).status == 403
    assert head_upload(url).status == 403


def test_cli_the_check_hook_rejects(gated: LiveServer, tmp_path: Path) -> None:
    source = tmp_path / "infected.pdf"
    source.write_bytes(PDF + EICAR)
    result = run_cli(str(source), "-e", gated.endpoint, state=tmp_path / "s.json")
    assert result.status == 1, result.err
    assert "infected: EICAR test file" in result.err
    (path,) = (gated.data_dir / "files").iterdir()
    assert http_request("GET", gated.endpoint + path.name).status == 403


def test_raw_patches_below_the_window_then_across_it(gated: LiveServer) -> None:
    """Byte-exact: a first PATCH below the sniff window is kept unjudged; the one that
    fills the window is judged with it and refused, and stores nothing."""
    metadata = "filetype " + base64.b64encode(b"application/pdf").decode()
    url = gated.create_upload(len(EXE), metadata=metadata)
    assert patch_upload(url, 0, EXE[:100]).status == 204
    refused = patch_upload(url, 100, EXE[100 : 2 * SNIFF_BYTES])
    assert refused.status == 415
    assert refused.header("Upload-Offset") == "100"
    assert head_upload(url).header("Upload-Offset") == "100"
    assert gated.data_file(url).read_bytes() == EXE[:100]
    assert http_request("GET", url, tus_headers()).status == 404


def _node(node: str, spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [node, "node_upload.mjs", json.dumps(spec)],
        cwd=JS_DIR,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=NODE_TIMEOUT,
        check=False,
    )
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    assert lines, proc.stderr.decode(errors="replace")[-3000:]
    result: dict[str, Any] = lines[-1]
    return result


def test_tus_js_client_small_chunks_are_refused_at_the_window(
    gated: LiveServer, node: str, tmp_path: Path
) -> None:
    """tus-js-client in 3 KiB chunks: the first two PATCHes stay below the 8 KiB window
    (kept), the third fills it: 415, its bytes gone, and tus-js-client gives up (it
    retries no 4xx but 409 and 423)."""
    source = tmp_path / "invoice.pdf"
    source.write_bytes(EXE)
    chunk = 3 * 1024
    result = _node(
        node,
        {
            "mode": "upload",
            "endpoint": gated.endpoint,
            "path": str(source),
            "chunkSize": chunk,
            "metadata": {"filename": "invoice.pdf", "filetype": "application/pdf"},
            "timeoutSeconds": 60,
        },
    )
    assert result["ok"] is False, result
    assert result["error"]["response"]["status"] == 415, result
    assert result["error"]["response"]["offset"] == str(2 * chunk)
    patches = [(r["reqOffset"], r["status"]) for r in result["requests"] if r["method"] == "PATCH"]
    assert patches == [("0", 204), (str(chunk), 204), (str(2 * chunk), 415)]
    assert stored_sizes(gated) == [2 * chunk]


def test_tus_js_client_a_pdf_passes_and_shows_its_digest(
    gated: LiveServer, node: str, tmp_path: Path
) -> None:
    source = tmp_path / "report.pdf"
    source.write_bytes(PDF)
    digest = f"sha-256=:{sha256_b64(PDF)}:"
    result = _node(
        node,
        {
            "mode": "upload",
            "endpoint": gated.endpoint,
            "path": str(source),
            "chunkSize": 4096,
            "metadata": {"filename": "report.pdf", "filetype": "application/pdf"},
            "headers": {"Repr-Digest": digest},
            "timeoutSeconds": 60,
        },
    )
    assert result["ok"] is True, result
    assert head_upload(result["url"]).header("Repr-Digest") == digest


@pytest.mark.parametrize("chunk", [0, 3 * 1024], ids=["one-patch", "3KiB-chunks"])
def test_the_page_shows_the_refusal(
    request: pytest.FixtureRequest,
    server_factory: Callable[..., LiveServer],
    tmp_path: Path,
    chunk: int,
) -> None:
    """The upload page in Chromium: an exe renamed .pdf (the browser says
    application/pdf) fails with the server's reason, and nothing of it is kept. Its bar
    shows what the server kept (in 3 KiB chunks, the two below the sniff window), not
    the bytes the browser sent: in one PATCH every byte was sent before the 415, and
    the bar stood at 100 % as if done."""
    tools: tuple[str, str] = request.getfixturevalue("page_tools")  # skips without chromium
    server = server_factory(UPLOADSVC_WEB_UI="1", **GATED)
    source = tmp_path / "invoice.pdf"
    source.write_bytes(EXE)
    result = run_page(
        tools,
        tmp_path,
        f"{server.origin}/" + (f"?chunkSize={chunk}" if chunk else ""),
        [source],
        mode="refused",
        console_errors=re.compile(r"Failed to load resource: .* 415 .*"),
    )
    assert "not application/pdf" in result["status"], result
    kept = 2 * chunk
    assert stored_sizes(server) == [kept]
    percent = 100 * kept // len(EXE)
    assert result["bar"] == {"valueNow": str(percent), "fillWidth": f"{percent}%"}, result
    size = f"{len(EXE) / 1024:.1f} KiB"
    kept_text = f"{kept / 1024:.1f} KiB" if kept else "0 B"
    assert result["detail"] == f"{kept_text} of {size} ({percent} %) accepted by the server", result
