"""The Store contract, run against the file store and the in-memory double alike,
so the double the service tests use can't drift from the store it stands in for."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from uploadsvc.errors import InsufficientStorage
from uploadsvc.storage.filesystem import FileStore
from uploadsvc.storage.memory import MemoryStore

A = "a" * 32
B = "b" * 32
# The stores under contract.
Store = FileStore | MemoryStore


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        return FileStore(tmp_path / "files", fsync=False)
    return MemoryStore()


def read(store: Store, upload_id: str) -> bytes:
    with store.open(upload_id) as file:
        return file.read()


def test_unknown_data_has_no_size(store: Store) -> None:
    assert store.size(A) is None


def test_created_data_is_empty(store: Store) -> None:
    store.create(A)
    assert store.size(A) == 0
    assert read(store, A) == b""


def test_create_never_clobbers(store: Store) -> None:
    store.create(A)
    store.append(A, 0, [b"kept"])
    with pytest.raises(FileExistsError):
        store.create(A)
    assert read(store, A) == b"kept"


def test_append_returns_the_new_size(store: Store) -> None:
    store.create(A)
    assert store.append(A, 0, [b"abc", b"", b"de"]) == 5
    assert store.append(A, 5, iter([b"fg"])) == 7
    assert store.size(A) == 7
    assert read(store, A) == b"abcdefg"


def test_append_overwrites_unrecorded_bytes_past_the_offset(store: Store) -> None:
    """Bytes past the offset the caller checked were never recorded (a crash)."""
    store.create(A)
    store.append(A, 0, [b"abcdef"])
    assert store.append(A, 2, [b"XY"]) == 4
    assert read(store, A) == b"abXY"


def test_a_body_that_breaks_off_keeps_what_came(store: Store) -> None:
    store.create(A)

    def body() -> Iterator[bytes]:
        yield b"landed"
        raise ConnectionResetError

    with pytest.raises(ConnectionResetError):
        store.append(A, 0, body())
    assert store.size(A) == 6
    assert read(store, A) == b"landed"


def test_unknown_data_refuses_writes_and_reads(store: Store) -> None:
    with pytest.raises(FileNotFoundError):
        store.append(A, 0, [b"x"])
    with pytest.raises(FileNotFoundError):
        store.truncate(A, 0)
    with pytest.raises(FileNotFoundError):
        store.open(A)


def test_truncate_drops_the_tail(store: Store) -> None:
    store.create(A)
    store.append(A, 0, [b"abcdef"])
    store.truncate(A, 3)
    assert store.size(A) == 3
    assert read(store, A) == b"abc"


def test_open_is_seekable(store: Store) -> None:
    store.create(A)
    store.append(A, 0, [b"0123456789"])
    with store.open(A) as file:
        assert file.seekable()
        file.seek(4)
        assert file.read(3) == b"456"
        file.seek(-2, 2)
        assert file.read() == b"89"


def test_an_open_file_outlives_a_delete(store: Store) -> None:
    """Downloads take no lock: a concurrent DELETE must not cut one short."""
    store.create(A)
    store.append(A, 0, [b"bytes"])
    with store.open(A) as file:
        store.delete(A)
        assert file.read() == b"bytes"
    assert store.size(A) is None


def test_delete_is_idempotent(store: Store) -> None:
    store.delete(A)
    store.create(A)
    store.delete(A)
    store.delete(A)
    assert store.size(A) is None


def test_finish_keeps_the_bytes(store: Store) -> None:
    store.create(A)
    store.append(A, 0, [b"whole"])
    store.finish(A)
    store.finish(A)  # idempotent: a crashed finish runs again
    assert read(store, A) == b"whole"


def test_uploads_are_separate(store: Store) -> None:
    store.create(A)
    store.create(B)
    store.append(A, 0, [b"aaa"])
    store.append(B, 0, [b"b"])
    store.delete(A)
    assert store.size(A) is None
    assert read(store, B) == b"b"


def test_scan_lists_every_upload_with_data_and_when_it_changed(store: Store) -> None:
    before = datetime.now(UTC) - timedelta(seconds=2)
    store.create(A)
    store.create(B)
    store.delete(B)
    scanned = dict(store.scan())
    assert set(scanned) == {A}
    assert scanned[A].tzinfo is not None
    assert before <= scanned[A] <= datetime.now(UTC) + timedelta(seconds=2)


def test_check_passes_on_a_working_store(store: Store) -> None:
    store.check()


@pytest.mark.parametrize("unsafe", ["../" + A, A + "/x", "", "a b"])
def test_ids_that_are_not_path_components_are_refused(store: Store, unsafe: str) -> None:
    with pytest.raises(ValueError):
        store.create(unsafe)
    with pytest.raises(ValueError):
        store.size(unsafe)


# -- the double's own knob ----------------------------------------------------------------


def test_a_full_memory_store_keeps_what_fits_then_refuses() -> None:
    """As the file store on ENOSPC: the bytes that landed stay, the append raises 507."""
    store = MemoryStore(capacity=10)
    store.create(A)
    store.create(B)
    store.append(B, 0, [b"bbbb"])
    with pytest.raises(InsufficientStorage):
        store.append(A, 0, [b"aaa", b"aaaaa"])
    assert read(store, A) == b"aaa" + b"aaa"
    store.delete(B)
    assert store.append(A, 6, [b"more"]) == 10


def test_head_reads_the_first_bytes_of_an_upload_still_arriving(store: Store) -> None:
    store.create(A)
    assert store.head(A, 10) == b""
    store.append(A, 0, [b"abc"])
    store.append(A, 3, [b"defg"])
    assert store.head(A, 5) == b"abcde"
    assert store.head(A, 100) == b"abcdefg"
