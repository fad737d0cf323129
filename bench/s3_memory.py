"""Resident memory per S3 PATCH in flight, against moto's S3 server (tests/s3.py).

Each measurement runs in a fresh process: N threads each append ``parts`` parts to an
upload of their own through ``S3Store``, in 64 KiB chunks as a request body arrives,
while a sampler records the peak RSS; printed per PATCH, also in parts. "continuing"
starts each PATCH 3 MiB into a part an earlier PATCH began (a resumed upload).

    .venv/bin/python bench/s3_memory.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    return 0


def measure(endpoint: str, bucket: str, threads: int, part_mib: int, parts: int, front: int) -> str:
    from tests.s3 import AWS_ENV

    os.environ.update(AWS_ENV)
    from uploadsvc.storage.s3 import S3Store

    store = S3Store(bucket, "bench/", endpoint_url=endpoint, part_size=part_mib * MiB)
    ids = [f"{n:032x}" for n in range(threads)]
    for upload_id in ids:
        store.create(upload_id)
        if front:
            store.append(upload_id, 0, iter([b"\x5a" * (front * MiB)]))
    store.append(ids[0], front * MiB, iter([]))  # the client's first connection
    chunk = b"\x5a" * (64 * 1024)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.005)

    def patch(upload_id: str) -> None:
        body = (chunk for _ in range(parts * part_mib * 16 + 7))
        store.append(upload_id, front * MiB, body)

    base = rss()
    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=patch, args=(upload_id,)) for upload_id in ids]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    sampler.join()
    per_patch = (peak[0] - base) / threads
    where = "continuing a part" if front else "from a part boundary"
    return (
        f"{threads} PATCHes of {parts} x {part_mib} MiB parts, {where}: "
        f"{per_patch / MiB:.1f} MiB per PATCH ({per_patch / (part_mib * MiB):.2f} parts)"
    )


def main() -> None:
    from tests.s3 import start_s3, stop_s3

    server = start_s3(Path(tempfile.mkdtemp(prefix="s3-memory-")))
    try:
        for front in (0, 3):
            for threads in (1, 8):
                bucket = server.new_bucket()
                args = [server.endpoint, bucket, str(threads), "8", "3", str(front)]
                result = subprocess.run(
                    [sys.executable, __file__, "--measure", *args],
                    capture_output=True,
                    text=True,
                    check=False,
                    cwd=ROOT,
                )
                print(result.stdout.strip() or result.stderr[-2000:])
                server.remove_bucket(bucket)
    finally:
        stop_s3(server)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1:2] == ["--measure"]:
        endpoint, bucket, threads, part_mib, parts, front = sys.argv[2:8]
        print(measure(endpoint, bucket, int(threads), int(part_mib), int(parts), int(front)))
    else:
        main()
