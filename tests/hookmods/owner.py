"""The owner-based hooks of README's "Hooks" section, as an operator would ship them.

``pre_create`` stamps every upload (finals included) with the identity the request
carries; ``authorize`` lets only that identity at it. Here the identity is the bearer
token itself: a real deployment verifies the token and takes the user id from it.
"""

from __future__ import annotations

from collections.abc import Mapping

from uploadsvc.hooks import CreateChanges, HookRequest, Rejected
from uploadsvc.protocol import parse_metadata
from uploadsvc.records import UploadInfo


def identity(headers: Mapping[str, str]) -> str | None:
    for name, value in headers.items():
        if name.lower() == "authorization" and value.startswith("Bearer ") and value[7:]:
            return value[7:]
    return None


class OwnerHooks:
    def pre_create(
        self, request: HookRequest | None, length: int | None, metadata: dict[str, bytes | None]
    ) -> CreateChanges:
        who = identity(request.headers) if request is not None else None
        if who is None:
            raise Rejected(401, "sign in to upload")
        # Whatever "owner" the client sent is replaced: only the server stamps it.
        return CreateChanges(metadata={**metadata, "owner": who.encode()})

    def authorize(self, request: HookRequest, upload: UploadInfo | None) -> None:
        who = identity(request.headers)
        if who is None:
            raise Rejected(401, "sign in first")
        if upload is None:
            return  # a creation: pre_create stamps it
        if parse_metadata(upload.metadata).get("owner") != who.encode():
            # 404, as for an id nobody made: a stranger can't tell the two apart.
            raise Rejected(404, "upload not found")
