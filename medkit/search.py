"""Hyperparameter search with Optuna: `search(...)` and `python -m medkit search`.

One study tunes one registered method on one dataset's K-shot draws (`draws` seeds) on the backbone
and profile given. Why one module over ~420 lines: the space, the objective, the retraining and
the command read each other's choices (a trial's parameters unfold into the setting the
retraining rebuilds); the storage and worker mechanics already live in `medkit.studies`, and
`step_budget_curves` is the next thing to move out (to a budgets module) if it grows.

- the space is the method's registry entry (`search_space`, the references' ranges), which a
  small YAML / JSON file can override (`load_space`): `{name: {low, high, log} | {choices} |
  null}` (null drops a parameter);
- TPE (multivariate, 10 start-up trials) and median pruning on the validation accuracy of
  every epoch; the objective is the mean validation accuracy after training over `draws`
  K-shot draws (default 2: one draw's 4 validation images per class reward the luckiest
  trial), never the test split;
- storage: SQLite under `outputs/search/` by default, so the same command run again resumes
  the study; any SQLAlchemy URL (`postgresql://…`, `mysql://…`), or `journal:PATH` for
  Optuna's JournalStorage file on a shared filesystem without a database;
- `workers=N` starts N processes on the one study (`python -m medkit search … --worker`),
  one GPU each where there are GPUs. Together they run exactly the requested number of
  trials: a worker claims a trial only while fewer than that are finished or running, a
  trial asked for beyond it is closed unrun (state FAIL, user attribute `surplus`), and a
  trial whose worker died (a dead process on this host, or on an RDB a missed heartbeat) is
  failed and its parameters enqueued again, so a rerun completes the study;
- the end: the best trial's configuration and the default one are trained again on each of
  `seeds` (same K-shot draws for both) and their test rows go to results.csv, the variant
  naming the study; `summary.json` holds both configurations' validation and test accuracy
  per seed, and the figures are the optimisation history, the parameter importances, a
  parallel-coordinate plot and best vs default.

A segmentation strategy (`seg_coop`, `seg_maple`, …) is searched the same way on one
segmentation dataset (`medkit.seg_search`: validation Dice, the VLSM poster's space, the
strategy's test rows to results.csv); `shots` does not apply to it and `backbone` names the
segmentation model (notebook 10's `model`).

Everything of a study sits in `outputs/search/<study>/` (its run folder is pinned there).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from medkit.config import TrainConfig
from medkit.experiment import Experiment, Setting
from medkit.grids import few_shot_grid
from medkit.ledger import SharedRuns
from medkit.methods import Choice, FloatRange, IntRange, SearchSpace, get_spec
from medkit.paths import read_yaml_or_json
from medkit.reporting.search import best_vs_default, budget_table, figures, search_findings  # noqa: F401 (re-exported)
from medkit.runs import Run, json_safe, pinned_run, sanitise
from medkit.selection import EvalPart
from medkit.studies import (FINISHED, SearchError, claimed, make_storage, open_study, quiet, release_stale,
                            start_workers, trial_states, wait_for_workers, work)
from medkit.train import seed_everything

TRAIN_FIELDS = frozenset(TrainConfig.__dataclass_fields__)


# --------------------------------------------------------------------------- the space


def _range_from(name: str, spec: Any, path: str) -> FloatRange | IntRange | Choice:
    if isinstance(spec, Mapping) and "choices" in spec:
        choices = spec["choices"]
        return Choice(dict(choices) if isinstance(choices, Mapping) else tuple(choices))
    if isinstance(spec, Mapping) and {"low", "high"} <= set(spec):
        low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
        if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool):
            return IntRange(low, high, log)
        if not (isinstance(low, (int, float)) and isinstance(high, (int, float))) or low >= high:
            raise SearchError(f"{path}: {name}: low must be a number below high, got low={low!r}, high={high!r}")
        return FloatRange(float(low), float(high), log)
    raise SearchError(f"{path}: {name}: give {{low, high[, log]}} or {{choices: [...]}} (or null to drop it), "
                      f"got {spec!r}")


def load_space(method: str, path: str | Path | None = None) -> dict[str, FloatRange | IntRange | Choice]:
    """The method's (or segmentation strategy's) registered space, with a YAML / JSON file's
    overrides applied."""
    registered, options, fields = _registered(method)
    space = dict(registered)
    if path is None:
        return space
    path = Path(path)
    given = read_yaml_or_json(path)
    if not isinstance(given, Mapping):
        raise SearchError(f"{path}: a search space file maps parameter names to ranges, got {type(given).__name__}")
    for name, spec in given.items():
        if spec is None:
            space.pop(name, None)
            continue
        if name not in fields and name not in options and not (
                isinstance(spec, Mapping) and isinstance(spec.get("choices"), Mapping)):
            raise SearchError(f"{path}: {name!r} is neither a training field nor an option of {method} "
                              f"(options: {sorted(options)})")
        space[name] = _range_from(name, spec, str(path))
    return space


def _registered(method: str) -> tuple[SearchSpace, set[str], frozenset[str]]:
    """(registered space, option names, training fields) of a method or segmentation strategy."""
    from medkit.seg.strategies import SEG_STRATEGIES
    from medkit.seg.train import SegTrainConfig

    if method in SEG_STRATEGIES:
        spec = SEG_STRATEGIES[method]
        return spec.search_space, set(spec.options()), frozenset(SegTrainConfig.__dataclass_fields__)
    spec = get_spec(method)
    return spec.search_space, set(spec.options.__dataclass_fields__), TRAIN_FIELDS


def space_json(space: SearchSpace) -> dict:
    """The space as plain data (stored with the study: a resumed study must search the same)."""
    out = {}
    for name, r in space.items():
        if isinstance(r, Choice):
            out[name] = {"choices": dict(r.values) if isinstance(r.values, Mapping) else list(r.values)}
        else:
            out[name] = {"low": r.low, "high": r.high, "log": r.log}
    return json_safe(out)


def prompt_layers(adapter) -> int:
    """How many layers a deep prompt can take on this backbone (the shallower tower)."""
    return min(int(getattr(adapter, "text_depth", 12)), int(getattr(adapter, "vision_depth", 12)))


def suggest(trial, space: SearchSpace, adapter=None, train_fields: frozenset[str] = TRAIN_FIELDS
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(method options, training overrides) of one trial (`train_fields`: the config's fields)."""
    values: dict[str, Any] = {}
    for name, r in space.items():
        if isinstance(r, FloatRange):
            values[name] = trial.suggest_float(name, r.low, r.high, log=r.log)
        elif isinstance(r, IntRange):
            high = prompt_layers(adapter) if r.high == "layers" else int(r.high)
            values[name] = trial.suggest_int(name, r.low, max(r.low, high), log=r.log)
        elif isinstance(r.values, Mapping):  # a bundle of options chosen by its label
            values.update(r.values[trial.suggest_categorical(name, list(r.values))])
        else:
            values[name] = trial.suggest_categorical(name, list(r.values))
    return split_values(values, train_fields)


def split_values(values: Mapping[str, Any], train_fields: frozenset[str] = TRAIN_FIELDS
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    train = {k: v for k, v in values.items() if k in train_fields}
    return {k: v for k, v in values.items() if k not in train_fields}, train


def configuration(params: Mapping[str, Any], space: SearchSpace, train_fields: frozenset[str] = TRAIN_FIELDS
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(options, training overrides) of a finished trial's parameters (bundles unfolded)."""
    values: dict[str, Any] = {}
    for name, value in params.items():
        r = space.get(name)
        if isinstance(r, Choice) and isinstance(r.values, Mapping):
            values.update(r.values[value])
        else:
            values[name] = value
    return split_values(values, train_fields)


# --------------------------------------------------------------------------- the objective


def default_setting(method: str, profile=None) -> Setting:
    """The method's few-shot grid entry (its first), or its defaults."""
    for s in few_shot_grid(profile):
        if s.method == method:
            return s
    return Setting(method, method)


def validation_score(exp: Experiment, method, setting: Setting, sel) -> float:
    part = EvalPart("val", "all", sel.labels, sel.val)
    scored, *_ = exp.evaluate(method, setting, sel, part)
    return float(scored[0][1][exp.task.primary])


class Objective:
    """Mean validation accuracy of the method trained with a trial's configuration on the
    K-shot draws of seeds `seed`, `seed + 1`, … (`draws` of them); every epoch's validation
    accuracy is reported to the pruner (draw i at steps i·100000 + epoch, so trials are
    compared draw by draw). One draw's few-shot validation set is small (4 images per class):
    the best of a dozen trials on one draw is mostly the luckiest, and loses to the default
    on other draws (measured: CoOp, synth_ortho12, K=16, tiny — 0.5625 vs 0.542 on the
    searched draw, 0.347 vs 0.396 over 3 draws)."""

    def __init__(self, exp: Experiment, base: Setting, space: SearchSpace, shots: int, seed: int,
                 draws: int = 1) -> None:
        if draws < 1:
            raise SearchError(f"draws={draws}: the objective needs at least one K-shot draw")
        self.exp, self.base, self.space, self.seed = exp, base, space, seed
        self.sels = [exp.few_shot_selection(shots, seed + i) for i in range(draws)]

    def setting(self, options: Mapping[str, Any], train: Mapping[str, Any], variant: str) -> Setting:
        return Setting(self.base.method, variant, {**self.base.options, **options}, {**self.base.train, **train})

    def __call__(self, trial) -> float:
        import optuna

        options, train = suggest(trial, self.space, self.exp.adapter)
        setting = self.setting(options, train, f"trial {trial.number}")

        scores = []
        for i, sel in enumerate(self.sels):
            def report(row: dict, _method, i: int = i) -> None:
                if not np.isnan(row["val_acc"]):
                    trial.report(float(row["val_acc"]), i * 100_000 + int(row["epoch"]))
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"draw {i + 1}, epoch {row['epoch']}: val acc "
                                                 f"{row['val_acc']:.3f} below the median")

            seed = self.seed + i
            seed_everything(seed)
            method = self.exp.build(setting, sel.labels.classnames, seed)
            self.exp.train(method, setting, seed, sel, callbacks=[report])
            scores.append(validation_score(self.exp, method, setting, sel))
        return float(np.mean(scores))


# --------------------------------------------------------------------------- the command


@dataclass
class SearchResult:
    study: Any
    folder: Path
    run: Run | None
    summary: dict
    figures: dict[str, Any] = field(default_factory=dict)


def study_name(method: str, dataset_id: str, shots: int, backbone: str, profile: str) -> str:
    return sanitise(f"{method}_{dataset_id}_K{shots}_{backbone}_{profile}")


def retrain(exp: Experiment, objective: Objective, best_params: Mapping[str, Any], shots: int,
            seeds: Sequence[int], study: str) -> dict:
    """The default and the best trial's configuration on each seed: test rows to results.csv
    (variants `<variant> · default` and `<variant> · tuned (<study>)`), val and test per seed."""
    base = objective.base
    options, train = configuration(best_params, objective.space)
    default = Setting(base.method, f"{base.variant} · default", dict(base.options), dict(base.train))
    best = objective.setting(options, train, f"{base.variant} · tuned ({study})")
    out: dict[str, Any] = {"seeds": list(seeds), "shots": shots, "best_options": json_safe(options),
                           "best_train": json_safe(train)}
    selections = {seed: exp.few_shot_selection(shots, seed) for seed in seeds}  # one draw per seed, for both
    for name, setting in (("default", default), ("best", best)):
        val, test = [], []
        for seed, sel in selections.items():
            outcome = exp.run_one(setting, seed, sel)
            test.append(float(outcome.row[exp.task.primary]))
            val.append(validation_score(exp, outcome.method, setting, sel))
        out[name] = {"setting": setting.id, "variant": setting.variant, "val": val, "test": test}
    return out


def command_args(method: str, data: str, backbone: str, profile: str, shots: int, seed: int, seeds: Sequence[int],
                 trials: int, storage: str, study: str, space_file: str | None, outputs_root: str | Path,
                 data_root: str | Path, device: str, draws: int = 1) -> list[str]:
    """`python -m medkit search` arguments of a search (what its worker processes are started with)."""
    out = ["--method", method, "--dataset", str(data), "--profile", profile, "--shots", str(shots), "--seed", str(seed),
           "--draws", str(draws), "--seeds", *map(str, seeds), "--trials", str(trials), "--outputs", str(outputs_root), "--data-root",
           str(data_root)]
    for flag, value in (("--backbone", backbone), ("--storage", storage), ("--study", study),
                        ("--space", space_file), ("--device", device)):
        if value:
            out += [flag, str(value)]
    return out


def step_budget_curves(exp: Experiment, setting: Setting, shots: int, seed: int, budgets: Sequence[int]
                       ) -> dict[int, tuple[list[float], float, float]]:
    """Per few-shot step budget: (every step's training loss, validation accuracy, seconds) of
    `setting` at K = `shots` (where a budget stops on the way down, or on a plateau)."""
    import time
    from dataclasses import replace

    out = {}
    sel = exp.few_shot_selection(shots, seed)
    profile = exp.profile
    try:
        for steps in budgets:
            exp.profile = replace(profile, few_shot_steps=steps)
            seed_everything(seed)
            t = time.time()
            method = exp.build(setting, sel.labels.classnames, seed)
            history = exp.train(method, setting, seed, sel, share=False)  # timed: trained here
            losses = history.attrs["steps"]["loss"].tolist() if history is not None else []
            out[steps] = (losses, validation_score(exp, method, setting, sel), time.time() - t)
    finally:
        exp.profile = profile
    return out


@dataclass
class Target:
    """What a study tunes: its name and recorded attributes (the space searched among them), a
    factory of its objective (built in the process that runs trials) and the retraining of best
    vs default into a run folder. `metric`: what the objective and the retrained rows report."""

    name: str
    attrs: dict
    objective: Callable[[], Callable]
    retrain: Callable[[Run, Mapping[str, Any], Sequence[int], Callable[[str], None]], dict]
    metric: str = "acc"


def few_shot_target(method: str, data: str, prof, space: SearchSpace, shots: int, seed: int, study: str,
                    data_root: Path, progress: bool, draws: int = 1) -> Target:
    """A registered few-shot method on one dataset's K-shot draw (validation accuracy)."""
    from medkit.backbones import load_backbone
    from medkit.data import load_dataset
    from medkit.features import FeatureCache

    dataset = load_dataset(data, "xray", prof.world, data_root, progress=progress)
    if dataset.splits["train"].multilabel:
        raise SearchError(f"{data}: multi-label; the search runs single-label few-shot methods")
    adapter = load_backbone(prof.backbone, device=prof.device, data_root=data_root, progress=False)
    name = study or study_name(method, dataset.id, shots, adapter.name, prof.name)
    base = default_setting(method, prof)

    def experiment(run: Run | None, log: Callable[[str], None] = lambda _: None) -> Experiment:
        return Experiment(run, dataset, adapter, prof, FeatureCache.at(data_root / "cache"),
                          data_root=str(data_root), log=log, shared=SharedRuns(data_root / "trained"))

    def redo(run: Run, params: Mapping[str, Any], seeds: Sequence[int], log: Callable[[str], None]) -> dict:
        exp = experiment(run, log)
        return retrain(exp, Objective(exp, base, space, shots, seed), params, shots, seeds, name)

    return Target(name, {"method": method, "dataset": dataset.id, "shots": shots, "seed": seed, "draws": draws,
                         "backbone": adapter.name, "profile": prof.name, "space": space_json(space)},
                  lambda: Objective(experiment(None), base, space, shots, seed, draws), redo)


def search(method: str, data: str, backbone: str = "", profile: str = "tiny", shots: int = 16, seed: int = 1,
           seeds: Sequence[int] = (1, 2, 3), trials: int = 12, workers: int = 1, storage: str = "",
           study: str = "", space_file: str | None = None, outputs_root: str | Path = "outputs",
           data_root: str | Path = "data", device: str = "", worker: int | None = None, argv: Sequence[str] = (),
           progress: bool = True, log: Callable[[str], None] = print, draws: int = 2) -> SearchResult:
    """Run (or resume) the study, then train best and default on `seeds`; see the module
    docstring. `method` is a registered few-shot method or a segmentation strategy
    (`seg_coop`, …: `medkit.seg_search`; `shots` does not apply, `backbone` is the
    segmentation model). `worker=i`: only this process's share of the trials (what
    `--workers` starts)."""
    import optuna

    from medkit.profiles import get_profile
    from medkit.seg.strategies import SEG_STRATEGIES

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    segmentation = method in SEG_STRATEGIES
    prof = get_profile(profile, **({"device": device} if segmentation else {"backbone": backbone, "device": device}))
    argv = list(argv) or command_args(method, data, backbone, profile, shots, seed, seeds, trials, storage, study,
                                      space_file, outputs_root, data_root, device, draws)
    outputs_root, data_root = Path(outputs_root), Path(data_root)
    space = load_space(method, space_file)
    if not space:
        if segmentation:
            why = "; it trains nothing" if SEG_STRATEGIES[method].kind == "zeroshot" else ""
        else:
            why = "" if get_spec(method).cls.trains_by_gradient else "; it fits in closed form"
        raise SearchError(f"{method} has no hyperparameters to search (its registry entry declares no search_space"
                          f"{why}); give --space FILE")
    if segmentation:
        from medkit.seg_search import seg_target

        target = seg_target(method, data, prof, space, backbone, seed, study, data_root, progress and worker is None)
    else:
        target = few_shot_target(method, data, prof, space, shots, seed, study, data_root, progress and worker is None,
                                 draws)
    name = target.name
    folder = outputs_root / "search" / name
    store = make_storage(storage, outputs_root / "search" / f"{name}.db")
    if worker is None and workers > 1:
        study_obj = open_study(name, store, target.attrs)  # made once, before the workers load it
        with quiet():
            release_stale(study_obj, store)
        if claimed(study_obj) < trials:
            wait_for_workers(start_workers(argv, workers, folder), study_obj, trials, progress)
    else:
        study_obj = open_study(name, store, target.attrs, seed=worker or 0)
        objective = target.objective()
        if worker is not None:  # one of --workers: its log file is its progress
            work(study_obj, store, objective, trials, log=lambda m: print(m, flush=True))
            return SearchResult(study_obj, folder, None, {})
        from tqdm.auto import tqdm

        bar = tqdm(total=trials, desc=f"search {name}", unit="trial", disable=not progress,
                   initial=min(trials, sum(trial_states(study_obj).get(s, 0) for s in FINISHED)))

        def step(message: str) -> None:
            bar.n = min(trials, sum(trial_states(study_obj).get(s, 0) for s in FINISHED))
            bar.set_postfix_str(message[:60])
            bar.refresh()

        try:
            work(study_obj, store, objective, trials, log=step)
        finally:
            bar.close()
    counts = trial_states(study_obj)
    if not counts.get("COMPLETE"):
        raise SearchError(f"study {name}: no trial completed ({counts})")
    best_trial = study_obj.best_trial
    config = {"profile": prof.as_dict(), "data": str(data), "study": name, "storage": storage or "sqlite (default)",
              "method": method, "shots": target.attrs.get("shots"), "seeds": list(seeds)}
    run, _ = pinned_run(folder, f"search_{name}", prof.name, config, outputs_root)
    try:
        summary = target.retrain(run, best_trial.params, list(prof.seeds(seeds)), log)
    except BaseException as e:
        run.mark("failed", f"{type(e).__name__}: {e}"[:500])
        raise
    summary.update({"study": name, "trials": counts, "best_trial": best_trial.number, "metric": target.metric,
                    "best_params": json_safe(best_trial.params), "best_val_in_search": best_trial.value})
    figs = figures(study_obj, summary)
    for key, fig in figs.items():
        run.save_figure(fig, f"search_{key}")
    run.save_metrics(summary)
    (folder / "summary.json").write_text(json.dumps(json_safe(summary), indent=1) + "\n")
    run.complete()
    return SearchResult(study_obj, folder, run, summary, figs)


__all__ = ["Objective", "Target", "few_shot_target", "SearchError", "SearchResult", "best_vs_default", "budget_table", "command_args", "search_findings", "configuration", "step_budget_curves", "figures", "load_space", "make_storage",
           "open_study", "release_stale", "retrain", "search", "space_json", "study_name", "suggest", "work"]
