"""One worker's live feed for the operator view: a thread asks a source what changed,
about once a second, and hands the events to every watcher (an /admin/events stream).

The thread runs only while someone watches, and there are at most ``max_watchers``
watchers per worker: each holds a server thread while its stream lasts, so watching
costs a bounded number of threads for a bounded time (admin.py ends every stream after
``UPLOADSVC_ADMIN_STREAM_SECONDS``; the browser's EventSource reconnects by itself).

The source is one function, ``since -> (now, events)`` (``Watching.changes`` reads the
registry): every worker and host asks the same registry, so all show the same. Rows are
stamped before they commit, so each ask reaches back ``OVERLAP`` before the previous
answer, and an event already sent is not sent again (progress and the chart's minutes
again only when they changed).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

Source = Callable[[datetime], tuple[datetime, list[dict[str, Any]]]]

POLL_INTERVAL = 1.0
OVERLAP = timedelta(seconds=3)
# Events a watcher may have waiting; past it (a stalled reader) it is told to reload.
MAX_WAITING = 2000


_CHANGING = frozenset({"progress", "minute"})


def _key(event: dict[str, Any]) -> str:
    subject = event.get("id") or (event.get("upload") or {}).get("id") or event.get("minute")
    return f"{event['type']}:{subject}:{event.get('upload', {}).get('at', '')}"


class Watcher:
    def __init__(self, feed: Feed) -> None:
        self._feed = feed
        self._events: queue.Queue[dict[str, Any]] = queue.Queue(MAX_WAITING)
        self.overflowed = False

    def put(self, event: dict[str, Any]) -> None:
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self.overflowed = True

    def next(self, timeout: float) -> list[dict[str, Any]]:
        """The events that came, waiting up to ``timeout`` seconds for the first."""
        try:
            events = [self._events.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def close(self) -> None:
        self._feed._leave(self)


class Feed:
    def __init__(
        self,
        source: Source,
        clock: Callable[[], datetime],
        *,
        max_watchers: int,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.source = source
        self.clock = clock
        self.max_watchers = max_watchers
        self.interval = interval
        self._watchers: set[Watcher] = set()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._sent: dict[str, tuple[str, float]] = {}  # key -> (content, when sent)

    def watch(self) -> Watcher | None:
        """A new watcher, or None when this worker has ``max_watchers`` already."""
        with self._guard:
            if len(self._watchers) >= self.max_watchers:
                return None
            watcher = Watcher(self)
            self._watchers.add(watcher)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="uploadsvc-feed", daemon=True
                )
                self._thread.start()
            return watcher

    def watching(self) -> int:
        with self._guard:
            return len(self._watchers)

    def _leave(self, watcher: Watcher) -> None:
        with self._guard:
            self._watchers.discard(watcher)

    def _run(self) -> None:
        since = self.clock() - OVERLAP
        while True:
            with self._guard:
                if not self._watchers:
                    self._thread = None
                    return
            try:
                now, events = self.source(since - OVERLAP)
                since = now
                self.publish(events)
            except Exception as error:
                log.warning(
                    "admin feed: reading the registry failed (%s); retrying",
                    (str(error).splitlines() or [type(error).__name__])[0],
                )
            time.sleep(self.interval)

    def publish(self, events: list[dict[str, Any]]) -> None:
        """Hand ``events`` to every watcher, leaving out those already sent as they are."""
        mono = time.monotonic()
        fresh = []
        for event in events:
            key, content = _key(event), json.dumps(event, sort_keys=True)
            sent = self._sent.get(key)
            # Progress and the chart are sent again when they change; the rest once.
            if sent is not None and (sent[0] == content or event["type"] not in _CHANGING):
                continue
            self._sent[key] = (content, mono)
            fresh.append(event)
        horizon = mono - 4 * OVERLAP.total_seconds() - 60
        for key in [key for key, (_, when) in self._sent.items() if when < horizon]:
            del self._sent[key]
        with self._guard:
            watchers = list(self._watchers)
        for watcher in watchers:
            for event in fresh:
                watcher.put(event)
