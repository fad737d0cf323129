"""Hostile and broken requests: never a 5xx, never a traceback, nothing outside the data dir."""

from __future__ import annotations

import base64
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from .conftest import (
    OFFSET_OCTET_STREAM,
    REPO_ROOT,
    KiB,
    LiveServer,
    MiB,
    build_request,
    exchange,
    make_data_file,
    patch_upload,
    sha256_file,
    tuspy_upload,
    upload_id,
)

pytestmark = pytest.mark.live

SEED = 20240611
COUNT = 400
MAX_SIZE = 8 * MiB
REQUEST_TIMEOUT = 15.0
TIME_BUDGET = 150.0  # hang guard for the whole run (it normally takes a few seconds)

METHODS = ["GET", "PUT", "POST", "PATCH", "HEAD", "DELETE", "OPTIONS", "FOO"]

TUS_RESUMABLE = [*(["1.0.0"] * 20), None, "", "0.2.2", "1.0.0, 0.2.2", "1.0.0 ", "１.0.0", "1"]
NUMBERS = [
    None,
    "",
    "0",
    "1",
    "-1",
    "-0",
    "+1",
    " 5",
    "1.5",
    "1e3",
    "0x10",
    "abc",
    "1_000",
    "10 10",
    "١٢",  # Arabic-Indic digits: int() accepts them, HTTP does not
    "１",  # fullwidth digit
    "9" * 40,
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "5368709121",
    str(MAX_SIZE),
    str(MAX_SIZE + 1),
    "0" * 60,
]
DEFER = [None, None, None, "1", "0", "2", "", "yes"]
METADATA = [
    None,
    "",
    "filename",
    "filename ZmlsZS50eHQ=",
    "filename !!!not-base64",
    "filename ZmlsZS50eHQ",
    "a YQ==,a Yg==",
    "a YQ==,",
    ",",
    " ",
    "k YQ== extra",
    "ключ YQ==",
    "a\x01 YQ==",
    "x " + "A" * 8000,
    "a,b,c",
    "filename ZmlsZS50eHQ=,filename ZmlsZS50eHQ=",
    "\u00ff\u00fe 4pyT",
]
CHECKSUM = [
    None,
    None,
    "",
    "sha1",
    "sha1 ",
    "sha1 !!!",
    "sha1 " + base64.b64encode(bytes(20)).decode(),
    "sha1 2jmj7l5rSw0yVb/vlWAYkK/YBwk= extra",
    "SHA1 2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
    "md5 1B2M2Y8AsgTpgAmY7PhCfg==",
    "sha256 47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
    "crc32 AAAA",
    "sha1 " + "A" * 5000,
]
CONTENT_TYPE = [
    None,
    OFFSET_OCTET_STREAM,
    OFFSET_OCTET_STREAM,
    "",
    OFFSET_OCTET_STREAM + "; charset=utf-8",
    "text/plain",
    "application/offset+octet-stream ü",
    "multipart/form-data; boundary=x",
]
OVERRIDE = [*([None] * 10), "DELETE", "PATCH", "HEAD", "FOO", "", "post", "OPTIONS"]
CONCAT = [*([None] * 10), "partial", "final;", "final;/files/abc", "final; ", "bogus", "final;%s"]


@dataclass
class Garbage:
    description: str
    payload: bytes
    half_close: bool = False
    may_close: bool = False  # malformed HTTP or a body cut short: no answer is acceptable


def _paths(rng: random.Random, ids: list[str]) -> list[str | bytes]:
    some_id = rng.choice(ids)
    return [
        "/files/",
        "/files/",
        "/files",
        "/",
        f"/files/{some_id}",
        f"/files/{some_id}",
        f"/files/{some_id}",
        f"/files/{rng.randbytes(16).hex()}",
        f"/files/{some_id.upper()}",
        f"/files/{some_id}/extra",
        f"/files/{some_id}?x=1&y=%00",
        f"/files/{some_id}%00",
        "/files/../etc/passwd",
        "/files/%2e%2e%2f",
        "/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/files/..%2f..%2f..%2ftmp%2fpwned",
        "/files/%2e%2e",
        "/files/" + "a" * 4000,
        "/files/" + "%00",
        "/files/abc%00def",
        "/files/" + "%00" * 32,
        "/files/" + quote("日本語ü"),
        "/files/ü".encode(),
        "/files/%ff%fe",
        "//files//",
        "/files/locks",
        f"/files/{some_id}.lock",
        "*",
    ]


def _body(rng: random.Random) -> tuple[str, list[tuple[str, str]], bytes, bool, bool]:
    """(description, framing headers, bytes to send, half_close, may_close)."""
    mode = rng.choice(["none", "exact", "exact", "exact", "short", "chunked", "badlen"])
    data = rng.randbytes(rng.choice([0, 1, 7, 100, 2048, 30 * KiB]))
    if mode == "none":
        return mode, [], b"", False, False
    if mode == "exact":
        return mode, [("Content-Length", str(len(data)))], data, False, False
    if mode == "short":
        announced = len(data) + rng.choice([1, 10, 100_000, 10**12])
        cut = data[: len(data) // 2]
        framing = [("Content-Length", str(announced))]
        return f"short {len(cut)}/{announced}", framing, cut, True, True
    if mode == "chunked":
        kind = rng.choice(["valid", "valid", "bad-size", "truncated"])
        framing = [("Transfer-Encoding", "chunked")]
        if kind == "valid":
            return "chunked", framing, b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data), False, False
        if kind == "bad-size":
            return "chunked bad size", framing, b"zz\r\n" + data + b"\r\n0\r\n\r\n", False, True
        return "chunked truncated", framing, b"%x\r\n%s" % (len(data) + 50, data), True, True
    value = rng.choice(["-1", "abc", "1, 2", "", "0x10", "١"])
    return f"bad Content-Length {value!r}", [("Content-Length", value)], b"", False, True


def _malformed() -> list[Garbage]:
    """Requests that are not valid HTTP/1.1 at all: gunicorn answers (or closes) itself."""
    raw = [
        b"GET /files/\r\n\r\n",
        b"PATCH /files/ HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
        b"POST /files/ HTTP/1.1\r\nHost: x\r\nUpload-Length 5\r\n\r\n",
        b"POST /files/ HTTP/1.1\r\nHost: x\r\nUpload-Length : 5\r\n\r\n",
        b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        + b"Upload-Length: 1\x002\r\n\r\n",
        b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        + b"Upload-Metadata: "
        + b"a" * 40000
        + b"\r\n\r\n",
        b"POST /files/ HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",
        b"POST /files/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcde",
        b"POST /files/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + b"Content-Length: 5\r\n\r\n0\r\n\r\n",
        b"POST /files/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"PATCH /files/" + b"b" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    return [Garbage(f"malformed #{i}", payload, may_close=True) for i, payload in enumerate(raw)]


def _garbage(rng: random.Random, n: int, port: int, endpoint: str, ids: list[str]) -> Garbage:
    """Garbage request number ``n``, aimed now and then at one of the uploads in ``ids``."""
    method = rng.choice(METHODS)
    if rng.random() < 0.6:  # where the method makes sense, to get past routing
        target: str | bytes = "/files/" if method == "POST" else f"/files/{rng.choice(ids)}"
    else:
        target = rng.choice(_paths(rng, ids))
    headers: list[tuple[str, str]] = []
    choices: list[tuple[str, list[str | None]]] = [
        ("Tus-Resumable", TUS_RESUMABLE),
        ("Upload-Offset", NUMBERS),
        ("Upload-Length", NUMBERS),
        ("Upload-Defer-Length", DEFER),
        ("Upload-Metadata", METADATA),
        ("Upload-Checksum", CHECKSUM),
        ("Content-Type", CONTENT_TYPE),
        ("X-HTTP-Method-Override", OVERRIDE),
        ("Upload-Concat", CONCAT),
    ]
    for name, values in choices:
        value = rng.choice(values)
        if value is None:
            continue
        if "%s" in value:
            value = value % f"{endpoint}{rng.choice(ids)} {endpoint}{rng.randbytes(16).hex()}"
        headers.append((name, value))
        if rng.random() < 0.05:  # the same header twice, maybe with another value
            other = rng.choice(values)
            headers.append((name, value if other is None else other))
    rng.shuffle(headers)
    body_kind, framing, body, half_close, may_close = _body(rng)
    headers.extend(framing)
    if not half_close:
        headers.append(("Connection", "close"))
    payload = build_request(method, target, headers, port=port) + body
    target_text = target if isinstance(target, str) else target.decode()
    description = f"#{n} {method} {target_text[:80]} ({body_kind}) {headers}"[:600]
    return Garbage(description, payload, half_close, may_close)


def _target(server: LiveServer, kind: int) -> str:
    """A real upload for garbage to aim at: complete, half done, deferred or empty."""
    kind %= 4
    if kind == 0:
        url = server.create_upload(10, body=b"0123456789")
    elif kind == 1:
        url = server.create_upload(100)
        assert patch_upload(url, 0, b"x" * 40).status == 204
    else:
        url = server.create_upload(None if kind == 2 else 0)
    return upload_id(url)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_garbage_never_gets_a_5xx(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    # A fresh server with a small maximum, so "too large" is reachable with sane numbers.
    live_server = server_factory(UPLOADSVC_MAX_SIZE=str(MAX_SIZE))
    ids = [_target(live_server, kind) for kind in range(4)]

    outside = {
        "repo": (REPO_ROOT, set(os.listdir(REPO_ROOT))),
        "server base dir": (live_server.base_dir, set(os.listdir(live_server.base_dir))),
        "tmp root": (live_server.base_dir.parent, set(os.listdir(live_server.base_dir.parent))),
    }
    data_before = _tree(live_server.data_dir)

    failures: list[str] = []

    def send(item: Garbage) -> None:
        try:
            answer = exchange(
                live_server.port, item.payload, half_close=item.half_close, timeout=REQUEST_TIMEOUT
            )
        except (TimeoutError, OSError) as error:
            failures.append(f"{item.description}: {error!r}")
            return
        if answer.status is None and not item.may_close:
            failures.append(f"{item.description}: connection closed without an answer")
        elif answer.status is not None and answer.status >= 500:
            status_line = answer.head.split(b"\r\n", 1)[0].decode("latin-1")
            failures.append(f"{item.description}: {status_line}")

    malformed = _malformed()
    for item in malformed:
        send(item)
    rng = random.Random(SEED)
    give_up_at = time.monotonic() + TIME_BUDGET
    for n in range(COUNT):
        if time.monotonic() > give_up_at:
            failures.append(f"stopped after {n} requests: {TIME_BUDGET} s budget used up")
            break
        if n % 20 == 19:  # garbage deletes uploads: keep fresh ones to aim at
            ids = [*ids[-3:], _target(live_server, n // 20)]
        send(_garbage(rng, n, live_server.port, live_server.endpoint, ids))
    total = len(malformed) + COUNT
    assert not failures, f"{len(failures)} of {total} requests failed:\n" + "\n".join(failures[:40])

    # The server still works for a well-behaved client.
    data = tmp_path / "after-garbage.bin"
    digest = make_data_file(data, MiB + 3, seed=77)
    with data.open("rb") as stream:
        uploader = tuspy_upload(
            live_server.endpoint, stream, chunk_size=256 * KiB, metadata={"filename": "after.bin"}
        )
    assert sha256_file(live_server.data_file(uploader.url)) == digest

    # Nothing appeared outside the data dir ...
    for where, (root, before) in outside.items():
        new = set(os.listdir(root)) - before - {"__pycache__", ".pytest_cache", ".ruff_cache"}
        assert not new, f"new entries in {where} {root}: {sorted(new)}"
    # ... and inside it only upload files (server-made ids), lock files (also for ids that
    # were merely asked about: plain alphanumeric names) and SQLite's own side files.
    for rel in sorted(_tree(live_server.data_dir) - data_before):
        path = Path(rel)
        if path.parts[0] == "files":
            assert len(path.parts) == 2, rel
            assert re.fullmatch(r"[0-9a-f]{32}([.-][\w.-]*)?", path.name), rel
        elif path.parts[0] == "locks":
            assert len(path.parts) == 2, rel
            assert re.fullmatch(r"[0-9A-Za-z]{1,64}\.(lock|release)", path.name), rel
        else:
            assert re.fullmatch(r"[^/]+-(wal|shm|journal)", rel), f"unexpected {rel}"
    assert not (live_server.data_dir.parent / "pwned").exists()
