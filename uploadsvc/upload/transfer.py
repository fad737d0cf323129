"""One file's upload: tuspy's uploader, with the transport and retries it lacks.

tuspy (``tusclient``) supplies the protocol: creation headers and ``Upload-Metadata``
encoding, the chunk loop (``Uploader.upload``), each PATCH's headers and its
``Upload-Checksum`` (``TusRequest``). What it lacks is written here:

- every request goes through one ``requests.Session`` with connect and read timeouts
  (tuspy's have none: a lost network would hang it forever), and a chunk is streamed
  from a file-like body so progress moves while it is on the wire;
- a retry policy like tus-js-client's: network errors, 5xx, 409, 423, 429 and 460 are
  retried after 0, 1, 3 and 5 s, re-reading the offset with HEAD before going on (the
  server's offset is the truth); the count starts over whenever the upload progresses;
- refusals become exceptions carrying the server's own words and an exit status;
- the whole file's sha-256, declared at creation as RFC 9530 ``Repr-Digest``: the
  server checks it when the upload completes (460 and never served on a mismatch), and
  ``--verify`` compares it with what the server shows and serves.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, NoReturn, TypeVar
from urllib.parse import urljoin

import requests
from tusclient import client as tus_client
from tusclient import request as tus_request
from tusclient.uploader import uploader as tus_uploader

from .progress import Progress
from .state import StateFile

T = TypeVar("T")

TUS_VERSION = "1.0.0"
CONNECT_TIMEOUT = 10.0
RETRY_DELAYS = (0.0, 1.0, 3.0, 5.0)  # tus-js-client's defaults
RETRY_STATUSES = frozenset({409, 423, 429, 460})
GONE_STATUSES = frozenset({404, 410})
VERIFY_BLOCK = 1024 * 1024
USER_AGENT = "uploadsvc-upload/0.1"

# tuspy has no type annotations: its classes are Any here, at this one boundary.
_TusRequest: Any = tus_request.TusRequest
_TusUploader: Any = tus_uploader.Uploader

# Exit statuses (the CLI documents them in --help).
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_FILE = 3
EXIT_UNREACHABLE = 4
EXIT_VERIFY = 5
EXIT_INTERRUPTED = 130


class UploadFailed(Exception):
    """An upload did not happen; the message is one line for the user."""

    exit_code = EXIT_REFUSED


class Refused(UploadFailed):
    """The server said no (a 4xx other than the retried ones), or 5xx past the retries."""


class UploadGone(UploadFailed):
    """The upload's URL answers 404 or 410: expired, deleted or never ours."""


class Unreachable(UploadFailed):
    """No answer, no tus server at that URL, or the network failed past the retries."""

    exit_code = EXIT_UNREACHABLE


class FileProblem(UploadFailed):
    exit_code = EXIT_FILE


class VerifyFailed(UploadFailed):
    exit_code = EXIT_VERIFY


class _Transient(Exception):
    """A failure worth retrying; ``failure`` is what to raise once retries run out."""

    def __init__(self, failure: UploadFailed) -> None:
        super().__init__(str(failure))
        self.failure = failure


@dataclass(frozen=True)
class Options:
    chunk_size: int
    timeout: float = 60.0
    retry_delays: Sequence[float] = RETRY_DELAYS
    headers: Mapping[str, str] | None = None
    # Seconds to wait after each chunk: for tests that need an upload to take a while.
    chunk_delay: float = 0.0


@dataclass(frozen=True)
class ServerInfo:
    """What ``OPTIONS`` on the endpoint said."""

    extensions: frozenset[str]
    checksum_algorithms: frozenset[str]
    max_size: int | None

    @property
    def sha1_checksums(self) -> bool:
        return "checksum" in self.extensions and "sha1" in self.checksum_algorithms


def describe(error: BaseException) -> str:
    """A short reason for a ``requests`` failure ("Connection refused", not a repr)."""
    if isinstance(error, requests.ConnectTimeout):
        return "connection timed out"
    if isinstance(error, requests.ReadTimeout):
        return "no answer in time (timed out)"
    text = str(error)
    for pattern in (r"\[Errno -?\d+\] ([^'\"\)\]]+)", r"\w+Error\(-?\d+, '([^']+)'\)"):
        match = re.search(pattern, text)
        if match:
            return match.group(1).strip()
    return text[:200] or type(error).__name__


def server_text(response: requests.Response) -> str:
    """The status and the server's short explanation, on one line."""
    text = " ".join(response.text.split())[:300] if response.content else ""
    status = f"{response.status_code} {response.reason or ''}".strip()
    return f"{status}: {text}" if text else status


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    timeout: float,
    data: Any = None,
    stream: bool = False,
) -> requests.Response:
    """One request; network failures become ``_Transient(Unreachable)``."""
    try:
        return session.request(
            method,
            url,
            headers=dict(headers),
            data=data,
            timeout=(CONNECT_TIMEOUT, timeout),
            allow_redirects=False,
            stream=stream,
        )
    except (requests.ConnectionError, requests.Timeout) as error:
        raise _Transient(Unreachable(f"{method} {url}: {describe(error)}")) from error
    except requests.RequestException as error:
        raise Unreachable(f"{method} {url}: {describe(error)}") from error


def check(response: requests.Response, what: str) -> None:
    """Raise the failure a non-2xx answer means (retryable ones as ``_Transient``)."""
    status = response.status_code
    if 200 <= status < 300:
        return
    if status in RETRY_STATUSES or status >= 500:
        raise _Transient(Refused(f"{what}: the server answered {server_text(response)}"))
    if status in GONE_STATUSES:
        raise UploadGone(f"{what}: {server_text(response)}")
    if 300 <= status < 400:
        location = response.headers.get("Location", "?")
        raise Refused(f"{what}: redirected to {location}; give that URL as --endpoint")
    raise Refused(f"refused by the server: {server_text(response)}")


def probe(session: requests.Session, endpoint: str, options: Options) -> ServerInfo:
    """``OPTIONS`` the endpoint once: is it there, is it tus, what does it offer."""
    try:
        response = session.options(
            endpoint, headers=dict(options.headers or {}), timeout=(CONNECT_TIMEOUT, 20)
        )
    except requests.RequestException as error:
        raise Unreachable(f"cannot reach {endpoint}: {describe(error)}") from None
    with response:
        versions = response.headers.get("Tus-Version")
        if versions is None:
            raise Unreachable(
                f"{endpoint} is not a tus endpoint (OPTIONS answered {response.status_code} "
                "without Tus-Version); uploadsvc's endpoint ends in /files/"
            )
        if TUS_VERSION not in _tokens(versions):
            raise Unreachable(f"{endpoint} speaks tus {versions}, not {TUS_VERSION}")
        extensions = _tokens(response.headers.get("Tus-Extension", ""))
        if "creation" not in extensions:
            raise Refused(f"{endpoint} does not let clients create uploads (no 'creation')")
        max_size = response.headers.get("Tus-Max-Size", "")
        return ServerInfo(
            extensions=extensions,
            checksum_algorithms=_tokens(response.headers.get("Tus-Checksum-Algorithm", "")),
            max_size=int(max_size) if max_size.isdigit() else None,
        )


def _tokens(value: str) -> frozenset[str]:
    return frozenset(token.strip().lower() for token in value.split(",") if token.strip())


class Retry:
    """Bounded retries: sleep the next delay, or give up with the last failure."""

    def __init__(
        self,
        delays: Sequence[float],
        sleep: Callable[[float], None] = time.sleep,
        notify: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.delays = tuple(delays)
        self.sleep = sleep
        self.notify = notify
        self.failures = 0

    def failed(self, error: _Transient) -> None:
        failure = error.failure
        if self.failures >= len(self.delays):
            retries = f"{len(self.delays)} retries" if self.delays else "no retries"
            raise type(failure)(f"{failure} (gave up after {retries})") from error
        delay = self.delays[self.failures]
        self.failures += 1
        self.notify(f"{failure}; retry {self.failures} of {len(self.delays)} in {delay:g} s")
        self.sleep(delay)

    def progressed(self) -> None:
        self.failures = 0


class _Body:
    """A chunk as a file-like body: requests sends it with a Content-Length and reads it
    in blocks, so progress moves while the chunk is on the wire."""

    def __init__(self, data: bytes, on_read: Callable[[int], None]) -> None:
        self._data = memoryview(data)
        self._position = 0
        self._on_read = on_read

    def __len__(self) -> int:
        return len(self._data)

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else min(len(self._data), self._position + size)
        block = bytes(self._data[self._position : end])
        self._position = end
        if block:
            self._on_read(len(block))
        return block


class _ChunkRequest(_TusRequest):  # type: ignore[misc]
    """tuspy's PATCH (its headers, its checksum), sent through our session."""

    def __init__(self, uploader: Uploader) -> None:
        super().__init__(uploader)
        self.uploader = uploader

    def perform(self) -> None:
        chunk = self.file.read(self._content_length)
        if len(chunk) != self._content_length:
            raise FileProblem("the file shrank while it was being uploaded")
        self.add_checksum(chunk)
        up = self.uploader
        response = send(
            up.session,
            "PATCH",
            self._url,
            headers=self._request_headers,
            data=_Body(chunk, up.progress.sending),
            timeout=up.options.timeout,
        )
        with response:
            self.status_code = response.status_code
            self.response_content = response.content
            self.response_headers = {k.lower(): v for k, v in response.headers.items()}
            check(response, "PATCH")
        if not self.response_headers.get("upload-offset", "").isdigit():
            raise Refused("the server answered PATCH without Upload-Offset (not tus?)")


class Uploader(_TusUploader):  # type: ignore[misc]
    """tuspy's ``Uploader`` over our session, with retries, progress and URL storage."""

    url: str | None
    offset: int
    stop_at: int
    url_storage: StateFile

    def __init__(
        self,
        endpoint: str,
        stream: BinaryIO,
        *,
        session: requests.Session,
        options: Options,
        metadata: Mapping[str, str],
        checksum: bool,
        progress: Progress,
        storage: StateFile,
        key: str,
        sleep: Callable[[float], None] = time.sleep,
        notify: Callable[[str], None] = lambda message: None,
        digest: FileDigest | None = None,
    ) -> None:
        self.digest = digest
        self.session = session
        self.options = options
        self.progress = progress
        self.key = key
        self.retry = Retry(options.retry_delays, sleep, notify)
        self._sleep = sleep
        self._stale = False  # the offset must be re-read (HEAD) before the next PATCH
        super().__init__(
            file_stream=stream,
            client=tus_client.TusClient(endpoint, headers=dict(options.headers or {})),
            chunk_size=options.chunk_size,
            metadata=dict(metadata),
            upload_checksum=checksum,
        )
        # tuspy's set_url stores every new URL under _get_fingerprint() from now on.
        self.store_url = True
        self.url_storage = storage

    def _get_fingerprint(self) -> str:
        return self.key

    # -- resuming ---------------------------------------------------------------------

    def resume(self) -> int | None:
        """Continue the upload stored for this file, if the server still has it: set
        ``url`` and ``offset`` (from HEAD) and return the offset; else forget it."""
        url = self.url_storage.get_item(self.key)
        if url is None:
            return None
        try:
            offset, length = self._with_retries(lambda: self._head(url))
        except UploadGone:
            self.url_storage.remove_item(self.key)
            return None
        if length is None or length != self.get_file_size() or offset > length:
            self.url_storage.remove_item(self.key)  # another file's upload: start anew
            return None
        self.url, self.offset = url, offset
        self.progress.moved_to(offset)
        return offset

    def _head(self, url: str) -> tuple[int, int | None]:
        response = send(
            self.session, "HEAD", url, headers=self.get_headers(), timeout=self.options.timeout
        )
        with response:
            check(response, "HEAD")
            offset = response.headers.get("Upload-Offset", "")
            length = response.headers.get("Upload-Length", "")
        if not offset.isdigit():
            raise Refused(f"HEAD {url}: no Upload-Offset in the answer (not tus?)")
        return int(offset), int(length) if length.isdigit() else None

    def get_offset(self) -> int:
        return self._with_retries(lambda: self._head(self.upload_url))[0]

    @property
    def upload_url(self) -> str:
        if self.url is None:
            raise AssertionError("no upload URL yet")
        return self.url

    def _with_retries(self, attempt: Callable[[], T]) -> T:
        for _ in range(len(self.retry.delays) + 1):
            try:
                return attempt()
            except _Transient as error:
                self.retry.failed(error)
        self._give_up()

    def _give_up(self) -> NoReturn:
        raise AssertionError("Retry.failed raises once the delays run out")

    # -- creating and sending ---------------------------------------------------------

    def get_url_creation_headers(self) -> dict[str, str]:
        headers: dict[str, str] = super().get_url_creation_headers()
        if self.digest is not None:
            # Read only now: a resumed upload was declared when it was created.
            headers["Repr-Digest"] = self.digest.header()
        return headers

    def create_url(self) -> str:
        def attempt() -> str:
            endpoint: str = self.client.url
            response = send(
                self.session,
                "POST",
                endpoint,
                headers=self.get_url_creation_headers(),
                timeout=self.options.timeout,
            )
            with response:
                check(response, "POST")
                location = response.headers.get("Location")
            if not location:
                raise Refused("the server created an upload but sent no Location")
            return urljoin(endpoint, location)

        return self._with_retries(attempt)

    def upload_chunk(self) -> None:
        before = self.offset
        super().upload_chunk()  # tuspy: _do_request, then offset = the answer's
        if self.offset > before:
            self.retry.progressed()
        self.progress.moved_to(self.offset)
        if self.options.chunk_delay and self.offset < self.stop_at:
            self._sleep(self.options.chunk_delay)

    def _do_request(self) -> None:
        for _ in range(len(self.retry.delays) + 1):
            try:
                if self._stale:
                    self.offset = self._head(self.upload_url)[0]
                    self._stale = False
                    self.progress.moved_to(self.offset)
                    if self.offset >= self.stop_at:
                        self.request = _Done(self.offset)
                        return
                request = _ChunkRequest(self)
                request.perform()
                self.request = request
                return
            except _Transient as error:
                self.retry.failed(error)
                self._stale = True
        self._give_up()


class _Done:
    """Stands in for a request when a re-read offset shows the upload complete."""

    def __init__(self, offset: int) -> None:
        self.response_headers = {"upload-offset": str(offset)}


class FileDigest:
    """The sha-256 of a whole file, read once, when first asked (a fresh upload's
    creation, or ``--verify``)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._value: bytes | None = None

    def value(self) -> bytes:
        if self._value is None:
            hasher = hashlib.sha256()
            position = self._stream.tell()
            self._stream.seek(0)
            for block in iter(lambda: self._stream.read(VERIFY_BLOCK), b""):
                hasher.update(block)
            self._stream.seek(position)
            self._value = hasher.digest()
        return self._value

    def header(self) -> str:
        """As an RFC 9530 Repr-Digest value: ``sha-256=:<base64>:``."""
        return f"sha-256=:{base64.b64encode(self.value()).decode()}:"


def shown_digest(value: str | None) -> bytes | None:
    """The sha-256 a server's ``Repr-Digest`` shows, if it shows one."""
    match = re.search(r"(?:^|,)\s*sha-256\s*=\s*:([A-Za-z0-9+/=]*):", value or "")
    if match is None:
        return None
    try:
        return base64.b64decode(match.group(1), validate=True)
    except ValueError:
        return None


def verify(
    session: requests.Session,
    url: str,
    stream: BinaryIO,
    options: Options,
    digest: FileDigest | None = None,
) -> tuple[str, str]:
    """Download the stored bytes and compare them with ``stream``; return both sha256s,
    raising ``VerifyFailed`` when they differ, or when the server shows a verified
    ``Repr-Digest`` other than the file's."""
    local_digest = (digest or FileDigest(stream)).value()
    local = _Known(local_digest)
    shown: bytes | None = None
    remote = hashlib.sha256()
    headers = {"Tus-Resumable": TUS_VERSION, **(options.headers or {})}
    retry = Retry(options.retry_delays)
    for _ in range(len(retry.delays) + 1):
        remote = hashlib.sha256()
        try:
            response = send(
                session, "GET", url, headers=headers, timeout=options.timeout, stream=True
            )
            with response:
                check(response, "GET (verify)")
                shown = shown_digest(response.headers.get("Repr-Digest"))
                for block in response.iter_content(VERIFY_BLOCK):
                    remote.update(block)
            break
        except _Transient as error:
            retry.failed(error)
        except requests.RequestException as error:  # the body broke off mid-way
            retry.failed(_Transient(Unreachable(f"GET {url}: {describe(error)}")))
    if remote.hexdigest() != local.hexdigest():
        raise VerifyFailed(
            f"VERIFY FAILED: the server's copy differs (sha256 {remote.hexdigest()}, "
            f"local file {local.hexdigest()})"
        )
    if shown is not None and shown != local_digest:
        raise VerifyFailed(
            f"VERIFY FAILED: the server's Repr-Digest (sha256 {shown.hex()}) is not the"
            f" local file's ({local.hexdigest()})"
        )
    return local.hexdigest(), remote.hexdigest()


@dataclass(frozen=True)
class _Known:
    """A digest already computed, read like a hashlib object."""

    digest: bytes

    def hexdigest(self) -> str:
        return self.digest.hex()
