"""What one run sees: a selection of the dataset's rows and labels, and the policies of its
protocol family ("full": the full split; "few_shot": K-shot draws and base-to-novel)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from medkit.config import TrainConfig
from medkit.data import LabelSpace, Split
from medkit.features import CachedFeatures
from medkit.protocols import take


@dataclass
class Part:
    """Data a selection trains on or is scored on: images, and their frozen features when
    the selection is a row subset of the cached full split."""

    split: Split
    features: CachedFeatures | None = None

    def rows(self, indices: Sequence[int], labels: Sequence[int] | None = None,
             split: Split | None = None) -> "Part":
        feats = self.features.take(indices, labels) if self.features is not None else None
        return Part(split if split is not None else take(self.split, indices), feats)


@dataclass
class EvalPart:
    """What a run is scored on. `dataset`: the id of another dataset this part comes from
    (multi-label transfer to evaluation datasets; None: the run's own dataset).
    `calibration`: validation data of the same label space, for metrics whose thresholds are
    chosen on validation (multi-label F1 / MCC)."""

    name: str  # train | val | test
    classes: str  # all | base | novel | groups
    labels: LabelSpace
    data: Part
    dataset: str | None = None
    calibration: Part | None = None

    @property
    def key(self) -> tuple[str, str]:
        """Where the part's (logits, labels) sit in `Outcome.outputs`."""
        return (self.name, self.classes) if self.dataset is None else (f"{self.dataset}:{self.name}", self.classes)


@dataclass
class Selection:
    """What one run sees: its label space, training and validation data, what it is scored on.

    `protocol` is a row field. `family` picks the policies: "full" validates every epoch as
    the config says and caps evaluations per class (and the validation it trains with);
    "few_shot" turns epochs into the profile's step budget, validates only where the config
    needs it (the references report the last epoch) and caps evaluations by spreading."""

    protocol: str
    family: str
    labels: LabelSpace
    train: Part
    val: Part
    evals: list[EvalPart]
    shots: int | None = None
    train_views: CachedFeatures | None = None
    cap_classes: int = 1  # the dataset's class count: evaluation caps are per class of the dataset


def step_budget(cfg: TrainConfig, n_train: int, steps: int | None) -> TrainConfig:
    """With `steps`, the epochs that give about that many optimizer steps for `n_train`
    images (few-shot sets span 12 to 720 images: a fixed epoch count would give 1-shot
    runs one step). None keeps the config's epochs (the references' protocol)."""
    if steps is None:
        return cfg
    batch = min(cfg.batch_size, n_train)
    per_epoch = -(-n_train // batch)
    if cfg.max_steps_per_epoch:
        per_epoch = min(per_epoch, cfg.max_steps_per_epoch)
    if per_epoch >= steps:  # one partial epoch (a random subset of the images, shuffled per seed)
        return cfg.with_(batch_size=batch, epochs=1, max_steps_per_epoch=steps)
    return cfg.with_(batch_size=batch, epochs=-(-steps // per_epoch))
