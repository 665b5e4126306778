"""`TrainConfig`: the settings of one training run. The lowest layer of the experiment code:
method files declare their reference defaults with it, the loop reads it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"  # "sgd" (momentum) or "adamw"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    grad_clip: float | None = None
    amp: bool = True  # reduced precision where `precision` allows it; False: fp32 everywhere
    precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU), "bf16", "fp16" (with loss scaling), "fp32"
    patience: int | None = None  # early stopping: epochs without a better val accuracy
    select: str = "last"  # "last" (the references) or "best" (restore the best val epoch)
    seed: int = 1
    augment: bool = True  # image inputs: the training transform (else the evaluation one)
    device: str = "cpu"
    eval_batch_size: int = 256
    max_steps_per_epoch: int | None = None  # smoke runs: a couple of batches per epoch exercise every path
    validate: bool = True  # evaluate on the validation split after every epoch (needed for patience/best)
    feature_views: int = 8  # cached-feature methods with augment: augmented views cached per image

    def with_(self, **overrides: Any) -> "TrainConfig":
        unknown = sorted(set(overrides) - set(asdict(self)))
        if unknown:
            raise TypeError(f"unknown TrainConfig fields {unknown}; fields: {sorted(asdict(self))}")
        return replace(self, **overrides)
