"""storage/chained.py: a final upload's bytes read through its partials' files."""

from __future__ import annotations

import io
import random
from typing import BinaryIO

import pytest

from uploadsvc.storage.chained import ChainedReader, chained

Segments = list[tuple[BinaryIO, int]]


def segments(*pieces: bytes, shared: bool = False) -> tuple[Segments, bytes]:
    """Segments over ``pieces`` and the bytes they make; ``shared``: one file holding
    them all, named three times (a partial named three times in a final)."""
    if shared:
        whole = io.BytesIO(b"".join(pieces))
        return [(whole, len(whole.getvalue()))] * 3, whole.getvalue() * 3
    files: Segments = [(io.BytesIO(p + b"-unrecorded tail-"), len(p)) for p in pieces]
    return files, b"".join(pieces)


@pytest.mark.parametrize(
    "pieces",
    [(b"",), (b"abc",), (b"ab", b"", b"cde", b""), (b"x" * 5000, b"y", b"z" * 3000)],
)
def test_reads_the_segments_in_order_and_no_further(pieces: tuple[bytes, ...]) -> None:
    parts, whole = segments(*pieces)
    with chained(parts) as buffered:  # as downloads read it
        assert buffered.read() == whole
    raw = ChainedReader(segments(*pieces)[0])
    assert raw.readall() == whole
    assert raw.read(10) == b""


def test_seeks_anywhere_even_in_a_file_named_several_times() -> None:
    rng = random.Random(7)
    parts, whole = segments(b"0123456789", shared=True)
    file = chained(parts)
    for _ in range(200):
        start = rng.randint(0, len(whole) + 3)
        size = rng.randint(0, 25)
        assert file.seek(start) == start
        assert file.read(size) == whole[start : start + size]
    assert file.seek(-4, io.SEEK_END) == len(whole) - 4
    assert file.read() == whole[-4:]
    with pytest.raises(ValueError):
        file.seek(-1)


def test_a_short_file_is_an_error_not_a_short_download() -> None:
    raw = ChainedReader([(io.BytesIO(b"abc"), 5)])
    with pytest.raises(OSError, match="ended at 3 of a 5-byte segment"):
        raw.readall()


def test_close_closes_each_file_once() -> None:
    shared = io.BytesIO(b"abc")
    other = io.BytesIO(b"d")
    chained([(shared, 3), (other, 1), (shared, 3)]).close()
    assert shared.closed and other.closed
