"""A segmentation strategy's Optuna study: what `medkit.search.search` runs for `seg_*`.

The space is the strategy's registry entry (`register_seg(…, search_space=…)`: the VLSM
poster's lr, weight decay and depth, Shared Attention's heads and feed-forward width, Shared
Separate's shared width), overridable by the same YAML / JSON file as a few-shot method's.
A trial trains the strategy on the dataset's train split with the profile's segmentation
budget (`seg_budget`) and the trial's values on top; every epoch's validation Dice goes to
the median pruner and the last epoch's is the objective (the test split is never read). The
poster's search has no pruner and one SQLite file run one job at a time; both are options
here (`--space`, `--storage`, `--workers`). Then the default setting and the best trial's are
trained again on each seed through `SegExperiment.run_one`: their test rows go to the pinned
run's results.csv, variants `<strategy> · default` and `<strategy> · tuned (<study>)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from medkit.methods.registry import Choice, SearchSpace
from medkit.runs import Run, json_safe, sanitise

from medkit.seg.experiment import SegExperiment, SegSetting
from medkit.seg.strategies import SEG_STRATEGIES, build_strategy
from medkit.seg.train import SegTrainConfig, fit_seg

SEG_TRAIN_FIELDS = frozenset(SegTrainConfig.__dataclass_fields__)


def fit_space(space: SearchSpace, adapter) -> dict:
    """The space on this backbone: attention heads that do not divide the joint text + vision
    width are dropped (the poster's {16, 20, 32} all divide CLIPSeg's 512 + 768)."""
    out = dict(space)
    heads = out.get("heads")
    if isinstance(heads, Choice) and not isinstance(heads.values, Mapping):
        joint = int(adapter.text_width) + int(adapter.vision_width)
        kept = tuple(h for h in heads.values if joint % int(h) == 0)
        if kept:
            out["heads"] = Choice(kept)
        else:
            out.pop("heads")
    return out


class SegObjective:
    """Last-epoch validation Dice of `strategy` trained with a trial's configuration on one
    dataset's train split; every epoch's validation Dice is reported to the pruner."""

    def __init__(self, exp: SegExperiment, strategy: str, dataset: str, space: SearchSpace, seed: int) -> None:
        self.exp, self.strategy, self.dataset, self.space, self.seed = exp, strategy, dataset, space, seed

    def setting(self, options: Mapping[str, Any], train: Mapping[str, Any], variant: str) -> SegSetting:
        return SegSetting(self.strategy, variant, dict(options), dict(train))

    def __call__(self, trial) -> float:
        import optuna

        from medkit.search import suggest

        options, train = suggest(trial, self.space, self.exp.model.adapter, SEG_TRAIN_FIELDS)
        setting = self.setting(options, train, f"trial {trial.number}")
        cfg = self.exp.config(setting, self.seed)
        data = self.exp.datasets[self.dataset]

        def report(row: dict) -> None:
            trial.report(float(row["val_dice"]), int(row["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {row['epoch']}: val Dice {row['val_dice']:.3f} below the median")

        torch.manual_seed(cfg.seed)
        strategy = build_strategy(self.strategy, self.exp.model, self.exp.prompts(self.dataset, cfg.prompt),
                                  **options).to(cfg.device)
        history = fit_seg(strategy, data["train"], data["val"], cfg, self.exp.cache, callbacks=[report])
        return float(history["val_dice"].iloc[-1])


def seg_retrain(exp: SegExperiment, objective: SegObjective, best_params: Mapping[str, Any],
                seeds: Sequence[int], study: str) -> dict:
    """The default setting and the best trial's on each seed: test rows to results.csv, the
    last epoch's validation Dice and the test Dice per seed."""
    from medkit.search import configuration

    options, train = configuration(best_params, objective.space, SEG_TRAIN_FIELDS)
    name = objective.strategy
    default = SegSetting(name, f"{name} · default")
    best = objective.setting(options, train, f"{name} · tuned ({study})")
    out: dict[str, Any] = {"seeds": list(seeds), "shots": None, "best_options": json_safe(options),
                           "best_train": json_safe(train)}
    for label, setting in (("default", default), ("best", best)):
        val, test = [], []
        for seed in seeds:
            outcome = exp.run_one(setting, objective.dataset, seed)
            test.append(float(outcome.row["dice"]))
            val.append(float(outcome.history["val_dice"].iloc[-1]))
        out[label] = {"setting": setting.id, "variant": setting.variant, "val": val, "test": test}
    return out


def seg_target(strategy: str, data: str, prof, space: SearchSpace, model: str, seed: int, study: str,
               data_root: Path, progress: bool):
    """The `medkit.search.Target` of a segmentation strategy on one dataset (`data`: a synthetic
    name, a MedVLSM folder or a CSV; `model`: what notebook 10's `model` parameter takes)."""
    from medkit.features import FeatureCache
    from medkit.search import SearchError, Target, space_json

    from medkit.seg.data import load_seg_dataset
    from medkit.seg.load import load_seg_model

    if SEG_STRATEGIES[strategy].kind == "zeroshot":
        raise SearchError(f"{strategy} trains nothing: there is nothing to search")
    seg_model = load_seg_model(model, data_root=data_root, device=prof.device, progress=progress,
                               default=prof.backbone if prof.backbone.startswith("miniclip")
                               else "CIDAS/clipseg-rd64-refined")
    splits = load_seg_dataset(data, seg_model, profile=prof.world, data_root=data_root, progress=progress)
    dataset = splits["train"].meta["dataset"]
    if not len(splits["val"]):
        raise SearchError(f"{data}: its validation split is empty; a search scores trials on validation only")
    space = fit_space(space, seg_model.adapter)
    source = str(getattr(seg_model, "source", "") or seg_model.adapter.name)
    name = study or sanitise(f"{strategy}_{dataset}_{Path(source).name}_{prof.name}")
    cache = FeatureCache.at(data_root / "cache")

    def experiment(run: Run | None, log: Callable[[str], None] = lambda _: None) -> SegExperiment:
        return SegExperiment(run, seg_model, {dataset: splits}, SegTrainConfig(device=prof.device), cache,
                             log=log, profile=prof.name)

    def redo(run: Run, params: Mapping[str, Any], seeds: Sequence[int], log: Callable[[str], None]) -> dict:
        exp = experiment(run, log)
        return seg_retrain(exp, SegObjective(exp, strategy, dataset, space, seed), params, seeds, name)

    attrs = {"method": strategy, "dataset": dataset, "shots": None, "seed": seed, "backbone": source,
             "profile": prof.name, "space": space_json(space)}
    return Target(name, attrs, lambda: SegObjective(experiment(None), strategy, dataset, space, seed), redo,
                  metric="dice")
