"""``python -m torture [--seed N] [--only NAME,...] [--fast]``: run the campaigns, print
one line each and a closing table, and write the table as JSON."""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .campaigns import CAMPAIGNS
from .context import Context
from .report import Result, table, write_json
from .server import REPO_ROOT

DEFAULT_JSON = REPO_ROOT / "torture-results" / "latest.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torture", description=__doc__)
    parser.add_argument("--seed", type=int, help="replay a run (default: a fresh random seed)")
    parser.add_argument(
        "--only", help=f"comma-separated campaigns, of: {', '.join(CAMPAIGNS)} (default: all)"
    )
    parser.add_argument("--fast", action="store_true", help="the small profile `make test` runs")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="UPLOADSVC_X=VALUE",
        help="a setting for every server started (repeatable), e.g. UPLOADSVC_THREADS=128",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the table goes")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    args = parser.parse_args(argv)

    names = list(CAMPAIGNS) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [name for name in names if name not in CAMPAIGNS]
    if unknown:
        parser.error(f"unknown campaign(s) {unknown}; choose from {list(CAMPAIGNS)}")
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("UPLOADSVC_"):
            parser.error(f"--env {item!r}: expected UPLOADSVC_NAME=VALUE")
        env[key] = value

    seed = args.seed if args.seed is not None else secrets.randbits(32)
    profile = "fast" if args.fast else "full"
    work_dir = Path(tempfile.mkdtemp(prefix="uploadsvc-torture-"))
    print(
        f"torture: seed {seed} ({profile}; replay with --seed {seed}); work dir {work_dir}",
        flush=True,
    )
    ctx = Context(seed=seed, work_dir=work_dir, fast=args.fast, env=env)
    results: list[Result] = []
    started = time.monotonic()
    try:
        for name in names:
            print(f"{name}: running ...", flush=True)
            try:
                result = CAMPAIGNS[name](ctx)
            except Exception as error:  # a campaign that crashes is a failed campaign
                result = Result(name)
                first = str(error).splitlines()[0] if str(error) else type(error).__name__
                result.problem(f"campaign crashed: {first}\n{traceback.format_exc()[-4000:]}")
            results.append(result)
            print(result.details(), flush=True)
    finally:
        took = time.monotonic() - started
        if results:
            print()
            print(table(results))
            print(f"\nseed {seed}, {took:.0f} s; table written to {args.json}")
            write_json(args.json, seed, profile, results, took)
        failed = not results or not all(r.ok for r in results)
        if args.keep or failed:
            print(f"server logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
