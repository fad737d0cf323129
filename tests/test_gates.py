"""Type gates, the inspect and check hooks, and whole-file digests, through the app.

An upload whose bytes aren't what it claims is refused in the request that brought them
(415, none of its bytes kept); one whose bytes don't match the digest declared for it is
marked corrupt (460, then never served); a check hook can reject a finished upload. Every
way in is guarded the same: creation with upload, the method override, concatenation,
downloads and the page's list. Events go to a real webhook receiver on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import OCTET, TUS, Clock, Receiver, database_settings, service, settle
from tests.hookmods import gatekeeper
from tests.test_concat import final
from tests.test_views import create, head, patch, stored
from uploadsvc import close_app, create_app, digests, typegate
from uploadsvc.config import ConfigError, Settings
from uploadsvc.errors import InvalidHeader, TypeRefused
from uploadsvc.protocol import format_metadata
from uploadsvc.typegate import SNIFF_BYTES, TypeGate

# A Windows program's start ("MZ", the DOS stub, "PE\0\0"), then padding.
EXE = (
    b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00\xb8"
    + b"\x00" * 47
    + b"PE\x00\x00"
    + b"\x00" * (3 * SNIFF_BYTES)
)
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" * 600
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 5000
TEXT = b"hello world, this is text\n" * 400  # "text" at offset 73: an .odt to puremagic


def meta(**values: str) -> str:
    return format_metadata({key: value.encode() for key, value in values.items()})


def repr_digest(data: bytes, algorithm: str = "sha-256") -> str:
    hasher = hashlib.new(algorithm.replace("-", ""), data)
    return f"{algorithm}=:{base64.b64encode(hasher.digest()).decode()}:"


def make_app(data_dir: Path, clock: Clock, database_url: str | None, **extra: str) -> Flask:
    app = create_app(
        {"DATA_DIR": str(data_dir), **database_settings(database_url), **extra}, clock=clock
    )
    app.testing = True
    return app


@pytest.fixture
def app(data_dir: Path, clock: Clock, database_url: str | None, receiver: str) -> Iterator[Flask]:
    gatekeeper.INSPECTED.clear()
    gatekeeper.CHECKED.clear()
    app = make_app(
        data_dir,
        clock,
        database_url,
        ALLOWED_TYPES="image/*, application/pdf",
        HOOKS="tests.hookmods.gatekeeper:Gatekeeper",
        WEBHOOK_URL=receiver,
        WEB_UI="1",
    )
    yield app
    close_app(app)


def finish_event(app: Flask, upload_id: str) -> dict[str, Any]:
    settle(app)
    events = [
        payload["upload"]
        for payload in Receiver.received
        if (payload["event"], payload["upload"]["id"]) == ("post-finish", upload_id)
    ]
    assert len(events) == 1, events
    event: dict[str, Any] = events[0]
    return event


def got(client: FlaskClient, url: str, **headers: str) -> TestResponse:
    """A GET, its body read and the file behind it closed."""
    response = client.get(url, headers=headers)
    response.get_data()
    response.close()
    return response


def ident(url: str) -> str:
    return url.rsplit("/", 1)[1]


# -- the gate and the sniffing, as values ---------------------------------------------


@pytest.mark.parametrize(
    ("head_bytes", "declared", "passes"),
    [
        (EXE, "application/pdf", False),
        (EXE, "image/png", False),
        (EXE, "text/plain", False),
        (PDF, "application/pdf", True),
        (PNG, "image/png", True),
        (PNG, "application/pdf", False),
        (TEXT, "text/plain", True),  # no magic number: it stands on its declaration
        (b"\x7fELF\x02\x01\x01" + b"\x00" * 100, "text/plain", False),  # known by name only
        (b"<?xml version='1.0'?><svg/>", "image/svg+xml", True),
        (b"", "application/pdf", True),
        # Text has "signatures" to puremagic (a BOM, "{", "<?xml"); declared as text, it
        # is what it claims.
        (b"\xef\xbb\xbfGr\xc3\xbc\xc3\x9fe\n" * 10, "text/plain", True),
        (b'{"a": 1}\n', "text/plain", True),
        (b"<?xml version='1.0'?><a/>", "text/xml", True),
        (b"\xff\xfeh\x00i\x00", "text/csv", True),
        (("x" * 8191 + "\u00fc").encode()[:SNIFF_BYTES], "text/plain", True),  # cut in a character
        (b"\xef\xbb\xbf" + b"\x00\x01\x02" * 10, "text/plain", False),
        (b'{"a": 1}\n', "image/png", False),
    ],
)
def test_bytes_against_their_declared_type(head_bytes: bytes, declared: str, passes: bool) -> None:
    gate = TypeGate(["*/*"])
    if passes:
        gate.check_bytes(head_bytes, declared)
    else:
        with pytest.raises(TypeRefused):
            gate.check_bytes(head_bytes, declared)


def test_gates_match_patterns_and_combine() -> None:
    server = TypeGate(["image/*", "application/pdf"])
    assert server.allows("image/png") and server.allows("application/pdf")
    assert not server.allows("application/zip")
    grant = TypeGate(["image/png", "application/zip"])
    both = server & grant
    assert both.allows("image/png")
    assert not both.allows("image/jpeg") and not both.allows("application/zip")
    assert not TypeGate().active and TypeGate().allows("anything/at-all")
    TypeGate().check_declared(None)  # an empty gate asks nothing
    with pytest.raises(TypeRefused, match="declare the file's type"):
        server.check_declared(None)
    server.check_declared(None, partial=True)  # a piece of a file may say nothing
    server.check_declared("IMAGE/PNG; charset=binary")
    with pytest.raises(ValueError):
        TypeGate(["image"])


@pytest.mark.parametrize("value", ["image", "*/png", "image/*/x", "im age/png", "/"])
def test_a_bad_allowed_types_stops_the_start(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="UPLOADSVC_ALLOWED_TYPES"):
        Settings.from_mapping({"DATA_DIR": str(tmp_path), "ALLOWED_TYPES": value})
    settings = Settings.from_mapping({"DATA_DIR": str(tmp_path), "ALLOWED_TYPES": " "})
    assert settings.allowed_types == ()


def test_repr_digest_and_checksum_metadata_parse() -> None:
    data = b"abc"
    header = repr_digest(data)
    assert digests.parse_repr_digest(header) == digests.Digest(
        "sha-256", hashlib.sha256(data).digest()
    )
    # The stronger of two is kept; other algorithms are ignored (RFC 9530).
    both = f"md5=:AAAA:, {header}, {repr_digest(data, 'sha-512')}"
    parsed = digests.parse_repr_digest(both)
    assert parsed is not None and parsed.algorithm == "sha-512"
    assert digests.parse_repr_digest("unixsum=:AAAA:") is None
    b64 = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert digests.declared(None, {"checksum": f"sha256 {b64}".encode()}) == parsed.__class__(
        "sha-256", hashlib.sha256(data).digest()
    )
    for bad in ("sha-256=AAAA", "sha-256=:AAAA:", "sha-256=:%%%:", "=:x:"):
        with pytest.raises(InvalidHeader):
            digests.parse_repr_digest(bad)
    with pytest.raises(InvalidHeader):
        digests.declared(None, {"checksum": b"crc32 AAAA"})
    other = base64.b64encode(hashlib.sha256(b"abd").digest()).decode()
    with pytest.raises(InvalidHeader, match="disagree"):
        digests.declared(header, {"checksum": f"sha256 {other}".encode()})


# -- type gates through the app ---------------------------------------------------------


def test_the_declared_type_is_checked_before_any_body(client: FlaskClient, data_dir: Path) -> None:
    for metadata in (meta(filename="a.txt", filetype="text/plain"), meta(filename="x")):
        response = client.post(
            "/files/", headers={**TUS, "Upload-Length": "10", "Upload-Metadata": metadata}
        )
        assert response.status_code == 415, response.text
        assert "Location" not in response.headers
    assert not list((data_dir / "files").iterdir())  # no upload was made
    create(client, 10, **{"Upload-Metadata": meta(filetype="image/png")})
    create(client, 10, **{"Upload-Concat": "partial"})  # a piece may declare nothing


def test_an_exe_renamed_pdf_is_refused_in_its_first_patch(
    app: Flask, client: FlaskClient, data_dir: Path
) -> None:
    url = create(
        client, len(EXE), **{"Upload-Metadata": meta(filename="r.pdf", filetype="application/pdf")}
    )
    response = patch(client, url, EXE)
    assert response.status_code == 415, response.text
    assert "application/pdf" in response.text
    assert response.headers["Upload-Offset"] == "0"
    assert head(client, url).headers["Upload-Offset"] == "0"
    assert stored(data_dir, url) == b""
    assert got(client, url).status_code == 404  # never complete, never served
    assert gatekeeper.INSPECTED == []  # the gate refused before the hook was asked


def test_a_first_patch_shorter_than_the_window_is_judged_by_the_next(
    client: FlaskClient, data_dir: Path
) -> None:
    url = create(client, len(EXE), **{"Upload-Metadata": meta(filetype="application/pdf")})
    # Below the window: kept (every byte that arrives is), not judged yet.
    assert patch(client, url, EXE[:1000]).status_code == 204
    assert stored(data_dir, url) == EXE[:1000]
    # The request that fills the window is judged with the bytes before it, and none of
    # its own are kept: the offset is where it was.
    response = patch(client, url, EXE[1000:], 1000)
    assert response.status_code == 415, response.text
    assert response.headers["Upload-Offset"] == "1000"
    assert stored(data_dir, url) == EXE[:1000]
    # Byte by byte gets no further.
    response = patch(client, url, EXE[1000:SNIFF_BYTES], 1000)
    assert response.status_code == 415
    assert head(client, url).headers["Upload-Offset"] == "1000"


def test_an_upload_shorter_than_the_window_is_judged_when_it_completes(
    client: FlaskClient, data_dir: Path
) -> None:
    small = EXE[:500]
    url = create(client, 500, **{"Upload-Metadata": meta(filetype="application/pdf")})
    assert patch(client, url, small[:100]).status_code == 204
    response = patch(client, url, small[100:], 100)
    assert response.status_code == 415
    assert head(client, url).headers["Upload-Offset"] == "100"
    assert stored(data_dir, url) == small[:100]


def test_a_length_declared_at_the_offset_is_judged_at_the_finish(
    app: Flask, client: FlaskClient
) -> None:
    """No body completes it: the finish judges the stored bytes, and rejects them."""
    url = create(client, None, **{"Upload-Metadata": meta(filetype="application/pdf")})
    assert patch(client, url, EXE[:300]).status_code == 204
    response = patch(client, url, b"", 300, **{"Upload-Length": "300"})
    assert response.status_code == 403, response.text
    assert "rejected" in response.text
    assert head(client, url).status_code == 403
    assert got(client, url).status_code == 403
    event = finish_event(app, ident(url))
    assert event["verdict"] == "rejected" and "application/pdf" in event["verdict_reason"]


def test_a_real_pdf_and_a_text_pass(app: Flask, client: FlaskClient) -> None:
    url = create(client, len(PDF), **{"Upload-Metadata": meta(filetype="application/pdf")})
    assert patch(client, url, PDF).status_code == 204
    assert got(client, url).data == PDF
    assert finish_event(app, ident(url))["verdict"] == "ok"
    # Inspected as the window filled, and again from the stored bytes at the finish.
    assert [(ident(url), SNIFF_BYTES)] * 2 == gatekeeper.INSPECTED
    assert [ident(url)] == gatekeeper.CHECKED


def test_no_gate_sniffs_nothing(data_dir: Path, clock: Clock, database_url: str | None) -> None:
    app = make_app(data_dir, clock, database_url)
    try:
        with app.test_client() as client:
            url = create(client, len(EXE), **{"Upload-Metadata": meta(filetype="application/pdf")})
            assert patch(client, url, EXE).status_code == 204
            assert got(client, url).data == EXE
    finally:
        close_app(app)


def test_creation_with_upload_and_the_override_are_gated_the_same(
    client: FlaskClient, data_dir: Path
) -> None:
    response = client.post(
        "/files/",
        data=EXE,
        headers={
            **TUS,
            "Upload-Length": str(len(EXE)),
            "Upload-Metadata": meta(filetype="image/png"),
            "Content-Type": OCTET,
        },
    )
    assert response.status_code == 415, response.text
    url = response.headers["Location"].removeprefix("http://localhost")
    assert response.headers["Upload-Offset"] == "0"
    assert stored(data_dir, url) == b""
    response = client.post(
        url,
        data=EXE,
        headers={
            **TUS,
            "X-HTTP-Method-Override": "PATCH",
            "Content-Type": OCTET,
            "Upload-Offset": "0",
        },
    )
    assert response.status_code == 415
    assert stored(data_dir, url) == b""


def test_the_inspect_hook_refuses_like_the_gate(client: FlaskClient, data_dir: Path) -> None:
    evil = b"EVIL" + TEXT
    url = create(client, len(evil), **{"Upload-Metadata": meta(filetype="image/png")})
    response = patch(client, url, evil)
    assert response.status_code == 415
    assert response.text.strip() == "inspect: evil bytes"
    assert stored(data_dir, url) == b""


def test_concatenation_finals_are_judged_whole(app: Flask, client: FlaskClient) -> None:
    # Each piece alone says nothing ("M", then "Z..."): the final's bytes say .exe.
    pieces = [EXE[:1], EXE[1:]]
    urls = []
    for piece in pieces:
        url = create(client, len(piece), **{"Upload-Concat": "partial"})
        assert patch(client, url, piece).status_code == 204
        urls.append(url)
    status, final_url = final(
        client, *urls, **{"Upload-Metadata": meta(filetype="application/pdf")}
    )
    assert status == 403
    event = finish_event(app, ident(final_url))
    assert event["verdict"] == "rejected"
    assert got(client, final_url).status_code == 403
    assert client.head(final_url, headers=TUS).status_code == 403
    # A final must declare an accepted type, like any upload.
    assert final(client, *urls, **{"Upload-Metadata": meta(filetype="text/plain")})[0] == 415
    # A piece that is evidently a program is refused as it arrives.
    url = create(client, len(EXE), **{"Upload-Concat": "partial"})
    assert patch(client, url, EXE).status_code == 415


def test_the_check_hook_rejects_and_the_event_says_so(app: Flask, client: FlaskClient) -> None:
    infected = PDF + gatekeeper.EICAR
    url = create(client, len(infected), **{"Upload-Metadata": meta(filetype="application/pdf")})
    response = patch(client, url, infected)
    assert response.status_code == 403, response.text
    assert "infected: EICAR test file" in response.text
    for again in (
        got(client, url),
        client.head(url, headers=TUS),
        patch(client, url, b"", len(infected)),
    ):
        assert again.status_code == 403
    event = finish_event(app, ident(url))
    assert event["verdict"] == "rejected"
    assert event["verdict_reason"] == "infected: EICAR test file"
    # Never listed, never a partial of a final.
    assert ident(url) not in {u["id"] for u in client.get("/api/uploads").get_json()["uploads"]}
    assert client.delete(url, headers=TUS).status_code == 204  # the uploader may remove it


# -- whole-file digests -----------------------------------------------------------------


def test_a_verified_digest_is_shown_on_head_and_get(app: Flask, client: FlaskClient) -> None:
    url = create(
        client,
        len(PDF),
        **{"Upload-Metadata": meta(filetype="application/pdf"), "Repr-Digest": repr_digest(PDF)},
    )
    assert "Repr-Digest" not in head(client, url).headers  # not verified yet
    half = len(PDF) // 2
    assert patch(client, url, PDF[:half]).status_code == 204
    assert patch(client, url, PDF[half:], half).status_code == 204  # resumed: still whole
    assert head(client, url).headers["Repr-Digest"] == repr_digest(PDF)
    response = got(client, url)
    assert response.headers["Repr-Digest"] == repr_digest(PDF)
    assert response.data == PDF
    ranged = got(client, url, Range="bytes=0-9")
    assert ranged.status_code == 206 and ranged.headers["Repr-Digest"] == repr_digest(PDF)
    event = finish_event(app, ident(url))
    assert event["verdict"] == "ok" and event["digest"] == repr_digest(PDF)


def test_a_digest_mismatch_is_460_corrupt_and_never_served(app: Flask, client: FlaskClient) -> None:
    b64 = base64.b64encode(hashlib.sha512(b"another file").digest()).decode()
    url = create(
        client,
        len(PDF),
        **{"Upload-Metadata": meta(filetype="application/pdf", checksum=f"sha512 {b64}")},
    )
    response = patch(client, url, PDF)
    assert response.status_code == 460, response.text
    assert "corrupt" in response.text
    assert response.headers["Upload-Offset"] == str(len(PDF))  # offsets never lie
    for again in (got(client, url), head(client, url)):
        assert again.status_code == 403
        assert "Repr-Digest" not in again.headers
    event = finish_event(app, ident(url))
    assert event["verdict"] == "corrupt"
    assert "sha-512" in event["verdict_reason"]
    # Its bytes can't be named by a final either.
    assert client.get("/api/uploads").get_json()["uploads"] == []


def test_a_final_may_declare_the_whole_digest(client: FlaskClient) -> None:
    halves = [PDF[:100], PDF[100:]]
    urls = []
    for piece in halves:
        url = create(client, len(piece), **{"Upload-Concat": "partial"})
        assert patch(client, url, piece).status_code == 204
        urls.append(url)
    headers = {"Upload-Metadata": meta(filetype="application/pdf")}
    status, good = final(client, *urls, **headers, **{"Repr-Digest": repr_digest(PDF)})
    assert status == 201
    assert got(client, good).headers["Repr-Digest"] == repr_digest(PDF)
    status, bad = final(client, *urls, **headers, **{"Repr-Digest": repr_digest(b"x")})
    assert status == 460
    assert got(client, bad).status_code == 403


def test_malformed_digests_are_400_before_the_upload_exists(
    client: FlaskClient, data_dir: Path
) -> None:
    for headers in (
        {"Repr-Digest": "sha-256=:bm90IGEgZGlnZXN0:"},
        {"Upload-Metadata": meta(filetype="image/png", checksum="sha256 nope")},
    ):
        response = client.post(
            "/files/",
            headers={
                **TUS,
                "Upload-Length": "3",
                "Upload-Metadata": meta(filetype="image/png"),
                **headers,
            },
        )
        assert response.status_code == 400, response.text
    assert not list((data_dir / "files").iterdir())


def test_a_refused_partial_makes_no_final(app: Flask, client: FlaskClient) -> None:
    """The check hook runs on partials too; a final may not name one it rejected, and
    a final named before the verdict never completes (it is never servable)."""
    url = create(client, len(gatekeeper.EICAR), **{"Upload-Concat": "partial"})
    pending = create(client, 10, **{"Upload-Concat": "partial"})
    headers = {"Upload-Metadata": meta(filetype="application/pdf")}
    status, early = final(client, url, **headers)  # named while it is still arriving
    assert status == 201
    assert patch(client, url, gatekeeper.EICAR).status_code == 403
    assert final(client, url, **headers)[0] == 403
    assert final(client, pending, url, **headers)[0] == 403
    assert head(client, early).status_code == 200
    assert "Upload-Offset" not in head(client, early).headers  # never assembled
    assert got(client, early).status_code == 404


# -- the verdict with the finish, exactly once --------------------------------------------


class Crash(BaseException):
    """The process dying at this point."""


@pytest.mark.parametrize("resumer", ["HEAD", "GET", "cleanup"])
def test_a_verdict_survives_a_crash_and_is_recorded_once(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, resumer: str
) -> None:
    """The check ran, the process died before the finish's compare-and-set: whoever
    finishes it next judges again, records corrupt once, and one post-finish says so."""
    svc = service(app)
    url = create(
        client,
        len(PDF),
        **{"Upload-Metadata": meta(filetype="application/pdf"), "Repr-Digest": repr_digest(b"x")},
    )
    real = svc.hooks.pre_finish

    def dies(upload: Any) -> dict[str, str]:
        assert upload.verdict.value == "corrupt"  # judged before pre_finish
        monkeypatch.setattr(svc.hooks, "pre_finish", real)
        raise Crash()

    monkeypatch.setattr(svc.hooks, "pre_finish", dies)
    with pytest.raises(Crash):
        patch(client, url, PDF)
    assert svc.describe(ident(url)).verdict is None  # not recorded: the finish is due
    if resumer == "HEAD":
        assert head(client, url).status_code == 403
    elif resumer == "GET":
        assert got(client, url).status_code == 403
    else:
        result = app.test_cli_runner().invoke(args=["cleanup", "--json"])
        assert result.exit_code == 0, result.output
    info = svc.describe(ident(url))
    assert info.verdict is not None and info.verdict.value == "corrupt"
    assert finish_event(app, ident(url))["verdict"] == "corrupt"  # exactly one event
    assert head(client, url).status_code == 403


# -- HeldWindow ------------------------------------------------------------------------


def test_the_window_holds_bytes_until_judged_and_passes_the_rest() -> None:
    seen: list[bytes] = []
    window = typegate.HeldWindow(2, 6, lambda: b"ab", seen.append)
    out = list(window.wrap([b"c", b"d", b"efgh", b"ij"]))
    assert seen == [b"abcdef"]  # once, with the bytes stored before this body
    assert b"".join(out) == b"cdefghij"
    assert out[0] == b"cdef"  # nothing passed on before the judgement


def test_a_refused_window_passes_nothing_on() -> None:
    def refuse(head: bytes) -> None:
        raise TypeRefused("no")

    window = typegate.HeldWindow(0, 4, lambda: b"", refuse)
    out: list[bytes] = []
    with pytest.raises(TypeRefused):
        out.extend(window.wrap([b"ab", b"cdef"]))
    assert out == [] and window.refused


def test_a_body_ending_inside_the_window_keeps_its_bytes_unjudged() -> None:
    seen: list[bytes] = []
    window = typegate.HeldWindow(0, 100, lambda: b"", seen.append)
    assert list(window.wrap([b"ab", b"cd"])) == [b"abcd"]
    assert seen == [] and not window.judged

    def broken() -> Iterator[bytes]:
        yield b"xy"
        raise ConnectionError("cut")

    window = typegate.HeldWindow(0, 100, lambda: b"", seen.append)
    out: list[bytes] = []
    with pytest.raises(ConnectionError):
        out.extend(window.wrap(broken()))
    assert out == [b"xy"] and seen == []  # every byte that arrived is kept
