"""Upload bytes in an S3 bucket (AWS S3, MinIO, Ceph RGW): no host keeps any of them.

Layout under the prefix ``P`` for upload ``I`` (ids are alphanumeric, so the ``.``
below never makes one upload's names another's):

    P/I                                  the whole upload, once finished
    multipart upload of P/I              part n holds bytes [(n-1)*S, n*S)
    P/I.incomplete/p<S>/<start>          a segment: bytes [start, start+size) that
                                         don't fill a part yet (start: 20 digits)

``S`` is the part size the upload was created with (``UPLOADSVC_S3_PART_SIZE``, in
its segments' names), so changing the setting never confuses uploads in flight.

The segments are the truth about what arrived. The largest segment start that is a
multiple of ``S`` is the *base*: every part before it is in the multipart upload (an
empty segment marks it when its part is written). From the base, segments follow one
another, each starting where the last ended; where that chain ends is the upload's
size, so ``Upload-Offset`` counts exactly the bytes durably in the bucket. A PATCH
streams its body into a buffer of at most one part: when the part fills, it is
uploaded with the segments before it, and a marker segment moves the base on; when the
body ends (or breaks off), what is left becomes one more segment, which the next PATCH,
on any host, continues.

Checksummed PATCHes may be discarded after the fact (``truncate(start)``), even past
parts already uploaded: parts can't be read back before the multipart upload
completes, so the segments of the part a PATCH started in are kept until the next PATCH
begins, when everything before its offset is known good. ``truncate`` deletes what the
PATCH added and the chain again ends at ``start``; parts past it are overwritten later,
and completion lists only the parts the chain accounts for.

``finish`` completes the multipart upload into ``P/I`` (or copies a lone segment) and
deletes the segments; ``open`` does it too if it hasn't happened (a crash between the
last PATCH and ``finish``). Downloads are ranged GETs of ``P/I``; a final upload
(concatenation) has no bytes of its own and is read through its partials' objects.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import InsufficientStorage
from . import StoreUnavailable

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client
    from types_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# S3's limit: every part but the last at least 5 MiB.
MIN_PART = 5 * MIB
# boto3's connection pool, per worker process. Each request thread using the store
# holds one connection at a time (parts go one after another), and gunicorn runs
# UPLOADSVC_THREADS of them (128 by default): a smaller pool opens a new connection for
# every request past it and throws it away after ("Connection pool is full"), a TCP
# and TLS handshake per part. Connections open only when needed, so a generous bound
# costs nothing idle; it covers up to 512 threads per worker.
POOL_CONNECTIONS = 512
# A PATCH's part buffer grows with its body up to this size (a small PATCH stays
# small); past it, it takes the whole part at once (see _PartWriter).
GROW_IN_STEPS = 1 * MIB
SEGMENTS = ".incomplete/"
# More segments than this in one part (clients sending tiny PATCHes) are merged into one
# at the start of the next PATCH, so listing an upload stays one request.
MAX_SEGMENTS = 32
# Bounds on paginated listings: one upload's keys (a few segments) and a whole prefix.
MAX_UPLOAD_PAGES = 100
MAX_SCAN_PAGES = 1_000_000
# Downloads read the object in blocks this large (one streaming GET per seek).
READ_BUFFER = MIB
# Error codes S3-compatible servers use for "no room": answered 507, like a full disk.
FULL_CODES = frozenset(
    {"QuotaExceeded", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded", "StorageFull"}
)
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_SEGMENT = re.compile(r"p(\d+)/(\d{20})")


@dataclass
class _Upload:
    """What one LIST says about an upload: its object and its segments."""

    final: int | None = None  # size of the finished object, if there is one
    segments: dict[int, dict[int, int]] = field(default_factory=dict)  # S -> start -> size
    modified: datetime | None = None

    def part_size(self, default: int) -> int:
        """The part size of the upload's segments (the newest base wins)."""
        best = None
        for size, segments in self.segments.items():
            bases = [start for start in segments if start % size == 0]
            if bases and (best is None or max(bases) > best[0]):
                best = (max(bases), size)
        return default if best is None else best[1]


@dataclass(frozen=True)
class _Chain:
    """The segments that count, from the base on: (start, size) in order."""

    part_size: int
    base: int
    links: tuple[tuple[int, int], ...]

    @property
    def end(self) -> int:
        return self.links[-1][0] + self.links[-1][1] if self.links else self.base


def _chain_from(segments: dict[int, int], part_size: int, base: int) -> _Chain | None:
    if base not in segments:
        return None
    links = []
    position = base
    for _ in range(len(segments)):  # each segment at most once
        size = segments.get(position)
        if size is None:
            break
        links.append((position, size))
        if size == 0:
            break
        position += size
    return _Chain(part_size, base, tuple(links))


def _chain(upload: _Upload, default_part_size: int) -> _Chain | None:
    part_size = upload.part_size(default_part_size)
    segments = upload.segments.get(part_size, {})
    bases = [start for start in segments if start % part_size == 0]
    return _chain_from(segments, part_size, max(bases)) if bases else None


def _md5(data: bytes | bytearray | memoryview) -> str:
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def _body(data: bytes | bytearray) -> bytes:
    """botocore (and urllib3 under it) sends a bytearray as it is; the stubs only say
    bytes. No copy: a part is the biggest thing a PATCH holds in memory, and a copy
    would double it."""
    return cast(bytes, data)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class S3Store:
    """Uploads as objects and multipart uploads under ``s3://bucket/prefix``.

    Credentials and region come from boto3's usual chain (environment, shared files,
    instance roles); ``endpoint_url`` points it at an S3-compatible server.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        part_size: int = 8 * MIB,
        client: S3Client | None = None,
        pool_connections: int = POOL_CONNECTIONS,
    ) -> None:
        if part_size < MIN_PART:
            raise ValueError(f"part size {part_size} is below S3's minimum of {MIN_PART}")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.part_size = part_size
        self.client: S3Client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=pool_connections,
                # S3-compatible servers (MinIO, Ceph RGW) need path-style addressing
                # and may not take the newer checksum trailers; Content-MD5 (below)
                # still guards every byte we send.
                s3={"addressing_style": "path"} if endpoint_url else None,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    # -- names ---------------------------------------------------------------------------

    def _key(self, upload_id: str) -> str:
        if not upload_id.isalnum() or not upload_id.isascii():
            raise ValueError(f"unsafe upload id {upload_id!r}")
        return f"{self.prefix}{upload_id}"

    def _segment_key(self, upload_id: str, part_size: int, start: int) -> str:
        return f"{self._key(upload_id)}{SEGMENTS}p{part_size}/{start:020d}"

    # -- reading the state ---------------------------------------------------------------

    def _state(self, upload_id: str) -> _Upload:
        """One LIST of the upload's names (a page or two at most)."""
        key = self._key(upload_id)
        upload = _Upload()
        for item in self._list(key, MAX_UPLOAD_PAGES):
            name = item["Key"]
            modified = item["LastModified"]
            if name == key:
                upload.final = int(item["Size"])
            else:
                match = _SEGMENT.fullmatch(name.removeprefix(key + SEGMENTS))
                if not name.startswith(key + SEGMENTS) or match is None:
                    continue  # another upload whose id starts with ours
                size = int(match.group(1))
                upload.segments.setdefault(size, {})[int(match.group(2))] = int(item["Size"])
            if upload.modified is None or modified > upload.modified:
                upload.modified = modified
        return upload

    def _list(self, prefix: str, max_pages: int) -> Iterator[Any]:
        token: str | None = None
        for _ in range(max_pages):
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            with self._errors():
                page = self.client.list_objects_v2(**kwargs)
            yield from page.get("Contents", [])
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
        raise RuntimeError(f"listing s3://{self.bucket}/{prefix} passed {max_pages} pages")

    def size(self, upload_id: str) -> int | None:
        upload = self._state(upload_id)
        if upload.final is not None:
            return upload.final
        chain = _chain(upload, self.part_size)
        return None if chain is None else chain.end

    # -- writing -------------------------------------------------------------------------

    def create(self, upload_id: str) -> None:
        self._put(self._segment_key(upload_id, self.part_size, 0), b"")

    def append(self, upload_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        upload = self._state(upload_id)
        chain = _chain(upload, self.part_size)
        if chain is None or upload.final is not None:
            raise FileNotFoundError(f"upload {upload_id} has no data to append to")
        if chain.end > offset:
            # Unrecorded bytes past the offset (a crash before they were recorded):
            # the caller checked the offset, so they go.
            self.truncate(upload_id, offset)
            upload = self._state(upload_id)
            chain = _chain(upload, self.part_size)
            assert chain is not None
        if chain.end != offset:
            raise ValueError(f"upload {upload_id}: store has {chain.end} bytes, not {offset}")
        chain = self._tidy(upload_id, upload, chain)
        writer = _PartWriter(self, upload_id, chain)
        try:
            writer.flush_full_part()
            for chunk in chunks:
                writer.write(chunk)
        finally:
            # Whatever arrived is made durable, even when the body broke off.
            writer.save_rest()
        return writer.position

    def _tidy(self, upload_id: str, upload: _Upload, chain: _Chain) -> _Chain:
        """Before a PATCH: everything before ``chain.end`` is recorded, so the segments
        of earlier parts and any stray ones can go; many small segments become one."""
        part_size = chain.part_size
        keep = {start for start, _ in chain.links}
        stale = [
            self._segment_key(upload_id, size, start)
            for size, segments in upload.segments.items()
            for start in segments
            if size != part_size or start not in keep
        ]
        if len(chain.links) > MAX_SEGMENTS:
            # Rewrite the chain as one segment at the base (its key holds a prefix of
            # these bytes already, so the chain stays whole at every moment).
            data = self._read_links(upload_id, part_size, chain.links)
            self._put(self._segment_key(upload_id, part_size, chain.base), data)
            stale += [
                self._segment_key(upload_id, part_size, start)
                for start, _ in chain.links
                if start != chain.base
            ]
            chain = _Chain(part_size, chain.base, ((chain.base, len(data)),))
        self._delete_keys(stale)
        return chain

    def truncate(self, upload_id: str, size: int) -> None:
        upload = self._state(upload_id)
        if upload.final is not None:
            if size < upload.final:
                raise ValueError(f"upload {upload_id} is finished; it can't be truncated")
            return
        chain = _chain(upload, self.part_size)
        if chain is None or size >= chain.end:
            return
        part_size = chain.part_size
        segments = upload.segments.get(part_size, {})
        base = size - size % part_size
        # Back to the part ``size`` falls in: its segments are still there (see above).
        kept = _chain_from(segments, part_size, base) if base < chain.base else chain
        if kept is None or kept.end < size:
            raise ValueError(f"upload {upload_id}: its segments don't reach {size}")
        doomed = [start for start in segments if start >= size and start != base]
        for start, length in kept.links:
            if start < size < start + length or (start == size == base and length):
                # The segment ``size`` falls in keeps only its bytes before ``size``.
                data = self._get_range(
                    self._segment_key(upload_id, part_size, start), 0, size - start
                )
                self._put(self._segment_key(upload_id, part_size, start), data)
        self._delete_keys([self._segment_key(upload_id, part_size, start) for start in doomed])

    def finish(self, upload_id: str) -> None:
        try:
            self._assemble(upload_id)
        except (BotoCoreError, ClientError, OSError, ValueError) as error:
            # open() assembles it if it still isn't done.
            log.warning("upload %s: assembling its object failed (%s); later", upload_id, error)

    def _assemble(self, upload_id: str) -> int:
        """Make ``P/I`` whole from parts and segments (idempotent); return its size."""
        upload = self._state(upload_id)
        if upload.final is not None:
            self._delete_segments(upload_id, upload)
            return upload.final
        chain = _chain(upload, self.part_size)
        if chain is None:
            raise FileNotFoundError(f"upload {upload_id} has no data")
        key = self._key(upload_id)
        try:
            if chain.base == 0:
                self._assemble_small(upload_id, chain)
            else:
                self._complete_parts(upload_id, chain)
        except ClientError as error:
            # Another host (or thread) may have finished it meanwhile.
            if self._state(upload_id).final is None:
                raise
            log.info("upload %s: finished elsewhere meanwhile (%s)", upload_id, _code(error))
        self._delete_segments(upload_id, self._state(upload_id))
        log.info("upload %s: assembled s3://%s/%s", upload_id, self.bucket, key)
        return chain.end

    def _assemble_small(self, upload_id: str, chain: _Chain) -> None:
        """No whole part: the bytes are all in segments (less than one part)."""
        key = self._key(upload_id)
        if len(chain.links) == 1:
            source = self._segment_key(upload_id, chain.part_size, chain.links[0][0])
            with self._errors():
                self.client.copy_object(
                    Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source}
                )
        else:
            self._put(key, self._read_links(upload_id, chain.part_size, chain.links))
        # Parts of a PATCH discarded by a checksum may linger: they are not the upload.
        self._abort_multipart(key)

    def _complete_parts(self, upload_id: str, chain: _Chain) -> None:
        key = self._key(upload_id)
        multipart = self._multipart_id(key, create=False)
        if multipart is None:
            raise FileNotFoundError(f"upload {upload_id}: its multipart upload is missing")
        last = chain.base // chain.part_size
        if chain.end > chain.base:
            last += 1
            data = self._read_links(upload_id, chain.part_size, chain.links)
            self._upload_part(key, multipart, last, data)
        parts = self._parts(key, multipart)
        completed: list[CompletedPartTypeDef] = []
        for number in range(1, last + 1):
            etag, size = parts.get(number, ("", -1))
            expected = chain.part_size if number * chain.part_size <= chain.end else None
            if not etag or (expected is not None and size != expected):
                raise ValueError(f"upload {upload_id}: part {number} is missing or wrong")
            completed.append({"PartNumber": number, "ETag": etag})
        self._complete_multipart(key, multipart, completed)

    def _parts(self, key: str, multipart: str) -> dict[int, tuple[str, int]]:
        parts: dict[int, tuple[str, int]] = {}
        marker = 0
        for _ in range(MAX_UPLOAD_PAGES):  # 10,000 parts at most, 1,000 a page
            with self._errors():
                page = self.client.list_parts(
                    Bucket=self.bucket, Key=key, UploadId=multipart, PartNumberMarker=marker
                )
            for part in page.get("Parts", []):
                parts[int(part["PartNumber"])] = (str(part["ETag"]), int(part["Size"]))
            if not page.get("IsTruncated"):
                return parts
            marker = int(page.get("NextPartNumberMarker", 0))
        raise RuntimeError(f"listing the parts of {key} did not end")

    # -- reading -------------------------------------------------------------------------

    def open(self, upload_id: str) -> BinaryIO:
        key = self._key(upload_id)
        self._assemble(upload_id)  # a no-op once finished
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _code(error) in MISSING_CODES:
                raise FileNotFoundError(f"s3://{self.bucket}/{key}") from None
            raise
        raw = _ObjectReader(
            self.client, self.bucket, key, int(head["ContentLength"]), str(head["ETag"])
        )
        return io.BufferedReader(raw, buffer_size=READ_BUFFER)

    # -- removing ------------------------------------------------------------------------

    def delete(self, upload_id: str) -> None:
        key = self._key(upload_id)
        upload = self._state(upload_id)
        self._abort_multipart(key)
        self._delete_segments(upload_id, upload)
        if upload.final is not None:
            self._delete_keys([key])

    def _delete_segments(self, upload_id: str, upload: _Upload) -> None:
        self._delete_keys(
            [
                self._segment_key(upload_id, size, start)
                for size, segments in upload.segments.items()
                for start in segments
            ]
        )

    def scan(self) -> list[tuple[str, datetime]]:
        """Every upload id with an object, a segment or a multipart upload under the
        prefix, with when it last changed; names that aren't ours are left alone."""
        if not self.prefix:
            # What cleanup finds here it deletes: never the bucket's root, whose keys
            # may be anyone's (config.py requires a prefix; this holds for any caller).
            raise ValueError(f"s3://{self.bucket}/: no key prefix, refusing to scan for orphans")
        found: dict[str, datetime] = {}

        def saw(upload_id: str, when: datetime) -> None:
            if upload_id.isalnum() and upload_id.isascii():
                when = when.astimezone(UTC)
                found[upload_id] = max(when, found.get(upload_id, when))

        for item in self._list(self.prefix, MAX_SCAN_PAGES):
            rest = item["Key"][len(self.prefix) :]
            upload_id, dot, tail = rest.partition(".")
            if not dot or (tail.startswith(SEGMENTS[1:]) and "/" in tail):
                saw(upload_id, item["LastModified"])
        for key, _, initiated in self._multipart_uploads(self.prefix):
            rest = key[len(self.prefix) :]
            saw(rest, initiated)
        return list(found.items())

    # -- S3 calls ------------------------------------------------------------------------

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            raise StoreUnavailable(f"{self._where()}: {_code(error) or error}") from error
        except BotoCoreError as error:
            raise StoreUnavailable(f"{self._where()}: {error}") from error

    def _where(self) -> str:
        place = f"s3://{self.bucket}/{self.prefix}"
        return f"{place} at {self.endpoint_url}" if self.endpoint_url else place

    def _put(self, key: str, data: bytes | bytearray) -> None:
        with self._errors():
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=_body(data), ContentMD5=_md5(data)
            )

    def _get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        with self._errors():
            response = self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
            )
        with response["Body"] as body:
            data = body.read()
        if len(data) != length:
            raise OSError(f"s3://{self.bucket}/{key}: read {len(data)} of {length} bytes")
        return data

    def _read_links(
        self, upload_id: str, part_size: int, links: Iterable[tuple[int, int]]
    ) -> bytearray:
        data = bytearray()
        for start, length in links:
            data += self._get_range(self._segment_key(upload_id, part_size, start), 0, length)
        return data

    def _upload_part(self, key: str, multipart: str, number: int, data: bytes | bytearray) -> str:
        with self._errors():
            response = self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=multipart,
                PartNumber=number,
                Body=_body(data),
                ContentMD5=_md5(data),
            )
        return str(response["ETag"])

    def _multipart_uploads(self, prefix: str) -> Iterator[tuple[str, str, datetime]]:
        """(key, upload id, initiated) of the multipart uploads under ``prefix``."""
        key_marker = ""
        id_marker = ""
        for _ in range(MAX_SCAN_PAGES):
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if key_marker:
                kwargs.update(KeyMarker=key_marker, UploadIdMarker=id_marker)
            with self._errors():
                page = self.client.list_multipart_uploads(**kwargs)
            for item in page.get("Uploads", []):
                yield str(item["Key"]), str(item["UploadId"]), item["Initiated"]
            if not page.get("IsTruncated"):
                return
            key_marker = str(page.get("NextKeyMarker", ""))
            id_marker = str(page.get("NextUploadIdMarker", ""))
        raise RuntimeError(f"listing multipart uploads under {prefix} did not end")

    def _complete_multipart(
        self, key: str, multipart: str, parts: list[CompletedPartTypeDef]
    ) -> None:
        with self._errors():
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=multipart, MultipartUpload={"Parts": parts}
            )

    def _multipart_id(self, key: str, *, create: bool) -> str | None:
        """The multipart upload of ``key`` (the oldest, should there be several)."""
        ours = sorted(
            (initiated, upload)
            for name, upload, initiated in self._multipart_uploads(key)
            if name == key
        )
        if ours:
            return ours[0][1]
        if not create:
            return None
        with self._errors():
            return str(self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"])

    def _abort_multipart(self, key: str) -> None:
        for name, upload, _ in list(self._multipart_uploads(key)):
            if name != key:
                continue
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            except ClientError as error:
                if _code(error) != "NoSuchUpload":
                    raise

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 at a time
            batch = keys[start : start + 1000]
            with self._errors():
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            errors = response.get("Errors", [])
            if errors:
                raise OSError(f"s3://{self.bucket}: could not delete {errors[:3]}")

    def _errors(self) -> _S3Errors:
        return _S3Errors()

    def close(self) -> None:
        self.client.close()


class _S3Errors:
    """A full bucket (quota) becomes ``InsufficientStorage`` (507); the rest stays."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        if isinstance(error, ClientError) and _code(error) in FULL_CODES:
            raise InsufficientStorage() from error


class _PartWriter:
    """One PATCH's body into parts and segments, holding at most one part in memory.

    One buffer per PATCH: it grows with the body up to ``GROW_IN_STEPS`` (a small
    PATCH stays small), then takes the rest of the part at once, and once it holds a
    whole part it is reused, filled in place, for every later one. Growing a fresh
    buffer per part by appending cost about half a part more resident memory per PATCH
    (reallocation's slack and copies, a fragmented heap); botocore sends a bytearray as
    it is, so nothing else copies a part."""

    def __init__(self, store: S3Store, upload_id: str, chain: _Chain) -> None:
        self.store = store
        self.upload_id = upload_id
        self.key = store._key(upload_id)
        self.part_size = chain.part_size
        self.base = chain.base
        self.links = list(chain.links)  # this part's earlier segments, before ``start``
        self.start = chain.end  # where the buffered bytes begin
        self.buffer = bytearray()
        self.filled = 0  # bytes of ``buffer`` in use (it may be longer: reused)
        self._multipart: str | None = None

    @property
    def position(self) -> int:
        return self.start + self.filled

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        # Each round fills the part or takes the whole rest of the chunk.
        for _ in range(len(view) // self.part_size + 2):
            if not view:
                return
            room = self.base + self.part_size - self.position
            piece = view[:room]
            end = self.filled + len(piece)
            if end > len(self.buffer) and end > GROW_IN_STEPS:
                # A big PATCH: room for the rest of the part at once, exactly, instead
                # of growing by reallocation (copies, slack, a fragmented heap).
                whole = bytearray(self.base + self.part_size - self.start)
                whole[: self.filled] = memoryview(self.buffer)[: self.filled]
                self.buffer = whole
            if end <= len(self.buffer):
                self.buffer[self.filled : end] = piece  # in place: no allocation
            else:
                del self.buffer[self.filled :]
                self.buffer += piece
            self.filled = end
            view = view[room:]
            self.flush_full_part()

    def flush_full_part(self) -> None:
        """When the part is full: upload it, then mark the next base."""
        if self.position < self.base + self.part_size:
            return
        earlier = [link for link in self.links if link[0] < self.start and link[1]]
        if earlier:
            # The part began in an earlier PATCH: its first bytes go in front, in the
            # same buffer, which then holds the whole part (and is kept for the next).
            del self.buffer[self.filled :]
            self.buffer[:0] = self.store._read_links(self.upload_id, self.part_size, earlier)
            self.filled = len(self.buffer)
        number = self.base // self.part_size + 1
        if self._multipart is None:
            self._multipart = self.store._multipart_id(self.key, create=True)
            assert self._multipart is not None
        del self.buffer[self.filled :]
        self.store._upload_part(self.key, self._multipart, number, self.buffer)
        next_base = self.base + self.part_size
        # The marker makes the part count: until it exists the chain ends where it did.
        self.store._put(self.store._segment_key(self.upload_id, self.part_size, next_base), b"")
        self.base = self.start = next_base
        self.links = [(next_base, 0)]
        if len(self.buffer) != self.part_size:
            self.buffer = bytearray()  # not a whole part's size: not worth keeping
        self.filled = 0

    def save_rest(self) -> None:
        """Keep the bytes that don't fill a part as a segment the next PATCH continues."""
        if self.filled:
            key = self.store._segment_key(self.upload_id, self.part_size, self.start)
            del self.buffer[self.filled :]  # shrinks in place
            self.store._put(key, self.buffer)
            self.links.append((self.start, self.filled))
            self.start += self.filled
        self.buffer = bytearray()
        self.filled = 0


class _ObjectReader(io.RawIOBase):
    """A finished object as a seekable read-only file: one streaming ranged GET from
    the current position, reopened after each seek. ``If-Match`` pins the object read."""

    def __init__(self, client: S3Client, bucket: str, key: str, size: int, etag: str) -> None:
        super().__init__()
        self.client = client
        self.bucket = bucket
        self.key = key
        self.size = size
        self.etag = etag
        self.position = 0
        self._body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        bases: dict[int, Callable[[], int]] = {
            io.SEEK_SET: lambda: 0,
            io.SEEK_CUR: lambda: self.position,
            io.SEEK_END: lambda: self.size,
        }
        position = bases[whence]() + offset
        if position < 0:
            raise ValueError("negative seek position")
        if position != self.position:
            self._drop_body()
            self.position = position
        return position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.position >= self.size or not len(view):
            return 0
        if self._body is None:
            response = self.client.get_object(
                Bucket=self.bucket,
                Key=self.key,
                Range=f"bytes={self.position}-",
                IfMatch=self.etag,
            )
            self._body = response["Body"]
        data = self._body.read(len(view))
        if not data:
            raise OSError(f"s3://{self.bucket}/{self.key}: ended at {self.position} of {self.size}")
        view[: len(data)] = data
        self.position += len(data)
        return len(data)

    def _drop_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop_body()
        super().close()
