"""A finished object read as a seekable file (downloads, a final's partials)."""

from __future__ import annotations

from typing import Any

from ..seekable import SizedReader
from .bucket import Bucket


class ObjectReader(SizedReader):
    """A finished object as a seekable read-only file: one streaming ranged GET from
    the current position, reopened after each seek. ``If-Match`` pins the object read."""

    def __init__(self, bucket: Bucket, key: str, size: int, etag: str) -> None:
        super().__init__(size)
        self.bucket = bucket
        self.key = key
        self.etag = etag
        self._body: Any = None

    def moved(self) -> None:
        self._drop_body()  # the stream was for the old position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.position >= self.size or not len(view):
            return 0
        if self._body is None:
            self._body = self.bucket.stream(self.key, self.position, self.etag)
        data = self._body.read(len(view))
        if not data:
            raise OSError(
                f"s3://{self.bucket.name}/{self.key}: ended at {self.position} of {self.size}"
            )
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
