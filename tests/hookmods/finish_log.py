"""A hook module that counts finishes: each post-finish (and pre-finish) is recorded in
``EVENTS`` (in-process apps) and, when ``FINISH_EVENTS_FILE`` names a file, appended to
it as a line (gunicorn workers are other processes)."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from uploadsvc.records import UploadInfo

EVENTS: list[tuple[str, str]] = []
_guard = threading.Lock()


def _record(event: str, upload_id: str) -> None:
    with _guard:
        EVENTS.append((event, upload_id))
        path = os.environ.get("FINISH_EVENTS_FILE")
        if path:
            with open(path, "a", encoding="ascii") as log:
                log.write(f"{event} {upload_id}\n")


def count(event: str, upload_id: str) -> int:
    with _guard:
        return EVENTS.count((event, upload_id))


class FinishLog:
    def pre_finish(self, upload: UploadInfo) -> Mapping[str, str]:
        _record("pre-finish", upload.id)
        return {"X-Finished": upload.id}

    def post_finish(self, upload: UploadInfo) -> None:
        _record("post-finish", upload.id)
