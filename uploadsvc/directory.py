"""Listing a directory of per-upload files (data files, lock files) for cleanup."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path


def scan_files(directory: Path, id_of: Callable[[str], str | None]) -> list[tuple[str, datetime]]:
    """``(upload id, mtime)`` of each regular file whose name ``id_of`` maps to an id;
    names it maps to None aren't ours to judge and are left out.

    A list, not a generator: cleanup removes files while it works through it.
    """
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            upload_id = id_of(entry.name)
            if upload_id is None:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we looked
            if stat.S_ISREG(info.st_mode):
                found.append((upload_id, datetime.fromtimestamp(info.st_mtime, UTC)))
    return found
