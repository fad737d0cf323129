"""An authorize hook behind the built-in grant check (tests/test_grants.py): it sees the
grant the guard found, and may refuse more."""

from __future__ import annotations

from uploadsvc.hooks import HookRequest, Rejected, UploadInfo

CALLS: list[tuple[str, str | None]] = []


class GrantAwareHooks:
    def authorize(self, request: HookRequest, upload: UploadInfo | None) -> None:
        CALLS.append((request.method, request.grant.label if request.grant else None))
        if request.grant is not None and request.grant.label == "blocked":
            raise Rejected(403, "the operator's hook says no")
