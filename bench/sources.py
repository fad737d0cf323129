"""The request bodies the load generator sends."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from settings import CHUNK, MiB


@dataclass
class Sources:
    """Request bodies in /dev/shm: sendfile reads them without touching the disk."""

    directory: Path
    plain: Path  # 1 GiB of random bytes
    chunked: Path  # the same, framed in CHUNK-sized chunks

    @classmethod
    def make(cls, size: int) -> Sources:
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        directory = Path(tempfile.mkdtemp(prefix="uploadsvc-bench-", dir=base))
        plain, chunked = directory / "plain.bin", directory / "chunked.bin"
        block = os.urandom(16 * MiB)
        with plain.open("wb") as fh:
            for _ in range(size // len(block)):
                fh.write(block)
        with plain.open("rb") as src, chunked.open("wb") as out:
            for piece in iter(lambda: src.read(CHUNK), b""):
                out.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            out.write(b"0\r\n\r\n")
        return cls(directory, plain, chunked)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
