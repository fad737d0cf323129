"""Where the bench finds things, and the shape of its workloads (sizes, clients)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
BIN = Path(sys.executable).parent
RESULTS = REPO / "bench-results"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

MAIN = ("limit", "baseline", "uploadsvc", "nginx+uploadsvc", "@tus/server")  # the table's columns
TUS = "@tus/server"  # the peer users would pick instead: bench/tus_server.mjs
SMALL = 64 * KiB  # the small uploads' size
PATCH_8M = 8 * MiB
CHUNK = 64 * KiB  # chunk size of the chunked workload
CLIENTS = 32  # concurrent clients of the small-upload and HEAD workloads
CLIENT_PROCS = 2  # ... spread over this many client processes
DROP_SENT = 16 * MiB  # bytes a dropped PATCH delivers before it goes
DROP_REST = 64 * KiB  # what the resuming PATCH sends


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
