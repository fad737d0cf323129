"""Several stored byte ranges read as one seekable file: a final upload's bytes.

A final upload (concatenation) owns no copy of its partials' bytes; it is read as the
concatenation of theirs. Copying them would let a ~100-byte POST make the server write
gigabytes, and one partial named ten times would be stored ten times.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, BinaryIO

from .seekable import SizedReader

READ_BUFFER = 1024 * 1024


class ChainedReader(SizedReader):
    """Reads ``segments`` (an open file and how many of its bytes belong, from its
    start), one after another. The same file may appear in several segments: it is
    sought to the right place before every read, never trusted to be there."""

    def __init__(self, segments: Sequence[tuple[BinaryIO, int]]) -> None:
        self.segments = list(segments)
        self.starts: list[int] = []
        total = 0
        for _, size in self.segments:
            self.starts.append(total)
            total += size
        super().__init__(total)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        # Skip empty segments; stop at the end.
        for index, (file, size) in enumerate(self.segments):
            start = self.starts[index]
            if not start <= self.position < start + size or not len(view):
                continue
            within = self.position - start
            file.seek(within)
            data = file.read(min(len(view), size - within))
            if not data:
                raise OSError(f"stored bytes ended at {within} of a {size}-byte segment")
            view[: len(data)] = data
            self.position += len(data)
            return len(data)
        return 0

    def close(self) -> None:
        if not self.closed:
            for file in {id(file): file for file, _ in self.segments}.values():
                file.close()
        super().close()


def chained(segments: Sequence[tuple[BinaryIO, int]]) -> BinaryIO:
    """A buffered, seekable file over ``segments`` (see ``ChainedReader``)."""
    return io.BufferedReader(ChainedReader(segments), buffer_size=READ_BUFFER)
