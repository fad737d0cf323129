"""Hooks: operator code that runs around uploads, in Python or as an HTTP webhook.

Configure with ``UPLOADSVC_HOOKS=package.module:object``: an object (or a class, which
is instantiated) with any of these methods; a missing method is a no-op.

    pre_create(request, length, metadata) -> CreateChanges | None
        May refuse (raise ``Rejected(status, message)``), change the metadata or choose
        the id. ``request`` is None outside HTTP.
    authorize(request, upload) -> None
        Runs before every HEAD, PATCH, DELETE, GET and POST; raise ``Rejected`` to refuse.
        ``upload`` is the upload the request is about (``UploadInfo``, metadata and
        state included; tombstones too), or None for a creation. A final upload's
        creation also asks it once per partial it names, as a GET of that partial.
        A hook written as ``authorize(request)`` still works (its signature is read
        once, at load): it is called without the upload.
    pre_finish(upload) -> Mapping[str, str] | None
        Runs in the request that completes an upload; the headers it returns are added
        to that response.
    post_create(upload), post_finish(upload), post_terminate(upload)
        Run after the fact, in a background thread: they never delay a response.

``UPLOADSVC_WEBHOOK_URL`` posts the post-events as JSON (timeout, retries) for
operators who don't write Python. A hook that raises never corrupts an upload: a
pre-create failure refuses the creation, and pre-finish and post-event failures are
logged while the upload stays as it is.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import queue
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .config import ConfigError
from .errors import HookFailed, Rejected, TusError
from .records import UploadInfo, upload_json

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 5.0
WEBHOOK_RETRIES = 3  # attempts after the first, 1 s, 2 s, 4 s apart
# Post-events waiting for the background thread; past this they are dropped (logged)
# rather than letting a dead webhook grow memory without bound.
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
    """Runs the operator's hooks and webhook; a no-op when neither is configured."""

    target: object | None = None
    webhook_url: str | None = None
    # In-process observers of every event (metrics); they must be quick and not raise.
    listeners: list[Callable[[str, UploadInfo], None]] = field(default_factory=list)
    _queue: queue.Queue[Callable[[], None]] = field(
        default_factory=lambda: queue.Queue(MAX_PENDING_EVENTS)
    )
    _thread: threading.Thread | None = None
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        hook = self._method("authorize")
        # Read once: an ``authorize(request)`` hook from before it got the upload.
        self._authorize_takes_upload = hook is not None and _takes_two_arguments(hook)

    @property
    def authorizes(self) -> bool:
        return self._method("authorize") is not None

    @property
    def authorize_needs_upload(self) -> bool:
        """The hook decides on the upload: callers look it up before calling."""
        return self._authorize_takes_upload

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

    def emit(self, event: str, upload: UploadInfo) -> None:
        """Tell listeners (metrics) at once, and queue the post-event for the hook and
        the webhook; never blocks."""
        for listener in self.listeners:
            listener(event, upload)
        hook = self._method(event.replace("-", "_"))
        if hook is None and not self.webhook_url:
            return

        def deliver() -> None:
            if hook is not None:
                try:
                    hook(upload)
                except Exception:
                    log.exception("%s hook failed for upload %s", event, upload.id)
            if self.webhook_url:
                try:
                    self._post(event, upload)
                except Exception:
                    # Never let one event end the thread: the queue behind it would
                    # wait for nobody.
                    log.exception("webhook %s for upload %s failed", event, upload.id)

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

    def pending(self) -> int:
        """Post-events queued in this process and not yet delivered."""
        return self._queue.unfinished_tasks

    def drain(self, timeout: float = 10.0) -> None:
        """Wait (bounded) until queued post-events ran: for tests and shutdown."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _post(self, event: str, upload: UploadInfo) -> None:
        assert self.webhook_url is not None
        payload = json.dumps({"event": event, "upload": upload_json(upload)}).encode()
        for attempt in range(WEBHOOK_RETRIES + 1):
            request = urllib.request.Request(
                self.webhook_url,
                data=payload,
                headers={"Content-Type": "application/json", "User-Agent": "uploadsvc"},
                method="POST",
            )
            try:
                with _OPENER.open(request, timeout=WEBHOOK_TIMEOUT) as response:
                    if 200 <= response.status < 300:
                        return
                    log.warning(
                        "webhook %s for %s: attempt %d answered %d",
                        event,
                        upload.id,
                        attempt + 1,
                        response.status,
                    )
            except OSError as error:  # URLError, HTTPError and timeouts are OSErrors
                log.warning(
                    "webhook %s for %s: attempt %d failed: %s", event, upload.id, attempt + 1, error
                )
            if attempt < WEBHOOK_RETRIES:
                time.sleep(2**attempt)
        log.error(
            "webhook %s for upload %s failed after %d attempts",
            event,
            upload.id,
            WEBHOOK_RETRIES + 1,
        )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is not a delivery, and is not followed: urllib would resend the event as a
    GET, to wherever the receiver points. Refused here, it surfaces as an ``HTTPError``:
    a failed attempt, retried and then logged."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _takes_two_arguments(hook: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins)
        return False
    kinds = [parameter.kind for parameter in parameters]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return inspect.Parameter.VAR_POSITIONAL in kinds or sum(k in positional for k in kinds) >= 2
