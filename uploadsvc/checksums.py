"""Checksums (tus checksum and checksum-trailer): the whole rule in one place.

A PATCH (or a creation with upload) may carry ``Upload-Checksum: <algorithm> <base64
digest>`` as a header, or announce it with ``Trailer: Upload-Checksum`` and send it as a
trailer after a chunked body. Either way the body is hashed as it streams and stored
only if the digest matches (460 otherwise). Here: the algorithms offered, the value's
parse, which announcement counts, and the hashing (``Verifier``). The views wire the
request's headers and trailers to it, the service its body; body.py only hands over
the trailer fields it read. Pure: no Flask, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidHeader
from .protocol import decode_base64

# Tus-Checksum-Algorithm, in the order advertised.
ALGORITHMS: Mapping[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}
# The field's name as a trailer (body.read_body hands trailer names over lower-cased).
TRAILER_FIELD = "upload-checksum"


@dataclass(frozen=True)
class Checksum:
    """An ``Upload-Checksum`` value: the algorithm and the expected digest bytes."""

    algorithm: str
    digest: bytes

    def hasher(self) -> Any:
        return ALGORITHMS[self.algorithm]()


def parse_checksum(value: str | None) -> Checksum | None:
    """``Upload-Checksum: <algorithm> <base64 digest>``; unknown algorithms are a 400."""
    if value is None:
        return None
    parts = value.strip().split(" ")
    if len(parts) != 2:
        raise InvalidHeader("Upload-Checksum must be '<algorithm> <base64 digest>'")
    algorithm, encoded = parts[0].lower(), parts[1]
    if algorithm not in ALGORITHMS:
        raise InvalidHeader(f"unsupported checksum algorithm {parts[0]!r}")
    digest = decode_base64(encoded, "Upload-Checksum")
    if len(digest) != ALGORITHMS[algorithm]().digest_size:
        raise InvalidHeader("Upload-Checksum digest has the wrong length")
    return Checksum(algorithm, digest)


def announces_trailer(trailer_header: str | None, *, behind_proxy: bool) -> bool:
    """Whether a request's ``Trailer`` header announces ``Upload-Checksum``. Behind a
    proxy, which drops request trailers, that is refused (400) before a byte of the
    body is read: the body could only fail."""
    announced = (trailer_header or "").lower().replace(" ", "").split(",")
    if TRAILER_FIELD not in announced:
        return False
    if behind_proxy:
        raise InvalidHeader(
            "checksum-trailer is not offered behind a proxy (proxies drop request"
            " trailers): send Upload-Checksum as a header"
        )
    return True


class Verifier:
    """Hashes a body as it streams and says whether it matches its checksum: the
    header's (one algorithm), or the trailer's (``trailer`` returns its value once the
    body has ended; until then any algorithm may be named, so all are hashed)."""

    def __init__(
        self, checksum: Checksum | None, trailer: Callable[[], str | None] | None = None
    ) -> None:
        self.expected = checksum
        self._trailer = trailer if checksum is None else None
        if checksum is not None:
            self._hashers = {checksum.algorithm: checksum.hasher()}
        elif trailer is not None:
            self._hashers = {name: make() for name, make in ALGORITHMS.items()}
        else:
            self._hashers = {}

    @property
    def verifying(self) -> bool:
        """Whether there is a checksum to verify (now or once the trailer comes)."""
        return bool(self._hashers)

    def update(self, chunk: bytes) -> None:
        for hasher in self._hashers.values():
            hasher.update(chunk)

    def body_ended(self) -> None:
        """The body is whole: a checksum sent as a trailer is read now (400 if it was
        announced and never came, or is malformed)."""
        if self._trailer is not None:
            self.expected = parse_checksum(self._trailer())
            self._trailer = None
            if self.expected is None:
                raise InvalidHeader("the announced Upload-Checksum trailer never came")

    def matches(self) -> bool:
        """Whether the bytes hashed match the checksum (true when there is none)."""
        if self.expected is None:
            return True
        return bool(self._hashers[self.expected.algorithm].digest() == self.expected.digest)
