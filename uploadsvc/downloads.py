"""What a download says about its bytes: content type and disposition, safely.

Metadata is whatever the uploader sent. A type is served inline only from a short
allowlist of types browsers won't execute; everything else is an attachment of type
``application/octet-stream``, and ``nosniff`` keeps browsers from guessing otherwise.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

INLINE_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "video/mp4",
        "video/webm",
        "video/ogg",
        "audio/mpeg",
        "audio/ogg",
        "audio/wav",
        "audio/webm",
        "audio/flac",
        "application/pdf",
        "text/plain",
    }
)
FALLBACK_TYPE = "application/octet-stream"
FALLBACK_NAME = "download"
MAX_FILENAME = 255


def content_type(filetype: bytes | None) -> tuple[str, bool]:
    """The Content-Type to send and whether the download may show inline."""
    if filetype is None:
        return FALLBACK_TYPE, False
    essence = filetype.decode("ascii", "replace").split(";")[0].strip().lower()
    if essence not in INLINE_TYPES:
        return FALLBACK_TYPE, False
    # Text is served as UTF-8 whatever the uploader claimed: no charset games.
    return (f"{essence}; charset=utf-8" if essence == "text/plain" else essence), True


def safe_filename(raw: bytes | None) -> str:
    """A file name fit for a header: no control characters, no paths, bounded."""
    if not raw:
        return FALLBACK_NAME
    name = raw.decode("utf-8", "replace")
    name = "".join(
        "_" if char in '/\\"' or (unicodedata.category(char)[0] in "CZ" and char != " ") else char
        for char in name
    )
    name = name.strip(" .")[:MAX_FILENAME]
    return name or FALLBACK_NAME


def content_disposition(raw_name: bytes | None, inline: bool) -> str:
    """RFC 6266: an ASCII ``filename`` fallback plus ``filename*`` in UTF-8 when needed."""
    name = safe_filename(raw_name)
    kind = "inline" if inline else "attachment"
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    ascii_name = ascii_name.strip(" .") or FALLBACK_NAME
    value = f'{kind}; filename="{ascii_name}"'
    if ascii_name != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value
