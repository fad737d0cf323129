"""Type gates: which kinds of file an upload may be, by its declared type and its bytes.

A ``TypeGate`` is a list of MIME patterns (``image/*``, ``application/pdf``; ``*/*``
is any). ``UPLOADSVC_ALLOWED_TYPES`` makes the server's; a caller may narrow it with
another (a grant's ``--types``): ``gate & other`` must pass both. An empty gate lets
everything through and sniffs nothing (as before gates existed).

Two checks, both refusing with 415 (``TypeRefused``):

- at creation, the ``filetype`` metadata: an upload must declare a type the gate
  accepts (a partial upload, a piece of a file, may declare none);
- on the bytes, once the first ``SNIFF_BYTES`` have arrived (or the whole upload, when
  it is shorter): the magic numbers there, read by puremagic (a maintained library; no
  table of signatures lives here), must not say the file is something other than it
  claims. An ``.exe`` declared ``application/pdf`` starts ``MZ``: refused. Bytes with no
  magic number (plain text, CSV) stand on their declared type.

``HeldWindow`` holds a body's bytes below the sniff window back until they can be
judged, so no byte past the window is ever stored unjudged. Pure: no I/O of its own.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import puremagic

from .errors import TypeRefused

# How much of a file's start is judged. Enough for the magic numbers of the formats
# people upload (they sit in the first bytes) and small enough to hold in memory.
SNIFF_BYTES = 8192
# Only magic numbers this close to the start count. puremagic also reports short words
# deeper in (the bytes "text" at offset 73 mean an OpenDocument file to it), which plain
# text is full of.
HEADER_REACH = 16
_PATTERN = re.compile(r"(\*|[a-z0-9][a-z0-9!#$&^_.+-]*)/(\*|[a-z0-9][a-z0-9!#$&^_.+-]*)")
_XML = frozenset({"application/xml", "text/xml"})


def normalise(mime: str | bytes | None) -> str | None:
    """A declared type as compared: lower case, parameters (``; charset=``) dropped."""
    if mime is None:
        return None
    if isinstance(mime, bytes):
        mime = mime.decode("utf-8", "replace")
    # At most a MIME type's length (RFC 6838: 127 + "/" + 127): it goes into messages.
    value = mime.split(";", 1)[0].strip().lower()[:255]
    return value or None


def _textual(mime: str) -> bool:
    """Types whose files are text (RFC 6838 structured suffixes included)."""
    major, _, minor = mime.partition("/")
    return (
        major in ("text", "message")
        or minor in ("json", "xml", "javascript", "ecmascript", "x-sh", "x-shellscript")
        or minor.endswith(("+xml", "+json"))
    )


# Control characters text doesn't have (tab, line feed, form feed, carriage return and
# escape it may).
_NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")


def _is_text(head: bytes) -> bool:
    """Whether a file's first bytes are text: UTF-8 (a BOM allowed; a character cut
    by the window's end too) or UTF-16 with its BOM, without binary control bytes.
    puremagic finds "signatures" in text (a UTF-8 BOM, "<?xml", "{"); a file declared
    as a text type whose bytes are text is what it claims."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = head[: len(head) // 2 * 2].decode("utf-16")
        except UnicodeDecodeError:
            return False
    else:
        try:
            text = head.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            if error.start < len(head) - 3:
                return False
            text = head[: error.start].decode("utf-8-sig")
    return _NOT_TEXT.search(text) is None


def parse_patterns(text: str) -> tuple[str, ...]:
    """``image/*,application/pdf`` as patterns; ValueError naming a bad one."""
    patterns = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    for pattern in patterns:
        if not _PATTERN.fullmatch(pattern) or (pattern.startswith("*/") and pattern != "*/*"):
            raise ValueError(f"{pattern!r} is not a MIME type or a type/* pattern")
    return patterns


def _matches(pattern: str, mime: str) -> bool:
    if pattern == "*/*":
        return True
    major, _, minor = pattern.partition("/")
    return mime.startswith(major + "/") if minor == "*" else mime == pattern


@dataclass(frozen=True)
class Sniffed:
    """What the first bytes say a file is: MIME types and file extensions (puremagic
    knows some formats by extension only). Neither: no magic number recognised."""

    mimes: frozenset[str]
    extensions: frozenset[str]
    best: str = "unknown"  # the likeliest, as the library ranks them: for messages

    @property
    def recognised(self) -> bool:
        return bool(self.mimes or self.extensions)

    def describe(self) -> str:
        return self.best

    def is_a(self, declared: str) -> bool:
        """Whether these bytes may be of the ``declared`` type."""
        if declared in self.mimes:
            return True
        known = {e.lower() for e in mimetypes.guess_all_extensions(declared, strict=False)}
        if known & self.extensions:
            return True
        # RFC 6839: image/svg+xml and the like are XML documents.
        return declared.endswith("+xml") and bool(self.mimes & _XML)


def sniff(head: bytes) -> Sniffed:
    """The magic numbers at the start of ``head`` (at most SNIFF_BYTES are looked at)."""
    head = bytes(head[:SNIFF_BYTES])
    if not head:
        return Sniffed(frozenset(), frozenset())
    try:
        found = puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        return Sniffed(frozenset(), frozenset())
    mimes: set[str] = set()
    extensions: set[str] = set()
    # For messages, in the library's order (likeliest first): a named type, else an
    # extension, else the format's name.
    labels: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for match in found:
        if match.offset > HEADER_REACH:
            continue
        if match.mime_type:
            mimes.add(match.mime_type.lower())
            if match.mime_type != "application/octet-stream":
                labels[0].append(match.mime_type.lower())
        if match.extension:
            extension = match.extension.lower()
            extensions.add(extension)
            labels[1].append(f"a {extension} file")
            guessed, _ = mimetypes.guess_type("x" + extension, strict=False)
            if guessed:
                mimes.add(guessed)
        if not match.mime_type and not match.extension:
            # A format puremagic knows by name only (ELF, Mach-O): something, not nothing.
            extensions.add("?" + (match.name or "binary"))
            labels[2].append(match.name or "a binary format")
    best = next((group[0] for group in labels.values() if group), "unknown")
    return Sniffed(frozenset(mimes), frozenset(extensions), best)


class TypeGate:
    """MIME patterns an upload's type must match: ``TypeGate(["image/*"])``. Gates
    combine with ``&`` (both must accept). ``TypeGate()`` accepts anything."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        group = tuple(p.strip().lower() for p in patterns if p.strip())
        for pattern in group:
            parse_patterns(pattern)  # ValueError for a malformed one
        self.groups: tuple[tuple[str, ...], ...] = (group,) if group else ()

    def __and__(self, other: TypeGate) -> TypeGate:
        both = TypeGate()
        both.groups = self.groups + tuple(g for g in other.groups if g not in self.groups)
        return both

    def __repr__(self) -> str:
        return f"TypeGate({' & '.join(','.join(g) for g in self.groups) or '*/*'})"

    @property
    def active(self) -> bool:
        return bool(self.groups)

    def allows(self, mime: str) -> bool:
        return all(any(_matches(p, mime) for p in group) for group in self.groups)

    def accepted(self) -> str:
        return " and ".join(", ".join(group) for group in self.groups)

    def check_declared(self, filetype: str | bytes | None, *, partial: bool = False) -> None:
        """At creation, before any body: the declared ``filetype`` must be accepted.
        A partial upload (a piece of a file) may declare none; anything else must."""
        if not self.active:
            return
        declared = normalise(filetype)
        if declared is None:
            if partial:
                return
            raise TypeRefused(
                f"declare the file's type (filetype metadata): accepted here: {self.accepted()}"
            )
        if not self.allows(declared):
            raise TypeRefused(f"{declared} is not accepted here: accepted: {self.accepted()}")

    def check_bytes(self, head: bytes, filetype: str | bytes | None) -> None:
        """The file's first bytes must not say it is something other than declared
        (or, undeclared, something not accepted). Unrecognised bytes pass."""
        if not self.active:
            return
        found = sniff(head)
        if not found.recognised:
            return
        declared = normalise(filetype)
        if declared is not None:
            if not found.is_a(declared) and not (_textual(declared) and _is_text(head)):
                raise TypeRefused(
                    f"the file is not {declared}: its first bytes say {found.describe()}"
                )
            return
        if not any(self.allows(mime) for mime in found.mimes):
            raise TypeRefused(
                f"{found.describe()} is not accepted here: accepted: {self.accepted()}"
            )


class HeldWindow:
    """Holds a body's bytes that fall below ``end`` (the sniff window's end, or the
    upload's length when shorter) until the window is whole, then has ``judge`` look at
    the window's bytes (``earlier()``, the ones stored by earlier requests, then
    these) before any of them, or any byte past them, is passed on. ``judge`` refuses by
    raising: nothing of this body was passed on then.

    A body that ends (or breaks off) inside the window passes its held bytes on
    unjudged: they are all below the window, and every byte that arrives is kept; the
    request that fills the window, or the finish, judges them."""

    def __init__(
        self, start: int, end: int, earlier: Callable[[], bytes], judge: Callable[[bytes], None]
    ) -> None:
        self.start = start
        self.end = end
        self.earlier = earlier
        self.judge = judge
        self.judged = start >= end
        self.refused = False

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        held = bytearray()
        iterator = iter(chunks)
        while not self.judged:
            try:
                chunk = next(iterator, None)
            except Exception:
                # The body broke off: what came is kept, as for any body.
                if held:
                    yield bytes(held)
                raise
            if chunk is None:
                if held:
                    yield bytes(held)
                return
            room = self.end - self.start - len(held)
            held += chunk[:room]
            if len(held) < self.end - self.start:
                continue
            try:
                self.judge(self.earlier() + bytes(held))
            except BaseException:
                self.refused = True
                raise
            self.judged = True
            yield bytes(held)
            if len(chunk) > room:
                yield chunk[room:]
        yield from iterator
