"""How many upload bodies each client address streams at once in this process.

Every body in flight holds one of the worker's threads (README "Slow clients"), so one
address that opens many slow uploads could hold them all. A body past the address's
cap is refused before a byte of it is read. Counted per worker process, like the
threads it protects: a host with W workers lets one address stream up to W x cap.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import TooManyUploads


class ClientSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no cap
        self._in_flight: dict[str, int] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, address: str | None) -> Iterator[None]:
        """Hold one of ``address``'s slots for the block, or raise ``TooManyUploads``."""
        key = address or ""
        if not self.limit:
            yield
            return
        with self._guard:
            count = self._in_flight.get(key, 0)
            if count >= self.limit:
                raise TooManyUploads(
                    f"{count} uploads from this address are in flight; retry later"
                )
            self._in_flight[key] = count + 1
        try:
            yield
        finally:
            with self._guard:
                left = self._in_flight[key] - 1
                if left:
                    self._in_flight[key] = left
                else:
                    del self._in_flight[key]

    def in_flight(self, address: str) -> int:
        with self._guard:
            return self._in_flight.get(address, 0)
