"""uploadsvc-upload without a network: argument parsing, fingerprints, the state file,
the retry policy and progress; then whole runs in-process, through a requests adapter
that hands each request to the Flask test app (and can inject faults first)."""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from flask.testing import FlaskClient
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from tests.test_views import create, patch
from uploadsvc.upload import cli, progress, state, transfer
from uploadsvc.upload.transfer import (
    EXIT_FILE,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    EXIT_VERIFY,
)

ORIGIN = "http://localhost"  # the Flask test client's
ENDPOINT = f"{ORIGIN}/files/"

# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1", 1),
        ("1048576", 1048576),
        ("512K", 512 * 1024),
        ("512k", 512 * 1024),
        ("8M", 8 * 1024**2),
        ("8MiB", 8 * 1024**2),
        ("8MB", 8 * 1024**2),
        ("1G", 1024**3),
        (" 2m ", 2 * 1024**2),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert cli.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-1", "1.5M", "8X", "M", "8 M B", "1e6"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_size(text)


def test_parse_meta_and_header() -> None:
    assert cli.parse_meta("project=apollo 11") == ("project", "apollo 11")
    assert cli.parse_meta("empty=") == ("empty", "")
    assert cli.parse_meta("a=b=c") == ("a", "b=c")
    for bad in ("novalue", "=x", "two words=x", "a,b=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.parse_meta(bad)
    assert cli.parse_header("Authorization: Bearer x:y") == ("Authorization", "Bearer x:y")
    for bad in ("NoColon", "Bad Name: x", ": x"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.parse_header(bad)


def test_parse_delays_and_endpoint() -> None:
    assert cli.parse_delays("0,1,3,5") == (0.0, 1.0, 3.0, 5.0)
    assert cli.parse_delays("") == ()
    for bad in ("a,b", "-1", "9999"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.parse_delays(bad)
    assert cli.parse_endpoint("http://127.0.0.1:8080/files/") == "http://127.0.0.1:8080/files/"
    assert cli.parse_endpoint("https://example.org/uploads/files/")
    for bad in ("127.0.0.1:8080/files/", "ftp://host/files/", "http://", "http://a b/"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.parse_endpoint(bad)


def test_parse_args_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = cli.parse_args(["a.bin", "b.bin", "--endpoint", ENDPOINT])
    assert args.files == [Path("a.bin"), Path("b.bin")]
    assert args.chunk_size == cli.DEFAULT_CHUNK_SIZE
    assert args.retry_delays == (0.0, 1.0, 3.0, 5.0)
    assert args.state == tmp_path / "cache" / "uploadsvc-upload" / "urls.json"
    assert not args.verify and not args.fresh and not args.quiet
    assert args.meta == [] and args.header == []


def test_parse_args_endpoint_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.ENDPOINT_ENV, ENDPOINT)
    assert cli.parse_args(["a.bin"]).endpoint == ENDPOINT
    assert cli.parse_args(["a.bin", "-e", "http://other/files/"]).endpoint == "http://other/files/"


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no file
        ["a.bin"],  # no endpoint
        ["a.bin", "-e", "not-a-url"],
        ["a.bin", "-e", ENDPOINT, "--chunk-size", "0"],
        ["a.bin", "-e", ENDPOINT, "--timeout", "0"],
        ["a.bin", "-e", ENDPOINT, "--meta", "nokey"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(argv)
    assert exit_info.value.code == EXIT_USAGE
    assert "uploadsvc-upload: error:" in capsys.readouterr().err


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for line in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "130 "):
        assert f"\n  {line}" in text, line
    assert "--endpoint" in text and "--verify" in text and "--chunk-size" in text


def test_without_the_client_extra_it_says_what_to_install() -> None:
    hide_tuspy = "import sys; sys.modules['tusclient'] = None; from uploadsvc.upload import main; "
    result = subprocess.run(
        [sys.executable, "-c", hide_tuspy + "raise SystemExit(main(['--help']))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "uploadsvc-upload: needs tuspy and requests: pip install 'uploadsvc[client]'\n"
    )


def test_default_metadata() -> None:
    assert cli.default_metadata(Path("/x/report.pdf")) == {
        "filename": "report.pdf",
        "filetype": "application/pdf",
    }
    assert cli.default_metadata(Path("notes.txt"))["filetype"] == "text/plain"
    assert cli.default_metadata(Path("data.unknownext")) == {"filename": "data.unknownext"}
    # A file name that isn't UTF-8 on disk still makes valid metadata.
    odd = cli.default_metadata(Path(os.fsdecode(b"caf\xe9.txt")))
    assert odd["filename"] == "caf\ufffd.txt"


# --------------------------------------------------------------------------- fingerprint and state


def test_fingerprint_follows_path_endpoint_size_mtime_and_content(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 1000)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    first = state.fingerprint(ENDPOINT, path)
    assert first == state.fingerprint(ENDPOINT, path)
    assert first == state.fingerprint(ENDPOINT.rstrip("/"), path)  # trailing slash: same
    assert first == state.fingerprint(ENDPOINT, tmp_path / "." / "a.bin")  # same file
    assert first != state.fingerprint("http://other/files/", path)

    copy = tmp_path / "b.bin"
    copy.write_bytes(path.read_bytes())
    os.utime(copy, ns=(1_000_000_000, 1_000_000_000))
    assert first != state.fingerprint(ENDPOINT, copy)  # another path

    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    touched = state.fingerprint(ENDPOINT, path)
    assert touched != first  # modified

    path.write_bytes(b"y" * 1000)  # same size, same mtime, other content
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    assert state.fingerprint(ENDPOINT, path) != touched


def test_state_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "urls.json"
    store = state.StateFile(path)
    assert store.get_item("k") is None
    store.remove_item("k")  # nothing to remove: fine
    store.set_item("k", "http://h/files/1")
    store.set_item("j", "http://h/files/2")
    assert state.StateFile(path).get_item("k") == "http://h/files/1"
    store.remove_item("k")
    assert store.get_item("k") is None
    assert store.get_item("j") == "http://h/files/2"
    data = json.loads(path.read_text())
    assert data["version"] == 1 and set(data["uploads"]) == {"j"}
    # Written atomically: no temporary files left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == ["urls.json", "urls.json.lock"]


def test_state_file_survives_garbage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "urls.json"
    path.write_text("{not json")
    store = state.StateFile(path)
    assert store.get_item("k") is None
    assert "not valid JSON" in capsys.readouterr().err
    store.set_item("k", "http://h/files/1")
    assert store.get_item("k") == "http://h/files/1"
    path.write_text(json.dumps({"uploads": {"k": "just a string"}, "version": 1}))
    assert store.get_item("k") is None


def test_state_file_prunes_old_entries(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = state.StateFile(tmp_path / "urls.json", clock=lambda: now[0])
    store.set_item("old", "http://h/files/old")
    now[0] += state.ENTRY_TTL + 1
    store.set_item("new", "http://h/files/new")
    assert store.get_item("old") is None
    assert store.get_item("new") == "http://h/files/new"


def test_state_file_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "urls.json"

    def write(worker: int) -> None:
        store = state.StateFile(path)
        for n in range(10):
            store.set_item(f"{worker}-{n}", f"http://h/files/{worker}/{n}")

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(json.loads(path.read_text())["uploads"]) == 40


# --------------------------------------------------------------------------- retries and answers


def _transient(text: str = "network down") -> transfer._Transient:
    return transfer._Transient(transfer.Unreachable(text))


def test_retry_sleeps_the_delays_then_gives_up() -> None:
    slept: list[float] = []
    notes: list[str] = []
    retry = transfer.Retry((0, 1, 3, 5), slept.append, notes.append)
    for _ in range(4):
        retry.failed(_transient())
    assert slept == [0, 1, 3, 5]
    assert notes[-1] == "network down; retry 4 of 4 in 5 s"
    with pytest.raises(transfer.Unreachable, match=r"network down \(gave up after 4 retries\)"):
        retry.failed(_transient())


def test_retry_starts_over_after_progress() -> None:
    slept: list[float] = []
    retry = transfer.Retry((0, 1), slept.append)
    retry.failed(_transient())
    retry.failed(_transient())
    retry.progressed()
    retry.failed(_transient())
    assert slept == [0, 1, 0]


def _response(status: int, body: bytes = b"", **headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.reason = "Reason"
    response._content = body
    response.headers = CaseInsensitiveDict(headers)
    return response


@pytest.mark.parametrize("status", [200, 201, 204])
def test_check_accepts_success(status: int) -> None:
    transfer.check(_response(status), "PATCH")


@pytest.mark.parametrize("status", [409, 423, 429, 460, 500, 502, 503, 507])
def test_check_retries(status: int) -> None:
    with pytest.raises(transfer._Transient):
        transfer.check(_response(status), "PATCH")


@pytest.mark.parametrize("status", [404, 410])
def test_check_gone(status: int) -> None:
    with pytest.raises(transfer.UploadGone):
        transfer.check(_response(status), "HEAD")


def test_check_refusals_carry_the_servers_words() -> None:
    with pytest.raises(transfer.Refused) as info:
        transfer.check(_response(413, b"Upload-Length exceeds the maximum size 10\n"), "POST")
    assert str(info.value) == (
        "refused by the server: 413 Reason: Upload-Length exceeds the maximum size 10"
    )
    with pytest.raises(transfer.Refused, match="redirected to https://h/files/"):
        transfer.check(_response(301, Location="https://h/files/"), "POST")


def test_describe_network_errors() -> None:
    refused = requests.ConnectionError(
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: /files/ "
        "(Caused by NewConnectionError('<urllib3.connection.HTTPConnection object>: Failed to "
        "establish a new connection: [Errno 111] Connection refused'))"
    )
    assert transfer.describe(refused) == "Connection refused"
    reset = requests.ConnectionError(
        "('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))"
    )
    assert transfer.describe(reset) == "Connection reset by peer"
    assert transfer.describe(requests.ReadTimeout("x")) == "no answer in time (timed out)"
    assert transfer.describe(requests.ConnectTimeout("x")) == "connection timed out"


# --------------------------------------------------------------------------- progress


def test_format_bytes_and_durations() -> None:
    assert progress.format_bytes(0) == "0 B"
    assert progress.format_bytes(1023) == "1023 B"
    assert progress.format_bytes(1536) == "1.5 KiB"
    assert progress.format_bytes(10 * 1024**2) == "10.0 MiB"
    assert progress.format_bytes(5 * 1024**3) == "5.00 GiB"
    assert progress.format_duration(5) == "0:05"
    assert progress.format_duration(754) == "12:34"
    assert progress.format_duration(3723) == "1:02:03"
    assert progress.format_elapsed(0.44) == "0.4 s"
    assert progress.format_elapsed(75) == "1:15"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_line_rate_and_eta() -> None:
    clock = FakeClock()
    out = io.StringIO()
    bar = progress.Progress("big.iso", 10 * 1024**2, out, enabled=True, clock=clock)
    bar.moved_to(2 * 1024**2)  # resumed at 2 MiB
    clock.now += 2
    bar.sending(2 * 1024**2)  # 2 MiB in 2 s
    assert bar.sent == 2 * 1024**2 and bar.position == 4 * 1024**2
    assert bar.rate == pytest.approx(1024**2)
    line = bar.line()
    assert line.startswith("big.iso   40% [##########..............]")
    assert "4.0 MiB/10.0 MiB" in line and "1.0 MiB/s" in line and "ETA 0:06" in line
    assert out.getvalue().startswith("\r")
    bar.clear()
    assert out.getvalue().endswith("\r")


def test_progress_disabled_writes_nothing() -> None:
    out = io.StringIO()
    bar = progress.Progress("x", 100, out, enabled=False)
    bar.sending(50)
    bar.moved_to(100)
    bar.clear()
    assert out.getvalue() == ""
    assert bar.sent == 50


# --------------------------------------------------------------------------- whole runs, in-process

Fault = Callable[[requests.PreparedRequest], "requests.Response | Exception | None"]


# BaseAdapter.send's parameters, as requests' stubs have them.
Timeout = float | tuple[float, float] | tuple[float, None] | None
Cert = bytes | str | tuple[bytes | str, bytes | str] | None


class FlaskAdapter(BaseAdapter):
    """Hands requests to the Flask test client; ``faults`` see each request first and
    may answer it or raise instead (then they are used up)."""

    def __init__(self, client: FlaskClient) -> None:
        super().__init__()
        self.client = client
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, str | None]] = []  # method, path, Upload-Offset

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Timeout = None,
        verify: bool | str = True,
        cert: Cert = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        # A file when a body is streamed, though requests' stubs say bytes | str | None.
        body: Any = request.body
        data = body.read() if hasattr(body, "read") else body
        path = urlsplit(request.url or "").path
        self.log.append((str(request.method), path, request.headers.get("Upload-Offset")))
        for fault in list(self.faults):
            outcome = fault(request)
            if outcome is None:
                continue
            self.faults.remove(fault)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in {"content-length", "connection", "transfer-encoding"}
        }
        answer = self.client.open(path, method=request.method, headers=headers, data=data)
        response = requests.Response()
        response.status_code = answer.status_code
        response.reason = answer.status.partition(" ")[2]
        response.headers = CaseInsensitiveDict(dict(answer.headers))
        response.raw = io.BytesIO(answer.get_data())
        response.url = request.url or ""
        response.request = request
        if request.method == "GET":
            # A download holds an open file. Other answers are left unclosed, as in the
            # rest of the suite: at close, Werkzeug's lint would flag a 204 without
            # "Content-Length: 0" and a HEAD without its body, both as HTTP wants them.
            answer.close()
        return response

    def close(self) -> None:
        pass


class NoNetwork(BaseAdapter):
    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Timeout = None,
        verify: bool | str = True,
        cert: Cert = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        raise AssertionError(f"unit tests never reach the network: {request.url}")

    def close(self) -> None:
        pass


@pytest.fixture
def adapter(client: FlaskClient) -> FlaskAdapter:
    return FlaskAdapter(client)


@pytest.fixture
def session(adapter: FlaskAdapter) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.mount("http://", NoNetwork())
        session.mount("https://", NoNetwork())
        session.mount("http://localhost/", adapter)
        yield session


@pytest.fixture
def run(
    session: requests.Session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """Run the CLI in-process with these arguments; return (status, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        args = cli.parse_args(
            [*argv, "-e", ENDPOINT, "--state", str(tmp_path / "urls.json"), "--retry-delays", "0,0"]
        )
        status = cli.Run(args, session).run()
        out, err = capsys.readouterr()
        return status, out, err

    return run


def _file(tmp_path: Path, name: str, size: int, seed: int = 1) -> Path:
    path = tmp_path / name
    path.write_bytes(bytes((seed + i * 7) % 251 for i in range(size)))
    return path


def _sent(err: str) -> int:
    return int(err.split("sent ", 1)[1].split(" bytes", 1)[0])


def test_upload_with_checksums_and_verify(
    run: Callable[..., tuple[int, str, str]], adapter: FlaskAdapter, tmp_path: Path, data_dir: Path
) -> None:
    path = _file(tmp_path, "report.pdf", 700)
    status, out, err = run(str(path), "--chunk-size", "256", "--verify", "--meta", "project=x")
    assert status == EXIT_OK, err
    url = out.strip()
    assert url.startswith(ENDPOINT)
    assert (data_dir / "files" / url.rsplit("/", 1)[1]).read_bytes() == path.read_bytes()
    assert "(sent 700 bytes)" in err and "verified" in err
    patches = [offset for method, _, offset in adapter.log if method == "PATCH"]
    assert patches == ["0", "256", "512"]
    head = adapter.client.head(url, headers={"Tus-Resumable": "1.0.0"})
    metadata = head.headers["Upload-Metadata"]
    assert "filename cmVwb3J0LnBkZg==" in metadata  # report.pdf
    assert "filetype YXBwbGljYXRpb24vcGRm" in metadata  # application/pdf
    assert "project eA==" in metadata


def test_checksum_header_sent_when_advertised(
    run: Callable[..., tuple[int, str, str]], adapter: FlaskAdapter, tmp_path: Path
) -> None:
    seen: list[str | None] = []

    def spy(request: requests.PreparedRequest) -> None:
        if request.method == "PATCH":
            seen.append(request.headers.get("Upload-Checksum"))

    adapter.faults.append(spy)
    path = _file(tmp_path, "a.bin", 300)
    assert run(str(path), "-c", "1000")[0] == EXIT_OK
    digest = hashlib.sha1(path.read_bytes()).digest()
    assert seen == [f"sha1 {base64.b64encode(digest).decode()}"]


def test_rerun_resumes_from_the_servers_offset(
    run: Callable[..., tuple[int, str, str]], client: FlaskClient, tmp_path: Path
) -> None:
    path = _file(tmp_path, "a.bin", 900)
    key = state.fingerprint(ENDPOINT, path)
    # An earlier run created the upload and got 300 bytes to the server, then died.
    created = ORIGIN + create(client, 900)
    assert patch(client, created, path.read_bytes()[:300]).status_code == 204
    state.StateFile(tmp_path / "urls.json").set_item(key, created)

    status, out, err = run(str(path), "-c", "256", "--verify")
    assert status == EXIT_OK, err
    assert out.strip() == created
    assert _sent(err) == 600
    assert "resumed at 300 B" in err

    # Once more: nothing left to send.
    status, out, err = run(str(path))
    assert status == EXIT_OK and out.strip() == created
    assert "already on the server" in err


def test_fresh_ignores_the_stored_upload(
    run: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    path = _file(tmp_path, "a.bin", 100)
    first = run(str(path))[1]
    status, second, err = run(str(path), "--fresh")
    assert status == EXIT_OK and second != first and _sent(err) == 100


@pytest.mark.parametrize("answer", [404, 410])
def test_stored_url_gone_starts_a_new_upload(
    run: Callable[..., tuple[int, str, str]],
    adapter: FlaskAdapter,
    tmp_path: Path,
    answer: int,
) -> None:
    path = _file(tmp_path, "a.bin", 500)
    key = state.fingerprint(ENDPOINT, path)
    gone = f"{ENDPOINT}{'ab' * 16}"
    state.StateFile(tmp_path / "urls.json").set_item(key, gone)
    if answer == 410:
        created = ORIGIN + create(adapter.client, 500)
        adapter.client.delete(created, headers={"Tus-Resumable": "1.0.0"})
        state.StateFile(tmp_path / "urls.json").set_item(key, created)
        gone = created
    status, out, err = run(str(path))
    assert status == EXIT_OK, err
    assert out.strip() != gone and _sent(err) == 500
    assert state.StateFile(tmp_path / "urls.json").get_item(key) == out.strip()


def test_retries_network_errors_and_busy_answers(
    run: Callable[..., tuple[int, str, str]], adapter: FlaskAdapter, tmp_path: Path
) -> None:
    patches = [0]

    def second_patch_fails(request: requests.PreparedRequest) -> Exception | None:
        if request.method != "PATCH":
            return None
        patches[0] += 1
        if patches[0] == 2:
            return requests.ConnectionError("[Errno 104] Connection reset by peer")
        return None

    def busy_once(request: requests.PreparedRequest) -> requests.Response | None:
        if request.method == "HEAD":
            return _response(423, b"upload is busy with another request; retry\n")
        return None

    adapter.faults += [second_patch_fails, busy_once]
    path = _file(tmp_path, "a.bin", 800)
    status, _, err = run(str(path), "-c", "300", "--verify")
    assert status == EXIT_OK, err
    assert "Connection reset by peer; retry 1 of 2 in 0 s" in err
    assert "423" in err and "retry 2 of 2" in err
    methods = [(method, offset) for method, _, offset in adapter.log if method != "OPTIONS"]
    # The broken PATCH is followed by a HEAD (423, then 200) before the upload goes on.
    assert methods[:6] == [
        ("POST", None),
        ("PATCH", "0"),
        ("PATCH", "300"),
        ("HEAD", None),
        ("HEAD", None),
        ("PATCH", "300"),
    ]


def test_conflict_rereads_the_offset(
    run: Callable[..., tuple[int, str, str]], adapter: FlaskAdapter, tmp_path: Path
) -> None:
    def conflict_once(request: requests.PreparedRequest) -> requests.Response | None:
        if request.method == "PATCH" and request.headers.get("Upload-Offset") == "0":
            return _response(409, b"Upload-Offset 0 does not match\n")
        return None

    adapter.faults.append(conflict_once)
    path = _file(tmp_path, "a.bin", 200)
    status, _, err = run(str(path))
    assert status == EXIT_OK, err
    assert [method for method, _, _ in adapter.log] == ["OPTIONS", "POST", "PATCH", "HEAD", "PATCH"]


def test_network_gone_for_good_exits_4(
    run: Callable[..., tuple[int, str, str]], adapter: FlaskAdapter, tmp_path: Path
) -> None:
    def always_down(request: requests.PreparedRequest) -> Exception | None:
        adapter.faults.append(always_down)  # stays
        if request.method in ("PATCH", "HEAD"):
            return requests.ConnectionError("[Errno 101] Network is unreachable")
        return None

    adapter.faults.append(always_down)
    paths = [_file(tmp_path, "a.bin", 100), _file(tmp_path, "b.bin", 100)]
    status, out, err = run(*map(str, paths))
    assert status == EXIT_UNREACHABLE
    assert out == ""
    assert "a.bin: PATCH" in err and "Network is unreachable (gave up after 2 retries)" in err
    assert "b.bin" not in err  # an unreachable server stops the run


def test_refusals_exit_1_and_go_on_with_the_other_files(
    run: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    too_big = _file(tmp_path, "big.bin", 1001)  # the test app's MAX_SIZE is 1000
    fine = _file(tmp_path, "fine.bin", 10)
    status, out, err = run(str(too_big), str(fine))
    assert status == EXIT_REFUSED
    assert len(out.splitlines()) == 1  # fine.bin's URL
    assert (
        f"uploadsvc-upload: {too_big}: refused by the server: 413 Content Too Large: "
        "Upload-Length exceeds the maximum size 1000"
    ) in err


def test_missing_files_exit_3_before_anything_is_sent(
    run: Callable[..., tuple[int, str, str]], adapter: FlaskAdapter, tmp_path: Path
) -> None:
    fine = _file(tmp_path, "fine.bin", 10)
    status, out, err = run(str(fine), str(tmp_path / "nope.bin"), str(tmp_path))
    assert status == EXIT_FILE
    assert out == "" and adapter.log == []
    assert f"{tmp_path / 'nope.bin'}: no such file" in err
    assert f"{tmp_path}: is not a regular file" in err


def test_not_a_tus_endpoint_exits_4(
    session: requests.Session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _file(tmp_path, "a.bin", 10)
    args = cli.parse_args([str(path), "-e", "http://localhost/", "--state", str(tmp_path / "s")])
    assert cli.Run(args, session).run() == EXIT_UNREACHABLE
    assert "is not a tus endpoint" in capsys.readouterr().err


def test_verify_detects_a_difference(
    session: requests.Session, client: FlaskClient, tmp_path: Path
) -> None:
    created = ORIGIN + create(client, 3)
    assert patch(client, created, b"abc").status_code == 204
    options = transfer.Options(chunk_size=10, retry_delays=())
    transfer.verify(session, created, io.BytesIO(b"abc"), options)
    with pytest.raises(transfer.VerifyFailed, match="VERIFY FAILED") as info:
        transfer.verify(session, created, io.BytesIO(b"abd"), options)
    assert info.value.exit_code == EXIT_VERIFY


def test_the_uploader_does_not_import_the_server() -> None:
    """``uploadsvc-upload --help`` pays for what it uses: none of Flask, SQLAlchemy and
    Alembic (about half a second on the 2-core machine)."""
    probe = (
        "import sys; import uploadsvc.upload.cli; "
        "print(sorted({'flask', 'sqlalchemy', 'alembic', 'werkzeug'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
