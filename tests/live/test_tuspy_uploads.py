"""Whole uploads with tuspy (the Python tus client), checked byte for byte on disk."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from .conftest import KiB, LiveServer, MiB, head_upload, make_data_file, sha256_file, tuspy_upload

pytestmark = pytest.mark.live

WHOLE = None  # tuspy's default chunk size: the whole file in one PATCH

CASES = [
    (0, WHOLE),
    (1, WHOLE),
    (5 * MiB, 64 * KiB),
    (5 * MiB, 1 * MiB),
    (5 * MiB, WHOLE),
    (64 * MiB, 4 * MiB),
    (64 * MiB, 64 * MiB),
]


def _case_id(size: int, chunk: int | None) -> str:
    def fmt(n: int) -> str:
        if n >= MiB and n % MiB == 0:
            return f"{n // MiB}MiB"
        if n >= KiB and n % KiB == 0:
            return f"{n // KiB}KiB"
        return f"{n}B"

    return f"{fmt(size)}-chunk-{'whole' if chunk is None else fmt(chunk)}"


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("tuspy-data")
    files = {}
    for seed, size in enumerate(sorted({size for size, _ in CASES})):
        path = folder / f"data-{size}.bin"
        files[size] = (path, make_data_file(path, size, seed=1000 + seed))
    return files


@pytest.mark.parametrize(("size", "chunk"), CASES, ids=[_case_id(*c) for c in CASES])
def test_tuspy_upload_is_stored_exactly(
    live_server: LiveServer,
    data_files: dict[int, tuple[Path, str]],
    size: int,
    chunk: int | None,
) -> None:
    path, digest = data_files[size]
    with path.open("rb") as stream:
        uploader = tuspy_upload(
            live_server.endpoint, stream, chunk_size=chunk, metadata={"filename": path.name}
        )
    url = uploader.url
    assert url is not None
    assert live_server.upload_url_re().fullmatch(url), url
    assert uploader.offset == size

    head = head_upload(url)
    assert head.status == 200, head
    assert head.header("Upload-Offset") == str(size)
    assert head.header("Upload-Length") == str(size)

    stored = live_server.data_file(url)
    assert stored.stat().st_size == size
    assert sha256_file(stored) == digest


def _decode_metadata(header: str) -> dict[str, bytes]:
    pairs = {}
    for item in header.split(","):
        key, _, value = item.strip().partition(" ")
        pairs[key] = base64.b64decode(value.strip(), validate=True)
    return pairs


def test_tuspy_metadata_is_echoed_on_head(live_server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "meta.bin"
    digest = make_data_file(path, 300 * KiB, seed=7)
    metadata = {"filename": "résumé 日本.bin", "filetype": "application/octet-stream"}
    with path.open("rb") as stream:
        uploader = tuspy_upload(
            live_server.endpoint, stream, chunk_size=100 * KiB, metadata=metadata
        )

    head = head_upload(uploader.url)
    assert head.status == 200, head
    assert head.header("Cache-Control") == "no-store"
    echoed = head.header("Upload-Metadata")
    assert echoed is not None
    assert _decode_metadata(echoed) == {k: v.encode("utf-8") for k, v in metadata.items()}
    assert sha256_file(live_server.data_file(uploader.url)) == digest
