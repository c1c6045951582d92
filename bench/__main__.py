"""``python -m bench [--full] [--only FIGURE ...] [--out PATH] [--keep]``: run the benchmark."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.plan import FULL, QUICK
from bench.runner import FIGURES, REPO, run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure Dispatch against real peers on this machine and rewrite "
        "docs/benchmarks.md.",
    )
    parser.add_argument("--full", action="store_true", help="the long variant (N=7, 100k spool)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=FIGURES,
        default=[],
        metavar="FIGURE",
        help=f"run only these figures ({', '.join(FIGURES)})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "docs" / "benchmarks.md",
        help="where to write the report (default: docs/benchmarks.md)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args()
    plan = FULL if args.full else QUICK
    command = "nox -s bench" + (" -- --full" if args.full else "")
    if args.only:
        command += f" (only {', '.join(args.only)})"
    return run(plan, args.out, only=set(args.only), keep=args.keep, command=command)


if __name__ == "__main__":
    sys.exit(main())
