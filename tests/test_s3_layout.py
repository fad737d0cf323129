"""The S3 layout as tables: names, listings, chains, truncations and completions, with
no S3 server (storage/s3/layout.py is pure). Part size 10 keeps the numbers readable."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from uploadsvc.storage.s3.layout import (
    Chain,
    Entry,
    Layout,
    Truncation,
    UploadState,
    bad_part,
    chain_from,
    chain_of,
    part_number,
    stale_segments,
    truncation,
)

S = 10  # part size
ID = "0123456789abcdef0123456789abcdef"
LAYOUT = Layout("uploads/")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(minute: int) -> datetime:
    return T0.replace(minute=minute)


def state(segments: dict[int, int], part_size: int = S, final: int | None = None) -> UploadState:
    return UploadState(final=final, segments={part_size: dict(segments)} if segments else {})


# -- names ------------------------------------------------------------------------------


def test_keys() -> None:
    assert LAYOUT.key(ID) == f"uploads/{ID}"
    assert LAYOUT.segment_key(ID, S, 30) == f"uploads/{ID}.incomplete/p10/{30:020d}"
    assert Layout("").key("abcdefgh") == "abcdefgh"


@pytest.mark.parametrize(
    "upload_id",
    ["", "abc", "abcdefg", "../x", "../xxxxxxxx", "abcdefgh/", "abcdefgh.", "é" * 8, "a" * 65],
)
def test_keys_refuse_what_is_not_an_upload_id(upload_id: str) -> None:
    with pytest.raises(ValueError, match="unsafe upload id"):
        LAYOUT.key(upload_id)
    with pytest.raises(ValueError, match="unsafe upload id"):
        LAYOUT.segment_key(upload_id, S, 0)


@pytest.mark.parametrize(
    ("key", "upload"),
    [
        (f"uploads/{ID}", ID),
        (f"uploads/{ID}.incomplete/p10/{0:020d}", ID),
        (f"uploads/{ID}.incomplete/anything/else", ID),
        ("uploads/abcdefgh", "abcdefgh"),
        ("uploads/" + "z" * 64, "z" * 64),
        # Not names we make: left alone by cleanup.
        ("uploads/notes.txt", None),
        (f"uploads/{ID}.partial", None),
        (f"uploads/{ID}.incomplete", None),
        ("uploads/sub/x", None),
        ("uploads/abc", None),
        ("uploads/" + "z" * 65, None),
        (f"elsewhere/{ID}", None),
        (f"uploads2{ID}", None),
        ("uploads/", None),
    ],
)
def test_which_upload_an_object_key_is(key: str, upload: str | None) -> None:
    assert LAYOUT.upload_of_object(key) == upload


@pytest.mark.parametrize(
    ("key", "upload"),
    [
        (f"uploads/{ID}", ID),
        (f"uploads/{ID}.incomplete/p10/{0:020d}", None),
        ("uploads/short", None),
        (f"other/{ID}", None),
    ],
)
def test_which_upload_a_multipart_upload_is(key: str, upload: str | None) -> None:
    assert LAYOUT.upload_of_multipart(key) == upload


# -- what a listing says ----------------------------------------------------------------


def segment(start: int, size: int, minute: int = 0, part_size: int = S) -> Entry:
    return Entry(LAYOUT.segment_key(ID, part_size, start), size, at(minute))


def test_a_listing_read_as_an_upload() -> None:
    longer = ID + "9"  # listed too: its id starts with ours
    entries = [
        segment(0, 0, 1),
        segment(10, 4, 3),
        Entry(f"uploads/{longer}.incomplete/p10/{0:020d}", 7, at(9)),
        segment(0, 2, 2, part_size=12),
        Entry(f"uploads/{ID}.incomplete/p10/12", 5, at(8)),  # not 20 digits: not ours
        Entry(f"uploads/{ID}.incomplete/x10/{0:020d}", 5, at(8)),
    ]
    upload = LAYOUT.state(ID, entries)
    assert upload.final is None
    assert upload.segments == {10: {0: 0, 10: 4}, 12: {0: 2}}
    assert upload.modified == at(3)
    finished = LAYOUT.state(ID, [Entry(f"uploads/{ID}", 123, at(5)), segment(0, 0, 1)])
    assert (finished.final, finished.modified) == (123, at(5))
    assert LAYOUT.state(ID, []) == UploadState()


@pytest.mark.parametrize(
    ("segments", "part_size"),
    [
        ({}, S),  # none: the default
        ({10: {0: 3}}, 10),
        ({10: {0: 3, 10: 0}, 12: {0: 5}}, 10),  # base 10 beats base 0
        ({10: {0: 3}, 12: {0: 12, 12: 0}}, 12),
        ({12: {5: 3}}, S),  # no base at all: the default
    ],
)
def test_the_part_size_is_the_newest_bases(
    segments: dict[int, dict[int, int]], part_size: int
) -> None:
    assert UploadState(segments=segments).part_size(S) == part_size


# -- chains -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segments", "base", "links", "end"),
    [
        ({0: 0}, 0, ((0, 0),), 0),  # just created
        ({0: 4}, 0, ((0, 4),), 4),
        ({0: 4, 4: 3}, 0, ((0, 4), (4, 3)), 7),
        ({0: 4, 6: 3}, 0, ((0, 4),), 4),  # a gap: the chain ends before it
        ({0: 4, 4: 0, 9: 9}, 0, ((0, 4), (4, 0)), 4),  # an empty segment ends it
        ({0: 4, 4: 6, 10: 0}, 10, ((10, 0),), 10),  # a marker: the part is uploaded
        ({0: 4, 4: 6, 10: 0, 20: 0}, 20, ((20, 0),), 20),  # and another
        ({0: 4, 4: 6, 10: 3, 13: 2}, 10, ((10, 3), (13, 2)), 15),
        ({30: 12}, 30, ((30, 12),), 42),  # past the part (after a merge, say)
        ({4: 3}, None, None, None),  # no base
    ],
)
def test_chains(
    segments: dict[int, int],
    base: int | None,
    links: tuple[tuple[int, int], ...] | None,
    end: int | None,
) -> None:
    chain = chain_of(state(segments), S)
    if base is None:
        assert chain is None
        return
    assert chain == Chain(S, base, links or ())
    assert chain.end == end


def test_a_chain_from_a_start_that_is_no_segment_is_none() -> None:
    assert chain_from({0: 4}, S, 10) is None
    assert chain_from({0: 4, 4: 6, 10: 0}, S, 0) == Chain(S, 0, ((0, 4), (4, 6), (10, 0)))


def test_a_chain_in_an_older_part_size_is_read_in_it() -> None:
    chain = chain_of(state({0: 7, 7: 1}, part_size=12), S)
    assert chain == Chain(12, 0, ((0, 7), (7, 1)))


@pytest.mark.parametrize(
    ("upload", "stale"),
    [
        (state({0: 4, 4: 3}), []),
        (state({0: 4, 4: 6, 10: 0, 20: 2}), [(10, 0), (10, 4), (10, 10)]),
        (state({0: 4, 4: 6, 10: 2, 17: 3}), [(10, 0), (10, 4), (10, 17)]),
        # Another part size's: all stale, whatever their starts.
        (UploadState(segments={12: {0: 12, 12: 0}, 10: {0: 1}}), [(10, 0), (12, 0)]),
    ],
)
def test_stale_segments_are_those_outside_the_chain(
    upload: UploadState, stale: list[tuple[int, int]]
) -> None:
    chain = chain_of(upload, S)
    assert chain is not None
    assert sorted(stale_segments(upload, chain)) == stale


# -- truncation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segments", "size", "cut"),
    [
        # Within the last segment: it keeps its first bytes.
        ({0: 4, 4: 5}, 6, Truncation(((4, 2),), ())),
        # At a segment's start: later ones go.
        ({0: 4, 4: 5}, 4, Truncation((), (4,))),
        # Back to an empty upload: the base segment is emptied, not deleted.
        ({0: 4, 4: 5}, 0, Truncation(((0, 0),), (4,))),
        # Past uploaded parts: the first part's segments are still there (kept until
        # the next PATCH begins); the markers of later parts go, and so the parts.
        ({0: 4, 4: 6, 10: 0, 20: 0}, 4, Truncation((), (4, 10, 20))),
        ({0: 4, 4: 6, 10: 0, 20: 3}, 7, Truncation(((4, 3),), (10, 20))),
        # Exactly at a part boundary past the base: the marker there stays.
        ({0: 4, 4: 6, 10: 0, 20: 0, 25: 0}, 10, Truncation((), (20, 25))),
    ],
)
def test_truncation(segments: dict[int, int], size: int, cut: Truncation) -> None:
    upload = state(segments)
    chain = chain_of(upload, S)
    assert chain is not None
    assert truncation(upload, chain, size) == cut


def test_a_truncation_the_segments_do_not_reach_is_none() -> None:
    # The segments of the part that 4 falls in are gone (a later PATCH tidied them).
    upload = state({10: 0, 20: 3, 23: 2})
    chain = chain_of(upload, S)
    assert chain is not None
    assert truncation(upload, chain, 4) is None


# -- completion -------------------------------------------------------------------------


@pytest.mark.parametrize(("base", "number"), [(0, 1), (10, 2), (90, 10)])
def test_part_numbers(base: int, number: int) -> None:
    assert part_number(base, S) == number


@pytest.mark.parametrize(
    ("parts", "bad"),
    [
        ({1: ("a", 10), 2: ("b", 10), 3: ("c", 5)}, None),
        ({1: ("a", 10), 3: ("c", 5)}, 2),  # missing
        ({1: ("a", 10), 2: ("b", 9), 3: ("c", 5)}, 2),  # a whole part of the wrong size
        ({1: ("a", 10), 2: ("", 10), 3: ("c", 5)}, 2),  # no ETag
        ({1: ("a", 10), 2: ("b", 10), 3: ("c", 10), 4: ("d", 10)}, None),  # extras ignored
    ],
)
def test_the_part_a_completion_misses(parts: dict[int, tuple[str, int]], bad: int | None) -> None:
    chain = Chain(S, 20, ((20, 5),))  # 25 bytes: parts 1 and 2 whole, 3 the last
    assert bad_part(chain, 3, parts) == bad
