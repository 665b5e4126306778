"""`python -m medkit workbook [--profile P] [--only NN ...] [--from NN] [--resume]`; `python -m medkit kernel`;
`python -m medkit report`; `python -m medkit compare DATA --backbone NAME [--shots K…] [--seeds S…]`;
`python -m medkit search --method M --dataset DATA [--trials N --workers N --storage URL]`;
`python -m medkit models [download KEY… --to DIR | check NAME [--weights PATH]]`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


PROFILE_CHOICES = ["smoke", "tiny", "full", "paper"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medkit", description="medkit command line")
    sub = parser.add_subparsers(dest="command", required=True)
    wb = sub.add_parser("workbook", help="run notebooks/NN_*.ipynb headless with papermill, in order")
    wb.add_argument("--profile", default=None, choices=PROFILE_CHOICES, help="default: tiny "
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
    rp.add_argument("--profile", default="tiny", choices=PROFILE_CHOICES)
    rp.add_argument("--notebooks", default="notebooks")
    rp.add_argument("--outputs", default="outputs")
    rp.add_argument("--data", default="data")
    cp = sub.add_parser("compare", help="every applicable method on DATA over a K-shot grid and seeds, resumable, "
                        "ending with OUTPUTS/compare/<key>/report.html")
    cp.add_argument("data", metavar="DATA", help="a split JSON, CSV manifest, ImageFolder or synthetic dataset name")
    cp.add_argument("--backbone", default="", help="any load_backbone name (default: the profile's)")
    cp.add_argument("--profile", default="tiny", choices=PROFILE_CHOICES)
    cp.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8, 16], metavar="K")
    cp.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    cp.add_argument("--knowledge", default=None, metavar="DIR|minilm",
                    help="class representations for CILMP (a folder from python -m medkit.knowledge, or minilm)")
    cp.add_argument("--image-root", default=None, help="image folder of a split JSON")
    cp.add_argument("--device", default="")
    cp.add_argument("--outputs", default="outputs")
    cp.add_argument("--data-root", default="data")
    se = sub.add_parser("search", help="an Optuna study of one method on one dataset's K-shot draw (validation "
                        "only; resumable), then best vs default retrained on the seeds")
    se.add_argument("--method", required=True, help="a registered method (python -c 'import medkit.methods as m; "
                    "print(m.list_methods())'), or a segmentation strategy (seg_coop, seg_maple, …: validation Dice)")
    se.add_argument("--dataset", required=True, metavar="DATA", help="a split JSON, CSV manifest, ImageFolder or "
                    "synthetic dataset name")
    se.add_argument("--backbone", default="", help="for a segmentation strategy: the segmentation model "
                    "(notebook 10's model parameter)")
    se.add_argument("--profile", default="tiny", choices=PROFILE_CHOICES)
    se.add_argument("--shots", type=int, default=16, metavar="K")
    se.add_argument("--seed", type=int, default=1, help="the seed of the first K-shot draw the study tunes on")
    se.add_argument("--draws", type=int, default=2, help="K-shot draws (seeds SEED, SEED+1, …) whose mean "
                    "validation accuracy a trial scores: one draw's 4 validation images per class reward luck")
    se.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="seeds best and default are retrained on")
    se.add_argument("--trials", type=int, default=20, help="trials in the study in all (workers share them)")
    se.add_argument("--workers", type=int, default=1, help="processes on the one study (one GPU each where there are)")
    se.add_argument("--storage", default="", help="default: sqlite under OUTPUTS/search/; a database URL "
                    "(postgresql://user@host/db), or journal:PATH (a file on a shared filesystem)")
    se.add_argument("--study", default="", help="study name (default: method_dataset_K_backbone_profile)")
    se.add_argument("--space", default=None, metavar="FILE", help="YAML/JSON overrides of the method's search space")
    se.add_argument("--device", default="")
    se.add_argument("--outputs", default="outputs")
    se.add_argument("--data-root", default="data")
    se.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # set by --workers
    sw = sub.add_parser("sweep", help="a grid (methods x datasets x K x seeds) or a notebook's parameter sets on a "
                        "pool of workers, skipping what results.csv (or the executed notebooks) already hold")
    sw.add_argument("--methods", nargs="+", default=[], help="registry names (each stands for its few-shot grid "
                    "entries), or all")
    sw.add_argument("--datasets", nargs="+", default=["synth_ortho12"], metavar="DATA")
    sw.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8, 16], metavar="K")
    sw.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    sw.add_argument("--notebook", default=None, metavar="NN", help="instead of a grid: run notebook NN once per "
                    "parameter set of --params")
    sw.add_argument("--params", default=None, metavar="FILE", help="YAML/JSON list of parameter mappings")
    sw.add_argument("--workers", type=int, default=1, help="processes (one GPU each where there are GPUs)")
    sw.add_argument("--threads", type=int, default=None, help="torch threads per CPU worker (default cores/workers)")
    sw.add_argument("--profile", default="tiny", choices=PROFILE_CHOICES)
    sw.add_argument("--backbone", default="")
    sw.add_argument("--device", default="")
    sw.add_argument("--name", default="", help="the sweep's folder under OUTPUTS/sweeps (default: from the grid)")
    sw.add_argument("--notebooks", default="notebooks")
    sw.add_argument("--outputs", default="outputs")
    sw.add_argument("--data-root", default="data")
    ru = sub.add_parser("run", help="one method's few-shot runs in this process; under torchrun each run is trained "
                        "data-parallel (torchrun --nproc_per_node N -m medkit run ...)")
    ru.add_argument("--method", required=True)
    ru.add_argument("--variant", default="", help="one of the method's grid variants (default: all of them)")
    ru.add_argument("--dataset", required=True, metavar="DATA")
    ru.add_argument("--shots", nargs="+", type=int, default=[16], metavar="K")
    ru.add_argument("--seeds", nargs="+", type=int, default=[1])
    ru.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the profile's budget)")
    ru.add_argument("--train", nargs="+", default=[], metavar="KEY=VALUE", help="TrainConfig overrides, e.g. "
                    "batch_size=64 lr=0.002")
    ru.add_argument("--profile", default="tiny", choices=PROFILE_CHOICES)
    ru.add_argument("--backbone", default="")
    ru.add_argument("--device", default="")
    ru.add_argument("--outputs", default="outputs")
    ru.add_argument("--data-root", default="data")
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
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "run":
        from medkit.sweep import SweepError, parse_overrides, run_here

        try:
            run_here(args.method, args.dataset, args.shots, args.seeds, args.profile, args.backbone, args.device,
                     args.variant, args.outputs, args.data_root, args.steps, parse_overrides(args.train))
        except (SweepError, KeyError, TypeError) as e:
            print(f"✗ run: {e}", file=sys.stderr)
            return 1
        return 0
    if args.command == "search":
        return _search(args, argv if argv is not None else sys.argv[1:])
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


def _sweep(args) -> int:
    from medkit.sweep import SweepError, load_parameter_sets, sweep, sweep_notebook

    t0 = time.time()
    try:
        if args.notebook:
            if not args.params:
                raise SweepError("--notebook needs --params FILE (a list of parameter sets)")
            out = sweep_notebook(args.notebook, load_parameter_sets(args.params), args.workers, args.notebooks,
                                 args.outputs)
            where, n = out["folder"], out["sets"]
        else:
            if not args.methods:
                raise SweepError("give --methods (registry names, or all), or --notebook NN --params FILE")
            out = sweep(args.methods, args.datasets, args.shots, args.seeds, args.profile, args.backbone, args.device,
                        args.workers, args.name, args.outputs, args.data_root, args.threads)
            where, n = out["run"], out["cells"]
    except (SweepError, KeyError, FileNotFoundError) as e:
        print(f"✗ sweep: {e}", file=sys.stderr)
        return 1
    print(f"\n{'✗' if out['failed'] else '✓'} sweep: {n} in the grid, {out['skipped']} already done, {out['ran']} run, "
          f"{len(out['failed'])} failed in {time.time() - t0:.0f} s\n  {where}")
    for cell, error in out["failed"][:10]:
        print(f"  ✗ {getattr(cell, 'label', lambda: cell)()}: {error}", file=sys.stderr)
    return 1 if out["failed"] else 0


def _worker_argv(argv: list[str]) -> list[str]:
    """The search command's own arguments for its workers, less --workers (each is one)."""
    out, skip = [], False
    for a in argv[argv.index("search") + 1:]:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if not a.startswith("--workers="):
            out.append(a)
    return out


def _search(args, argv: list[str]) -> int:
    from medkit.search import SearchError, search

    t0 = time.time()
    try:
        result = search(args.method, args.dataset, args.backbone, args.profile, args.shots, args.seed, args.seeds,
                        args.trials, args.workers, args.storage, args.study, args.space, args.outputs, args.data_root,
                        args.device, args.worker, _worker_argv(argv), draws=args.draws)
    except (SearchError, KeyError, FileNotFoundError) as e:
        print(f"✗ search: {e}", file=sys.stderr)
        return 1
    if args.worker is not None:
        return 0
    s = result.summary
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print(f"\n✓ search {s['study']}: trials {s['trials']} in {time.time() - t0:.0f} s; best trial {s['best_trial']} "
          f"{s['best_params']}\n  mean over seeds {s['seeds']}:  default val {mean(s['default']['val']):.3f} test "
          f"{mean(s['default']['test']):.3f}  |  best val {mean(s['best']['val']):.3f} test {mean(s['best']['test']):.3f}"
          f"\n  folder: {result.folder}")
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
