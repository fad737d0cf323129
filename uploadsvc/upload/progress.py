"""A one-line progress bar on a terminal: bytes, rate, ETA. Silent when not a TTY."""

from __future__ import annotations

import shutil
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

REDRAW_EVERY = 0.1  # seconds between redraws
RATE_WINDOW = 5.0  # seconds of history the rate is measured over
BAR_WIDTH = 24


def format_bytes(count: float) -> str:
    """``512 B``, ``1.5 KiB``, ``10.0 MiB``, ``1.20 GiB``."""
    if count < 1024:
        return f"{int(count)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 1024 or unit == "TiB":
            return f"{count:.2f} {unit}" if unit in ("GiB", "TiB") else f"{count:.1f} {unit}"
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``0:05``, ``12:34``, ``1:02:03`` (an ETA)."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_elapsed(seconds: float) -> str:
    """``0.4 s``, ``12.3 s``, else like ``format_duration`` (a summary)."""
    return f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)


class Progress:
    """Tracks one file's upload; draws it on ``stream`` when ``enabled``.

    ``position`` is where the server's copy ends (what HEAD or PATCH answered, plus the
    bytes of the chunk in flight); ``sent`` counts bytes this run put on the wire.
    """

    def __init__(
        self,
        name: str,
        total: int,
        stream: TextIO,
        *,
        enabled: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.clock = clock
        self.started = clock()
        self.position = 0
        self.sent = 0
        self._history: deque[tuple[float, int]] = deque([(self.started, 0)])
        self._drawn_at = float("-inf")
        self._width = 0

    def moved_to(self, position: int) -> None:
        """The server's copy ends at ``position`` (a HEAD, or a PATCH's answer)."""
        self.position = position
        self._draw()

    def sending(self, count: int) -> None:
        """``count`` more bytes went out."""
        self.sent += count
        self.position = min(self.total, self.position + count)
        now = self.clock()
        self._history.append((now, self.sent))
        while len(self._history) > 2 and now - self._history[1][0] > RATE_WINDOW:
            self._history.popleft()
        self._draw()

    @property
    def rate(self) -> float:
        """Bytes per second over the last few seconds (0 before there is a measure)."""
        (start, sent_then), (end, sent_now) = self._history[0], self._history[-1]
        return (sent_now - sent_then) / (end - start) if end > start else 0.0

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def line(self) -> str:
        fraction = self.position / self.total if self.total else 1.0
        filled = round(BAR_WIDTH * fraction)
        rate = self.rate
        eta = format_duration((self.total - self.position) / rate) if rate > 0 else "-:--"
        return (
            f"{self.name}  {fraction:4.0%} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
            f"{format_bytes(self.position)}/{format_bytes(self.total)}  "
            f"{format_bytes(rate)}/s  ETA {eta}"
        )

    def _draw(self, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if not force and now - self._drawn_at < REDRAW_EVERY:
            return
        self._drawn_at = now
        columns = shutil.get_terminal_size((80, 24)).columns
        text = self.line()
        if len(text) >= columns:
            # Shorten the name, never the numbers.
            room = max(8, len(self.name) - (len(text) - columns + 1))
            text = self.line().replace(self.name, self.name[: room - 1] + "~", 1)[: columns - 1]
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        """Erase the bar, so a summary or an error line can take its place."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
