"""The campaigns, in the order `make torture` runs them. Each module has ``NAME``,
``FULL`` and ``FAST`` parameters and ``run(ctx, params=None) -> Result``."""

from __future__ import annotations

from collections.abc import Callable

from ..context import Context
from ..report import Result
from . import diskfull, dropped, hostile, killed, races, slow, slowloris, stop

Campaign = Callable[[Context], Result]

CAMPAIGNS: dict[str, Campaign] = {
    dropped.NAME: dropped.run,
    killed.NAME: killed.run,
    stop.NAME: stop.run,
    diskfull.NAME: diskfull.run,
    races.NAME: races.run,
    hostile.NAME: hostile.run,
    slow.NAME: slow.run,
    slowloris.NAME: slowloris.run,
}
