"""resumable.py: the interop-version table and the draft's header fields, pure."""

from __future__ import annotations

import json

import pytest

from uploadsvc import resumable
from uploadsvc.resumable import VERSIONS, DraftError


@pytest.mark.parametrize(
    ("number", "field", "media_type", "requires", "problems", "age", "gone", "partial", "done"),
    [
        # draft -01: Upload-Incomplete; any append body; 404 for whatever isn't active.
        (3, "Upload-Incomplete", None, False, False, "expires", 404, 201, 201),
        # draft -03: Upload-Complete.
        (5, "Upload-Complete", None, False, False, "expires", 404, 201, 201),
        # drafts -04/-05: application/partial-upload, Upload-Limit, problem types.
        (6, "Upload-Complete", "application/partial-upload", False, True, "expires", 404, 201, 201),
        # drafts -09..-11: Upload-Complete required on appends; "expires" is "max-age".
        (8, "Upload-Complete", "application/partial-upload", True, True, "max-age", 410, 204, 200),
        (9, "Upload-Complete", "application/partial-upload", True, True, "max-age", 410, 204, 200),
    ],
)
def test_table_row(
    number: int,
    field: str,
    media_type: str | None,
    requires: bool,
    problems: bool,
    age: str,
    gone: int,
    partial: int,
    done: int,
) -> None:
    version = resumable.interop_version(str(number))
    assert version is VERSIONS[number]
    assert (version.complete_field, version.append_media_type) == (field, media_type)
    assert (version.append_requires_complete, version.problem_types) == (requires, problems)
    assert (version.age_limit_key, version.gone_status) == (age, gone)
    assert (version.incomplete_status, version.complete_status) == (partial, done)


def test_versions_spoken() -> None:
    assert resumable.SUPPORTED == (3, 5, 6, 8, 9)


@pytest.mark.parametrize("value", [None, "", "4", "7", "10", "abc", "-5", "5.0", "?1", "9" * 16])
def test_unknown_interop_versions(value: str | None) -> None:
    with pytest.raises(DraftError):
        resumable.interop_version(value)
    assert not resumable.speaks(value)


@pytest.mark.parametrize(
    ("headers", "draft"),
    [
        ({"Upload-Draft-Interop-Version": "6"}, True),
        ({"Upload-Draft-Interop-Version": "99"}, True),  # a draft client we don't speak
        ({"Upload-Draft-Interop-Version": "6", "Tus-Resumable": "1.0.0"}, False),
        ({"Tus-Resumable": "1.0.0"}, False),
        ({}, False),
    ],
)
def test_told_apart(headers: dict[str, str], draft: bool) -> None:
    assert resumable.is_draft_request(headers) is draft


@pytest.mark.parametrize(
    ("value", "parsed"),
    [(None, None), ("0", 0), ("42", 42), (" 7 ", 7), ("999999999999999", 999999999999999)],
)
def test_integer(value: str | None, parsed: int | None) -> None:
    assert resumable.parse_integer(value, "Upload-Offset") == parsed


@pytest.mark.parametrize("value", ["", "-1", "1e3", "0x10", "1.5", "abc", "1" * 16, "?1"])
def test_integer_refused(value: str) -> None:
    with pytest.raises(DraftError, match="Upload-Offset"):
        resumable.parse_integer(value, "Upload-Offset")


@pytest.mark.parametrize(("value", "parsed"), [(None, None), ("?1", True), ("?0", False)])
def test_boolean(value: str | None, parsed: bool | None) -> None:
    assert resumable.parse_boolean(value, "Upload-Complete") is parsed


@pytest.mark.parametrize("value", ["", "1", "0", "true", "?", "?2", "?1;a=b"])
def test_boolean_refused(value: str) -> None:
    with pytest.raises(DraftError):
        resumable.parse_boolean(value, "Upload-Complete")


@pytest.mark.parametrize(
    ("number", "headers", "complete"),
    [
        (3, {"Upload-Incomplete": "?1"}, False),
        (3, {"Upload-Incomplete": "?0"}, True),
        (3, {"Upload-Complete": "?1"}, None),  # not interop 3's field
        (5, {"Upload-Complete": "?1"}, True),
        (6, {"Upload-Complete": "?0"}, False),
        (9, {}, None),
        (9, {"Upload-Incomplete": "?0"}, None),
    ],
)
def test_request_complete(number: int, headers: dict[str, str], complete: bool | None) -> None:
    assert resumable.request_complete(VERSIONS[number], headers) is complete


@pytest.mark.parametrize(
    ("number", "complete", "value"), [(3, False, "?1"), (3, True, None), (8, True, "?1")]
)
def test_complete_value(number: int, complete: bool, value: str | None) -> None:
    assert VERSIONS[number].complete_value(complete) == value


def test_limits() -> None:
    assert resumable.format_limits(VERSIONS[9], 1000, 60) == "max-size=1000, max-age=60"
    assert resumable.format_limits(VERSIONS[6], 1000, 60) == "max-size=1000, expires=60"
    assert resumable.format_limits(VERSIONS[9], 1000, -3) == "max-size=1000, max-age=0"
    assert resumable.format_limits(VERSIONS[9], 1000, None) == "max-size=1000"


def test_mismatch_problem() -> None:
    document = json.loads(resumable.mismatch_problem(100, 200))
    assert document["type"] == (
        "https://iana.org/assignments/http-problem-types#mismatching-upload-offset"
    )
    assert (document["expected-offset"], document["provided-offset"]) == (100, 200)


def test_interim_response() -> None:
    head = resumable.interim_response(VERSIONS[8], "http://h/files/ab", "max-size=5")
    assert head == (
        b"HTTP/1.1 104 Upload Resumption Supported\r\n"
        b"Upload-Draft-Interop-Version: 8\r\n"
        b"Location: http://h/files/ab\r\n"
        b"Upload-Limit: max-size=5\r\n\r\n"
    )
    with pytest.raises(DraftError):
        resumable.interim_response(VERSIONS[8], "http://h/\r\nX: y", "max-size=5")


@pytest.mark.parametrize(
    ("fields", "refused"),
    [({}, False), ({"Upload-Offset": "0"}, True), ({"Upload-Complete": "?0"}, True)],
)
def test_forbid_upload_fields(fields: dict[str, str], refused: bool) -> None:
    if refused:
        with pytest.raises(DraftError):
            resumable.forbid_upload_fields(VERSIONS[9], fields)
    else:
        resumable.forbid_upload_fields(VERSIONS[9], fields)
