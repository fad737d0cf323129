"""uploadsvc-upload against a live gunicorn: several files with --verify, a SIGKILL mid-way
and a second run that sends only the rest, refusals and unreachable servers."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import (
    HOST,
    REPO_ROOT,
    VENV_BIN,
    KiB,
    LiveServer,
    MiB,
    free_port,
    head_upload,
    http_request,
    make_data_file,
    sha256_file,
    tus_headers,
)

pytestmark = pytest.mark.live

CLI = VENV_BIN / "uploadsvc-upload"
RUN_TIMEOUT = 120.0  # seconds for one CLI run; far above what the work takes
SENT = re.compile(r"\(.*sent (\d+) bytes")


@dataclass
class Result:
    status: int
    out: str
    err: str

    @property
    def urls(self) -> list[str]:
        return self.out.split()

    @property
    def sent(self) -> list[int]:
        return [int(n) for n in SENT.findall(self.err)]


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPLOADSVC_")}
    env.update(extra or {})
    return env


def run_cli(*args: str, state: Path, env: Mapping[str, str] | None = None) -> Result:
    proc = subprocess.run(
        [str(CLI), *args, "--state", str(state)],
        cwd=REPO_ROOT,
        env=cli_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
        text=True,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def received_bytes(server: LiveServer) -> float:
    """``uploadsvc_received_bytes_total`` from /metrics (summed over the workers)."""
    text = http_request("GET", f"{server.origin}/metrics").body.decode()
    match = re.search(r"^uploadsvc_received_bytes_total ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, text[:2000]
    return float(match.group(1))


def metadata(url: str) -> dict[str, str]:
    header = head_upload(url).header("Upload-Metadata") or ""
    pairs = (item.strip().split(" ") for item in header.split(",") if item.strip())
    return {key: base64.b64decode(value).decode() for key, value in pairs}


def test_several_files_with_verify(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory()
    files = {
        tmp_path / "big.bin": make_data_file(tmp_path / "big.bin", 5 * MiB + 123, seed=1),
        tmp_path / "notes.txt": make_data_file(tmp_path / "notes.txt", 10 * KiB, seed=2),
        tmp_path / "empty.dat": make_data_file(tmp_path / "empty.dat", 0, seed=3),
    }
    result = run_cli(
        *map(str, files),
        "--endpoint",
        server.endpoint,
        "--chunk-size",
        "1M",
        "--verify",
        "--meta",
        "project=apollo",
        state=tmp_path / "state.json",
    )
    assert result.status == 0, result.err
    assert len(result.urls) == 3
    for (path, digest), url in zip(files.items(), result.urls, strict=True):
        assert server.upload_url_re().fullmatch(url), url
        assert sha256_file(server.data_file(url)) == digest
        assert metadata(url)["filename"] == path.name
        assert metadata(url)["project"] == "apollo"
    assert metadata(result.urls[1])["filetype"] == "text/plain"
    assert result.sent == [5 * MiB + 123, 10 * KiB, 0]
    assert result.err.count("verified") == 3
    assert "Traceback" not in result.err


def test_killed_run_resumes_and_sends_only_the_rest(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory()
    size = 8 * MiB
    source = tmp_path / "dataset.bin"
    digest = make_data_file(source, size, seed=42)
    state = tmp_path / "state.json"
    args = [str(CLI), str(source), "-e", server.endpoint, "-c", "256K", "--state", str(state)]
    # Slow enough to be caught mid-way: 32 chunks, 50 ms apart.
    proc = subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        env=cli_env({"UPLOADSVC_UPLOAD_CHUNK_DELAY": "0.05"}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if url is None and state.exists():
                stored = json.loads(state.read_text())["uploads"]
                url = next(iter(stored.values()))["url"] if stored else None
            if url is not None:
                offset = int(head_upload(url).header("Upload-Offset") or 0)
                if offset >= size // 2:
                    break
            time.sleep(0.02)
        assert url is not None and proc.poll() is None, "the upload didn't get half-way"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    # The server's offset once the broken-off PATCH is recorded (HEAD waits for it).
    offset = int(head_upload(url).header("Upload-Offset") or 0)
    assert size // 2 <= offset < size
    before = received_bytes(server)

    again = run_cli(str(source), "-e", server.endpoint, "-c", "256K", "--verify", state=state)
    assert again.status == 0, again.err
    assert again.urls == [url]
    assert again.sent == [size - offset]
    assert received_bytes(server) - before == size - offset
    assert "resumed at" in again.err and "verified" in again.err
    assert sha256_file(server.data_file(url)) == digest

    # A third run finds everything there and sends nothing.
    third = run_cli(str(source), "-e", server.endpoint, state=state)
    assert third.status == 0 and third.urls == [url]
    assert "already on the server" in third.err


def test_deleted_upload_starts_over(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory()
    source = tmp_path / "a.bin"
    make_data_file(source, 300 * KiB, seed=5)
    state = tmp_path / "state.json"
    first = run_cli(str(source), "-e", server.endpoint, state=state)
    assert first.status == 0, first.err
    assert http_request("DELETE", first.urls[0], tus_headers()).status == 204
    second = run_cli(str(source), "-e", server.endpoint, "--verify", state=state)
    assert second.status == 0, second.err
    assert second.urls != first.urls
    assert second.sent == [300 * KiB]


def test_clear_errors_and_exit_codes(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory(
        UPLOADSVC_MAX_SIZE=str(MiB), UPLOADSVC_HOOKS="tests.hookmods.sample:SampleHooks"
    )
    state = tmp_path / "state.json"
    small = tmp_path / "small.txt"
    make_data_file(small, 100, seed=1)
    big = tmp_path / "big.bin"
    make_data_file(big, MiB + 1, seed=2)
    program = tmp_path / "setup.exe"
    make_data_file(program, 100, seed=3)

    too_big = run_cli(str(big), "-e", server.endpoint, state=state)
    assert too_big.status == 1
    assert too_big.err.strip() == (
        f"uploadsvc-upload: {big}: refused by the server: 413 Content Too Large: "
        f"Upload-Length exceeds the maximum size {MiB}"
    )

    # The operator's hooks: authorize refuses a bad token, pre_create refuses .exe files.
    bad_token = run_cli(
        str(small), "-e", server.endpoint, "-H", "Authorization: Bearer bad", state=state
    )
    assert bad_token.status == 1
    assert "refused by the server: 401 Unauthorized: bad token" in bad_token.err
    refused = run_cli(str(program), str(small), "-e", server.endpoint, state=state)
    assert refused.status == 1
    assert "setup.exe: refused by the server: 403 Forbidden: no executables here" in refused.err
    assert len(refused.urls) == 1  # small.txt went through all the same

    missing = run_cli(str(tmp_path / "nope.bin"), "-e", server.endpoint, state=state)
    assert missing.status == 3
    assert missing.err.strip() == f"uploadsvc-upload: {tmp_path / 'nope.bin'}: no such file"

    wrong_url = run_cli(str(small), "-e", f"{server.origin}/", state=state)
    assert wrong_url.status == 4
    assert "is not a tus endpoint" in wrong_url.err and "/files/" in wrong_url.err

    nobody = f"http://{HOST}:{free_port()}/files/"
    unreachable = run_cli(str(small), "-e", nobody, state=state)
    assert unreachable.status == 4
    assert unreachable.err.strip() == (
        f"uploadsvc-upload: cannot reach {nobody}: Connection refused"
    )
    for result in (too_big, bad_token, refused, missing, wrong_url, unreachable):
        assert "Traceback" not in result.err


def test_python_dash_m_and_endpoint_from_environment(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory()
    source = tmp_path / "a.txt"
    make_data_file(source, 1000, seed=9)
    proc = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "uploadsvc.upload", str(source), "-q"],
        cwd=REPO_ROOT,
        env=cli_env(
            {"UPLOADSVC_ENDPOINT": server.endpoint, "XDG_CACHE_HOME": str(tmp_path / "cache")}
        ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # -q: nothing but the URL
    assert server.upload_url_re().fullmatch(proc.stdout.strip())
    assert (tmp_path / "cache" / "uploadsvc-upload" / "urls.json").is_file()
