"""The stores' error edge: a library's failure becomes ours by one rule per store."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from uploadsvc.errors import InsufficientStorage
from uploadsvc.storage.errors import translated
from uploadsvc.storage.filesystem import FileStore


def test_a_rule_maps_what_it_names_and_lets_the_rest_through() -> None:
    def rule(error: Exception) -> BaseException | None:
        return InsufficientStorage() if isinstance(error, KeyError) else None

    with pytest.raises(InsufficientStorage) as caught, translated(rule):
        raise KeyError("full")
    assert isinstance(caught.value.__cause__, KeyError)  # the library's words stay
    with pytest.raises(ValueError, match="other"), translated(rule):
        raise ValueError("other")
    with translated(rule):
        pass


@pytest.mark.parametrize(
    ("code", "ours"),
    [
        (errno.ENOSPC, InsufficientStorage),
        (errno.EDQUOT, InsufficientStorage),
        (errno.EIO, OSError),
    ],
)
def test_the_file_store_maps_a_full_disk_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, ours: type[Exception]
) -> None:
    store = FileStore(tmp_path, fsync=False)

    def fail(*args: object) -> None:
        raise OSError(code, "no")

    monkeypatch.setattr("uploadsvc.storage.filesystem.os.ftruncate", fail)
    store.create("0123456789abcdef")
    with pytest.raises(ours):
        store.truncate("0123456789abcdef", 0)
