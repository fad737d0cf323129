"""What may be stored and served: the type gate, the inspect and check hooks and the
whole-file digest, applied where the service meets an upload's bytes.

- at creation, the declared type (``at_creation``: 415 before any body);
- as bytes arrive, the first ``typegate.SNIFF_BYTES`` (``window``): held back until
  judged, so a refused request stores none of its bytes (415);
- at the finish, from the stored bytes (``at_finish``): the first bytes again (finals
  and lengths declared at the offset reach completion without a body), the declared
  digest (a mismatch: CORRUPT) and the check hook (REJECTED). The service records the
  verdict with ``finished_at``, once, and ``require_servable`` keeps every way in from
  serving an upload whose verdict isn't OK.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass
from typing import BinaryIO

from . import digests
from .errors import DigestMismatch, TusError, UploadRefused
from .hooks import Hooks
from .protocol import parse_metadata
from .records import UploadInfo, Verdict
from .typegate import SNIFF_BYTES, HeldWindow, TypeGate

log = logging.getLogger(__name__)

FILETYPE = "filetype"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str | None = None


class Judge:
    """The server's type gate and the hooks that judge bytes, as one value the service
    asks. ``gate_for(upload)`` is the gate an upload's bytes must pass: the server's by
    default; a caller that knows more of an upload (a grant's types) replaces it with
    one that narrows the server's (``TypeGate.__and__``)."""

    def __init__(self, gate: TypeGate | None = None, hooks: Hooks | None = None) -> None:
        self.gate = gate or TypeGate()
        self.hooks = hooks or Hooks()
        self.gate_for: Callable[[UploadInfo], TypeGate] = lambda upload: self.gate

    def at_creation(
        self,
        metadata: Mapping[str, bytes | None],
        *,
        partial: bool = False,
        gate: TypeGate | None = None,
    ) -> None:
        """The declared ``filetype`` against the server's gate (and ``gate``, the
        request's own, when given): 415 before the upload exists."""
        both = self.gate if gate is None else self.gate & gate
        both.check_declared(metadata.get(FILETYPE), partial=partial)

    def _sniffs(self, upload: UploadInfo) -> bool:
        return self.gate_for(upload).active or self.hooks.inspects

    def window(
        self, upload: UploadInfo, start: int, earlier: Callable[[int], bytes]
    ) -> HeldWindow | None:
        """For a body written at ``start``: the window that holds back its bytes below
        the sniff window's end until they are judged (None: nothing to judge there).
        ``earlier(n)`` reads the first n stored bytes (a body resuming inside it)."""
        if not self._sniffs(upload):
            return None
        end = SNIFF_BYTES if upload.length is None else min(SNIFF_BYTES, upload.length)
        if start >= end:
            return None
        return HeldWindow(
            start, end, lambda: earlier(start), lambda head: self.first_bytes(upload, head)
        )

    def first_bytes(self, upload: UploadInfo, head: bytes) -> None:
        """Refuse (raise) bytes that aren't what the upload claims, or that a hook
        refuses."""
        try:
            filetype = parse_metadata(upload.metadata).get(FILETYPE)
        except TusError:
            filetype = None  # a pre_create hook stored a form the header can't carry
        self.gate_for(upload).check_bytes(head, filetype)
        self.hooks.inspect(upload, head)

    def at_finish(self, upload: UploadInfo, open_bytes: Callable[[], BinaryIO]) -> Judgement:
        """The verdict on a complete upload's stored bytes (``open_bytes()`` opens them
        from their start; each check reads them again)."""
        if self._sniffs(upload):
            with closing(open_bytes()) as file:
                head = file.read(SNIFF_BYTES)
            try:
                self.first_bytes(upload, head)
            except TusError as error:
                return self._refused(upload, Verdict.REJECTED, error.message)
        digest = digests.stored(upload.digest)
        if digest is not None:
            with closing(open_bytes()) as file:
                if not digest.matches(file):
                    return self._refused(
                        upload,
                        Verdict.CORRUPT,
                        f"its bytes do not match the declared {digest.algorithm} digest",
                    )
        if self.hooks.checks:
            with closing(open_bytes()) as file:
                reason = self.hooks.check(upload, file)
            if reason is not None:
                return self._refused(upload, Verdict.REJECTED, reason)
        return Judgement(Verdict.OK)

    @staticmethod
    def _refused(upload: UploadInfo, verdict: Verdict, reason: str) -> Judgement:
        log.warning("upload %s: %s: %s", upload.id, verdict.value, reason)
        return Judgement(verdict, reason[:1000])


def require_servable(upload: UploadInfo, *, wrote_last: bool = False) -> UploadInfo:
    """An upload whose finish refused it is never served: the request that brought its
    last bytes (``wrote_last``) and finished it learns why (460 for a digest mismatch),
    every other one gets 403 (a HEAD or GET that ran a finish a crash left due too)."""
    if upload.verdict in (None, Verdict.OK):
        return upload
    if upload.verdict is Verdict.CORRUPT:
        message = f"upload is corrupt: {upload.verdict_reason}"
        if upload.finished_now and wrote_last:
            raise DigestMismatch(message, offset=upload.offset)
        raise UploadRefused(message)
    raise UploadRefused(f"upload rejected: {upload.verdict_reason}")
