"""Which upload URL belongs to which local file: fingerprints and the state file.

A fingerprint names one file's bytes as sent to one server: the endpoint, the absolute
path, the size, the modification time and a hash of the first MiB. Change any of them
(edit the file, point at another server) and the next run starts a new upload instead
of appending to one made of other bytes.

The state file is a small JSON object ``{"version": 1, "uploads": {fingerprint:
{"url": ..., "stored_at": unix time}}}``, rewritten atomically under a lock file so
several uploaders running at once don't lose each other's entries. It implements
tuspy's ``Storage`` interface (``get_item``, ``set_item``, ``remove_item``), the one
tuspy's uploader stores URLs in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock
from tusclient.storage.interface import Storage

HEAD_BYTES = 1024 * 1024  # the part of the file hashed into the fingerprint
# Entries older than this are dropped when the file is rewritten: the server forgets
# unfinished uploads after a day (UPLOADSVC_EXPIRE_AFTER) anyway.
ENTRY_TTL = 30 * 24 * 60 * 60
MAX_ENTRIES = 1000
LOCK_TIMEOUT = 10.0
VERSION = 1


def default_state_path() -> Path:
    """``$XDG_CACHE_HOME/uploadsvc-upload/urls.json``, else ``~/.cache/...``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "uploadsvc-upload" / "urls.json"


def fingerprint(endpoint: str, path: Path) -> str:
    """A stable key for ``path`` as uploaded to ``endpoint`` (see the module docstring)."""
    absolute = path.resolve()
    info = absolute.stat()
    head = hashlib.sha256()
    with absolute.open("rb") as stream:
        head.update(stream.read(HEAD_BYTES))
    parts = [
        endpoint.rstrip("/") + "/",
        str(absolute),
        info.st_size,
        info.st_mtime_ns,
        head.hexdigest(),
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class StateFile(Storage):
    """Upload URLs by fingerprint, in one JSON file (see the module docstring)."""

    def __init__(self, path: Path, *, clock: Any = time.time) -> None:
        self.path = path
        self.clock = clock

    def get_item(self, key: str) -> str | None:
        entry = self._read().get(key)
        url = entry.get("url") if isinstance(entry, dict) else None
        return url if isinstance(url, str) else None

    def set_item(self, key: str, value: str) -> None:
        with self._editing() as uploads:
            uploads[key] = {"url": value, "stored_at": self.clock()}

    def remove_item(self, key: str) -> None:
        with self._editing() as uploads:
            uploads.pop(key, None)

    # -- the file ---------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            print(
                f"warning: {self.path} is not valid JSON; starting with an empty one",
                file=sys.stderr,
            )
            return {}
        uploads = data.get("uploads") if isinstance(data, dict) else None
        return uploads if isinstance(uploads, dict) else {}

    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, Any]]:
        """Read, let the caller change, prune and write back atomically, all under the lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{self.path}.lock", timeout=LOCK_TIMEOUT):
            uploads = self._read()
            yield uploads
            self._write(self._pruned(uploads))

    def _pruned(self, uploads: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()

        def stored_at(item: tuple[str, Any]) -> float:
            value = item[1].get("stored_at") if isinstance(item[1], dict) else None
            return float(value) if isinstance(value, int | float) else 0.0

        fresh = [item for item in uploads.items() if now - stored_at(item) < ENTRY_TTL]
        fresh.sort(key=stored_at, reverse=True)
        return dict(fresh[:MAX_ENTRIES])

    def _write(self, uploads: dict[str, Any]) -> None:
        payload = json.dumps({"version": VERSION, "uploads": uploads}, indent=1, sort_keys=True)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".urls-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(payload + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
