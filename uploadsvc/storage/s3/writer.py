"""One PATCH's body into multipart parts and segments, about one part in memory."""

from __future__ import annotations

from .bucket import Bucket
from .layout import Chain, Layout, Link, part_number

MIB = 1024 * 1024
# A PATCH's part buffer grows with its body up to this size (a small PATCH stays
# small); past it, it takes the whole part at once (see PartWriter).
GROW_IN_STEPS = 1 * MIB


class PartWriter:
    """One PATCH's body into parts and segments, holding at most one part in memory.

    One buffer per PATCH: it grows with the body up to ``GROW_IN_STEPS`` (a small
    PATCH stays small), then takes the rest of the part at once, and once it holds a
    whole part it is reused, filled in place, for every later one. Growing a fresh
    buffer per part by appending cost about half a part more resident memory per PATCH
    (reallocation's slack and copies, a fragmented heap); botocore sends a bytearray as
    it is, so nothing else copies a part."""

    def __init__(self, bucket: Bucket, layout: Layout, upload_id: str, chain: Chain) -> None:
        self.bucket = bucket
        self.layout = layout
        self.upload_id = upload_id
        self.key = layout.key(upload_id)
        self.part_size = chain.part_size
        self.base = chain.base
        self.links: list[Link] = list(chain.links)  # this part's earlier segments
        self.start = chain.end  # where the buffered bytes begin
        self.buffer = bytearray()
        self.filled = 0  # bytes of ``buffer`` in use (it may be longer: reused)
        self._multipart: str | None = None

    @property
    def position(self) -> int:
        return self.start + self.filled

    def _segment_key(self, start: int) -> str:
        return self.layout.segment_key(self.upload_id, self.part_size, start)

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        # Each round fills the part or takes the whole rest of the chunk.
        for _ in range(len(view) // self.part_size + 2):
            if not view:
                return
            room = self.base + self.part_size - self.position
            piece = view[:room]
            end = self.filled + len(piece)
            if end > len(self.buffer) and end > GROW_IN_STEPS:
                # A big PATCH: room for the rest of the part at once, exactly, instead
                # of growing by reallocation (copies, slack, a fragmented heap).
                whole = bytearray(self.base + self.part_size - self.start)
                whole[: self.filled] = memoryview(self.buffer)[: self.filled]
                self.buffer = whole
            if end <= len(self.buffer):
                self.buffer[self.filled : end] = piece  # in place: no allocation
            else:
                del self.buffer[self.filled :]
                self.buffer += piece
            self.filled = end
            view = view[room:]
            self.flush_full_part()

    def flush_full_part(self) -> None:
        """When the part is full: upload it, then mark the next base."""
        if self.position < self.base + self.part_size:
            return
        earlier = [link for link in self.links if link[0] < self.start and link[1]]
        if earlier:
            # The part began in an earlier PATCH: its first bytes go in front, in the
            # same buffer, which then holds the whole part (and is kept for the next).
            del self.buffer[self.filled :]
            self.buffer[:0] = self.bucket.gather(
                (self._segment_key(start), length) for start, length in earlier
            )
            self.filled = len(self.buffer)
        number = part_number(self.base, self.part_size)
        if self._multipart is None:
            self._multipart = self.bucket.multipart_id(self.key, create=True)
            assert self._multipart is not None
        del self.buffer[self.filled :]
        self.bucket.upload_part(self.key, self._multipart, number, self.buffer)
        next_base = self.base + self.part_size
        # The marker makes the part count: until it exists the chain ends where it did.
        self.bucket.put(self._segment_key(next_base), b"")
        self.base = self.start = next_base
        self.links = [(next_base, 0)]
        if len(self.buffer) != self.part_size:
            self.buffer = bytearray()  # not a whole part's size: not worth keeping
        self.filled = 0

    def save_rest(self) -> None:
        """Keep the bytes that don't fill a part as a segment the next PATCH continues."""
        if self.filled:
            del self.buffer[self.filled :]  # shrinks in place
            self.bucket.put(self._segment_key(self.start), self.buffer)
            self.links.append((self.start, self.filled))
            self.start += self.filled
        self.buffer = bytearray()
        self.filled = 0
