"""The seekable, read-only file that stores hand out for bytes they don't hold in one
local file: a final upload read through its partials, an S3 object."""

from __future__ import annotations

import io


class SizedReader(io.RawIOBase):
    """``size`` bytes read from ``position``, which ``seek`` and ``tell`` keep.

    Subclasses implement ``readinto`` from ``position`` (advancing it), and ``moved``
    when a seek must drop what they had open for the old position."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        position = base + offset
        if position < 0:
            raise ValueError("negative seek position")
        if position != self.position:
            self.moved()
            self.position = position
        return position

    def moved(self) -> None:
        """The position is about to change: nothing to drop by default."""
