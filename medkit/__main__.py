"""`python -m medkit workbook [--profile P] [--only NN ...] [--from NN] [--resume]`; `python -m medkit kernel`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medkit", description="medkit command line")
    sub = parser.add_subparsers(dest="command", required=True)
    wb = sub.add_parser("workbook", help="run notebooks/NN_*.ipynb headless with papermill, in order")
    wb.add_argument("--profile", default=None, choices=["smoke", "tiny", "paper"], help="default: tiny "
                    "(with --resume: the interrupted workbook's)")
    wb.add_argument("--resume", action="store_true", help="continue the last workbook of --outputs: skip the "
                    "notebooks it finished, finish the interrupted one in its own run folder, run the rest")
    wb.add_argument("--only", nargs="+", metavar="NN", help="run only these notebook numbers")
    wb.add_argument("--from", dest="start", metavar="NN", help="start at this notebook number")
    wb.add_argument("--notebooks", default="notebooks")
    wb.add_argument("--outputs", default="outputs")
    wb.add_argument("--data", default="data")
    sub.add_parser("kernel", help="register this interpreter as the `medkit` Jupyter kernel (in its own prefix)")
    args = parser.parse_args(argv)

    if args.command == "kernel":
        from jupyter_client.kernelspec import KernelSpecManager

        from medkit.workbook import ensure_kernel

        name = ensure_kernel()
        spec = KernelSpecManager().get_kernel_spec(name)
        print(f"Jupyter kernel {name!r}: {spec.resource_dir} → {spec.argv[0]}")
        # papermill -k medkit takes the first `medkit` on Jupyter's path: it must be this prefix's.
        if not Path(spec.resource_dir).resolve().is_relative_to(Path(sys.prefix).resolve()):
            print(f"✗ that kernel is not in {sys.prefix} (another `medkit` kernelspec shadows it); "
                  f"remove it (jupyter kernelspec remove {name}) and run this again", file=sys.stderr)
            return 1
        return 0

    from medkit.workbook import WorkbookError, run_workbook, summary

    t0 = time.time()
    try:
        results = run_workbook(args.profile, args.only, args.start, args.notebooks, args.outputs, args.data,
                               resume=args.resume)
    except WorkbookError as e:
        print(f"\n✗ workbook stopped: {e}", file=sys.stderr)
        return 1
    print(f"\n✓ workbook ({args.profile or 'as resumed'}) finished in {time.time() - t0:.0f} s\n" + summary(results, args.outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
