"""Resumable Uploads for HTTP against a real gunicorn, over raw sockets, written from
the draft text of each interop version (no client library here speaks 3, 8 or 9): one
table per version of careful creation, optimistic creation interrupted and resumed,
offset retrieval, append, the mismatch 409, completion and cancellation; the 104 on a
direct socket when turned on and never otherwise; a tus client and a draft client at the
same time; a second append taking over a stalled one (the draft's concurrency rule)."""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.live.conftest import (
    HOST,
    KiB,
    LiveServer,
    MiB,
    _ServerPool,
    build_request,
    connect,
    random_bytes,
    sha256_bytes,
    sha256_file,
    tuspy_upload,
    upload_id,
    wait_until_delivered,
)
from uploadsvc.resumable import VERSIONS, InteropVersion

pytestmark = pytest.mark.live

ALL = sorted(VERSIONS)
STATUS_RE = re.compile(rb"HTTP/1\.1 (\d{3})")
READ_TIMEOUT = 30.0
Fields = list[tuple[str, str]]


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, database: str, request: pytest.FixtureRequest
) -> Iterator[tuple[LiveServer, LiveServer]]:
    """(a server facing clients directly with UPLOADSVC_SEND_104=1, one with defaults)."""
    postgres = request.getfixturevalue("postgres") if database == "postgresql" else None
    pool = _ServerPool(tmp_path_factory, postgres)
    try:
        yield pool.start(UPLOADSVC_SEND_104="1"), pool.start()
    finally:
        pool.close()


@pytest.fixture(params=ALL, ids=[f"interop{n}" for n in ALL])
def version(request: pytest.FixtureRequest) -> InteropVersion:
    return VERSIONS[request.param]


# ------------------------------------------------------------------ the wire, by hand


@dataclass
class Message:
    status: int
    fields: dict[str, str]  # lower-cased names
    body: bytes = b""

    def get(self, name: str) -> str | None:
        return self.fields.get(name.lower())


@dataclass
class Exchange:
    interim: list[Message] = field(default_factory=list)
    final: Message | None = None


class Reader:
    """Responses off a socket, interim ones (1xx) kept apart, bodies by Content-Length."""

    def __init__(self, sock: socket.socket, method: str = "POST") -> None:
        self.sock = sock
        self.buf = b""
        self.bodiless = method == "HEAD"

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no response within {READ_TIMEOUT} s: {self.buf[:200]!r}")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(64 * KiB)
        except ConnectionResetError:
            data = b""
        self.buf += data
        return bool(data)

    def message(self) -> Message | None:
        deadline = time.monotonic() + READ_TIMEOUT
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        match = STATUS_RE.match(head)
        assert match, head[:200]
        fields = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        status = int(match.group(1))
        size = int(fields.get("content-length", "0")) if status >= 200 else 0
        if self.bodiless:
            size = 0
        while len(self.buf) < size:
            if not self._fill(deadline):
                break
        body, self.buf = self.buf[:size], self.buf[size:]
        return Message(status, fields, body)

    def exchange(self) -> Exchange:
        result = Exchange()
        for _ in range(16):
            message = self.message()
            if message is None or message.status >= 200:
                result.final = message
                return result
            result.interim.append(message)
        raise AssertionError("more than 16 interim responses")


def fields_of(version: InteropVersion, complete: bool | None = None, **extra: str) -> Fields:
    fields = [("Upload-Draft-Interop-Version", str(version.number))]
    if complete is not None:
        if version.complete_field == "Upload-Incomplete":
            fields.append(("Upload-Incomplete", "?0" if complete else "?1"))
        else:
            fields.append(("Upload-Complete", "?1" if complete else "?0"))
    fields.extend((name.replace("_", "-"), value) for name, value in extra.items())
    return fields


def send(
    server: LiveServer, method: str, target: str, fields: Fields, body: bytes = b""
) -> Exchange:
    """One request on a fresh connection: every response to it, interim ones included."""
    if body or method in ("POST", "PATCH"):
        fields = [*fields, ("Content-Length", str(len(body)))]
    with connect(server.port, READ_TIMEOUT) as sock:
        sock.sendall(build_request(method, target, fields, port=server.port) + body)
        return Reader(sock, method).exchange()


def final(exchange: Exchange) -> Message:
    assert exchange.final is not None, "the server closed without an answer"
    return exchange.final


def completeness(version: InteropVersion, message: Message) -> bool:
    if version.complete_field == "Upload-Incomplete":
        return message.get("Upload-Incomplete") != "?1"
    value = message.get("Upload-Complete")
    assert value in ("?0", "?1"), message.fields
    return value == "?1"


def append_fields(version: InteropVersion, offset: int, complete: bool | None) -> Fields:
    fields = fields_of(version, complete, Upload_Offset=str(offset))
    if version.append_media_type:
        fields.append(("Content-Type", version.append_media_type))
    return fields


def path_of(location: str) -> str:
    return "/files/" + upload_id(location)


# ------------------------------------------------------------------ one table per version


def test_careful_creation_to_cancellation(
    servers: tuple[LiveServer, LiveServer], version: InteropVersion
) -> None:
    _, server = servers
    data = random_bytes(300 * KiB, seed=version.number)
    created = send(server, "POST", "/files/", fields_of(version, False))
    response = final(created)
    assert not created.interim  # 104 is off by default
    assert response.status == 201
    assert (response.get("Upload-Offset"), completeness(version, response)) == ("0", False)
    assert "max-size=" in (response.get("Upload-Limit") or "")
    location = response.get("Location")
    assert location is not None and location.startswith(server.endpoint)
    target = path_of(location)

    response = final(send(server, "PATCH", target, append_fields(version, 0, False), data[:1000]))
    assert (response.status, response.get("Upload-Offset")) == (version.incomplete_status, "1000")
    assert not completeness(version, response)

    response = final(send(server, "HEAD", target, fields_of(version)))
    assert response.status == 204
    assert response.get("Upload-Offset") == "1000"
    assert response.get("Cache-Control") == "no-store"
    assert not completeness(version, response)
    assert "max-size=" in (response.get("Upload-Limit") or "")

    response = final(send(server, "PATCH", target, append_fields(version, 10, False), b"xx"))
    assert response.status == 409
    assert response.get("Upload-Offset") == "1000"
    assert not completeness(version, response)
    if version.problem_types:
        assert response.get("Content-Type") == "application/problem+json"
        problem = json.loads(response.body)
        assert problem["type"].endswith("#mismatching-upload-offset")
        assert (problem["expected-offset"], problem["provided-offset"]) == (1000, 10)

    response = final(send(server, "PATCH", target, append_fields(version, 1000, True), data[1000:]))
    assert (response.status, response.get("Upload-Offset")) == (
        version.complete_status,
        str(len(data)),
    )
    assert completeness(version, response)
    response = final(send(server, "HEAD", target, fields_of(version)))
    assert completeness(version, response)
    assert response.get("Upload-Length") == str(len(data))
    assert sha256_file(server.data_file(location)) == sha256_bytes(data)

    assert final(send(server, "DELETE", target, fields_of(version))).status == 204
    response = final(send(server, "HEAD", target, fields_of(version)))
    assert response.status == version.gone_status


def test_optimistic_creation_interrupted_and_resumed(
    servers: tuple[LiveServer, LiveServer], version: InteropVersion
) -> None:
    """The whole file in one request; the 104 gives its URL at once; the connection
    drops half way; the bytes that came are kept and the upload resumes from them."""
    direct, _ = servers
    data = random_bytes(2 * MiB, seed=100 + version.number)
    half = len(data) // 2
    fields = [*fields_of(version, True), ("Content-Length", str(len(data)))]
    with connect(direct.port, READ_TIMEOUT) as sock:
        sock.sendall(build_request("POST", "/files/", fields, port=direct.port))
        reader = Reader(sock)
        interim = reader.message()
        assert interim is not None and interim.status == 104, interim
        assert interim.get("Upload-Draft-Interop-Version") == str(version.number)
        assert "max-size=" in (interim.get("Upload-Limit") or "")
        location = interim.get("Location")
        assert location is not None and location.startswith(direct.endpoint)
        sock.sendall(data[:half])
        wait_until_delivered(sock)
        sock.shutdown(socket.SHUT_WR)  # the client goes away half way
        reader.exchange()  # whatever the server still says (if anything)
    target = path_of(location)
    offset = _settled_offset(direct, version, target)
    assert offset == half
    response = final(
        send(direct, "PATCH", target, append_fields(version, offset, True), data[offset:])
    )
    assert response.status == version.complete_status
    assert completeness(version, response)
    assert sha256_file(direct.data_file(location)) == sha256_bytes(data)


def _settled_offset(server: LiveServer, version: InteropVersion, target: str) -> int:
    """HEAD until the interrupted request has recorded what it got (bounded)."""
    offset = -1
    for _ in range(100):
        response = final(send(server, "HEAD", target, fields_of(version)))
        if response.status == 204:
            now = int(response.get("Upload-Offset") or "-1")
            if now == offset:
                return now
            offset = now
        time.sleep(0.05)
    raise AssertionError(f"offset never settled (last {offset})")


def test_104_on_a_direct_socket_only(
    servers: tuple[LiveServer, LiveServer], version: InteropVersion
) -> None:
    direct, server = servers
    created = send(direct, "POST", "/files/", fields_of(version, True), b"abc")
    assert [m.status for m in created.interim] == [104]
    assert created.interim[0].get("Location") == final(created).get("Location")
    assert created.interim[0].get("Upload-Draft-Interop-Version") == str(version.number)
    # Off (the default), through a proxy hop, for tus: never.
    assert not send(server, "POST", "/files/", fields_of(version, True), b"abc").interim
    proxied = fields_of(version, True, X_Forwarded_For="192.0.2.1")
    assert not send(direct, "POST", "/files/", proxied, b"abc").interim
    forwarded = fields_of(version, True, Forwarded="for=192.0.2.1")
    assert not send(direct, "POST", "/files/", forwarded, b"abc").interim
    tus = [("Tus-Resumable", "1.0.0"), ("Upload-Length", "3")]
    assert not send(direct, "POST", "/files/", tus).interim


@pytest.mark.parametrize("value", ["4", "7", "ten"])
def test_no_104_for_versions_we_do_not_speak(
    servers: tuple[LiveServer, LiveServer], value: str
) -> None:
    direct, _ = servers
    fields = [("Upload-Draft-Interop-Version", value), ("Upload-Complete", "?1")]
    created = send(direct, "POST", "/files/", fields, b"abc")
    assert not created.interim
    assert final(created).status == 400


def test_chunked_optimistic_creation(servers: tuple[LiveServer, LiveServer]) -> None:
    """A body of unknown length that says it is the whole upload completes it."""
    _, server = servers
    version = VERSIONS[9]
    data = random_bytes(100 * KiB, seed=9)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(data[i : i + 7000]), data[i : i + 7000])
        for i in range(0, len(data), 7000)
    )
    fields = [*fields_of(version, True), ("Transfer-Encoding", "chunked")]
    with connect(server.port, READ_TIMEOUT) as sock:
        sock.sendall(
            build_request("POST", "/files/", fields, port=server.port) + chunks + b"0\r\n\r\n"
        )
        response = final(Reader(sock).exchange())
    assert response.status == 201
    assert completeness(version, response)
    assert response.get("Upload-Offset") == str(len(data))
    assert sha256_file(server.data_file(response.get("Location") or "")) == sha256_bytes(data)


def test_tus_and_draft_clients_at_once(servers: tuple[LiveServer, LiveServer]) -> None:
    _, server = servers
    tus_data = random_bytes(8 * MiB, seed=61)
    draft_data = random_bytes(8 * MiB, seed=62)
    outcome: dict[str, object] = {}

    def tus() -> None:
        uploader = tuspy_upload(server.endpoint, io.BytesIO(tus_data), chunk_size=MiB)
        outcome["tus"] = uploader.url

    def draft() -> None:
        version = VERSIONS[8]
        created = final(send(server, "POST", "/files/", fields_of(version, False)))
        target = path_of(created.get("Location") or "")
        for start in range(0, len(draft_data), MiB):
            piece = draft_data[start : start + MiB]
            last = start + len(piece) == len(draft_data)
            response = final(
                send(server, "PATCH", target, append_fields(version, start, last), piece)
            )
            assert response.status in (version.incomplete_status, version.complete_status)
        outcome["draft"] = created.get("Location")

    threads = [threading.Thread(target=tus), threading.Thread(target=draft)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sha256_file(server.data_file(str(outcome["tus"]))) == sha256_bytes(tus_data)
    assert sha256_file(server.data_file(str(outcome["draft"]))) == sha256_bytes(draft_data)


def test_second_append_takes_over_a_stalled_one(servers: tuple[LiveServer, LiveServer]) -> None:
    """The draft's concurrency rule: a new request for the upload ends the old one
    (the client gave it up), keeping what it brought; the new one carries on."""
    _, server = servers
    version = VERSIONS[9]
    data = random_bytes(512 * KiB, seed=63)
    sent = 200 * KiB
    created = final(send(server, "POST", "/files/", fields_of(version, False)))
    location = created.get("Location") or ""
    target = path_of(location)
    fields = [*append_fields(version, 0, True), ("Content-Length", str(len(data)))]
    with connect(server.port, READ_TIMEOUT) as stalled:
        stalled.sendall(build_request("PATCH", target, fields, port=server.port) + data[:sent])
        wait_until_delivered(stalled)
        time.sleep(0.2)  # the server now waits for the rest of that body
        started = time.monotonic()
        response = final(send(server, "HEAD", target, fields_of(version)))
        print(f"takeover by HEAD: {time.monotonic() - started:.2f} s")
        assert (response.status, response.get("Upload-Offset")) == (204, str(sent))
        response = final(
            send(server, "PATCH", target, append_fields(version, sent, True), data[sent:])
        )
        assert response.status == version.complete_status
    assert sha256_file(server.data_file(location)) == sha256_bytes(data)
    assert HOST  # the loopback only


def test_stalled_optimistic_creation_is_taken_over(
    servers: tuple[LiveServer, LiveServer],
) -> None:
    """A phone's connection goes half-open mid-creation: the client, holding the URL from
    the 104, asks HEAD on a new connection; the stalled creation hands over what it got."""
    direct, _ = servers
    version = VERSIONS[8]
    data = random_bytes(1 * MiB, seed=64)
    sent = 300 * KiB
    fields = [*fields_of(version, True), ("Content-Length", str(len(data)))]
    with connect(direct.port, READ_TIMEOUT) as stalled:
        stalled.sendall(build_request("POST", "/files/", fields, port=direct.port))
        interim = Reader(stalled).message()
        assert interim is not None and interim.status == 104
        location = interim.get("Location") or ""
        stalled.sendall(data[:sent])
        wait_until_delivered(stalled)
        time.sleep(0.2)
        target = path_of(location)
        response = final(send(direct, "HEAD", target, fields_of(version)))
        assert (response.status, response.get("Upload-Offset")) == (204, str(sent))
        assert response.get("Upload-Length") == str(len(data))  # told by the creation
        response = final(
            send(direct, "PATCH", target, append_fields(version, sent, True), data[sent:])
        )
        assert response.status == version.complete_status
    assert sha256_file(direct.data_file(location)) == sha256_bytes(data)
