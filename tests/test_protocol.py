"""Table tests for the pure tus header parsers, good values and hostile ones."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest

from uploadsvc import checksums, protocol
from uploadsvc.errors import InvalidHeader, UnsupportedMediaType, UnsupportedVersion


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("value", ["1.0.0", " 1.0.0 "])
def test_tus_resumable_accepts(value: str) -> None:
    protocol.require_tus_resumable(value)


@pytest.mark.parametrize("value", [None, "", "1.0", "0.2.2", "1.0.0,0.2.2", "abc", "１.0.0"])
def test_tus_resumable_refuses(value: str | None) -> None:
    with pytest.raises(UnsupportedVersion):
        protocol.require_tus_resumable(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("0", 0),
        ("1", 1),
        ("  42 ", 42),
        ("007", 7),
        ("5368709120", 5368709120),
        ("9" * 30, int("9" * 30)),  # syntactically fine; the caller decides it is too big
    ],
)
def test_uint_accepts(value: str | None, expected: int | None) -> None:
    assert protocol.parse_uint(value, "Upload-Offset") == expected


@pytest.mark.parametrize(
    "value",
    ["", " ", "abc", "-1", "+1", "1e3", "1.0", "0x10", "1 2", "١٢", "１", "1,2", "9" * 65, "\x00"],
)
def test_uint_refuses(value: str) -> None:
    with pytest.raises(InvalidHeader, match="Upload-Offset"):
        protocol.parse_uint(value, "Upload-Offset")


@pytest.mark.parametrize(
    ("length", "defer", "expected"),
    [("10", None, 10), ("0", None, 0), (None, "1", None), (None, " 1 ", None)],
)
def test_creation_length_accepts(
    length: str | None, defer: str | None, expected: int | None
) -> None:
    assert protocol.parse_creation_length(length, defer) == expected


@pytest.mark.parametrize(
    ("length", "defer"),
    [
        (None, None),  # neither
        ("10", "1"),  # both
        (None, "0"),
        (None, "true"),
        (None, ""),
        ("-1", None),
        ("abc", None),
        ("1e3", None),
        ("", None),
    ],
)
def test_creation_length_refuses(length: str | None, defer: str | None) -> None:
    with pytest.raises(InvalidHeader):
        protocol.parse_creation_length(length, defer)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, {}),
        ("", {}),
        ("   ", {}),
        (f"filename {b64(b'a.txt')}", {"filename": b"a.txt"}),
        (
            f"filename {b64(b'a.txt')},is_confidential",
            {"filename": b"a.txt", "is_confidential": None},
        ),
        (f"bin {b64(bytes(range(256)))}", {"bin": bytes(range(256))}),
        (f"name {b64('été'.encode())}", {"name": "été".encode()}),
        (f" a {b64(b'1')} , b {b64(b'2')} ", {"a": b"1", "b": b"2"}),
        ("empty ", {"empty": None}),
        ("k!#$%&'*+-.^_`|~", {"k!#$%&'*+-.^_`|~": None}),
    ],
)
def test_metadata_accepts(value: str | None, expected: dict[str, bytes | None]) -> None:
    assert protocol.parse_metadata(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "filename !!!notbase64",
        "filename YQ",  # missing padding
        "filename YQ==x",
        f"a {b64(b'1')},a {b64(b'2')}",  # duplicate key
        "a,a",
        ",",
        "a,,b",
        f"a {b64(b'1')} extra",
        "ключ YQ==",  # non-ASCII key
        "k\x00 YQ==",
        "k\ty YQ==",
        "x" * (protocol.MAX_METADATA_BYTES + 1),
    ],
)
def test_metadata_refuses(value: str) -> None:
    with pytest.raises(InvalidHeader, match="Upload-Metadata"):
        protocol.parse_metadata(value)


def test_metadata_round_trips() -> None:
    metadata = {"filename": "naïve.bin".encode(), "flag": None, "blob": b"\x00\xff"}
    assert protocol.parse_metadata(protocol.format_metadata(metadata)) == metadata


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512", "SHA1"])
def test_checksum_accepts(algorithm: str) -> None:
    digest = hashlib.new(algorithm.lower(), b"data").digest()
    parsed = checksums.parse_checksum(f"{algorithm} {b64(digest)}")
    assert parsed == checksums.Checksum(algorithm.lower(), digest)
    hasher = parsed.hasher()
    hasher.update(b"data")
    assert hasher.digest() == digest


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha1",
        "crc32 AAAAAA==",
        "sha1 notbase64!",
        f"sha1 {b64(b'short')}",  # wrong digest length
        f"sha1  {b64(hashlib.sha1().digest())}",
        f"sha1 {b64(hashlib.sha1().digest())} extra",
    ],
)
def test_checksum_refuses(value: str) -> None:
    with pytest.raises(InvalidHeader):
        checksums.parse_checksum(value)


def test_checksum_absent() -> None:
    assert checksums.parse_checksum(None) is None


@pytest.mark.parametrize(
    "value",
    [
        "application/offset+octet-stream",
        "Application/Offset+Octet-Stream",
        "application/offset+octet-stream; charset=binary",
    ],
)
def test_offset_content_type_accepts(value: str) -> None:
    protocol.require_offset_content_type(value)


@pytest.mark.parametrize(
    "value", [None, "", "application/octet-stream", "text/plain", "application/offset+octet"]
)
def test_offset_content_type_refuses(value: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        protocol.require_offset_content_type(value)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC), "Sun, 06 Nov 1994 08:49:37 GMT"),
        (
            datetime(2026, 1, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=1))),
            "Thu, 01 Jan 2026 00:00:00 GMT",
        ),
    ],
)
def test_http_date(moment: datetime, expected: str) -> None:
    assert protocol.format_http_date(moment.astimezone(UTC)) == expected


def test_the_checksum_verifier_for_a_header_a_trailer_and_none() -> None:
    digest = hashlib.sha256(b"abc").digest()
    header = checksums.Verifier(checksums.Checksum("sha256", digest))
    header.update(b"abc")
    header.body_ended()
    assert header.verifying and header.matches()
    # A trailer may name any algorithm: all are hashed until it comes.
    trailer = checksums.Verifier(None, lambda: f"md5 {b64(hashlib.md5(b'ab').digest())}")
    trailer.update(b"abc")
    trailer.body_ended()
    assert trailer.verifying and not trailer.matches()
    never = checksums.Verifier(None, lambda: None)
    with pytest.raises(InvalidHeader, match="never came"):
        never.body_ended()
    nothing = checksums.Verifier(None)
    nothing.update(b"abc")
    nothing.body_ended()
    assert not nothing.verifying and nothing.matches()


@pytest.mark.parametrize(
    ("value", "behind_proxy", "announced"),
    [(None, False, False), ("X-A", False, False), ("x-a, Upload-Checksum", False, True)],
)
def test_a_checksum_trailer_is_announced_by_the_trailer_header(
    value: str | None, behind_proxy: bool, announced: bool
) -> None:
    assert checksums.announces_trailer(value, behind_proxy=behind_proxy) is announced
    if announced:
        with pytest.raises(InvalidHeader, match="behind a proxy"):
            checksums.announces_trailer(value, behind_proxy=True)
