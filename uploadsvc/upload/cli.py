"""``uploadsvc-upload FILE... --endpoint URL``: arguments, the run, messages, exit codes."""

from __future__ import annotations

import argparse
import mimetypes
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from .progress import Progress, format_bytes, format_duration, format_elapsed
from .state import StateFile, default_state_path, fingerprint
from .transfer import (
    EXIT_FILE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    RETRY_DELAYS,
    USER_AGENT,
    FileDigest,
    FileProblem,
    Options,
    ServerInfo,
    Unreachable,
    Uploader,
    UploadFailed,
    UploadGone,
    probe,
    verify,
)

PROG = "uploadsvc-upload"
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
ENDPOINT_ENV = "UPLOADSVC_ENDPOINT"
# An upload link's token (flask grant create): in the environment, it stays out of `ps`.
TOKEN_ENV = "UPLOADSVC_TOKEN"
# Seconds to sleep after each chunk; for tests that must catch an upload mid-way.
CHUNK_DELAY_ENV = "UPLOADSVC_UPLOAD_CHUNK_DELAY"

_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_META_KEY = re.compile(r"[^\s,]+")

EPILOG = f"""\
Uploads resume: if a run stops (Ctrl-C, a crash, a lost network), run the same command
again and each file continues from where the server's copy ends. Which upload belongs to
which file is kept in the state file, keyed by the endpoint, the file's path, size and
modification time and a hash of its first MiB; a changed file starts a new upload.

Each upload's URL is printed on stdout, one line per file in the order given (a file
the server already has in full prints its URL again without sending anything). Progress
and summaries go to stderr; progress only on a terminal.

exit status:
  0    every file uploaded (and verified, with --verify)
  1    the server refused an upload (too large, not allowed, ...): its reason is shown
  2    bad usage
  3    a file is missing, unreadable, or changed while it was being uploaded
  4    the server is unreachable, not a tus endpoint, or the network failed past the retries
  5    --verify found that the server's copy differs from the file
  130  interrupted (Ctrl-C): run the same command again to resume
With several files, a refused one doesn't stop the others; the status is the first
failure's. A server that can't be reached stops the run.

environment:
  {ENDPOINT_ENV}   the endpoint when --endpoint isn't given
  {TOKEN_ENV}      the token when --token isn't given
"""


def parse_size(text: str) -> int:
    """``1048576``, ``512K``, ``8M``, ``8MiB``, ``1G`` (powers of 1024), at least 1."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 8M, 512K, 1048576)")
    number = int(match.group(1)) * int(1024 ** " kmgt".index(match.group(2).lower() or " "))
    if number < 1:
        raise argparse.ArgumentTypeError("the size must be at least 1 byte")
    return number


def parse_meta(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not _META_KEY.fullmatch(key):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not key=value (a key without spaces or commas)"
        )
    return key, value


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not re.fullmatch(r"[A-Za-z0-9-]+", name.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not 'Name: value'")
    return name.strip(), value.strip()


def parse_delays(text: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of seconds") from None
    if any(not 0 <= delay <= 3600 for delay in delays):
        raise argparse.ArgumentTypeError("each delay must be between 0 and 3600 seconds")
    return delays


def parse_endpoint(text: str) -> str:
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an http(s) URL (e.g. http://host:8080/files/)"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Upload files to a tus server (uploadsvc), resumably, with progress.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="files to upload")
    parser.add_argument(
        "-e",
        "--endpoint",
        type=parse_endpoint,
        default=os.environ.get(ENDPOINT_ENV) or None,
        metavar="URL",
        help=f"the tus endpoint, e.g. http://127.0.0.1:8080/files/ (default: ${ENDPOINT_ENV})",
    )
    parser.add_argument(
        "-c",
        "--chunk-size",
        type=parse_size,
        default=DEFAULT_CHUNK_SIZE,
        metavar="SIZE",
        help="bytes per PATCH request, e.g. 512K, 8M (default: 8M)",
    )
    parser.add_argument(
        "-m",
        "--meta",
        type=parse_meta,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Upload-Metadata (repeatable); filename and filetype are sent by default",
    )
    parser.add_argument(
        "-H",
        "--header",
        type=parse_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an HTTP header for every request, e.g. 'Authorization: Bearer ...' (repeatable)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        metavar="TOKEN",
        help=f"an upload link's token, sent as 'Authorization: Bearer ...' (default: ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="after each upload, download the stored bytes and compare (sha256, and the"
        " Repr-Digest the server verified)",
    )
    parser.add_argument(
        "--no-digest",
        dest="digest",
        action="store_false",
        help="don't declare the file's sha-256 (Repr-Digest) when creating an upload; by"
        " default the server checks the whole file against it when the upload completes",
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"where upload URLs are kept for resuming (default: {default_state_path()})",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start new uploads even where a stored one could be resumed",
    )
    parser.add_argument(
        "--retry-delays",
        type=parse_delays,
        default=RETRY_DELAYS,
        metavar="S,S,...",
        help="seconds to wait before each retry of a failed request (default: 0,1,3,5)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the server's answer to a request (default: 60)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the URLs and errors")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.endpoint is None:
        parser.error(f"the endpoint is required: --endpoint URL (or ${ENDPOINT_ENV})")
    if not args.timeout > 0:
        parser.error("--timeout must be positive")
    if args.state is None:
        args.state = default_state_path()
    if args.token:
        if any(name.lower() == "authorization" for name, _ in args.header):
            parser.error("--token and an Authorization header: give one of them")
        args.header.append(("Authorization", f"Bearer {args.token.strip()}"))
    return args


def default_metadata(path: Path) -> dict[str, str]:
    """``filename`` (the base name) and ``filetype`` when mimetypes knows the extension."""
    name = os.fsencode(path.name).decode("utf-8", "replace")
    metadata = {"filename": name}
    filetype, _ = mimetypes.guess_type(name)
    if filetype:
        metadata["filetype"] = filetype
    return metadata


@dataclass(frozen=True)
class Outcome:
    url: str
    size: int
    sent: int
    resumed_from: int | None
    seconds: float

    def summary(self, name: str) -> str:
        if self.sent == 0 and self.resumed_from == self.size:
            return f"{name}: already on the server ({format_bytes(self.size)}), {self.url}"
        if self.resumed_from:
            return (
                f"{name}: uploaded the remaining {format_bytes(self.size - self.resumed_from)}"
                f" of {format_bytes(self.size)} in {format_elapsed(self.seconds)} (resumed at"
                f" {format_bytes(self.resumed_from)}, sent {self.sent} bytes), {self.url}"
            )
        return (
            f"{name}: uploaded {format_bytes(self.size)} in {format_elapsed(self.seconds)}"
            f" (sent {self.sent} bytes), {self.url}"
        )


class Run:
    def __init__(self, args: argparse.Namespace, session: requests.Session) -> None:
        self.args = args
        self.session = session
        self.state = StateFile(args.state)
        self.options = Options(
            chunk_size=args.chunk_size,
            timeout=args.timeout,
            retry_delays=args.retry_delays,
            headers=dict(args.header),
            chunk_delay=float(os.environ.get(CHUNK_DELAY_ENV) or 0),
        )
        self.show_progress = not args.quiet and sys.stderr.isatty()

    def say(self, text: str) -> None:
        if not self.args.quiet:
            print(text, file=sys.stderr, flush=True)

    def notice(self, progress: Progress, text: str) -> None:
        """A line between progress redraws (a retry, say)."""
        progress.clear()
        self.say(text)

    def upload(self, path: Path, server: ServerInfo) -> Outcome:
        endpoint: str = self.args.endpoint
        try:
            stat = path.stat()
            key = fingerprint(endpoint, path)
            stream = path.open("rb")
        except OSError as error:
            raise FileProblem(f"cannot read: {error.strerror or error}") from None
        progress = Progress(path.name, stat.st_size, sys.stderr, enabled=self.show_progress)
        with stream:
            digest = FileDigest(stream) if self.args.digest or self.args.verify else None
            uploader = Uploader(
                endpoint,
                stream,
                session=self.session,
                options=self.options,
                metadata={**default_metadata(path), **dict(self.args.meta)},
                checksum=server.sha1_checksums,
                progress=progress,
                storage=self.state,
                key=key,
                notify=lambda message: self.notice(progress, f"{path}: {message}"),
                digest=digest if self.args.digest else None,
            )
            try:
                resumed_from = None if self.args.fresh else uploader.resume()
                uploader.upload()
            except UploadGone as error:
                # Expired or deleted while we worked: the next run starts a new upload.
                self.state.remove_item(key)
                raise UploadGone(f"{error}; run again to start a new upload") from None
            finally:
                progress.clear()
            if os.stat(stream.fileno()).st_mtime_ns != stat.st_mtime_ns:
                raise FileProblem(
                    "changed while it was being uploaded; upload it again with --fresh"
                )
            url = uploader.upload_url
            if self.args.verify:
                if self.show_progress:
                    sys.stderr.write(f"{path.name}: verifying...\r")
                verify(self.session, url, stream, self.options, digest)
        return Outcome(url, stat.st_size, progress.sent, resumed_from, progress.elapsed)

    def run(self) -> int:
        paths: list[Path] = self.args.files
        missing = [path for path in paths if not path.is_file()]
        for path in missing:
            reason = "is not a regular file" if path.exists() else "no such file"
            error(f"{path}: {reason}")
        if missing:
            return EXIT_FILE
        try:
            server = probe(self.session, self.args.endpoint, self.options)
        except UploadFailed as failure:
            error(str(failure))
            return failure.exit_code
        status = EXIT_OK
        for path in paths:
            try:
                outcome = self.upload(path, server)
            except UploadFailed as failure:
                error(f"{path}: {failure}")
                if isinstance(failure, Unreachable):
                    return failure.exit_code
                status = status or failure.exit_code
                continue
            print(outcome.url, flush=True)
            self.say(outcome.summary(str(path)) + (", verified" if self.args.verify else ""))
        return status


def error(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        with requests.Session() as session:
            session.headers["User-Agent"] = USER_AGENT
            return Run(args, session).run()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        error(
            f"interrupted after {format_duration(time.monotonic() - started)}: "
            "run the same command again to resume"
        )
        return EXIT_INTERRUPTED
