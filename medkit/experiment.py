"""The one experiment runner: every notebook's grid is a loop over `Experiment.run`.

One run is a method setting × seed × selection:

    build → prepare(frozen train, val features) → fit (if it trains by gradient)
    → finish(val) → evaluate each part of the selection → one row per part

A *selection* says which rows and labels a run sees, and nothing else differs: the full
split; a K-shot draw (`few_shot`); the base half of the classes, evaluated on base and on
novel test images (`base_to_novel`); the group labels and then the classes
(`hierarchical`). Each is a selection of the dataset's rows (and of the frozen features the
cache holds for them), so no image is encoded twice. The runner takes a *task*
(`medkit.tasks`) that scores the logits and names the metric columns; rows carry their
own fields (`medkit.runs`). Every run keeps its history (`histories/`) and the method's
trained parameters (`checkpoints/`) in the run folder.

Resume: training checkpoints into the run folder (`train_state/<run>/last.pt`, removed once
the run is kept), each carrying a fingerprint of the method, its configuration, seed,
dataset identity, training rows and backbone. Running a notebook again in the same run
folder (`python -m medkit workbook --resume`) restores every finished run from
`checkpoints/` (a fingerprint mismatch is an error), continues the interrupted one from its
last epoch, and appends no row to results.csv twice (`recorded.txt` lists the rows written).

Why one module: build, train, restore, evaluate, record and the selections they run on are
one lifecycle over one run folder; split apart, each half would need the other's internals.
"""
from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from medkit import distributed
from medkit.backbones import BackboneAdapter
from medkit.config import TrainConfig
from medkit.data import Dataset, LabelSpace
from medkit.features import CachedFeatures, FeatureCache, adapter_encoder, module_digest
from medkit.ledger import RowLedger, SharedRuns, keep_trained, resource_digest, restore_trained
from medkit.methods import Ref, get_spec, options_json, setting_id
from medkit.methods.base import MethodBase
from medkit.profiles import Profile, get_profile
from medkit.protocols import (SEEDS, SHOTS, base_novel_classes, few_shot, group_label_space, relabel_to_groups,
                              restrict, save_indices, spread, subsample_per_class)
from medkit.runs import Run, json_safe, sanitise
from medkit.selection import EvalPart, Part, Selection, step_budget
from medkit.tasks import SINGLE_LABEL, Task
from medkit.train import fit, predict, seed_everything


@dataclass(frozen=True)
class Setting:
    """One row of a table: a registered method, its options and training overrides.
    `shots` narrows the K of a few-shot grid this setting runs at (None: every K)."""

    method: str
    variant: str
    options: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    shots: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        get_spec(self.method).make_options(**self.options)  # unknown or ill-typed options fail here, not mid-grid

    @cached_property
    def full_options(self) -> dict[str, Any]:
        return get_spec(self.method).full_options(self.options)

    @cached_property
    def options_json(self) -> str:
        return options_json(self.full_options)

    @cached_property
    def id(self) -> str:
        return setting_id(self.method, self.full_options, self.train)


@dataclass
class Outcome:
    """What one setting × seed × selection produced."""

    setting: Setting
    seed: int | None
    shots: int | None
    rows: list[dict]
    history: pd.DataFrame | None
    method: nn.Module
    outputs: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]  # (split, classes) → (logits, labels)

    @property
    def row(self) -> dict:
        """The test row (for base-to-novel: the base classes')."""
        return next((r for r in self.rows if r["split"] == "test"), self.rows[-1])

    def _test_output(self) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.row
        if row.get("train_dataset"):  # a multi-label part (one output for its all / seen / unseen rows)
            return self.outputs[(f"{row['dataset']}:{row['split']}", "all")]
        return self.outputs[(row["split"], row["classes"])]

    @property
    def test_logits(self) -> torch.Tensor:
        return self._test_output()[0]

    @property
    def test_labels(self) -> torch.Tensor:
        return self._test_output()[1]

    def output(self, dataset: str, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, targets) of a multi-label run on one evaluation dataset."""
        return self.outputs[(f"{dataset}:{split}", "all")]


def _overrides(method: nn.Module | type, hook: str) -> bool:
    """Whether a method (class or instance) has its own lifecycle hook, not MethodBase's no-op."""
    owner = method if isinstance(method, type) else type(method)
    return getattr(owner, hook) is not getattr(MethodBase, hook)


def inherit_from_groups(stage2: nn.Module, stage1: nn.Module, class_to_group: Sequence[int]) -> None:
    """Stage 2 starts from stage 1: class-indexed parameters (class-specific context) are
    copied from each class's group; every other parameter is copied as is."""
    src = stage1.trainable_state()
    dst = dict(stage2.named_parameters())
    indexed = stage2.class_indexed_parameters()
    index = torch.as_tensor(list(class_to_group))
    with torch.no_grad():
        for name, value in src.items():
            if name in indexed:
                dst[name].copy_(value[index])
            elif dst[name].shape == value.shape:
                dst[name].copy_(value)
            else:
                raise ValueError(f"{name}: stage-1 shape {tuple(value.shape)} cannot seed stage 2 {tuple(dst[name].shape)}")


class ColumnMap(nn.Module):
    """A multi-label method trained on one label space, scoring another through the synonym
    match: each seen finding reads the score of its training finding; unseen ones are NaN
    (no score, so the task gives their subsets no row). For methods tied to their training
    findings (a probe, class-specific contexts)."""

    def __init__(self, method: nn.Module, target: LabelSpace, trained_on: LabelSpace) -> None:
        super().__init__()
        self.method = method
        self.uses_cached_features = method.uses_cached_features
        self.eval_in_one_batch = getattr(method, "eval_in_one_batch", False)
        self.index = [trained_on.index(target.train_name[c]) if c in (target.seen or ()) else -1
                      for c in target.classnames]

    def image_encoder(self):
        return self.method.image_encoder()

    @property
    def adapter(self):
        return self.method.adapter

    def precompute_text(self) -> torch.Tensor | None:
        return self.method.precompute_text()

    def forward(self, x: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.method(x, text_features=text_features)
        index = torch.as_tensor([max(i, 0) for i in self.index], device=scores.device)
        out = scores[:, index]
        out[:, torch.as_tensor(self.index, device=scores.device) < 0] = float("nan")
        return out


def source_digest(cls: type) -> str:
    """Digest of the medkit source files a method class is defined by (its own and its medkit
    bases') and of the training loop: a shared run trained before an edit to either is not
    restored after it."""
    import importlib
    import inspect

    files = {inspect.getsourcefile(c) for c in cls.__mro__ if c.__module__.startswith("medkit.")}
    files.add(inspect.getsourcefile(importlib.import_module("medkit.train")))
    h = hashlib.blake2b(digest_size=16)
    for f in sorted(f for f in files if f):
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def _relabelled(split, space: LabelSpace):
    """The split under a matched label space (same samples and targets, `seen` filled in)."""
    from medkit.data import Split

    return Split(split.name, split.samples, space, dict(split.meta))


class Experiment:
    """One dataset on one backbone under one profile and task: any number of runs."""

    def __init__(self, run: Run | None, dataset: Dataset, adapter: BackboneAdapter | None, profile: Profile | str,
                 cache: FeatureCache | None = None, resources: Mapping[str, Any] | None = None,
                 task: Task = SINGLE_LABEL, data_root: str = "data", views: int = 8,
                 log: Callable[[str], None] = print, shared: SharedRuns | None = None) -> None:
        self.run, self.dataset, self.adapter, self.task = run, dataset, adapter, task
        self.shared = shared  # trained runs other notebooks may already have (None: train here)
        self.profile = get_profile(profile)
        self.cache = cache or FeatureCache.default()
        self.resources = {"descriptions": dataset.descriptions, "data_root": data_root, **(resources or {})}
        self.views, self.log = views, log
        self._memo: dict[tuple, tuple] = {}  # data-free runs: (metrics, logits, labels, eval_s, (method, scorer))
        self.ledger = RowLedger(run)  # rows of this run folder already in results.csv
        if run is not None:
            if dataset.meta.get("derived_split") is not None:  # the split this run used: reuse it, cite it
                path = run.path / "splits" / f"split_{sanitise(dataset.id)}.json"
                if not (path.is_file() or path.with_suffix(".csv").is_file()):  # multi-label splits are a CSV
                    dataset.save_split(path)

    # ------------------------------------------------------------------ features
    @cached_property
    def features(self) -> dict[str, CachedFeatures]:
        """The frozen tower's features of every split, and `train_views` (augmented)."""
        enc = adapter_encoder(self.adapter)
        out = {name: self.cache.get(enc, split) for name, split in self.dataset.splits.items()
               if name in ("train", "val", "test")}
        if self.views:
            out["train_views"] = self.cache.get(enc, self.dataset.splits["train"], self.views)
        return out

    def _whole(self, name: str) -> Part:
        return Part(self.dataset.splits[name], self.features[name])

    # ------------------------------------------------------------------ one run
    def build(self, setting: Setting, classnames: Sequence[str], seed: int | None) -> nn.Module:
        options = {}
        for key, value in setting.full_options.items():
            if isinstance(value, Ref):
                resources = {**self.resources, "seed": seed}
                if resources.get(value.name) is None:
                    raise ValueError(f"{setting.method}: option {key!r} needs the run's {value.name!r}, which it has "
                                     f"not got (resources: {sorted(k for k, v in resources.items() if v is not None)})")
                value = resources[value.name]
            options[key] = value
        return get_spec(setting.method).cls(self.adapter, list(classnames), **options)

    def config(self, setting: Setting, seed: int, sel: Selection, validate: bool = False) -> TrainConfig:
        """The reference's training defaults, the profile's and the method's budget, the
        setting's overrides; few-shot runs get the step budget. `validate=True` keeps the
        per-epoch validation a few-shot run otherwise skips (a search prunes on it)."""
        spec = get_spec(setting.method)
        budget = spec.budget(self.profile.name, setting.options)
        cfg = spec.training_defaults(setting.options).with_(
            **{**self.profile.default_train, **budget.train, "seed": seed, **setting.train})
        if sel.family != "few_shot":
            return cfg
        if sel.shots in budget.epochs_by_shots and "epochs" not in setting.train:
            cfg = cfg.with_(epochs=budget.epochs_by_shots[sel.shots])
        if validate:
            cfg = cfg.with_(validate=True)
        elif cfg.select == "last" and cfg.patience is None:
            # the references report the last epoch: validating every epoch would only cost
            # time (a text pass per validation image for image-conditioned methods)
            cfg = cfg.with_(validate=False)
        steps = self.profile.steps_at(sel.shots)
        if steps is None:  # the references' epochs (the full and paper profiles)
            return cfg
        return step_budget(cfg, len(sel.train.split), budget.steps or steps)

    def _cap(self, setting: Setting, sel: Selection, part: Part) -> Part:
        n = get_spec(setting.method).budget(self.profile.name, setting.options).eval_images.get(sel.family)
        if n is None:
            return part
        if sel.family == "full" and not part.split.multilabel:
            return Part(subsample_per_class(part.split, max(1, round(n / sel.cap_classes))), None)
        rows = spread(len(part.split), n)
        return part.rows(rows) if len(rows) < len(part.split) else part

    @staticmethod
    def _inputs(method: nn.Module, part: Part) -> Any:
        return part.features if (method.uses_cached_features and part.features is not None) else part.split

    def _frozen(self, method: nn.Module, part: Part) -> tuple[torch.Tensor, torch.Tensor]:
        feats = part.features if part.features is not None else self.cache.get(method.image_encoder(), part.split)
        return feats.features, feats.labels

    def _tag(self, setting: Setting, sel: Selection, seed: int | None, suffix: str = "") -> str:
        k = f"_K{sel.shots}" if sel.shots is not None else ""
        return f"{sanitise(self.dataset.key)}/{setting.id}_{sel.protocol}{suffix}{k}_s{seed}"

    def fingerprint(self, setting: Setting, sel: Selection, seed: int | None) -> dict[str, Any]:
        """What a checkpoint of this run belongs to (fit adds the method's shapes and config)."""
        rows = hashlib.blake2b(digest_size=8)
        for part in (sel.train, sel.val):
            rows.update("\n".join(f"{s.path}|{s.array_index}|{s.label}|{s.targets}" for s in part.split.samples).encode()
                        + b"#")
        return json_safe({"setting": setting.id, "seed": seed, "dataset": self.dataset.key, "protocol": sel.protocol,
                          "shots": sel.shots, "rows": rows.hexdigest(), "backbone": getattr(self.adapter, "name", None)})

    def _shared_identity(self, method: nn.Module, setting: Setting, sel: Selection, cfg: TrainConfig,
                         fp: dict) -> dict[str, Any] | None:
        """Everything a trained run depends on beyond this run folder's fingerprint — the
        resolved training config, the classes, the augmented views, the resources it is built
        with, the source of its method and of the loop — or None where it cannot be shared
        (no store, a run pruned by callbacks, a resource that does not pickle)."""
        if self.shared is None or cfg.validate:  # validating runs are a search's: its trials are its own
            return None
        resources = {}
        for key, value in setting.full_options.items():
            if isinstance(value, Ref):
                if value.name == "seed":
                    continue
                digest = resource_digest(self.resources.get(value.name))
                if digest is None:
                    return None
                resources[key] = digest
        # the frozen weights by content (a name can be rebuilt or reloaded from another folder) and
        # the start of the trained parameters (the seed's initialisation, a prepared cache)
        weights = module_digest(self.adapter) if isinstance(self.adapter, nn.Module) else module_digest(method)
        start = hashlib.blake2b(digest_size=16)
        for name, t in sorted(method.trainable_state().items()):
            start.update(name.encode() + t.detach().cpu().contiguous().float().numpy().tobytes())
        return json_safe({**fp, "config": asdict(cfg), "classes": list(sel.labels.classnames), "task": self.task.name,
                          "views": self.views if cfg.augment else 0, "resources": resources, "weights": weights,
                          "start": start.hexdigest(), "source": source_digest(type(method))})

    def _restore(self, method: nn.Module, tag: str, wanted: dict) -> pd.DataFrame | None:
        """A run this folder already finished: its trained state and history, or None."""
        found = restore_trained(self.run, tag, wanted, drop=("method", "variant", "seed"))
        if found is None:
            return None
        saved, history = found
        method.load_trainable_state(saved["state"])
        method.eval()
        return history

    def train(self, method: nn.Module, setting: Setting, seed: int | None, sel: Selection,
              progress: bool | str = False, tag: str | None = None, fp: dict | None = None,
              callbacks: Sequence[Callable[[dict, nn.Module], bool | None]] = (),
              share: bool = True) -> pd.DataFrame | None:
        """prepare → fit (if the method trains by gradient; restored when this run folder
        already finished it, resumed when it was interrupted, or found in `shared`) → finish.
        `callbacks` see every epoch's history row, validation included (a search's pruner);
        `share=False` for a run that does not start from the built method (an `init`)."""
        if _overrides(method, "prepare"):
            method.prepare(self._frozen(method, sel.train), self._frozen(method, sel.val))
        history = None
        if method.trains_by_gradient:
            cfg = self.config(setting, seed, sel, validate=bool(callbacks))
            tag = tag or self._tag(setting, sel, seed)
            fp = fp or self.fingerprint(setting, sel, seed)
            history = self._restore(method, tag, fp)
            identity = self._shared_identity(method, setting, sel, cfg, fp) if share and history is None else None
            if identity is not None and (found := self.shared.get(identity)) is not None:
                state, history = found
                method.load_trainable_state(state)
                method.eval()
                self.log(f"{setting.method} · {setting.variant} · seed {seed}: trained before "
                         f"({self.shared.path(identity).name} in {self.shared.root})")
            if history is None:
                train = self._inputs(method, sel.train)
                if cfg.augment and sel.train_views is not None and method.uses_cached_features:
                    train = sel.train_views
                val = self._cap(setting, sel, sel.val) if sel.family == "full" else sel.val
                state_dir = self.run.path / "train_state" / tag if self.run is not None else None
                history = fit(method, train, self._inputs(method, val), cfg, progress=progress, cache=self.cache,
                              desc=f"{setting.method} {setting.variant} s{seed}", checkpoint_dir=state_dir,
                              resume=state_dir is not None, fingerprint=fp, callbacks=callbacks)
                if identity is not None:
                    self.shared.put(identity, method.trainable_state(), history)
        if _overrides(method, "finish"):
            method.finish(self._frozen(method, sel.val))
        return history

    def evaluate(self, method: nn.Module, setting: Setting, sel: Selection, part: EvalPart,
                 ci_resamples: int = 0) -> tuple[list[tuple[str, dict]], torch.Tensor, torch.Tensor, float]:
        """Scores of one part: a (classes, metrics) pair per row the task makes of it (one,
        or a multi-label part's all / seen / unseen), its logits and labels, and the time."""
        t = time.time()
        logits, y = predict(method, self._inputs(method, self._cap(setting, sel, part.data)), cache=self.cache)
        calibration = None
        if part.calibration is not None:
            calibration = predict(method, self._inputs(method, self._cap(setting, sel, part.calibration)),
                                  cache=self.cache)
        scored = []
        for classes, columns in self.task.subsets(part.labels):
            metrics = self.task.metrics(logits, y, part.labels, ci_resamples=ci_resamples, calibration=calibration,
                                        columns=columns)
            if metrics:
                scored.append((classes or part.classes, metrics))
        return scored, logits, y, time.time() - t

    def transfer(self, setting: Setting, trained: nn.Module, labels: LabelSpace | Sequence[str],
                 seed: int | None) -> nn.Module:
        """The trained method on other classes: rebuilt for them with its trained parameters
        loaded — which only works when none of them is indexed by class. A multi-label
        method tied to its training findings scores an evaluation dataset's seen findings
        through the synonym match (`ColumnMap`) and has no score for unseen ones."""
        labels = labels if isinstance(labels, LabelSpace) else LabelSpace(tuple(labels))
        fresh = self.build(setting, labels.classnames, seed)
        if not get_spec(setting.method).novel_classes or fresh.class_indexed_parameters():
            if getattr(labels, "seen", None) is not None:
                return ColumnMap(trained, labels, self.dataset.labels).eval()
            raise ValueError(f"{setting.method} · {setting.variant}: its trained parameters are tied to the base "
                             "classes; base-to-novel needs a class-agnostic method (shared context, meta-net, …)")
        state = trained.trainable_state()
        if state:
            fresh.load_trainable_state(state)
        return fresh.eval()

    def run_one(self, setting: Setting, seed: int | None, sel: Selection, progress: bool | str = False,
                ci_resamples: int = 0, init: Callable[[nn.Module], None] | None = None, variant: str | None = None,
                log: bool = True) -> Outcome:
        """One setting × seed on one selection; its rows go to results.csv."""
        keys = [(setting.id, part.dataset, part.name, part.classes, sel.protocol, ci_resamples) for part in sel.evals]
        tag = self._tag(setting, sel, seed, "_groups" if sel.evals and sel.evals[0].classes == "groups" else "")
        # a method that neither prepares nor trains gives the same logits whatever the training
        # rows: it is built and evaluated once per evaluation set and its rows repeated (zero-shot
        # in a K × seed grid)
        cls = get_spec(setting.method).cls
        data_free = init is None and not (cls.trains_by_gradient or _overrides(cls, "prepare") or _overrides(cls, "finish"))
        fp = None if data_free else self.fingerprint(setting, sel, seed)  # computed once: train and keep use it
        if data_free and all(k in self._memo for k in keys):
            method, history, train_s = self._memo[keys[0]][-1][0], None, 0.0
            scored = [self._memo[k][-1][1] for k in keys]
        else:
            if seed is not None:
                seed_everything(seed)
            t = time.time()
            method = self.build(setting, sel.labels.classnames, seed)
            if init is not None:
                init(method)
            history = None if data_free else self.train(method, setting, seed, sel, progress, tag, fp, share=init is None)
            train_s = 0.0 if data_free else time.time() - t
            # methods for other label sets (novel classes) are built before any evaluation, so the
            # global RNG they are built under does not depend on what was evaluated first
            scored = [method if part.labels is sel.labels else self.transfer(setting, method, part.labels, seed)
                      for part in sel.evals]
        rows, outputs = [], {}
        for part, scorer, key in zip(sel.evals, scored, keys):
            if data_free and key in self._memo:
                per_subset, logits, y, eval_s, _ = self._memo[key]
            else:
                per_subset, logits, y, eval_s = self.evaluate(scorer, setting, sel, part, ci_resamples)
                if data_free:
                    self._memo[key] = (per_subset, logits, y, eval_s, (method, scorer))
            outputs[part.key] = (logits, y)
            trained_here = scorer is method or isinstance(scorer, ColumnMap)
            for classes, metrics in per_subset:  # transferred: trained elsewhere
                rows.append(self._row(setting, variant or setting.variant, sel, part, seed, metrics,
                                      train_s if trained_here else 0.0, eval_s, tag, classes))
        self._keep(method, history, setting, sel, seed, variant, tag, fp)
        if log:
            self.log(f"{self.dataset.key} · {sel.protocol}{f' K={sel.shots}' if sel.shots else ''} · {setting.method} · "
                     f"{variant or setting.variant} · seed {seed}: "
                     + ", ".join(f"{r['dataset'] + ':' if r.get('train_dataset') else ''}{r['split']}/{r['classes']} "
                                 f"{self.task.primary} {r[self.task.primary]:.3f}" for r in rows)
                     + f" · {train_s:.1f}s")
        return Outcome(setting, seed, sel.shots, rows, history, method, outputs)

    def _row(self, setting: Setting, variant: str, sel: Selection, part: EvalPart, seed: int | None, metrics: dict,
             train_s: float, eval_s: float, tag: str = "", classes: str | None = None) -> dict:
        backbone = getattr(self.adapter, "name", None) or setting.full_options.get("weights", "")
        classes = classes or part.classes
        row = {"dataset": part.dataset or self.dataset.id, "domain": self.dataset.domain or "", "split": part.name,
               "classes": classes, "train_dataset": self.dataset.id if part.dataset else "", "protocol": sel.protocol, "task": self.task.name, "method": setting.method,
               "variant": variant, "setting_id": setting.id, "options": setting.options_json, "backbone": backbone,
               "shots": sel.shots, "seed": seed, **{k: metrics.get(k) for k in self.task.columns},
               "train_s": round(train_s, 2), "eval_s": round(eval_s, 2)}
        if classes == "groups" and "group_acc" in row:
            row["group_acc"] = row["acc"]  # the labels are the groups: group accuracy is accuracy
        where = part.name if part.dataset is None else f"{part.dataset}:{part.name}"
        self.ledger.add(f"{tag}|{where}|{classes}|{variant}", row)  # a resumed run appends no row twice
        return {**row, **{k: v for k, v in metrics.items() if k not in row}}

    def _keep(self, method: nn.Module, history: pd.DataFrame | None, setting: Setting, sel: Selection,
              seed: int | None, variant: str | None, tag: str, fp: dict | None) -> None:
        """The run folder keeps every run's history and the method's trained parameters."""
        if self.run is None:
            return
        state = method.trainable_state()
        keeps_state = state and (method.trains_by_gradient or _overrides(method, "prepare"))
        keep_trained(self.run, tag, history, state if keeps_state else None, fp,
                     {"method": setting.method, "variant": variant or setting.variant, "seed": seed},
                     setting=setting.id, method=setting.method, options=setting.options_json, seed=seed)
        if distributed.is_main():  # the one writer of the run folder
            shutil.rmtree(self.run.path / "train_state" / tag, ignore_errors=True)  # kept: no resume point needed

    # ------------------------------------------------------------------ selections
    def full_selection(self, eval_splits: Sequence[str] = ("val", "test"), protocol: str = "full") -> Selection:
        d = self.dataset
        parts = [EvalPart(s, "all", d.labels, Part(d.splits[s])) for s in eval_splits]
        val = Part(d.splits["val"]) if "val" in d.splits else Part(d.splits["train"])
        return Selection(protocol, "full", d.labels, Part(d.splits["train"]) if "train" in d.splits else val, val, parts,
                         cap_classes=d.labels.n_classes)

    def few_shot_selection(self, k: int, seed: int) -> Selection:
        splits, idx = few_shot(self.dataset.splits, k, seed)
        if self.run is not None:
            save_indices(self.run.path / "fewshot_indices" / f"{sanitise(self.dataset.key)}_K{k}_s{seed}.json", idx,
                         {"dataset": self.dataset.id, "domain": self.dataset.domain, "shots": k, "seed": seed})
        f = self.features
        views = f["train_views"].take(idx["train"]) if "train_views" in f else None
        test = EvalPart("test", "all", self.dataset.labels, self._whole("test"))
        return Selection("few_shot", "few_shot", self.dataset.labels, self._whole("train").rows(idx["train"]),
                         self._whole("val").rows(idx["val"]), [test], k, views)

    def base_to_novel_selection(self, k: int, seed: int) -> Selection:
        base, novel = base_novel_classes(self.dataset.labels)
        halves = {"base": base, "novel": novel}

        def half(split: str, name: str) -> Part:
            labels = self.features[split].labels.numpy()
            rows = np.flatnonzero(np.isin(labels, halves[name]))  # restrict keeps the split's order
            relabel = {c: i for i, c in enumerate(halves[name])}
            return self._whole(split).rows(rows, [relabel[int(y)] for y in labels[rows]],
                                           restrict(self.dataset.splits[split], halves[name]))

        train, val = half("train", "base"), half("val", "base")
        _, idx = few_shot({"train": train.split, "val": val.split}, k, seed)
        views = None
        if "train_views" in self.features:
            views = Part(train.split, self.features["train_views"].take(
                np.flatnonzero(np.isin(self.features["train"].labels.numpy(), base)), train.features.labels)
            ).rows(idx["train"]).features
        evals = [EvalPart("test", h, p.split.labels, p) for h, p in (("base", half("test", "base")),
                                                                     ("novel", half("test", "novel")))]
        return Selection("base_to_novel", "few_shot", train.split.labels, train.rows(idx["train"]),
                         val.rows(idx["val"]), evals, k, views)

    def multilabel_selection(self, eval_datasets: Sequence[Dataset] = (), match: str = "synonyms") -> Selection:
        """Train on this dataset's train split (validate on its val); score its test split
        and every evaluation dataset's test split, whose findings are matched to the training
        ones (`medkit.data.findings.match_label_spaces`: by synonyms, or `match="exact"`, the
        PsPG code's lower-cased string match) into seen and unseen. Each part's F1 / MCC
        thresholds are chosen on that dataset's own validation split."""
        from medkit.data.findings import match_label_spaces

        d = self.dataset
        if not d.labels.multilabel:
            raise ValueError(f"{d.name} is single-label: the multi-label selection needs a multi-label dataset")
        own = EvalPart("test", "all", d.labels, Part(d.splits["test"]), d.id, Part(d.splits["val"]))
        parts = [own]
        for other in eval_datasets:
            space = match_label_spaces(d.labels, other.labels, how=match)
            parts.append(EvalPart("test", "all", space, Part(_relabelled(other.splits["test"], space)), other.id,
                                  Part(_relabelled(other.splits["val"], space)) if "val" in other.splits else None))
        return Selection("multilabel", "full", d.labels, Part(d.splits["train"]), Part(d.splits["val"]), parts,
                         cap_classes=d.labels.n_classes)

    def group_selection(self, eval_splits: Sequence[str] = ("val", "test")) -> Selection:
        d = self.dataset
        if not d.labels.has_groups:
            raise ValueError(f"{d.name} has no groups: hierarchical prompts need a class → group map")
        g = {k: relabel_to_groups(v) for k, v in d.splits.items()}
        space = group_label_space(d.labels)
        return Selection("hierarchical", "full", space, Part(g["train"]), Part(g["val"]),
                         [EvalPart(s, "groups", space, Part(g[s])) for s in eval_splits], cap_classes=d.labels.n_classes)

    # ------------------------------------------------------------------ grids
    def multilabel(self, settings: Sequence[Setting], seeds: Sequence[int | None], eval_datasets: Sequence[Dataset] = (),
                   match: str = "synonyms", progress: bool | str = False) -> list[Outcome]:
        """Every setting × seed trained on this multi-label dataset, scored on its test split and
        on every evaluation dataset (rows per dataset × all / seen / unseen findings)."""
        sel = self.multilabel_selection(eval_datasets, match)
        return [self.run_one(s, seed, sel, progress) for s in settings for seed in seeds]

    def full(self, settings: Sequence[Setting], seeds: Sequence[int | None], eval_splits: Sequence[str] = ("val", "test"),
             progress: bool | str = False, ci_resamples: int = 0) -> list[Outcome]:
        """Every setting × seed trained on the full training split."""
        sel = self.full_selection(eval_splits)
        return [self.run_one(s, seed, sel, progress, ci_resamples) for s in settings for seed in seeds]

    def few_shot(self, settings: Sequence[Setting], shots: Sequence[int] = SHOTS, seeds: Sequence[int] = SEEDS,
                 progress: bool | str = False) -> list[Outcome]:
        """Every setting × K × seed (a setting's own `shots` narrows K)."""
        sels = {(k, seed): self.few_shot_selection(k, seed) for k in shots for seed in seeds}
        return [self.run_one(s, seed, sels[k, seed], progress) for s in settings
                for k in shots if s.shots is None or k in s.shots for seed in seeds]

    def base_to_novel(self, settings: Sequence[Setting], shots: int = 16, seeds: Sequence[int] = SEEDS,
                      progress: bool | str = False) -> list[Outcome]:
        """Train on the base half (K shots), score on base and on novel test images."""
        out = []
        for seed in seeds:
            sel = self.base_to_novel_selection(shots, seed)
            out += [self.run_one(s, seed, sel, progress) for s in settings]
        return out

    def hierarchical(self, setting: Setting, seeds: Sequence[int], stage1_train: Mapping[str, Any] | None = None,
                     progress: bool | str = False) -> list[tuple[Outcome, Outcome]]:
        """Stage 1 learns group-level prompts (class-specific over groups when the setting is
        class-specific, else one shared prompt) on group labels; stage 2 starts every class's
        prompt from its group's and trains on classes. Rows: protocol `hierarchical`,
        classes `groups` (stage 1) and `all` (stage 2)."""
        groups, classes = self.group_selection(), self.full_selection(protocol="hierarchical")
        c2g = self.dataset.labels.class_to_group_index()
        stage1_setting = Setting(setting.method, setting.variant, setting.options,
                                 {**setting.train, **(stage1_train or {})})
        out = []
        for seed in seeds:
            s1 = self.run_one(stage1_setting, seed, groups, progress,
                              variant=f"hier. stage 1 (groups) · {setting.variant}")
            s2 = self.run_one(setting, seed, classes, progress, init=lambda m: inherit_from_groups(m, s1.method, c2g),
                              variant=f"hier. · {setting.variant}")
            out.append((s1, s2))
        return out
