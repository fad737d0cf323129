"""Hook modules the tests load by import path, as an operator's would be."""

from __future__ import annotations

from collections.abc import Mapping

from uploadsvc.hooks import CreateChanges, HookRequest, Rejected
from uploadsvc.records import UploadInfo

EVENTS: list[tuple[str, str]] = []


class SampleHooks:
    def pre_create(
        self, request: HookRequest | None, length: int | None, metadata: dict[str, bytes | None]
    ) -> CreateChanges | None:
        if metadata.get("filename", b"").endswith(b".exe"):  # type: ignore[union-attr]
            raise Rejected(403, "no executables here")
        if request is not None and "X-Choose-Id" in request.headers:
            return CreateChanges(upload_id=request.headers["X-Choose-Id"])
        return CreateChanges(metadata={**metadata, "owner": b"alice"})

    def authorize(self, request: HookRequest) -> None:
        if request.headers.get("Authorization") == "Bearer bad":
            raise Rejected(401, "bad token")

    def pre_finish(self, upload: UploadInfo) -> Mapping[str, str]:
        return {"X-Upload-Checked": "yes", "X-Bad\nHeader": "dropped", "X-Evil": "a\r\nb"}

    def post_create(self, upload: UploadInfo) -> None:
        EVENTS.append(("post-create", upload.id))

    def post_finish(self, upload: UploadInfo) -> None:
        EVENTS.append(("post-finish", upload.id))

    def post_terminate(self, upload: UploadInfo) -> None:
        EVENTS.append(("post-terminate", upload.id))


class BrokenHooks:
    """Every hook raises: uploads must come out intact anyway."""

    def pre_finish(self, upload: UploadInfo) -> Mapping[str, str]:
        raise RuntimeError("pre_finish is broken")

    def post_finish(self, upload: UploadInfo) -> None:
        raise RuntimeError("post_finish is broken")


class BrokenAuth:
    def authorize(self, request: HookRequest) -> None:
        raise RuntimeError("authorize is broken")


class BrokenCreate:
    def pre_create(self, *args: object) -> None:
        raise RuntimeError("pre_create is broken")


class UnparsableMetadata:
    """Stores metadata the Upload-Metadata header can't carry (a key with a space)."""

    def pre_create(self, *args: object) -> CreateChanges:
        return CreateChanges(metadata={"file name": b"x"})
