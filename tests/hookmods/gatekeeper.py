"""Hooks that judge bytes: ``inspect`` refuses a file whose first bytes start with
``EVIL``, and ``check`` (a stand-in virus scanner) rejects a finished upload that holds
the EICAR test string anywhere. Each check is appended to ``GATEKEEPER_LOG`` when set
(gunicorn workers are other processes)."""

from __future__ import annotations

import os
from typing import BinaryIO

from uploadsvc.hooks import Rejected, UploadInfo

# The anti-virus test file's signature (harmless; every scanner knows it).
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
INSPECTED: list[tuple[str, int]] = []
CHECKED: list[str] = []


def _log(line: str) -> None:
    path = os.environ.get("GATEKEEPER_LOG")
    if path:
        with open(path, "a", encoding="ascii") as log:
            log.write(line + "\n")


class Gatekeeper:
    def inspect(self, upload: UploadInfo, first_bytes: bytes) -> None:
        INSPECTED.append((upload.id, len(first_bytes)))
        _log(f"inspect {upload.id} {len(first_bytes)}")
        if first_bytes.startswith(b"EVIL"):
            raise Rejected(415, "inspect: evil bytes")

    def check(self, upload: UploadInfo, reader: BinaryIO) -> bool:
        CHECKED.append(upload.id)
        _log(f"check {upload.id}")
        data = reader.read()
        if EICAR in data:
            raise Rejected(403, "infected: EICAR test file")
        return True
