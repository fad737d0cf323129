"""The torture campaigns (torture/) in their fast profile: fewer rounds, the same code.

`make torture` runs the full profile (minutes); this keeps every campaign honest inside
`make test`. The seed is fixed so a failure replays exactly:
``.venv/bin/python -m torture --fast --seed <SEED> --only <campaign>``
(``TORTURE_SEED`` picks another).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from torture.campaigns import CAMPAIGNS
from torture.context import Context

SEED = int(os.environ.get("TORTURE_SEED", "20261125"))


@pytest.mark.parametrize("name", list(CAMPAIGNS))
def test_campaign(name: str, tmp_path: Path) -> None:
    ctx = Context(seed=SEED, work_dir=tmp_path, fast=True, echo=lambda text: None)
    result = CAMPAIGNS[name](ctx)
    print(result.details())
    if result.skipped is not None:
        pytest.skip(f"{name}: {result.skipped}")
    assert result.ok, f"seed {SEED}\n{result.details()}"
    assert result.faults > 0, f"{name} injected no fault"
