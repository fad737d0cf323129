"""Where an upload's bytes are in the bucket: key names, segments and chains (pure).

No S3 here, only names, sizes and offsets: what a listing says about an upload, which
segments count, what a truncation keeps, which parts a completion needs. The package
docstring draws the layout; tests/test_s3_layout.py holds it in tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from ...protocol import is_upload_id

SEGMENTS = ".incomplete/"
# More segments than this in one part (clients sending tiny PATCHes) are merged into one
# at the start of the next PATCH, so listing an upload stays one request.
MAX_SEGMENTS = 32
_SEGMENT = re.compile(r"p(\d+)/(\d{20})")

# A segment as (start, size): its bytes are [start, start + size) of the upload.
Link = tuple[int, int]


class Entry(NamedTuple):
    """One object of a listing."""

    key: str
    size: int
    modified: datetime


@dataclass
class UploadState:
    """What one LIST says about an upload: its object and its segments."""

    final: int | None = None  # size of the finished object, if there is one
    segments: dict[int, dict[int, int]] = field(default_factory=dict)  # S -> start -> size
    modified: datetime | None = None

    def part_size(self, default: int) -> int:
        """The part size of the upload's segments (the newest base wins)."""
        best = None
        for size, segments in self.segments.items():
            bases = [start for start in segments if start % size == 0]
            if bases and (best is None or max(bases) > best[0]):
                best = (max(bases), size)
        return default if best is None else best[1]


@dataclass(frozen=True)
class Chain:
    """The segments that count, from the base on: (start, size) in order."""

    part_size: int
    base: int
    links: tuple[Link, ...]

    @property
    def end(self) -> int:
        return self.links[-1][0] + self.links[-1][1] if self.links else self.base


@dataclass(frozen=True)
class Layout:
    """The names under one key prefix."""

    prefix: str

    def key(self, upload_id: str) -> str:
        """The finished object's key (and its multipart upload's); refuses non-ids, so
        one upload's names are never another's."""
        if not is_upload_id(upload_id):
            raise ValueError(f"unsafe upload id {upload_id!r}")
        return f"{self.prefix}{upload_id}"

    def segment_key(self, upload_id: str, part_size: int, start: int) -> str:
        return f"{self.key(upload_id)}{SEGMENTS}p{part_size}/{start:020d}"

    def segment_keys(self, upload_id: str, state: UploadState) -> list[str]:
        """Every segment of the upload, whatever its part size."""
        return [
            self.segment_key(upload_id, size, start)
            for size, segments in state.segments.items()
            for start in segments
        ]

    def state(self, upload_id: str, entries: Iterable[Entry]) -> UploadState:
        """The upload's object and segments among a listing of its key prefix."""
        key = self.key(upload_id)
        upload = UploadState()
        for entry in entries:
            if entry.key == key:
                upload.final = entry.size
            else:
                match = _SEGMENT.fullmatch(entry.key.removeprefix(key + SEGMENTS))
                if not entry.key.startswith(key + SEGMENTS) or match is None:
                    continue  # another upload whose id starts with ours
                size = int(match.group(1))
                upload.segments.setdefault(size, {})[int(match.group(2))] = entry.size
            if upload.modified is None or entry.modified > upload.modified:
                upload.modified = entry.modified
        return upload

    def upload_of_object(self, key: str) -> str | None:
        """The upload whose object or segment ``key`` is, or None: not a name we make."""
        if not key.startswith(self.prefix):
            return None
        upload_id, dot, tail = key[len(self.prefix) :].partition(".")
        if not dot or (tail.startswith(SEGMENTS[1:]) and "/" in tail):
            return upload_id if is_upload_id(upload_id) else None
        return None

    def upload_of_multipart(self, key: str) -> str | None:
        """The upload a multipart upload of ``key`` belongs to, or None."""
        if not key.startswith(self.prefix):
            return None
        upload_id = key[len(self.prefix) :]
        return upload_id if is_upload_id(upload_id) else None


def chain_from(segments: Mapping[int, int], part_size: int, base: int) -> Chain | None:
    """The segments following one another from ``base``, or None if none starts there."""
    if base not in segments:
        return None
    links = []
    position = base
    for _ in range(len(segments)):  # each segment at most once
        size = segments.get(position)
        if size is None:
            break
        links.append((position, size))
        if size == 0:
            break
        position += size
    return Chain(part_size, base, tuple(links))


def chain_of(upload: UploadState, default_part_size: int) -> Chain | None:
    """The chain from the upload's base (its largest segment start on a part boundary)."""
    part_size = upload.part_size(default_part_size)
    segments = upload.segments.get(part_size, {})
    bases = [start for start in segments if start % part_size == 0]
    return chain_from(segments, part_size, max(bases)) if bases else None


def stale_segments(upload: UploadState, chain: Chain) -> list[tuple[int, int]]:
    """(part size, start) of the segments outside the chain: those of earlier parts and
    any strays, all recorded or never counted once a PATCH begins at ``chain.end``."""
    keep = {start for start, _ in chain.links}
    return [
        (size, start)
        for size, segments in upload.segments.items()
        for start in segments
        if size != chain.part_size or start not in keep
    ]


@dataclass(frozen=True)
class Truncation:
    """What ``truncate(size)`` does to the segments of ``part_size``."""

    shorten: tuple[Link, ...]  # (start, length): keep only the first length bytes
    doomed: tuple[int, ...]  # starts of segments to delete


def truncation(upload: UploadState, chain: Chain, size: int) -> Truncation | None:
    """Back to the part ``size`` falls in (its segments are kept until the next PATCH
    begins); None if the segments don't reach ``size``."""
    part_size = chain.part_size
    segments = upload.segments.get(part_size, {})
    base = size - size % part_size
    kept = chain_from(segments, part_size, base) if base < chain.base else chain
    if kept is None or kept.end < size:
        return None
    shorten = tuple(
        (start, size - start)
        for start, length in kept.links
        # The segment ``size`` falls in keeps only its bytes before ``size``.
        if start < size < start + length or (start == size == base and length)
    )
    doomed = tuple(start for start in segments if start >= size and start != base)
    return Truncation(shorten, doomed)


def part_number(base: int, part_size: int) -> int:
    """The multipart upload's part that begins at ``base`` (numbered from 1)."""
    return base // part_size + 1


def bad_part(chain: Chain, last: int, parts: Mapping[int, tuple[str, int]]) -> int | None:
    """The first of parts 1..``last`` missing from ``parts`` (number -> (ETag, size)) or
    of the wrong size (every part the chain ends past is whole), or None."""
    for number in range(1, last + 1):
        etag, size = parts.get(number, ("", -1))
        expected = chain.part_size if number * chain.part_size <= chain.end else None
        if not etag or (expected is not None and size != expected):
            return number
    return None
