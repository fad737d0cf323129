"""Whole-file digests: what a client declares at creation, and the check at the finish.

A client declares the digest of the whole file when it creates an upload, as RFC 9530's
``Repr-Digest`` (a structured-field dictionary, ``sha-256=:<base64>:``, sha-256 or
sha-512) or as ``checksum`` metadata (``sha256 <base64>``, as tus's Upload-Checksum
spells it). The server keeps it as one ``Repr-Digest`` member, checks it against the
stored bytes when the upload finishes (``matches``), and shows it on HEAD and GET once
checked, so downloaders can check too. Pure: the caller hands over the bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from .errors import InvalidHeader

# RFC 9530 names (the IANA Hash Algorithms for HTTP Digest Fields registry), strongest
# first: when a client sends both, the stronger is kept.
ALGORITHMS: Mapping[str, Callable[[], Any]] = {
    "sha-512": hashlib.sha512,
    "sha-256": hashlib.sha256,
}
# The checksum metadata spells them as Upload-Checksum does.
_METADATA_NAMES = {
    "sha512": "sha-512",
    "sha256": "sha-256",
    "sha-512": "sha-512",
    "sha-256": "sha-256",
}
# An RFC 8941 dictionary member: key, "=", then a byte sequence (or anything else,
# which is another algorithm's business: ignored, as RFC 9530 says).
_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")
_BYTES = re.compile(r":([A-Za-z0-9+/=]*):")
READ_BLOCK = 1 << 20
HEADER = "Repr-Digest"
METADATA_KEY = "checksum"


@dataclass(frozen=True)
class Digest:
    algorithm: str  # "sha-256" or "sha-512"
    value: bytes

    def header(self) -> str:
        """As a Repr-Digest member: ``sha-256=:<base64>:``."""
        return f"{self.algorithm}=:{base64.b64encode(self.value).decode()}:"

    def matches(self, file: BinaryIO) -> bool:
        """Hash ``file`` from its start to its end and compare."""
        hasher = ALGORITHMS[self.algorithm]()
        for block in iter(lambda: file.read(READ_BLOCK), b""):
            hasher.update(block)
        return bool(hasher.digest() == self.value)


def _digest(algorithm: str, encoded: str, source: str) -> Digest:
    try:
        value = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidHeader(f"{source}: the {algorithm} digest is not base64") from None
    if len(value) != ALGORITHMS[algorithm]().digest_size:
        raise InvalidHeader(f"{source}: the {algorithm} digest has the wrong length")
    return Digest(algorithm, value)


def parse_repr_digest(value: str | None) -> Digest | None:
    """A ``Repr-Digest`` request header: the strongest sha-256/sha-512 member; other
    algorithms are ignored (RFC 9530). Malformed: 400."""
    if value is None or not value.strip():
        return None
    found: dict[str, Digest] = {}
    for member in value.split(","):
        key, equals, item = member.strip().partition("=")
        key = key.strip()
        if not equals or not _KEY.fullmatch(key):
            raise InvalidHeader(f"{HEADER}: {member.strip()[:60]!r} is not a dictionary member")
        item = item.split(";", 1)[0].strip()  # parameters say nothing we use
        if key not in ALGORITHMS:
            continue
        bytes_item = _BYTES.fullmatch(item)
        if bytes_item is None:
            raise InvalidHeader(f"{HEADER}: {key} must be a byte sequence (:base64:)")
        found[key] = _digest(key, bytes_item.group(1), HEADER)
    for algorithm in ALGORITHMS:
        if algorithm in found:
            return found[algorithm]
    return None


def parse_metadata_checksum(value: bytes | None) -> Digest | None:
    """The ``checksum`` metadata value, ``sha256 <base64>`` (or sha512). Malformed: 400."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace").strip()
    name, _, encoded = text.partition(" ")
    algorithm = _METADATA_NAMES.get(name.lower())
    if algorithm is None or not encoded.strip():
        raise InvalidHeader("the checksum metadata must be 'sha256 <base64>' or 'sha512 <base64>'")
    return _digest(algorithm, encoded.strip(), "checksum metadata")


def declared(header: str | None, metadata: Mapping[str, bytes | None]) -> Digest | None:
    """What a creation declares: the header, or the metadata; both must then agree
    when they name the same algorithm."""
    from_header = parse_repr_digest(header)
    from_metadata = parse_metadata_checksum(metadata.get(METADATA_KEY))
    if (
        from_header is not None
        and from_metadata is not None
        and from_header.algorithm == from_metadata.algorithm
        and from_header.value != from_metadata.value
    ):
        raise InvalidHeader(f"{HEADER} and the checksum metadata disagree")
    return from_header or from_metadata


def stored(value: str | None) -> Digest | None:
    """A digest as the registry keeps it (one Repr-Digest member)."""
    return parse_repr_digest(value) if value else None
