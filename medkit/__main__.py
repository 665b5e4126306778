"""`python -m medkit workbook [--profile P] [--only NN ...] [--from NN] [--resume]`; `python -m medkit kernel`;
`python -m medkit report`; `python -m medkit compare DATA --backbone NAME [--shots K…] [--seeds S…]`;
`python -m medkit models [download KEY… --to DIR | check NAME [--weights PATH]]`."""
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
    rp = sub.add_parser("report", help="run notebooks/90_report headless on what --outputs holds and export "
                        "OUTPUTS/report.html (no code, figures embedded)")
    rp.add_argument("--profile", default="tiny", choices=["smoke", "tiny", "paper"])
    rp.add_argument("--notebooks", default="notebooks")
    rp.add_argument("--outputs", default="outputs")
    rp.add_argument("--data", default="data")
    cp = sub.add_parser("compare", help="every applicable method on DATA over a K-shot grid and seeds, resumable, "
                        "ending with OUTPUTS/compare/<key>/report.html")
    cp.add_argument("data", metavar="DATA", help="a split JSON, CSV manifest, ImageFolder or synthetic dataset name")
    cp.add_argument("--backbone", default="", help="any load_backbone name (default: the profile's)")
    cp.add_argument("--profile", default="tiny", choices=["smoke", "tiny", "paper"])
    cp.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8, 16], metavar="K")
    cp.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    cp.add_argument("--knowledge", default=None, metavar="DIR|minilm",
                    help="class representations for CILMP (a folder from python -m medkit.knowledge, or minilm)")
    cp.add_argument("--image-root", default=None, help="image folder of a split JSON")
    cp.add_argument("--device", default="")
    cp.add_argument("--outputs", default="outputs")
    cp.add_argument("--data-root", default="data")
    sub.add_parser("kernel", help="register this interpreter as the `medkit` Jupyter kernel (in its own prefix)")
    models = sub.add_parser("models", help="the model zoo: list it (offline), download entries into folders, "
                            "check a checkpoint against its known answer")
    msub = models.add_subparsers(dest="action")
    dl = msub.add_parser("download", help="fetch zoo entries into DIR/KEY (needs internet); they then load offline")
    dl.add_argument("keys", nargs="+", metavar="KEY")
    dl.add_argument("--to", required=True, metavar="DIR")
    ck = msub.add_parser("check", help="run the fixed zero-shot probe and compare with the recorded answer")
    ck.add_argument("name", metavar="NAME", help="a zoo key, a model folder, or any load_backbone name")
    ck.add_argument("--weights", default=None, help="a folder or state-dict file (load_backbone's pretrained=)")
    ck.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    if args.command == "models":
        return _models(args)
    if args.command == "compare":
        return _compare(args)
    if args.command == "report":
        from medkit.workbook import WorkbookError, run_workbook

        try:
            run_workbook(args.profile, ["90"], None, args.notebooks, args.outputs, args.data, prebuild=False,
                         record_state=False)
        except WorkbookError as e:
            print(f"\n✗ report stopped: {e}", file=sys.stderr)
            return 1
        return 0

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


def _compare(args) -> int:
    from medkit.compare import compare

    t0 = time.time()
    try:
        result = compare(args.data, args.backbone, args.profile, args.shots, args.seeds, args.outputs, args.data_root,
                         args.knowledge, args.device, args.image_root)
    except (ValueError, FileNotFoundError) as e:  # CompareError, and a bad manifest or split file
        print(f"✗ compare: {e}", file=sys.stderr)
        return 1
    print(f"\n✓ compare {result.dataset.id}: {len(result.outcomes)} runs in {time.time() - t0:.0f} s\n"
          f"  report:     {result.report}\n  run folder: {result.run.path}")
    return 0


def _models(args) -> int:
    """Exit codes of `models check`: 0 matches, 1 differs or fails to load, 2 nothing recorded."""
    from medkit.backbones import zoo

    if args.action is None:
        import pandas as pd

        with pd.option_context("display.max_colwidth", 70, "display.width", 250):
            print(zoo.table().to_string(index=False))
        print("\nload_backbone(KEY); offline: `python -m medkit models download KEY --to DIR` on a machine with "
              "internet, then load_backbone('DIR/KEY'). Details: medkit/backbones/zoo.py")
        return 0
    if args.action == "download":
        from medkit.backbones.errors import BackboneNotAvailable
        from medkit.backbones.prepare import download

        failed = 0
        for key in args.keys:
            try:
                download(key, args.to)
            except (BackboneNotAvailable, KeyError, NotImplementedError, OSError, ValueError) as e:
                print(f"✗ {key}: {e}", file=sys.stderr)
                failed += 1
        return 1 if failed else 0
    from medkit.backbones import load_backbone
    from medkit.backbones.check import check

    try:
        adapter = load_backbone(args.name, args.weights, device=args.device)
    except (OSError, ValueError, KeyError, NotImplementedError, RuntimeError) as e:
        print(f"✗ {args.name}: {e}", file=sys.stderr)
        return 1
    key = args.name.split("@", 1)[0]  # NAME@PATH: the entry's record
    recorded = zoo.ZOO[key].known_answer if key in zoo.ZOO else None
    result = check(adapter, recorded)
    print(result.report(args.name))
    return {True: 0, False: 1, None: 2}[result.passed]


if __name__ == "__main__":
    sys.exit(main())
