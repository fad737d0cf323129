"""An fsync that fails keeps nothing it was meant to make durable: the bytes of the PATCH
since the last durable point are dropped and not recorded, and the client is told to
resume from there (503, or 507 for a full disk). ``os.fsync`` is made to fail here: the
part under test is our handling of the failure, not the kernel's."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import service
from tests.test_views import create, head, patch, stored
from uploadsvc.models import Upload


def failing(
    monkeypatch: pytest.MonkeyPatch, code: int, times: int, *, also: str | None = None
) -> Callable[[], int]:
    """Make the next ``times`` fsyncs (and ``also``, e.g. ftruncate, once one did) fail with
    ``code``; return how many failed."""
    real = os.fsync
    failed = 0

    def fsync(fd: int) -> None:
        nonlocal failed
        if failed < times:
            failed += 1
            raise OSError(code, os.strerror(code))
        real(fd)

    if also is not None:
        real_also = getattr(os, also)

        def refuse(*args: object) -> object:
            if failed:  # once the disk has failed an fsync
                raise OSError(code, os.strerror(code))
            return real_also(*args)

        monkeypatch.setattr(os, also, refuse)
    monkeypatch.setattr(os, "fsync", fsync)
    return lambda: failed


def test_failed_fsync_drops_the_patch_and_records_what_was_durable(
    client: FlaskClient, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = create(client, 6)
    assert patch(client, url, b"abc").status_code == 204
    failures = failing(monkeypatch, errno.EIO, 1)
    response = patch(client, url, b"def", 3)
    assert failures() == 1
    assert response.status_code == 503  # retryable: the shipped clients resume
    assert response.headers["Upload-Offset"] == "3"
    assert stored(data_dir, url) == b"abc"
    assert head(client, url).headers["Upload-Offset"] == "3"
    assert patch(client, url, b"def", 3).status_code == 204
    assert stored(data_dir, url) == b"abcdef"


def test_full_disk_at_fsync_is_507_with_the_durable_offset(
    client: FlaskClient, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = create(client, 6)
    failing(monkeypatch, errno.ENOSPC, 1)
    response = patch(client, url, b"abc")
    assert response.status_code == 507
    assert response.headers["Upload-Offset"] == "0"
    assert stored(data_dir, url) == b""


def test_bytes_the_disk_will_not_drop_are_never_counted(
    app: Flask, client: FlaskClient, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync keeps failing and so does truncating: the row records the durable offset
    and marks the rest for the reconcile to drop once the disk answers again."""
    url = create(client, 6)
    assert patch(client, url, b"ab").status_code == 204
    failing(monkeypatch, errno.EIO, 100, also="ftruncate")
    response = patch(client, url, b"cde", 2)
    assert response.status_code == 503
    assert response.headers["Upload-Offset"] == "2"
    assert stored(data_dir, url) == b"abcde"  # the file still has them...
    with service(app).sessions.begin() as session:
        row = session.get_one(Upload, url.rsplit("/", 1)[1])
        assert (row.offset, row.verifying) == (2, True)  # ...the registry doesn't count them
    monkeypatch.undo()
    assert head(client, url).headers["Upload-Offset"] == "2"
    assert stored(data_dir, url) == b"ab"
