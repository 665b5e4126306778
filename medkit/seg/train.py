"""Training and evaluating a segmentation strategy: TuneVLSeg's loop.

AdamW (lr 2e-4, weight decay 0), `ReduceLROnPlateau(factor 0.2, patience 5)` on the validation
loss, MONAI's DiceCE (λ 1 / 0.2), the last epoch kept. Each step draws one phrasing of each
image's prompt (MedVLSM's lists); evaluation takes the first. Frozen-tower strategies read
cached activations, so a step runs only the text tower and the decoder.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from medkit.features import FeatureCache
from medkit.precision import autocast, check_finite, resolve
from medkit.train import seed_everything

from .data import SegData, cached_activations
from .metrics import seg_loss
from .strategies import SegStrategy


@dataclass(frozen=True)
class SegTrainConfig:
    epochs: int = 20
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 0.0
    plateau_factor: float = 0.2
    plateau_patience: int = 5
    prompt: str = "p1"  # the prompt key the strategy is conditioned on
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"
    eval_batch_size: int = 64

    def with_(self, **changes: Any) -> "SegTrainConfig":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)


class Inputs:
    """What a strategy reads for a split: its cached activations (frozen tower) or its images,
    and each sample's prompt as an index into the strategy's prompts."""

    def __init__(self, strategy: SegStrategy, data: SegData, cache: FeatureCache | None) -> None:
        self.data, self.strategy = data, strategy
        self.lookup = {p: i for i, p in enumerate(strategy.prompts)}
        self.activations = self.pooled = None
        if strategy.cached:
            self.activations, self.pooled = cached_activations(strategy.model, data, cache or FeatureCache.default())

    def index(self, key: str, rng: random.Random | None) -> torch.Tensor:
        texts = self.data.prompts_for(key, rng)
        missing = sorted({t for t in texts if t not in self.lookup})
        if missing:
            raise KeyError(f"prompts not among the strategy's: {missing[:3]}")
        return torch.as_tensor([self.lookup[t] for t in texts])

    def logits(self, rows: torch.Tensor, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        s = self.strategy
        if self.activations is not None:
            return s(index.to(device), activations=[a[rows].to(device) for a in self.activations],
                     pooled=self.pooled[rows].to(device))
        return s(index.to(device), images=self.data.images[rows].to(device))


@torch.no_grad()
def predict_masks(strategy: SegStrategy, data: SegData, prompt: str, cache: FeatureCache | None = None,
                  batch_size: int = 64, inputs: Inputs | None = None, precision: str = "auto") -> torch.Tensor:
    """Mask logits `[N, S, S]` of a split with each sample's prompt `prompt` (first phrasing)."""
    strategy.eval()
    device = next(strategy.parameters()).device
    inputs = inputs or Inputs(strategy, data, cache)
    index = inputs.index(prompt, None)
    out = []
    with autocast(precision, device):
        for start in range(0, len(data), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(data)))
            out.append(inputs.logits(rows, index[rows], device).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def fit_seg(strategy: SegStrategy, train: SegData, val: SegData | None, cfg: SegTrainConfig,
            cache: FeatureCache | None = None, progress: bool | str = False, desc: str = "",
            callbacks: Sequence[Callable[[dict], None]] = ()) -> pd.DataFrame:
    """Train `strategy` in place; the per-epoch history (train loss, val loss and Dice, lr, s).
    `callbacks` see every epoch's row once it is complete (a search's pruner)."""
    from .metrics import seg_scores

    device = torch.device(cfg.device)
    strategy.to(device)
    seed_everything(cfg.seed)
    params = [p for p in strategy.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{strategy.registry_name} has nothing to train")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.plateau_factor,
                                                         patience=cfg.plateau_patience)
    precision = resolve(cfg.precision, device)
    tr, va = Inputs(strategy, train, cache), Inputs(strategy, val, cache) if val is not None and len(val) else None
    rng, gen = random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    n_steps = -(-len(train) // cfg.batch_size)
    bar = tqdm(total=n_steps * cfg.epochs, desc=desc or strategy.registry_name, disable=progress is not True,
               mininterval=1)
    history, t0, step_no = [], time.time(), 0
    for epoch in range(cfg.epochs):
        strategy.train()
        total = 0.0
        index = tr.index(cfg.prompt, rng)
        for rows in torch.randperm(len(train), generator=gen).split(cfg.batch_size):
            with autocast(precision, device):
                logits = tr.logits(rows, index[rows], device)
            loss = seg_loss(logits.float(), train.masks[rows].to(device))
            step_no, value = step_no + 1, float(loss.detach())
            check_finite(value, logits.detach(), step_no, epoch + 1, precision, {"dice_ce": value})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += value * len(rows)
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}", refresh=False)
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": total / len(train)}
        if va is not None:
            logits = predict_masks(strategy, val, cfg.prompt, batch_size=cfg.eval_batch_size, inputs=va,
                                   precision=precision)
            row["val_loss"] = float(seg_loss(logits, val.masks))
            row["val_dice"] = float(seg_scores(logits, val.masks, boundary=False)["dice"].mean())
            plateau.step(row["val_loss"])
        row["seconds"] = time.time() - t0
        history.append(row)
        for callback in callbacks:
            callback(row)
        if progress == "lines":
            print(f"{desc} epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.3f} "
                  f"val_dice {row.get('val_dice', float('nan')):.3f}", flush=True)
    bar.close()
    strategy.eval()
    return pd.DataFrame(history)


#: CPU profiles: ten epochs of a small world, so prompts get a higher lr than the reference's
#: 2e-4, the decoder-only baseline 2e-3, and full fine-tuning 5e-4 (at 2e-3 its seeds spread by
#: ±0.1 Dice: the pretrained towers drift); paper: the reference's 2e-4 for every strategy.
_TINY_LR = {"text": 1e-2, "visual": 1e-2, "multimodal": 1e-2, "decoder": 2e-3, "finetune": 5e-4, "zeroshot": 0.0}
SEG_BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": dict(epochs=1, batch_size=8),
    "tiny": dict(epochs=10, batch_size=16),
    "paper": dict(epochs=20, batch_size=32),
}


def seg_budget(profile: str, kind: str) -> dict[str, Any]:
    """`SegTrainConfig` overrides of a profile for a strategy kind (`medkit.seg.strategies.KINDS`)."""
    out = dict(SEG_BUDGETS.get(profile, {}))
    if profile != "paper" and _TINY_LR.get(kind):
        out["lr"] = _TINY_LR[kind]
    return out
