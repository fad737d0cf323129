"""The "baseline": the obvious Flask app under gunicorn, reading ``request.stream`` to a file.

What a Flask shop writes on a first try: no registry, no locks, no checks; the body is
copied with ``shutil.copyfileobj`` in 1 MiB reads and fsynced before the answer (as
uploadsvc does with UPLOADSVC_FSYNC=1). Same routes as bench/limit_server.py.

    cd bench && BENCH_DATA_DIR=... gunicorn -k gthread -w 2 --threads 8 baseline_app:app
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from flask import Flask, request

app = Flask(__name__)
DATA = Path(os.environ.get("BENCH_DATA_DIR", "bench-data"))
DATA.mkdir(parents=True, exist_ok=True)

Answer = tuple[str, int, dict[str, str]]


@app.errorhandler(FileNotFoundError)
def not_found(error: FileNotFoundError) -> Answer:
    return "", 404, {}


@app.post("/files/")
def create() -> Answer:
    upload_id = secrets.token_hex(16)
    (DATA / upload_id).touch()
    return "", 201, {"Location": f"/files/{upload_id}"}


@app.route("/files/<upload_id>", methods=["PATCH"])
def patch(upload_id: str) -> Answer:
    with (DATA / upload_id).open("r+b") as fh:
        fh.seek(int(request.headers.get("Upload-Offset", "0")))
        shutil.copyfileobj(request.stream, fh, 1024 * 1024)
        fh.flush()
        os.fsync(fh.fileno())
        return "", 204, {"Upload-Offset": str(fh.tell())}


@app.route("/files/<upload_id>", methods=["HEAD"])
def head(upload_id: str) -> Answer:
    return "", 200, {"Upload-Offset": str((DATA / upload_id).stat().st_size)}


@app.delete("/files/<upload_id>")
def delete(upload_id: str) -> Answer:
    (DATA / upload_id).unlink(missing_ok=True)
    return "", 204, {}
