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


# Characters that are never part of a name: separators and the header's own quote, and
# lookalikes of the separators that NFKC leaves alone but a person (or a careless client)
# might read as a path.
_REPLACED = frozenset('/\\"') | frozenset("\u2215\u2044\u2216\u29f5\u29f8\u29f9")


def safe_filename(raw: bytes | None) -> str:
    """A file name fit for a header: no control characters, no paths, bounded.

    Normalised (NFKC) *before* it is cleaned: normalising afterwards would turn the
    fullwidth quote and slashes (U+FF02, U+FF0F, U+FF3C) back into ASCII and let a name
    break out of its quotes.
    """
    if not raw:
        return FALLBACK_NAME
    name = unicodedata.normalize("NFKC", raw.decode("utf-8", "replace"))
    return _clean(name)[:MAX_FILENAME].strip(" .") or FALLBACK_NAME


def _clean(name: str) -> str:
    """Separators, quotes, controls, format characters (bidi overrides) and separators
    other than the plain space become ``_``; leading and trailing dots and spaces go."""
    name = "".join(
        "_"
        if char in _REPLACED or (unicodedata.category(char)[0] in "CZ" and char != " ")
        else char
        for char in name
    )
    return name.strip(" .")


def content_disposition(raw_name: bytes | None, inline: bool) -> str:
    """RFC 6266: an ASCII ``filename`` fallback plus ``filename*`` in UTF-8 when needed."""
    name = safe_filename(raw_name)
    kind = "inline" if inline else "attachment"
    # The fallback is cleaned again after its own normalisation: whatever NFKD makes of
    # a name, nothing but plain printable ASCII without quotes reaches the header. It
    # has no ";" either, for parsers that split parameters without minding quotes (the
    # name keeps it in filename*).
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    ascii_name = _clean(ascii_name.replace(";", "_")) or FALLBACK_NAME
    value = f'{kind}; filename="{ascii_name}"'
    if ascii_name != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value
