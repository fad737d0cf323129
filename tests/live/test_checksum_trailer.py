"""checksum-trailer: Upload-Checksum sent as a trailer of a chunked PATCH, under gunicorn."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.live.conftest import (
    OFFSET_OCTET_STREAM,
    LiveServer,
    build_request,
    exchange,
    head_upload,
    random_bytes,
    sha256_bytes,
    sha256_file,
    tus_headers,
    upload_id,
)


def chunked(data: bytes, trailer: bytes | None) -> bytes:
    pieces = [data[:1000], data[1000:70_000], data[70_000:]]
    body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces if piece)
    return body + b"0\r\n" + (trailer + b"\r\n" if trailer else b"") + b"\r\n"


def patch_with_trailer(
    server: LiveServer, url: str, data: bytes, trailer: bytes | None, announce: bool = True
) -> tuple[int | None, str | None]:
    headers = tus_headers(
        Upload_Offset="0", Content_Type=OFFSET_OCTET_STREAM, Transfer_Encoding="chunked"
    )
    if announce:
        headers["Trailer"] = "Upload-Checksum"
    request = build_request(
        "PATCH", "/files/" + upload_id(url), list(headers.items()), port=server.port
    )
    answer = exchange(server.port, request + chunked(data, trailer))
    return answer.status, answer.header("Upload-Offset")


def digest(algorithm: str, data: bytes) -> bytes:
    return base64.b64encode(hashlib.new(algorithm, data).digest())


def test_options_advertises_checksum_trailer(live_server: LiveServer) -> None:
    from tests.live.conftest import http_request

    extensions = http_request("OPTIONS", live_server.endpoint).header("Tus-Extension") or ""
    assert "checksum-trailer" in extensions.split(",")


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512"])
def test_matching_trailer_is_accepted(live_server: LiveServer, algorithm: str) -> None:
    data = random_bytes(200_000, seed=80)
    url = live_server.create_upload(len(data))
    trailer = b"Upload-Checksum: " + algorithm.encode() + b" " + digest(algorithm, data)
    assert patch_with_trailer(live_server, url, data, trailer) == (204, str(len(data)))
    assert sha256_file(live_server.data_file(url)) == sha256_bytes(data)


@pytest.mark.parametrize(
    ("trailer", "status"),
    [
        (b"Upload-Checksum: sha1 " + base64.b64encode(hashlib.sha1(b"other").digest()), 460),
        (None, 400),  # announced, never sent
        (b"Upload-Checksum: crc32 AAAAAA==", 400),
        (b"X-Other: 1", 400),
    ],
)
def test_bad_trailers_discard_the_body(
    live_server: LiveServer, trailer: bytes | None, status: int
) -> None:
    data = random_bytes(100_000, seed=81)
    url = live_server.create_upload(len(data))
    assert patch_with_trailer(live_server, url, data, trailer) == (status, "0")
    assert head_upload(url).header("Upload-Offset") == "0"
    assert live_server.data_file(url).stat().st_size == 0


def test_unannounced_trailer_is_ignored(live_server: LiveServer) -> None:
    data = random_bytes(10_000, seed=82)
    url = live_server.create_upload(len(data))
    wrong = b"Upload-Checksum: sha1 " + base64.b64encode(hashlib.sha1(b"x").digest())
    # Without "Trailer: Upload-Checksum" the server doesn't hash, so it can't verify:
    # like any trailer it wasn't told about, it's ignored (clients must announce it).
    assert patch_with_trailer(live_server, url, data, wrong, announce=False) == (204, "10000")
