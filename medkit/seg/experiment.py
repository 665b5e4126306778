"""The segmentation runner: a strategy setting × dataset × seed → one results row.

Rows are the segmentation task's (`medkit.tasks.SEGMENTATION`: Dice, IoU, dataset-level IoU,
HD95) with the prompt key the run was conditioned on (`prompt`). As in the classification
runner, every trained run keeps its history (`histories/`) and its trained parameters
(`checkpoints/`) in the run folder; running the notebook again in the same folder restores
them (a checkpoint of another configuration under the same name is an error) and appends no
row twice (`recorded.txt`).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

from medkit.features import FeatureCache
from medkit.ledger import RowLedger, keep_trained, restore_trained
from medkit.methods.registry import options_json, setting_id
from medkit.runs import Run, json_safe, sanitise
from medkit.tasks import SEGMENTATION

from .data import SegData
from .model import SegmentationModel
from .strategies import SEG_STRATEGIES, SegStrategy, build_strategy
from .train import SegTrainConfig, fit_seg, predict_masks, seg_budget


@dataclass(frozen=True)
class SegSetting:
    """One row of a table: a registered strategy, its options, training overrides and the
    prompt key it is conditioned on (None: the experiment's)."""

    strategy: str
    variant: str
    options: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    prompt: str | None = None

    def __post_init__(self) -> None:
        if self.strategy not in SEG_STRATEGIES:
            raise ValueError(f"unknown segmentation strategy {self.strategy!r}; choose from {sorted(SEG_STRATEGIES)}")
        SEG_STRATEGIES[self.strategy].check(self.options)
        unknown = sorted(set(self.train) - set(SegTrainConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{self.strategy}: unknown training overrides {unknown}")

    @property
    def trains(self) -> bool:
        return SEG_STRATEGIES[self.strategy].kind != "zeroshot"

    @cached_property
    def id(self) -> str:
        return setting_id(self.strategy, self.options, {**self.train, "prompt": self.prompt})


@dataclass
class SegOutcome:
    setting: SegSetting
    dataset: str
    seed: int | None
    row: dict
    history: pd.DataFrame | None
    strategy: SegStrategy
    logits: torch.Tensor  # test-split mask logits
    prompt: str


class SegExperiment:
    """Datasets (name → {train, val, test}) on one segmentation model."""

    def __init__(self, run: Run | None, model: SegmentationModel, datasets: Mapping[str, Mapping[str, SegData]],
                 train: SegTrainConfig = SegTrainConfig(), cache: FeatureCache | None = None,
                 progress: bool | str = False, log: Callable[[str], None] = print, profile: str | None = None,
                 overrides: Mapping[str, Any] | None = None) -> None:
        """A run's config: `train`, then the `profile`'s budget for the strategy's kind
        (`seg_budget`), then `overrides` (a notebook's epochs / lr parameters), then the
        setting's own."""
        self.run, self.model, self.datasets, self.defaults = run, model, dict(datasets), train
        self.profile, self.overrides = profile, dict(overrides or {})
        self.cache = cache or FeatureCache.default()
        self.progress, self.log = progress, log
        self.ledger = RowLedger(run)

    def prompts(self, dataset: str, key: str) -> list[str]:
        """Every phrasing of `key` in the dataset's splits, once each (what a strategy encodes)."""
        return list(dict.fromkeys(t for split in self.datasets[dataset].values() for t in split.prompt_texts(key)))

    def config(self, setting: SegSetting, seed: int | None) -> SegTrainConfig:
        budget = seg_budget(self.profile, SEG_STRATEGIES[setting.strategy].kind) if self.profile else {}
        cfg = self.defaults.with_(**{**budget, **self.overrides, **setting.train})
        return cfg.with_(seed=seed if seed is not None else cfg.seed, prompt=setting.prompt or cfg.prompt)

    def _fingerprint(self, setting: SegSetting, dataset: str, seed: int | None, cfg: SegTrainConfig) -> dict:
        rows = hashlib.blake2b(digest_size=8)
        for split in ("train", "val"):
            rows.update("|".join(str(s.image) for s in self.datasets[dataset][split].samples).encode() + b"#")
        return json_safe({"setting": setting.id, "seed": seed, "dataset": dataset, "rows": rows.hexdigest(),
                          "model": getattr(self.model, "source", ""), "config": cfg.as_dict()})

    def run_one(self, setting: SegSetting, dataset: str, seed: int | None = None) -> SegOutcome:
        cfg = self.config(setting, seed)
        data = self.datasets[dataset]
        torch.manual_seed(cfg.seed)
        strategy = build_strategy(setting.strategy, self.model, self.prompts(dataset, cfg.prompt),
                                  **setting.options).to(cfg.device)
        tag = f"{sanitise(dataset)}/{setting.id}_s{seed}"
        t0, history = time.time(), None
        if setting.trains:
            fp = self._fingerprint(setting, dataset, seed, cfg)
            history = self._restore(strategy, tag, fp)
            if history is None:
                history = fit_seg(strategy, data["train"], data["val"], cfg, self.cache, self.progress,
                                  desc=f"{setting.strategy} {dataset} s{seed}")
                self._keep(strategy, history, setting, tag, fp, seed)
        train_s, t1 = time.time() - t0, time.time()
        logits = predict_masks(strategy, data["test"], cfg.prompt, self.cache, cfg.eval_batch_size,
                               precision=cfg.precision)
        metrics = SEGMENTATION.metrics(logits, data["test"].masks)
        row = self._row(setting, dataset, seed, cfg.prompt, metrics, train_s if setting.trains else 0.0,
                        time.time() - t1, tag)
        self.log(f"{dataset} · {setting.strategy} · {setting.variant} · {cfg.prompt} · seed {seed}: "
                 f"dice {row['dice']:.3f} iou {row['iou']:.3f} · {train_s:.1f}s")
        return SegOutcome(setting, dataset, seed, row, history, strategy, logits, cfg.prompt)

    def grid(self, settings: Sequence[SegSetting], datasets: Sequence[str] | None = None,
             seeds: Sequence[int | None] = (1, 2, 3)) -> list[SegOutcome]:
        """Every setting × dataset × seed (a setting that trains nothing runs once per dataset)."""
        out = []
        for ds in datasets or list(self.datasets):
            for s in settings:
                for seed in (seeds if s.trains else [None]):
                    out.append(self.run_one(s, ds, seed))
        return out

    # ------------------------------------------------------------------ run folder
    def _row(self, setting: SegSetting, dataset: str, seed: int | None, prompt: str, metrics: dict,
             train_s: float, eval_s: float, tag: str) -> dict:
        data = self.datasets[dataset]["test"]
        row = {"dataset": dataset, "domain": data.meta.get("domain", ""), "split": "test", "classes": "",
               "train_dataset": "", "protocol": "segmentation", "task": SEGMENTATION.name,
               "method": setting.strategy, "variant": setting.variant, "setting_id": setting.id,
               "options": options_json(setting.options), "backbone": getattr(self.model, "source", ""),
               "shots": None, "seed": seed, "prompt": prompt, **{k: metrics.get(k) for k in SEGMENTATION.columns},
               "train_s": round(train_s, 2), "eval_s": round(eval_s, 2)}
        self.ledger.add(f"{tag}|{prompt}|{setting.variant}", row)
        return {**row, **{k: v for k, v in metrics.items() if k not in row}}

    def _restore(self, strategy: SegStrategy, tag: str, fp: dict) -> pd.DataFrame | None:
        found = restore_trained(self.run, tag, fp, drop=("method", "variant", "seed"))
        if found is None:
            return None
        strategy.load_trainable_state(found[0]["state"])
        strategy.eval()
        return found[1]

    def _keep(self, strategy: SegStrategy, history: pd.DataFrame, setting: SegSetting, tag: str, fp: dict,
              seed: int | None) -> None:
        keep_trained(self.run, tag, history, strategy.trainable_state(), fp,
                     {"method": setting.strategy, "variant": setting.variant, "seed": seed}, setting=setting.id)
