"""Sweeps: a grid of few-shot cells (method settings × datasets × K × seeds), or a list of
notebook parameter sets, fanned out to a pool of worker processes.

- `python -m medkit sweep --methods coop cocoop --datasets synth_ortho12 --shots 1 16
  --seeds 1 2 3 --workers N`: each cell is one run of the experiment runner; a method
  stands for its few-shot grid entries (`all`: the whole grid). Cells whose test row is
  already in results.csv are skipped, so a killed sweep resumes; rows from concurrent
  workers are appended under the file's lock (`medkit.runs.append_result`). One progress
  bar covers the grid; a failed cell is reported with its error and the others go on.
- `python -m medkit sweep --notebook 07 --params sets.yaml --workers N`: each parameter
  set (a list of mappings in YAML / JSON) is one papermill run of that notebook, executed to
  `outputs/sweeps/<name>/<NN>_<i>.ipynb`; a set whose notebook finished is skipped.
- Workers get one GPU each where there are GPUs (`CUDA_VISIBLE_DEVICES`), else share the
  CPU (each worker then uses `threads` torch threads, default cores / workers).
- `python -m medkit run --method M --dataset D --shots K --seeds S…`: the cells of one
  method in this process; started by `torchrun --nproc_per_node G -m medkit run …` each run
  is trained data-parallel over G processes (`medkit.distributed`).

A sweep keeps one run folder (pinned at `outputs/sweeps/<name>/run.txt`) that every worker
writes its checkpoints and histories into.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from medkit.distributed import visible_gpus
from medkit.experiment import Experiment, Setting
from medkit.grids import few_shot_grid
from medkit.methods import REGISTRY
from medkit.paths import read_yaml_or_json
from medkit.runs import RESULTS_FILE, Run, open_run, pinned_run, sanitise


class SweepError(ValueError):
    pass


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: a setting of the few-shot grid on one dataset, K and seed."""

    method: str
    variant: str
    dataset: str
    shots: int
    seed: int

    def label(self) -> str:
        return f"{self.method} · {self.variant} · {self.dataset} · K={self.shots} · seed {self.seed}"


def settings_for(methods: Sequence[str], profile=None) -> list[Setting]:
    """The few-shot grid entries of `methods` (`all`: every one), in grid order."""
    grid = few_shot_grid(profile)
    if "all" in methods:
        return grid
    unknown = sorted(set(methods) - set(REGISTRY))
    if unknown:
        raise SweepError(f"unknown method(s) {unknown}; registered: {sorted(REGISTRY)}")
    out = [s for s in grid if s.method in methods]
    missing = sorted(set(methods) - {s.method for s in out})
    out += [Setting(m, m) for m in missing]  # a method with no grid entry: its defaults
    return out


def grid_cells(methods: Sequence[str], datasets: Sequence[str], shots: Sequence[int], seeds: Sequence[int],
               profile=None) -> list[Cell]:
    cells = []
    for setting in settings_for(methods, profile):
        for d in datasets:
            for k in shots:
                if setting.shots is not None and k not in setting.shots:
                    continue
                cells += [Cell(setting.method, setting.variant, d, k, seed) for seed in seeds]
    return cells


def _setting(cell: Cell, profile=None) -> Setting:
    for s in settings_for([cell.method], profile):
        if s.variant == cell.variant:
            return s
    raise SweepError(f"{cell.label()}: no such variant in the grid")


def done(results: Path, cells: Sequence[Cell], ids: Mapping[str, str], backbone: str, profile=None) -> set[Cell]:
    """The cells whose test row is in results.csv (`ids`: dataset name → the id its rows carry)."""
    if not results.is_file():
        return set()
    rows = pd.read_csv(results, usecols=lambda c: c in {"dataset", "setting_id", "shots", "seed", "protocol",
                                                         "split", "backbone"})
    rows = rows[(rows["protocol"] == "few_shot") & (rows["split"] == "test") & (rows["backbone"] == backbone)]
    have = set(zip(rows["dataset"], rows["setting_id"], rows["shots"].astype("Int64"), rows["seed"].astype("Int64")))
    return {c for c in cells if (ids.get(c.dataset, c.dataset), _setting(c, profile).id, c.shots, c.seed) in have}


# --------------------------------------------------------------------------- one process's cells

_LOADED: dict[tuple, Experiment] = {}  # per worker process: each dataset and backbone loaded once


def experiment(dataset: str, profile: str, backbone: str, device: str, run: Run | None, data_root: str,
               progress: bool = False) -> Experiment:
    from medkit.backbones import load_backbone
    from medkit.data import load_dataset
    from medkit.features import FeatureCache
    from medkit.profiles import get_profile

    key = (dataset, profile, backbone, device, str(run.path) if run else None, data_root)
    if key not in _LOADED:
        prof = get_profile(profile, backbone=backbone, device=device)
        ds = load_dataset(dataset, "xray", prof.world, data_root, progress=progress)
        adapter = load_backbone(prof.backbone, device=prof.device, data_root=data_root, progress=progress)
        _LOADED[key] = Experiment(run, ds, adapter, prof, FeatureCache.at(Path(data_root) / "cache"),
                                  data_root=data_root, log=lambda _: None)
    return _LOADED[key]


def run_cell(cell: Cell, profile: str, backbone: str, device: str, run_path: str | None, data_root: str) -> dict:
    """Train and score one cell; its rows go to results.csv. Returns its test row's metrics."""
    run = open_run(run_path) if run_path else None
    exp = experiment(cell.dataset, profile, backbone, device, run, data_root)
    outcome = exp.run_one(_setting(cell, exp.profile), cell.seed, exp.few_shot_selection(cell.shots, cell.seed))
    row = outcome.row
    return {"cell": asdict(cell), "acc": row.get("acc"), "train_s": row.get("train_s")}


def _init_worker(gpus, threads: int) -> None:
    import torch

    gpu = gpus.get() if gpus is not None else None
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    torch.set_num_threads(max(1, threads))


def pool(workers: int, threads: int | None = None) -> tuple[ProcessPoolExecutor, bool]:
    """Worker processes (spawned: no CUDA state is forked), one GPU each where there are
    GPUs. Returns the pool and whether the workers have GPUs."""
    ctx = mp.get_context("spawn")
    gpus = visible_gpus()
    queue = None
    if gpus:
        queue = ctx.Queue()
        for i in range(workers):
            queue.put(gpus[i % len(gpus)])
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(queue, threads)), bool(gpus)


def sweep(methods: Sequence[str], datasets: Sequence[str], shots: Sequence[int], seeds: Sequence[int],
          profile: str = "tiny", backbone: str = "", device: str = "", workers: int = 1, name: str = "",
          outputs_root: str | Path = "outputs", data_root: str | Path = "data", threads: int | None = None,
          progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run every cell not yet in results.csv on `workers` processes; see the module docstring.
    Returns {"cells", "skipped", "ran", "failed": [(cell, error)], "run"}."""
    from tqdm.auto import tqdm

    from medkit.backbones import load_backbone
    from medkit.data import load_dataset
    from medkit.profiles import get_profile

    prof = get_profile(profile, backbone=backbone)
    outputs_root, data_root = Path(outputs_root), Path(data_root)
    cells = grid_cells(methods, datasets, prof.shots(shots), prof.seeds(seeds), prof)
    if not cells:
        raise SweepError("the grid is empty (no method runs at these K?)")
    ids = {d: load_dataset(d, "xray", prof.world, data_root, progress=progress).id for d in datasets}
    adapter_name = load_backbone(prof.backbone, device="cpu", data_root=data_root, progress=progress).name
    finished = done(outputs_root / RESULTS_FILE, cells, ids, adapter_name, prof)
    todo = [c for c in cells if c not in finished]
    name = name or sanitise("_".join([prof.name, adapter_name, *datasets, *methods])[:80]) + "_" + hashlib.blake2b(
        json.dumps([methods, datasets, list(shots), list(seeds), prof.name, adapter_name]).encode(),
        digest_size=3).hexdigest()
    config = {"profile": prof.as_dict(), "methods": list(methods), "datasets": list(datasets), "shots": list(shots),
              "seeds": list(seeds), "workers": workers}
    run, _ = pinned_run(outputs_root / "sweeps" / name, f"sweep_{name}", prof.name, config, outputs_root)
    bar = tqdm(total=len(cells), initial=len(finished), desc=f"sweep {name}", unit="run", disable=not progress)
    failed: list[tuple[Cell, str]] = []
    args = (prof.name, prof.backbone, device, str(run.path), str(data_root))
    try:
        if workers <= 1:
            for cell in todo:
                bar.set_postfix_str(cell.label()[:70])
                try:
                    run_cell(cell, *args)
                except Exception as e:  # one bad cell does not stop the grid
                    failed.append((cell, f"{type(e).__name__}: {e}"))
                    log(f"✗ {cell.label()}: {type(e).__name__}: {e}")
                bar.update()
        else:
            executor, _ = pool(workers, threads)
            with executor:
                futures = {executor.submit(run_cell, cell, *args): cell for cell in todo}
                for future in as_completed(futures):
                    cell = futures[future]
                    try:
                        future.result()
                    except Exception as e:
                        failed.append((cell, f"{type(e).__name__}: {e}"))
                        log(f"✗ {cell.label()}: {type(e).__name__}: {e}")
                    bar.set_postfix_str(cell.label()[:70])
                    bar.update()
    except BaseException as e:
        run.mark("failed", f"{type(e).__name__}: {e}"[:500])
        raise
    finally:
        bar.close()
    if failed:
        run.mark("failed", f"{len(failed)} of {len(todo)} cells failed; first: {failed[0][1]}"[:500])
    else:
        run.complete()
    return {"cells": len(cells), "skipped": len(finished), "ran": len(todo) - len(failed), "failed": failed,
            "run": run.path}


# --------------------------------------------------------------------------- notebook parameter sets


def load_parameter_sets(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    sets = read_yaml_or_json(path)
    if not isinstance(sets, list) or not all(isinstance(s, Mapping) for s in sets):
        raise SweepError(f"{path}: give a list of parameter mappings, one per notebook run")
    return [dict(s) for s in sets]


def _notebook_path(notebooks: Path, number: str) -> Path:
    found = sorted(notebooks.glob(f"{number}_*.ipynb"))
    if not found:
        raise SweepError(f"no notebook {number}_*.ipynb in {notebooks}")
    return found[0]


def run_notebook(notebook: str, params: dict, out: str, cwd: str) -> str:
    import papermill as pm

    pm.execute_notebook(notebook, out, parameters={**params, "interactive": False}, kernel_name="medkit",
                        language="python", cwd=cwd, progress_bar=False)
    Path(out).with_suffix(".done").write_text(json.dumps(params, sort_keys=True) + "\n")
    return out


def sweep_notebook(number: str, sets: Sequence[dict], workers: int = 1, notebooks: str | Path = "notebooks",
                   outputs_root: str | Path = "outputs", progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Each parameter set through papermill (skipping sets whose notebook already finished)."""
    from tqdm.auto import tqdm

    nb = _notebook_path(Path(notebooks), number)
    folder = Path(outputs_root) / "sweeps" / f"{nb.stem}"
    folder.mkdir(parents=True, exist_ok=True)

    def target(params: dict) -> Path:
        digest = hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=4).hexdigest()
        return folder / f"{nb.stem}_{digest}.ipynb"

    todo = [(p, target(p)) for p in sets if not target(p).with_suffix(".done").is_file()]
    failed = []
    bar = tqdm(total=len(sets), initial=len(sets) - len(todo), desc=f"sweep {nb.stem}", unit="notebook",
               disable=not progress)
    cwd = str(nb.parent.resolve())
    with ProcessPoolExecutor(max(1, workers), mp_context=mp.get_context("spawn")) as executor:
        futures = {executor.submit(run_notebook, str(nb.resolve()), p, str(t.resolve()), cwd): p for p, t in todo}
        for future in as_completed(futures):
            try:
                future.result()
            except Exception as e:
                failed.append((futures[future], f"{type(e).__name__}: {e}"[:500]))
                log(f"✗ {nb.stem} {futures[future]}: {type(e).__name__}")
            bar.update()
    bar.close()
    return {"sets": len(sets), "skipped": len(sets) - len(todo), "ran": len(todo) - len(failed), "failed": failed,
            "folder": folder}


# --------------------------------------------------------------------------- `python -m medkit run` (torchrun)


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` training overrides (numbers, true/false, none, or text)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SweepError(f"--train {pair!r}: give KEY=VALUE (e.g. batch_size=64)")
        low = value.lower()
        if low in ("none", "null"):
            out[key] = None
        elif low in ("true", "false"):
            out[key] = low == "true"
        else:
            try:
                out[key] = int(value)
            except ValueError:
                try:
                    out[key] = float(value)
                except ValueError:
                    out[key] = value
    return out


def run_here(method: str, dataset: str, shots: Sequence[int], seeds: Sequence[int], profile: str = "tiny",
             backbone: str = "", device: str = "", variant: str = "", outputs_root: str | Path = "outputs",
             data_root: str | Path = "data", steps: int | None = None, train: Mapping[str, Any] | None = None,
             log: Callable[[str], None] = print) -> list[dict]:
    """One method's cells in this process; under torchrun / accelerate each run is trained
    data-parallel (rank 0 makes the run folder and writes the rows). `steps`: optimizer
    steps per run instead of the profile's few-shot budget; `train`: TrainConfig overrides."""
    import torch

    from medkit import distributed
    from medkit.runs import start_run

    device = distributed.init_from_env(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = [None]
    if distributed.is_main():
        path[0] = str(start_run(f"run_{method}", profile, {"method": method, "dataset": dataset, "shots": list(shots),
                                                            "seeds": list(seeds), "world_size": distributed.world_size()},
                                root=outputs_root).path)
    if distributed.active():
        torch.distributed.broadcast_object_list(path, src=0)
    exp = experiment(dataset, profile, backbone, device, open_run(path[0]), str(data_root))
    if steps is not None:
        exp.profile = replace(exp.profile, few_shot_steps=steps)
    settings = [Setting(s.method, s.variant, s.options, {**s.train, **(train or {})})
                for s in settings_for([method], exp.profile) if not variant or s.variant == variant]
    if not settings:
        raise SweepError(f"{method} has no grid variant {variant!r}")
    out = []
    for s in settings:
        for k in shots:
            for seed in seeds:
                outcome = exp.run_one(s, seed, exp.few_shot_selection(k, seed), log=distributed.is_main())
                out.append(outcome.row)
    distributed.barrier()
    if distributed.is_main():
        exp.run.complete()
    return out


__all__ = ["Cell", "SweepError", "done", "grid_cells", "load_parameter_sets", "parse_overrides", "run_cell", "run_here", "settings_for",
           "sweep", "sweep_notebook"]
