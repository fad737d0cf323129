"""The hostile campaign's own checks (torture/campaigns/hostile), on real directories:
looking for files a hostile path made must not trip over what other processes do in
the shared temp dir (a `make test` once failed with FileNotFoundError from there)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from torture.campaigns.hostile import check_marked_paths
from torture.report import Result

MARKER = "torture-pwned-123"


def test_a_file_vanishing_in_the_shared_temp_dir_does_not_break_the_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process deletes its directory in the shared temp dir while the campaign
    looks, and one of the campaign's own directories goes too (its server removing
    what it made): the look ends, and still finds what a hostile path made."""
    work_dir = tmp_path / "work"
    made = work_dir / "hostile" / f"{MARKER}-x"
    made.parent.mkdir(parents=True)
    made.write_bytes(b"")
    own_gone = work_dir / "hostile" / "gone"
    (own_gone / "deeper").mkdir(parents=True)
    unrelated = Path(tempfile.mkdtemp(prefix="uploadsvc-unrelated-", dir="/tmp"))
    (unrelated / "deeper").mkdir()
    vanishing = {unrelated, own_gone}
    scandir = os.scandir

    def scandir_after_a_deletion(path: Any = ".") -> Iterator[os.DirEntry[str]]:
        # The directory was listed in its parent; it goes before it is itself read.
        if not isinstance(path, int) and Path(path) in vanishing:
            shutil.rmtree(path)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_after_a_deletion)
    result = Result("hostile")
    try:
        check_marked_paths(work_dir, MARKER, result)
    finally:
        monkeypatch.undo()
        shutil.rmtree(unrelated, ignore_errors=True)
    assert result.problems == [f"mismatch: a hostile path made {made}"]
