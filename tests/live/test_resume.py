"""A tuspy client process killed half-way resumes from the URL it stored."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

import pytest

from .conftest import (
    VENV_PYTHON,
    LiveServer,
    MiB,
    head_upload,
    make_data_file,
    sha256_bytes,
    sha256_file,
)

pytestmark = pytest.mark.live

SCRIPT = Path(__file__).with_name("_tuspy_resume_client.py")
SIZE = 64 * MiB
CHUNK = 16 * MiB
EVENT_TIMEOUT = 60.0  # seconds to wait for the client's next line


class ClientRun:
    """The resume client as a subprocess whose stdout lines arrive on a queue."""

    def __init__(self, server: LiveServer, data: Path, storage: Path, stderr: Path) -> None:
        args = [str(VENV_PYTHON), str(SCRIPT), server.endpoint, str(data), str(storage)]
        with stderr.open("ab") as err:
            self.proc = subprocess.Popen(
                [*args, str(CHUNK)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self.stderr = stderr
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.decode().strip())
        self.lines.put(None)

    def event(self) -> tuple[str, str]:
        try:
            line = self.lines.get(timeout=EVENT_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"client silent for {EVENT_TIMEOUT} s") from None
        if line is None:
            self.proc.wait(timeout=EVENT_TIMEOUT)
            raise AssertionError(
                f"client exited ({self.proc.returncode}) early:\n{self.stderr.read_text()[-3000:]}"
            )
        kind, _, value = line.partition(" ")
        return kind, value

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=EVENT_TIMEOUT)
        self.reader.join(timeout=EVENT_TIMEOUT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def __enter__(self) -> ClientRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def test_killed_tuspy_upload_resumes_from_stored_url(
    live_server: LiveServer, tmp_path: Path
) -> None:
    data = tmp_path / "resume.bin"
    digest = make_data_file(data, SIZE, seed=4242)
    storage = tmp_path / "urls.json"
    stderr = tmp_path / "client.stderr"

    # First run: follow its progress and SIGKILL it once half the file is on the server.
    with ClientRun(live_server, data, storage, stderr) as run:
        kind, url = run.event()
        assert kind == "url"
        assert live_server.upload_url_re().fullmatch(url), url
        assert run.event() == ("start", "0")
        last = 0
        for _ in range(SIZE // CHUNK + 1):
            kind, value = run.event()
            assert kind == "offset", (kind, value)
            last = int(value)
            if last >= SIZE // 2:
                break
        assert SIZE // 2 <= last < SIZE, last
        # Aim the kill into the next PATCH: wait (bounded) until its first bytes are on disk.
        stored = live_server.data_file(url)
        cut_mid_patch = False
        for _ in range(2000):
            if stored.stat().st_size > last:
                cut_mid_patch = run.proc.poll() is None
                break
            if run.proc.poll() is not None:
                break
            time.sleep(0.001)
        run.proc.kill()

    # The server keeps what arrived, including a part of a PATCH cut off by the kill.
    head = head_upload(url)
    assert head.status == 200, head
    kept = int(head.header("Upload-Offset") or "-1")
    assert last <= kept < SIZE, (last, kept)
    if cut_mid_patch:
        # Bytes of the cut PATCH were on disk before the kill: they must have been kept.
        assert kept > last, (last, kept)
    assert head.header("Upload-Length") == str(SIZE)
    with stored.open("rb") as fh:
        prefix = fh.read(kept)
    with data.open("rb") as fh:
        expected_prefix = fh.read(kept)
    assert sha256_bytes(prefix) == sha256_bytes(expected_prefix), "stored prefix differs"

    # Second run: same file, same URL storage -> resumes at the server's offset.
    with ClientRun(live_server, data, storage, stderr) as run:
        assert run.event() == ("url", url)
        assert run.event() == ("start", str(kept))
        for _ in range(SIZE // CHUNK + 2):
            kind, value = run.event()
            if kind == "done":
                break
            assert kind == "offset", (kind, value)
        assert (kind, value) == ("done", str(SIZE))
        assert run.proc.wait(timeout=EVENT_TIMEOUT) == 0

    head = head_upload(url)
    assert head.status == 200, head
    assert head.header("Upload-Offset") == str(SIZE)
    assert sha256_file(stored) == digest
