"""A storage library's exceptions turned into ours, at the edge of each store.

Each store writes its rule once (what the library's failure means to uploadsvc: a full
disk or bucket is ``InsufficientStorage``, an unreachable bucket ``StoreUnavailable``)
and wraps its calls in ``translated(rule)``. What the rule leaves alone propagates
unchanged: the service's own handling of ``OSError`` and friends still sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

# The library's exception -> ours, or None to let it through as it is.
Rule = Callable[[Exception], BaseException | None]


class translated:
    """A context manager: an exception its rule maps is raised as ours, chained
    (``from``) to the original so logs keep the library's own words."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(error, Exception):
            ours = self.rule(error)
            if ours is not None:
                raise ours from error
