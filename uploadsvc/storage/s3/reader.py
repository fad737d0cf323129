"""A finished object read as a seekable file (downloads, a final's partials)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from .bucket import Bucket


class ObjectReader(io.RawIOBase):
    """A finished object as a seekable read-only file: one streaming ranged GET from
    the current position, reopened after each seek. ``If-Match`` pins the object read."""

    def __init__(self, bucket: Bucket, key: str, size: int, etag: str) -> None:
        super().__init__()
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
