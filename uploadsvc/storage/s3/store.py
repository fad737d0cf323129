"""``S3Store``: the ``UploadStore`` on a bucket, the layout's rules put to work through
the bucket layer (see the package docstring for the layout itself)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .bucket import MAX_SCAN_PAGES, MAX_UPLOAD_PAGES, Bucket, error_code
from .layout import (
    MAX_SEGMENTS,
    Chain,
    Layout,
    UploadState,
    bad_part,
    chain_of,
    stale_segments,
    truncation,
)
from .reader import ObjectReader
from .writer import MIB, PartWriter

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

log = logging.getLogger(__name__)

# S3's limit: every part but the last at least 5 MiB.
MIN_PART = 5 * MIB
# boto3's connection pool, per worker process. Each request thread using the store
# holds one connection at a time (parts go one after another), and gunicorn runs
# UPLOADSVC_THREADS of them (1,024 by default): a smaller pool opens a new connection for
# every request past it and throws it away after ("Connection pool is full"), a TCP
# and TLS handshake per part. Connections open only when needed, so a generous bound
# costs nothing idle; it covers the default threads per worker.
POOL_CONNECTIONS = 1024
# Downloads read the object in blocks this large (one streaming GET per seek).
READ_BUFFER = MIB


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
                # and may not take the newer checksum trailers; Content-MD5 (bucket.py)
                # still guards every byte we send.
                s3={"addressing_style": "path"} if endpoint_url else None,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self.s3 = Bucket(self.client, bucket)
        self.layout = Layout(prefix)

    # -- reading the state ---------------------------------------------------------------

    def _state(self, upload_id: str) -> UploadState:
        """One LIST of the upload's names (a page or two at most)."""
        key = self.layout.key(upload_id)
        return self.layout.state(upload_id, self.s3.objects(key, MAX_UPLOAD_PAGES))

    def size(self, upload_id: str) -> int | None:
        upload = self._state(upload_id)
        if upload.final is not None:
            return upload.final
        chain = chain_of(upload, self.part_size)
        return None if chain is None else chain.end

    # -- writing -------------------------------------------------------------------------

    def create(self, upload_id: str) -> None:
        self.s3.put(self.layout.segment_key(upload_id, self.part_size, 0), b"")

    def append(self, upload_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        upload = self._state(upload_id)
        chain = chain_of(upload, self.part_size)
        if chain is None or upload.final is not None:
            raise FileNotFoundError(f"upload {upload_id} has no data to append to")
        if chain.end > offset:
            # Unrecorded bytes past the offset (a crash before they were recorded):
            # the caller checked the offset, so they go.
            self.truncate(upload_id, offset)
            upload = self._state(upload_id)
            chain = chain_of(upload, self.part_size)
            assert chain is not None
        if chain.end != offset:
            raise ValueError(f"upload {upload_id}: store has {chain.end} bytes, not {offset}")
        chain = self._tidy(upload_id, upload, chain)
        writer = PartWriter(self.s3, self.layout, upload_id, chain)
        try:
            writer.flush_full_part()
            for chunk in chunks:
                writer.write(chunk)
        finally:
            # Whatever arrived is made durable, even when the body broke off.
            writer.save_rest()
        return writer.position

    def _tidy(self, upload_id: str, upload: UploadState, chain: Chain) -> Chain:
        """Before a PATCH: everything before ``chain.end`` is recorded, so the segments
        of earlier parts and any stray ones can go; many small segments become one."""
        part_size = chain.part_size
        stale = [
            self.layout.segment_key(upload_id, size, start)
            for size, start in stale_segments(upload, chain)
        ]
        if len(chain.links) > MAX_SEGMENTS:
            # Rewrite the chain as one segment at the base (its key holds a prefix of
            # these bytes already, so the chain stays whole at every moment).
            data = self._read_links(upload_id, part_size, chain.links)
            self.s3.put(self.layout.segment_key(upload_id, part_size, chain.base), data)
            stale += [
                self.layout.segment_key(upload_id, part_size, start)
                for start, _ in chain.links
                if start != chain.base
            ]
            chain = Chain(part_size, chain.base, ((chain.base, len(data)),))
        self.s3.delete(stale)
        return chain

    def _read_links(
        self, upload_id: str, part_size: int, links: Iterable[tuple[int, int]]
    ) -> bytearray:
        return self.s3.gather(
            (self.layout.segment_key(upload_id, part_size, start), length)
            for start, length in links
        )

    def truncate(self, upload_id: str, size: int) -> None:
        upload = self._state(upload_id)
        if upload.final is not None:
            if size < upload.final:
                raise ValueError(f"upload {upload_id} is finished; it can't be truncated")
            return
        chain = chain_of(upload, self.part_size)
        if chain is None or size >= chain.end:
            return
        part_size = chain.part_size
        cut = truncation(upload, chain, size)
        if cut is None:
            raise ValueError(f"upload {upload_id}: its segments don't reach {size}")
        for start, length in cut.shorten:
            key = self.layout.segment_key(upload_id, part_size, start)
            self.s3.put(key, self.s3.get_range(key, 0, length))
        self.s3.delete(
            [self.layout.segment_key(upload_id, part_size, start) for start in cut.doomed]
        )

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
            self.s3.delete(self.layout.segment_keys(upload_id, upload))
            return upload.final
        chain = chain_of(upload, self.part_size)
        if chain is None:
            raise FileNotFoundError(f"upload {upload_id} has no data")
        key = self.layout.key(upload_id)
        try:
            if chain.base == 0:
                self._assemble_small(upload_id, chain)
            else:
                self._complete_parts(upload_id, chain)
        except ClientError as error:
            # Another host (or thread) may have finished it meanwhile.
            if self._state(upload_id).final is None:
                raise
            log.info("upload %s: finished elsewhere meanwhile (%s)", upload_id, error_code(error))
        self.s3.delete(self.layout.segment_keys(upload_id, self._state(upload_id)))
        log.info("upload %s: assembled s3://%s/%s", upload_id, self.bucket, key)
        return chain.end

    def _assemble_small(self, upload_id: str, chain: Chain) -> None:
        """No whole part: the bytes are all in segments (less than one part)."""
        key = self.layout.key(upload_id)
        if len(chain.links) == 1:
            source = self.layout.segment_key(upload_id, chain.part_size, chain.links[0][0])
            self.s3.copy(source, key)
        else:
            self.s3.put(key, self._read_links(upload_id, chain.part_size, chain.links))
        # Parts of a PATCH discarded by a checksum may linger: they are not the upload.
        self.s3.abort(key)

    def _complete_parts(self, upload_id: str, chain: Chain) -> None:
        key = self.layout.key(upload_id)
        multipart = self.s3.multipart_id(key, create=False)
        if multipart is None:
            raise FileNotFoundError(f"upload {upload_id}: its multipart upload is missing")
        last = chain.base // chain.part_size  # the parts before the base
        if chain.end > chain.base:
            last += 1
            data = self._read_links(upload_id, chain.part_size, chain.links)
            self.s3.upload_part(key, multipart, last, data)
        parts = self.s3.parts(key, multipart)
        wrong = bad_part(chain, last, parts)
        if wrong is not None:
            raise ValueError(f"upload {upload_id}: part {wrong} is missing or wrong")
        self.s3.complete(
            key, multipart, [(number, parts[number][0]) for number in range(1, last + 1)]
        )

    # -- reading -------------------------------------------------------------------------

    def open(self, upload_id: str) -> BinaryIO:
        key = self.layout.key(upload_id)
        self._assemble(upload_id)  # a no-op once finished
        size, etag = self.s3.head(key)
        return io.BufferedReader(ObjectReader(self.s3, key, size, etag), buffer_size=READ_BUFFER)

    def head(self, upload_id: str, size: int) -> bytes:
        """Read from the segments: while fewer than a part's bytes have arrived (the
        type gate's window is far below S3's 5 MiB least part) they hold them all."""
        chain = chain_of(self._state(upload_id), self.part_size)
        if chain is None:
            raise FileNotFoundError(upload_id)
        if chain.base > 0:
            raise ValueError(f"upload {upload_id}: its first bytes are in a part already")
        wanted = []
        for start, length in chain.links:
            if start >= size:
                break
            if length:
                wanted.append((start, length))
        return bytes(self._read_links(upload_id, chain.part_size, wanted)[:size])

    # -- removing ------------------------------------------------------------------------

    def delete(self, upload_id: str) -> None:
        key = self.layout.key(upload_id)
        upload = self._state(upload_id)
        self.s3.abort(key)
        self.s3.delete(self.layout.segment_keys(upload_id, upload))
        if upload.final is not None:
            self.s3.delete([key])

    def scan(self) -> list[tuple[str, datetime]]:
        """Every upload id with an object, a segment or a multipart upload under the
        prefix, with when it last changed; names that aren't ours are left alone."""
        if not self.prefix:
            # What cleanup finds here it deletes: never the bucket's root, whose keys
            # may be anyone's (config.py requires a prefix; this holds for any caller).
            raise ValueError(f"s3://{self.bucket}/: no key prefix, refusing to scan for orphans")
        found: dict[str, datetime] = {}

        def saw(upload_id: str | None, when: datetime) -> None:
            if upload_id is not None:
                when = when.astimezone(UTC)
                found[upload_id] = max(when, found.get(upload_id, when))

        for entry in self.s3.objects(self.prefix, MAX_SCAN_PAGES):
            saw(self.layout.upload_of_object(entry.key), entry.modified)
        for key, _, initiated in self.s3.multipart_uploads(self.prefix):
            saw(self.layout.upload_of_multipart(key), initiated)
        return list(found.items())

    # -- the bucket ----------------------------------------------------------------------

    def check(self) -> None:
        self.s3.check(self._where())

    def _where(self) -> str:
        place = f"s3://{self.bucket}/{self.prefix}"
        return f"{place} at {self.endpoint_url}" if self.endpoint_url else place

    def close(self) -> None:
        self.s3.close()
