"""`flask --app wsgi cleanup` run again and again, two at a time, beside a busy gunicorn.

Several uploads stream in over threads while cleanups run as subprocesses on the same
data dir. Some other uploads are left to expire (the server runs with a short
UPLOADSVC_EXPIRE_AFTER), and orphans are planted. Every live upload must complete
intact; the expired ones must answer 410 with their files gone; old orphans must go and
young ones stay (the grace period).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from uploadsvc.config import Settings

from .conftest import (
    REPO_ROOT,
    VENV_BIN,
    KiB,
    LiveServer,
    MiB,
    head_upload,
    patch_upload,
    random_bytes,
    sha256_bytes,
    sha256_file,
    upload_id,
)

pytestmark = pytest.mark.live

# Short enough to watch uploads expire, long enough that a live upload's next PATCH
# (a few hundredths of a second away) always comes before its expiry.
EXPIRE_AFTER = 3
EXPIRING = 4
LIVE_CLIENTS = 6
# Clients keep starting uploads until the cleanups have had their rounds (bounded).
MAX_UPLOADS_PER_CLIENT = 40
SIZE = 2 * MiB
CHUNK = 64 * KiB
PAUSE = 0.05  # seconds between PATCHes: each upload spans several cleanup runs
MIN_ROUNDS_DURING_TRAFFIC = 3
DEADLINE = 120.0  # seconds for the whole dance
RETRIES = 50  # 423 answers a client tolerates on one chunk
ORPHAN_AGE = 2 * 60 * 60  # well past the default grace of one hour
REMOVALS = ("expired", "completed", "gone", "purged", "orphan_files", "orphan_locks")


@dataclass
class CleanupRuns:
    reports: list[dict[str, Any]] = field(default_factory=list)
    removed: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in REMOVALS})
    skipped: set[str] = field(default_factory=set)

    def add(self, report: dict[str, Any]) -> None:
        self.reports.append(report)
        for kind in REMOVALS:
            self.removed[kind].update(report[kind])
        self.skipped.update(report["skipped"])


def server_settings(server: LiveServer) -> dict[str, str]:
    """The server's UPLOADSVC_* environment, read from its master process: cleanup must
    see exactly what the server sees (data dir, registry, locker)."""
    raw = Path(f"/proc/{server.proc.pid}/environ").read_bytes()
    pairs = (item.decode().partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs if name.startswith("UPLOADSVC_")}


def run_cleanup(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPLOADSVC_")}
    env.update(server_settings(server))
    assert env["UPLOADSVC_DATA_DIR"] == str(server.data_dir)
    return subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "wsgi", "cleanup", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def cleanup_round(server: LiveServer, runs: CleanupRuns) -> None:
    """Two cleanups at once, each reporting as JSON."""
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(run_cleanup(server, "--json")))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["failures"] == [], report
        runs.add(report)


def upload(server: LiveServer, data: bytes) -> str:
    """Create an upload and PATCH it chunk by chunk; return its URL."""
    url = server.create_upload(len(data))
    offset = 0
    for _ in range(len(data) // CHUNK + RETRIES):
        if offset == len(data):
            return url
        resp = patch_upload(url, offset, data[offset : offset + CHUNK])
        if resp.status == 423:  # busy: only a cleanup looking at it could do that
            time.sleep(0.05)
            continue
        assert resp.status == 204, (url, offset, resp.status, resp.body)
        offset = int(resp.header("Upload-Offset") or -1)
        time.sleep(PAUSE)
    raise AssertionError(f"{url}: stuck at {offset} of {len(data)}")


def client(server: LiveServer, number: int, stop: threading.Event) -> list[tuple[str, str]]:
    """Upload one file after another until ``stop``; return (URL, sha256) of each."""
    done = []
    for round_no in range(MAX_UPLOADS_PER_CLIENT):
        data = random_bytes(SIZE, seed=1000 * number + round_no)
        done.append((upload(server, data), sha256_bytes(data)))
        if stop.is_set():
            return done
    raise AssertionError(f"client {number}: never told to stop")


def plant(path: Path, age: float) -> None:
    path.write_bytes(b"left behind")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def test_cleanup_beside_live_uploads(server_factory: Callable[..., LiveServer]) -> None:
    server = server_factory(UPLOADSVC_EXPIRE_AFTER=str(EXPIRE_AFTER))
    files, locks = server.data_dir / "files", server.data_dir / "locks"

    expiring = []
    for _ in range(EXPIRING):
        url = server.create_upload(1000)
        assert patch_upload(url, 0, b"e" * 100).status == 204
        expiring.append(upload_id(url))
    expired_after = time.monotonic() + EXPIRE_AFTER

    old_file, old_lock, young_file = "a1" * 16, "b2" * 16, "c3" * 16
    plant(files / old_file, ORPHAN_AGE)
    plant(files / young_file, 0)
    # PostgreSQL's advisory locks leave no files behind: only lock files can be orphans.
    lock_files = Settings.from_env(server_settings(server)).locker == "file"
    if lock_files:
        plant(locks / f"{old_lock}.lock", ORPHAN_AGE)

    runs = CleanupRuns()
    deadline = time.monotonic() + DEADLINE
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=LIVE_CLIENTS) as pool:
        futures: list[Future[list[tuple[str, str]]]] = [
            pool.submit(client, server, n, stop) for n in range(LIVE_CLIENTS)
        ]
        rounds = 0
        try:
            # Past the expiry too, so that cleanups find the expired uploads while
            # the live ones are still streaming in.
            while rounds < MIN_ROUNDS_DURING_TRAFFIC or time.monotonic() < expired_after:
                assert time.monotonic() < deadline, "cleanups took too long"
                assert not any(f.done() for f in futures), [f.exception() for f in futures]
                cleanup_round(server, runs)
                rounds += 1
        finally:
            stop.set()
        live = [item for future in futures for item in future.result()]
    cleanup_round(server, runs)  # and once more after the traffic

    # Every live upload complete and intact, and never touched by a cleanup.
    live_ids = {upload_id(url) for url, _ in live}
    for url, digest in live:
        resp = head_upload(url)
        assert resp.status == 200, (url, resp.status)
        assert resp.header("Upload-Offset") == str(SIZE)
        assert sha256_file(server.data_file(url)) == digest
    for kind, ids in runs.removed.items():
        assert not ids & live_ids, (kind, ids & live_ids)

    # The expired ones: their files removed, their URLs answering 410.
    assert runs.removed["expired"] == set(expiring)
    for ident in expiring:
        assert not (files / ident).exists()
        assert not (locks / f"{ident}.lock").exists()
    for ident in expiring:
        assert head_upload(server.endpoint + ident).status == 410

    # Old orphans gone, the young one spared by the grace period.
    assert runs.removed["orphan_files"] == {old_file}
    assert runs.removed["orphan_locks"] == ({old_lock} if lock_files else set())
    assert not (files / old_file).exists()
    assert not (locks / f"{old_lock}.lock").exists()
    assert (files / young_file).exists()

    # Nothing left to do: nothing for cron to mail.
    quiet = run_cleanup(server)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")

    print(
        f"\ncleanup: {len(runs.reports)} runs (two at once; {rounds} rounds during uploads, "
        f"one after) beside {len(live)} uploads of {SIZE // MiB} MiB, all intact"
    )
    for kind, ids in runs.removed.items():
        if ids:
            print(f"  removed {kind}: {len(ids)} ({', '.join(sorted(ids))})")
    print(f"  skipped busy: {len(runs.skipped)}")
