"""One bucket through boto3: each S3 call the store makes, written once, its errors ours.

Thin on purpose: no layout here (keys come in whole), no retries beyond boto3's own.
What a failure means is decided in one place, ``s3_errors``: a full bucket is
``InsufficientStorage`` (507), an unreachable one ``StoreUnavailable``, a missing key
``FileNotFoundError`` where the caller asks for it; the rest stays botocore's.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Collection, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import BotoCoreError, ClientError

from ...errors import InsufficientStorage
from .. import StoreUnavailable
from ..errors import translated
from .layout import Entry

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client
    from types_boto3_s3.type_defs import CompletedPartTypeDef

# Error codes S3-compatible servers use for "no room": answered 507, like a full disk.
FULL_CODES = frozenset(
    {"QuotaExceeded", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded", "StorageFull"}
)
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
NO_SUCH_UPLOAD = frozenset({"NoSuchUpload"})
# Bounds on paginated listings: one upload's keys (a few segments) and a whole prefix.
MAX_UPLOAD_PAGES = 100
MAX_SCAN_PAGES = 1_000_000
DELETE_BATCH = 1000  # DeleteObjects takes 1,000 keys at a time


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def s3_errors(
    *, missing: Collection[str] = (), name: str = "", unavailable: str | None = None
) -> translated:
    """The one mapping of botocore's failures to ours, around a block of calls.

    A full bucket is ``InsufficientStorage``. ``missing``: error codes that mean the
    thing asked for isn't there, raised as ``FileNotFoundError(name)``. ``unavailable``
    (a description of the bucket): every failure means it can't be reached
    (``StoreUnavailable``; a health check)."""

    def ours(error: Exception) -> BaseException | None:
        if unavailable is not None and isinstance(error, ClientError | BotoCoreError):
            reason = error_code(error) if isinstance(error, ClientError) else ""
            return StoreUnavailable(f"{unavailable}: {reason or error}")
        if not isinstance(error, ClientError):
            return None
        code = error_code(error)
        if code in FULL_CODES:
            return InsufficientStorage()
        if code in missing:
            return FileNotFoundError(name)
        return None

    return translated(ours)


def _md5(data: bytes | bytearray | memoryview) -> str:
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def _body(data: bytes | bytearray) -> bytes:
    """botocore (and urllib3 under it) sends a bytearray as it is; the stubs only say
    bytes. No copy: a part is the biggest thing a PATCH holds in memory, and a copy
    would double it."""
    return cast(bytes, data)


class Bucket:
    """The objects and multipart uploads of one bucket."""

    def __init__(self, client: S3Client, name: str) -> None:
        self.client = client
        self.name = name

    def check(self, where: str) -> None:
        """Raise ``StoreUnavailable`` (saying ``where``) unless the bucket answers."""
        with s3_errors(unavailable=where):
            self.client.head_bucket(Bucket=self.name)

    # -- objects -------------------------------------------------------------------------

    def put(self, key: str, data: bytes | bytearray) -> None:
        with s3_errors():
            self.client.put_object(
                Bucket=self.name, Key=key, Body=_body(data), ContentMD5=_md5(data)
            )

    def copy(self, source: str, key: str) -> None:
        with s3_errors():
            self.client.copy_object(
                Bucket=self.name, Key=key, CopySource={"Bucket": self.name, "Key": source}
            )

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        with s3_errors():
            response = self.client.get_object(
                Bucket=self.name, Key=key, Range=f"bytes={start}-{start + length - 1}"
            )
        with response["Body"] as body:
            data = body.read()
        if len(data) != length:
            raise OSError(f"s3://{self.name}/{key}: read {len(data)} of {length} bytes")
        return data

    def gather(self, pieces: Iterable[tuple[str, int]]) -> bytearray:
        """The first ``length`` bytes of each ``(key, length)``, one after another."""
        data = bytearray()
        for key, length in pieces:
            data += self.get_range(key, 0, length)
        return data

    def head(self, key: str) -> tuple[int, str]:
        """(size, ETag) of ``key``; ``FileNotFoundError`` if there is no such object."""
        with s3_errors(missing=MISSING_CODES, name=f"s3://{self.name}/{key}"):
            head = self.client.head_object(Bucket=self.name, Key=key)
        return int(head["ContentLength"]), str(head["ETag"])

    def stream(self, key: str, start: int, etag: str) -> Any:
        """A streaming body of ``key`` from ``start`` to its end, if it is still
        ``etag``."""
        with s3_errors():
            response = self.client.get_object(
                Bucket=self.name, Key=key, Range=f"bytes={start}-", IfMatch=etag
            )
        return response["Body"]

    def objects(self, prefix: str, max_pages: int) -> Iterator[Entry]:
        """The objects under ``prefix``, at most ``max_pages`` pages of them."""
        token: str | None = None
        for _ in range(max_pages):
            kwargs: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            with s3_errors():
                page = self.client.list_objects_v2(**kwargs)
            for item in page.get("Contents", []):
                yield Entry(item["Key"], int(item["Size"]), item["LastModified"])
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
        raise RuntimeError(f"listing s3://{self.name}/{prefix} passed {max_pages} pages")

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            with s3_errors():
                response = self.client.delete_objects(
                    Bucket=self.name,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            errors = response.get("Errors", [])
            if errors:
                raise OSError(f"s3://{self.name}: could not delete {errors[:3]}")

    # -- multipart uploads ---------------------------------------------------------------

    def multipart_uploads(self, prefix: str) -> Iterator[tuple[str, str, datetime]]:
        """(key, upload id, initiated) of the multipart uploads under ``prefix``."""
        key_marker = ""
        id_marker = ""
        for _ in range(MAX_SCAN_PAGES):
            kwargs: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix}
            if key_marker:
                kwargs.update(KeyMarker=key_marker, UploadIdMarker=id_marker)
            with s3_errors():
                page = self.client.list_multipart_uploads(**kwargs)
            for item in page.get("Uploads", []):
                yield str(item["Key"]), str(item["UploadId"]), item["Initiated"]
            if not page.get("IsTruncated"):
                return
            key_marker = str(page.get("NextKeyMarker", ""))
            id_marker = str(page.get("NextUploadIdMarker", ""))
        raise RuntimeError(f"listing multipart uploads under {prefix} did not end")

    def multipart_id(self, key: str, *, create: bool) -> str | None:
        """The multipart upload of ``key`` (the oldest, should there be several)."""
        ours = sorted(
            (initiated, upload)
            for name, upload, initiated in self.multipart_uploads(key)
            if name == key
        )
        if ours:
            return ours[0][1]
        if not create:
            return None
        with s3_errors():
            return str(self.client.create_multipart_upload(Bucket=self.name, Key=key)["UploadId"])

    def upload_part(self, key: str, multipart: str, number: int, data: bytes | bytearray) -> str:
        """Upload part ``number``; return its ETag."""
        with s3_errors():
            response = self.client.upload_part(
                Bucket=self.name,
                Key=key,
                UploadId=multipart,
                PartNumber=number,
                Body=_body(data),
                ContentMD5=_md5(data),
            )
        return str(response["ETag"])

    def parts(self, key: str, multipart: str) -> dict[int, tuple[str, int]]:
        """number -> (ETag, size) of the parts uploaded so far."""
        parts: dict[int, tuple[str, int]] = {}
        marker = 0
        for _ in range(MAX_UPLOAD_PAGES):  # 10,000 parts at most, 1,000 a page
            with s3_errors():
                page = self.client.list_parts(
                    Bucket=self.name, Key=key, UploadId=multipart, PartNumberMarker=marker
                )
            for part in page.get("Parts", []):
                parts[int(part["PartNumber"])] = (str(part["ETag"]), int(part["Size"]))
            if not page.get("IsTruncated"):
                return parts
            marker = int(page.get("NextPartNumberMarker", 0))
        raise RuntimeError(f"listing the parts of {key} did not end")

    def complete(self, key: str, multipart: str, parts: Iterable[tuple[int, str]]) -> None:
        """Make ``key`` of ``parts``, (number, ETag) in order."""
        completed: list[CompletedPartTypeDef] = [
            {"PartNumber": number, "ETag": etag} for number, etag in parts
        ]
        with s3_errors():
            self.client.complete_multipart_upload(
                Bucket=self.name,
                Key=key,
                UploadId=multipart,
                MultipartUpload={"Parts": completed},
            )

    def abort(self, key: str) -> None:
        """Abort every multipart upload of ``key`` (one already gone is fine)."""
        for name, upload, _ in list(self.multipart_uploads(key)):
            if name != key:
                continue
            # One aborted meanwhile (another host, a retry) is as good.
            with contextlib.suppress(FileNotFoundError), s3_errors(missing=NO_SUCH_UPLOAD):
                self.client.abort_multipart_upload(Bucket=self.name, Key=key, UploadId=upload)

    def close(self) -> None:
        self.client.close()
