"""Hooks: operator code that runs around uploads, in Python or as an HTTP webhook.

Configure with ``UPLOADSVC_HOOKS=package.module:object``: an object (or a class, which
is instantiated) with any of these methods; a missing method is a no-op.

    pre_create(request, length, metadata) -> CreateChanges | None
        May refuse (raise ``Rejected(status, message)``), change the metadata or choose
        the id. ``request`` is None outside HTTP.
    authorize(request, upload) -> None
        Runs before every HEAD, PATCH, DELETE, GET and POST; raise ``Rejected`` to refuse.
        With ``UPLOADSVC_AUTH=grants`` the built-in check (``Hooks.access``, access.py)
        runs first, and ``request.grant`` (or ``request.admin``) says who it found.
        ``upload`` is the upload the request is about (``UploadInfo``, metadata and
        state included; tombstones too), or None for a creation. A final upload's
        creation also asks it once per partial it names, as a GET of that partial.
        A hook written as ``authorize(request)`` still works (its signature is read
        once, at load): it is called without the upload.
    pre_finish(upload) -> Mapping[str, str] | None
        Runs in the request that completes an upload; the headers it returns are added
        to that response.
    inspect(upload, first_bytes) -> None
        Runs once the first few KiB of an upload have arrived (typegate.SNIFF_BYTES,
        or the whole upload when shorter), before any of them is stored, and again on
        the stored bytes when it finishes. Raise ``Rejected`` to refuse: the request
        that brought them stores none of its bytes (415 unless the hook says otherwise).
    check(upload, reader) -> bool | None
        Runs when an upload finishes, before post-finish, with its stored bytes as a
        binary file (a virus scanner). Return False or raise ``Rejected`` and the
        upload is marked rejected: never served, and its post-finish event says so.
        A hook that fails otherwise rejects too (fail closed).
    post_create(upload), post_finish(upload), post_terminate(upload)
        Run after the fact, in a background thread of the process that made the
        change: they never delay a response. At most once: queued in memory, they are
        lost with the process (a SIGKILL).

``UPLOADSVC_WEBHOOK_URL`` is not served from here: webhook events go through the
outbox (outbox.py: written with the change, so none is lost) and its dispatcher
(delivery.py: signed, retried, at least once). A hook that raises never corrupts an
upload: a pre-create failure refuses the creation, and pre-finish and post-event
failures are logged while the upload stays as it is.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, Protocol

from .config import ConfigError
from .errors import HookFailed, Rejected, TusError
from .grants import Grant
from .records import UploadInfo

log = logging.getLogger(__name__)

# Post-events waiting for the background thread; past this they are dropped (logged)
# rather than letting a stuck hook grow memory without bound.
MAX_PENDING_EVENTS = 10_000
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")

# UploadInfo (records.py) is re-exported: a hook module imports its API from here.
__all__ = ["CreateChanges", "HookRequest", "Hooks", "Rejected", "UploadInfo", "load_hooks"]


@dataclass(frozen=True)
class HookRequest:
    """What a hook may know of the HTTP request (no framework objects)."""

    method: str
    path: str
    upload_id: str | None
    headers: Mapping[str, str]
    remote_addr: str | None
    # Who the built-in guard (access.py, UPLOADSVC_AUTH=grants) found asking: the grant
    # whose token came, or the admin. The upload a creation makes belongs to ``grant``.
    grant: Grant | None = None
    admin: bool = False

    def read_of(self, upload_id: str, files_path: str) -> HookRequest:
        """This client's request as a GET of ``upload_id`` (an upload under
        ``files_path``): what the authorize hook decides on when a request would read
        an upload it doesn't name (a final's partials, the page's list)."""
        return replace(
            self,
            method="GET",
            path=f"{files_path.rstrip('/')}/{upload_id}",
            upload_id=upload_id,
        )


@dataclass(frozen=True)
class CreateChanges:
    metadata: dict[str, bytes | None] | None = None
    upload_id: str | None = None


class Guard(Protocol):
    """The built-in access check (access.py), run before the operator's ``authorize``
    wherever it runs: every tus request, each partial a final names, each upload of the
    page's list."""

    def authenticate(self, request: HookRequest) -> HookRequest:
        """Who is asking (``grant``/``admin`` filled in); 401 for no one known."""
        ...

    def authorize(self, request: HookRequest, upload: UploadInfo | None) -> HookRequest:
        """May they do this to ``upload`` (None: a creation)? 401/403 if not."""
        ...


def load_hooks(spec: str) -> object:
    """Import ``package.module:object``; a class is instantiated with no arguments.

    Any failure is a ``ConfigError`` naming the setting, so start-up stops with one line.
    """
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = getattr(importlib.import_module(module_name), attribute)
        return target() if isinstance(target, type) else target
    except Exception as error:  # ImportError, AttributeError, the hook's own __init__
        raise ConfigError(f"UPLOADSVC_HOOKS: cannot load {spec!r}: {error}") from error


@dataclass
class Hooks:
    """Runs the operator's Python hooks; a no-op when none is configured."""

    target: object | None = None
    # In-process observers of every event (metrics, the webhook dispatcher's wake-up);
    # they must be quick and not raise.
    listeners: list[Callable[[str, UploadInfo], None]] = field(default_factory=list)
    _queue: queue.Queue[Callable[[], None]] = field(
        default_factory=lambda: queue.Queue(MAX_PENDING_EVENTS)
    )
    _thread: threading.Thread | None = None
    _guard: threading.Lock = field(default_factory=threading.Lock)
    # The built-in access check (UPLOADSVC_AUTH=grants), before the operator's hook.
    access: Guard | None = None

    def __post_init__(self) -> None:
        hook = self._method("authorize")
        # Read once: an ``authorize(request)`` hook from before it got the upload.
        self._authorize_takes_upload = hook is not None and _takes_two_arguments(hook)

    @property
    def authorizes(self) -> bool:
        return self.access is not None or self._method("authorize") is not None

    @property
    def authorize_needs_upload(self) -> bool:
        """The guard or the hook decides on the upload: callers look it up first."""
        return self.access is not None or self._authorize_takes_upload

    def authenticate(self, request: HookRequest) -> HookRequest:
        """The built-in guard's "who is asking", before any upload is looked up (401
        first, so a stranger learns nothing of ids); the request as the guard knows it."""
        return request if self.access is None else self.access.authenticate(request)

    def _method(self, name: str) -> Callable[..., Any] | None:
        method = getattr(self.target, name, None)
        return method if callable(method) else None

    def pre_create(
        self, request: HookRequest | None, length: int | None, metadata: dict[str, bytes | None]
    ) -> CreateChanges:
        hook = self._method("pre_create")
        if hook is None:
            return CreateChanges()
        try:
            changes = hook(request, length, dict(metadata))
        except TusError:
            raise
        except Exception:
            log.exception("pre_create hook failed; upload refused")
            raise HookFailed("the server's pre-create hook failed") from None
        if changes is None:
            return CreateChanges()
        if not isinstance(changes, CreateChanges):
            log.error("pre_create hook returned %r, not CreateChanges; ignored", changes)
            return CreateChanges()
        return changes

    def authorize(self, request: HookRequest, upload: UploadInfo | None = None) -> None:
        if self.access is not None:
            # The built-in check first; the operator's hook may refuse more.
            request = self.access.authorize(request, upload)
        hook = self._method("authorize")
        if hook is None:
            return
        try:
            if self._authorize_takes_upload:
                hook(request, upload)
            else:
                hook(request)
        except TusError:
            raise
        except Exception:
            log.exception("authorize hook failed; request refused")
            raise HookFailed("the server's authorization hook failed") from None

    def pre_finish(self, upload: UploadInfo) -> dict[str, str]:
        hook = self._method("pre_finish")
        if hook is None:
            return {}
        try:
            headers = hook(upload) or {}
            return {
                str(name): str(value)
                for name, value in dict(headers).items()
                if _HEADER_NAME.fullmatch(str(name))
                and "\n" not in str(value)
                and "\r" not in str(value)
            }
        except Exception:
            log.exception("pre_finish hook failed for upload %s; upload kept", upload.id)
            return {}

    @property
    def inspects(self) -> bool:
        return self._method("inspect") is not None

    @property
    def checks(self) -> bool:
        return self._method("check") is not None

    def inspect(self, upload: UploadInfo, first_bytes: bytes) -> None:
        hook = self._method("inspect")
        if hook is None:
            return
        try:
            hook(upload, first_bytes)
        except TusError:
            raise
        except Exception:
            log.exception("inspect hook failed for upload %s; its bytes refused", upload.id)
            raise HookFailed("the server's inspect hook failed") from None

    def check(self, upload: UploadInfo, reader: BinaryIO) -> str | None:
        """The check hook's verdict on a finished upload's bytes: None when it lets
        the upload be served, else why not."""
        hook = self._method("check")
        if hook is None:
            return None
        try:
            if hook(upload, reader) is False:
                return "refused by the check hook"
        except TusError as error:
            return error.message
        except Exception:
            log.exception("check hook failed for upload %s; rejected", upload.id)
            return "the check hook failed"
        return None

    def emit(self, event: str, upload: UploadInfo) -> None:
        """Tell listeners (metrics) at once, and queue the post-event for the hook;
        never blocks. Called after the change (and its outbox event) committed."""
        for listener in self.listeners:
            listener(event, upload)
        hook = self._method(event.replace("-", "_"))
        if hook is None:
            return

        def deliver() -> None:
            try:
                hook(upload)
            except Exception:
                # Never let one event end the thread: the queue behind it would wait
                # for nobody.
                log.exception("%s hook failed for upload %s", event, upload.id)

        try:
            self._queue.put_nowait(deliver)
        except queue.Full:
            log.error("hook queue full; %s for upload %s dropped", event, upload.id)
            return
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        with self._guard:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="uploadsvc-hooks", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._queue.get()()
            self._queue.task_done()

    def drain(self, timeout: float = 10.0) -> None:
        """Wait (bounded) until queued post-events ran: for tests and shutdown."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)


def _takes_two_arguments(hook: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins)
        return False
    kinds = [parameter.kind for parameter in parameters]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return inspect.Parameter.VAR_POSITIONAL in kinds or sum(k in positional for k in kinds) >= 2
