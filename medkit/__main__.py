"""`python -m medkit workbook [--profile P] [--only NN ...] [--from NN]`."""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medkit", description="medkit command line")
    sub = parser.add_subparsers(dest="command", required=True)
    wb = sub.add_parser("workbook", help="run notebooks/NN_*.ipynb headless with papermill, in order")
    wb.add_argument("--profile", default="tiny", choices=["smoke", "tiny", "paper"])
    wb.add_argument("--only", nargs="+", metavar="NN", help="run only these notebook numbers")
    wb.add_argument("--from", dest="start", metavar="NN", help="start at this notebook number")
    wb.add_argument("--notebooks", default="notebooks")
    wb.add_argument("--outputs", default="outputs")
    wb.add_argument("--data", default="data")
    args = parser.parse_args(argv)

    from medkit.workbook import WorkbookError, run_workbook, summary

    t0 = time.time()
    try:
        results = run_workbook(args.profile, args.only, args.start, args.notebooks, args.outputs, args.data)
    except WorkbookError as e:
        print(f"\n✗ workbook stopped: {e}", file=sys.stderr)
        return 1
    print(f"\n✓ workbook ({args.profile}) finished in {time.time() - t0:.0f} s\n" + summary(results, args.outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
