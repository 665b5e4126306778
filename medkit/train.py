"""One training loop for every method: `fit(method, train, val, config)`.

- SGD (momentum) or AdamW; cosine schedule over the epochs after a constant warm-up at a
  small lr (the Dassl references' `ConstantWarmupScheduler`: 1 epoch at 1e-5);
- bf16 autocast on CUDA (`precision`: fp16 with loss scaling, or fp32), fp32 on CPU; a
  run stops at its first non-finite loss with what to do (`medkit.precision`); optional
  gradient clipping; early stopping on validation
  accuracy; `select="best"` restores the best epoch (the references report the last);
- a checkpoint of the method's own parameters, optimizer, schedule, history and RNG
  states after every epoch, and `resume=True` to continue an interrupted run. The
  checkpoint carries a fingerprint of what it belongs to (by default the method's class
  and trainable shapes, the config — seed included — and the training data's size and
  labels; callers add the dataset, split and backbone identity): resuming from a
  checkpoint of another run is an error that says what differs, never a silent reuse;
- per-epoch history (train/val loss and accuracy, lr, seconds) and callbacks;
- inputs: a `Split` of images, or for methods whose image tower is frozen and unprompted
  (`method.uses_cached_features`) `(features, labels)` or `CachedFeatures`. A `Split` given
  to such a method goes through the feature cache (`medkit.features`): the tower runs once
  per image and augmented view, ever, and each step costs only the method's own work.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, default_collate
from tqdm.auto import tqdm

from medkit import distributed
from medkit.atomic import atomic_torch_save
from medkit.config import TrainConfig
from medkit.data import ImageDataset, Split
from medkit.features import CachedFeatures, FeatureCache, encode_split
from medkit.methods.base import MethodBase
from medkit.ledger import ResumeError  # noqa: F401 — raised here, and importable from here as before
from medkit.precision import autocast, check_finite, grad_scaler, resolve
from medkit.runs import json_safe

Data = Split | tuple[torch.Tensor, torch.Tensor] | CachedFeatures
Callback = Callable[[dict, nn.Module], bool | None]  # return True to stop training


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr in `epoch` (0-based)."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr / cfg.lr
    return 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))


def _optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if not params:
        raise ValueError("this method has no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use 'sgd' or 'adamw'")


def transforms_of(method: nn.Module) -> tuple[Callable, Callable]:
    """(training, evaluation) image transforms of a method."""
    owner = method.adapter if hasattr(method, "adapter") else method
    return owner.preprocess_train, owner.preprocess


def loader(method: nn.Module, data: Data, batch_size: int, shuffle: bool, train_transform: bool,
           generator: torch.Generator | None = None, epoch: int = 0, seed: int = 0,
           cache: FeatureCache | None = None) -> DataLoader:
    """Batches of images, or of cached features (one augmented view per image for `epoch`)."""
    if isinstance(data, (tuple, CachedFeatures)):
        if not method.uses_cached_features:
            raise TypeError(f"{type(method).__name__} runs its image tower each step: pass a Split, not features")
        feats, labels = (data.view(epoch, seed), data.labels) if isinstance(data, CachedFeatures) else data
        return _batches(TensorDataset(feats, labels), batch_size, shuffle, generator)
    if method.uses_cached_features:
        return loader(method, cached_inputs(method, data, cache), batch_size, shuffle, False, generator)
    tf_train, tf_eval = transforms_of(method)
    return _batches(ImageDataset(data, tf_train if train_transform else tf_eval), batch_size, shuffle, generator)


def _collate_shard(batch: list):
    return default_collate(batch) if batch else None  # a rank whose share of a small batch is empty


def _batches(dataset, batch_size: int, shuffle: bool, generator: torch.Generator | None) -> DataLoader:
    """Training batches; under several processes each rank's share of the same global batch."""
    if shuffle and distributed.active():
        # the loader draws its base seed from `generator` before the sampler draws the order,
        # as one process's shuffled loader does: given the generator, both draw the same batches
        return DataLoader(dataset, batch_sampler=distributed.ShardedBatches(len(dataset), batch_size, generator),
                          collate_fn=_collate_shard, generator=generator)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def cached_inputs(method: nn.Module, data: Data, cache: FeatureCache | None = None, views: int = 0) -> Data:
    """What a cached-feature method reads: a Split becomes its cached features (`views`
    augmented ones for training); features pass through."""
    if isinstance(data, Split) and getattr(method, "uses_cached_features", False):
        return (cache or FeatureCache.default()).get(method, data, views)
    return data


def encode(method: nn.Module, split: Split, batch_size: int = 256, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen image features of a split with the method's evaluation transform (no cache)."""
    feats = encode_split(method, split, batch_size=batch_size, progress=progress)
    return feats, torch.as_tensor(split.targets, dtype=torch.long)


def _device(method: nn.Module) -> torch.device:
    return next(method.parameters()).device


def _autocast(cfg: TrainConfig, device: torch.device):
    return autocast(cfg.precision, device, cfg.amp)


@torch.no_grad()
def predict(method: nn.Module, data: Data, batch_size: int = 256, amp: bool = True,
            cache: FeatureCache | None = None, precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) over a split or cached features: class prompts are encoded once per
    pass, and image features come from the cache when the image tower is frozen."""
    data = cached_inputs(method, data, cache)
    if getattr(method, "eval_in_one_batch", False):  # a closed form: one matrix product over the split
        batch_size = max(1, len(data[1]) if isinstance(data, tuple) else len(data))
    was = method.training
    method.eval()
    device = _device(method)
    cfg = TrainConfig(amp=amp, precision=precision)
    with _autocast(cfg, device):
        text = method.precompute_text()
        out, ys = [], []
        for x, y in loader(method, data, batch_size, shuffle=False, train_transform=False):
            out.append(method(x.to(device), text_features=text).float().cpu())
            ys.append(y)
    method.train(was)
    return torch.cat(out), torch.cat(ys)


def hits(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(correct, counted): top-1 hits over images; for multi-label targets `[B, C]` (log-odds
    scores, -1 unknown) label hits at probability 0.5 over the known entries."""
    if y.dim() == 2:
        known = y >= 0
        return int(((logits > 0) == (y == 1))[known].sum()), int(known.sum())
    return int((logits.argmax(1) == y).sum()), len(y)


def evaluation_loss(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Cross-entropy, or for multi-label targets the binary cross-entropy over known entries."""
    if y.dim() == 2:
        known = y >= 0
        return float(nn.functional.binary_cross_entropy_with_logits(logits[known], y[known].float()))
    return float(nn.functional.cross_entropy(logits, y))


def _evaluate(method: nn.Module, data: Data | None, cfg: TrainConfig) -> tuple[float, float]:
    if data is None:
        return float("nan"), float("nan")
    logits, y = predict(method, data, cfg.eval_batch_size, cfg.amp, precision=cfg.precision)
    correct, counted = hits(logits, y)
    return evaluation_loss(logits, y), correct / max(counted, 1)


RESUMABLE_CHANGES = ("epochs", "device", "eval_batch_size")


def _data_signature(data: Data) -> str:
    """Size and labels of training data, hashed (cheap; enough to tell two runs apart)."""
    import hashlib

    if isinstance(data, Split):
        labels, n = np.asarray(data.targets), len(data)
        names = "|".join(str(s.path) for s in data.samples)
    else:
        y = data.labels if isinstance(data, CachedFeatures) else data[1]
        labels, n, names = np.asarray(torch.as_tensor(y).cpu()), len(y), ""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{n}|{names}".encode())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def run_fingerprint(method: nn.Module, train: Data, cfg: TrainConfig, extra: dict | None = None) -> dict:
    """What a checkpoint belongs to: method class + trainable shapes, config, training data, extras."""
    shapes = {n: list(p.shape) for n, p in method.named_parameters() if p.requires_grad}
    # a run may be extended to more epochs, or resumed on another device: not part of its identity
    config = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES}
    return {"method": type(method).__name__, "trainable": shapes, "config": config,
            "train_data": _data_signature(train), **(extra or {})}


def _differences(saved: dict, wanted: dict) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key, "<absent>"), wanted.get(key, "<absent>")
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{d}" for d in _differences(a, b)]
        else:
            out.append(f"{key}: checkpoint {a!r} vs this run {b!r}")
    return out


def _shard_step(method: nn.Module, x, y, device: torch.device, cfg: TrainConfig, params: list[nn.Parameter]):
    """One rank's part of a step on its share of the global batch: its loss terms weighted by
    its share, backward, gradients summed over ranks. Returns ((x, y), global batch size, the
    global batch's mean terms, its loss, this rank's logits or None)."""
    n_local = 0 if x is None else len(y)
    n_batch = int(distributed.sum_values(n_local)[0])
    logits, terms = None, {}
    if n_local:
        x, y = x.to(device), y.to(device)
        with _autocast(cfg, device):
            logits = method(x)
            terms = method.loss_terms(logits.float(), y)
        weight = n_local / n_batch
        method.backward_step({k: v * weight for k, v in terms.items()})
    names = sorted(terms) if n_local else []
    # every rank must know every term's name to sum them: rank 0 always has a share
    names = _term_names(names)
    values = distributed.sum_values(*[float(terms[k].detach()) * n_local / n_batch if k in terms else 0.0
                                      for k in names])
    distributed.sum_gradients(params)
    step_terms = dict(zip(names, values))
    return (x, y), n_batch, step_terms, sum(step_terms.values()), logits


def _term_names(names: list[str]) -> list[str]:
    """The loss terms' names of rank 0 (which always has a share of a batch) on every rank."""
    box = [names]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def fit(method: nn.Module, train: Data, val: Data | None = None, config: TrainConfig = TrainConfig(),
        checkpoint_dir: str | Path | None = None, resume: bool = False, callbacks: Sequence[Callback] = (),
        progress: bool | str = True, desc: str = "", cache: FeatureCache | None = None,
        fingerprint: dict | None = None) -> pd.DataFrame:
    """Train `method` in place; returns the per-epoch history (`train_<term>` per named loss
    term) with every optimizer step's loss and terms in `history.attrs["steps"]`.

    Cached-feature methods given Splits read `cache` (default: the project's `data/cache`):
    with `augment`, `feature_views` augmented views per training image, one drawn per epoch.

    `progress`: True → a tqdm bar over steps; "lines" → one printed line per epoch (headless
    runs); False → silent.

    `checkpoint_dir` + `resume=True`: continue from `checkpoint_dir/last.pt` if it belongs to
    this run (`run_fingerprint(...)` plus `fingerprint`, e.g. dataset id and backbone);
    otherwise `ResumeError` naming every difference. A finished run resumes to its end state.
    """
    cfg = config
    if cfg.select not in ("last", "best"):
        raise ValueError(f"select={cfg.select!r}: use 'last' or 'best'")
    if not cfg.validate and (cfg.select == "best" or cfg.patience is not None):
        raise ValueError("select='best' and early stopping need validate=True")
    device = torch.device(cfg.device)
    method.to(device)
    seed_everything(cfg.seed)
    if distributed.active() and type(method).backward_step is not MethodBase.backward_step:
        raise ValueError(f"{type(method).__name__} reshapes each step's gradient: its per-process gradients do not "
                         "add up to one process's, so run it in one process (no torchrun)")
    if method.uses_cached_features:
        train = cached_inputs(method, train, cache, cfg.feature_views if cfg.augment else 0)
        val = cached_inputs(method, val, cache)
    params = [p for p in method.parameters() if p.requires_grad]
    distributed.broadcast_parameters(params)
    opt = _optimizer(params, cfg)
    precision = resolve(cfg.precision, device, cfg.amp)
    scaler = grad_scaler(cfg.precision, device, cfg.amp)
    if scaler is not None and distributed.active():
        raise ValueError("fp16 loss scaling under several processes is not supported: use precision='bf16' or 'fp32'")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lr_factor(e, cfg))
    history: list[dict] = []
    best_acc, best_state, stale, start_epoch = -1.0, None, 0, 0
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    # only a checkpointed run needs to know what it is (hashing the data costs a pass over it)
    ident = json_safe(run_fingerprint(method, train, cfg, fingerprint)) if ckpt is not None else None
    steps_log: list[dict] = []  # every optimizer step's loss and named terms
    if resume and ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        diff = _differences(state.get("fingerprint") or {}, ident)
        if diff:
            raise ResumeError(f"{ckpt} belongs to another run; refusing to resume from it:\n  "
                              + "\n  ".join(diff[:12]) + ("\n  …" if len(diff) > 12 else "")
                              + "\nuse another checkpoint_dir (or delete it to start over)")
        method.load_trainable_state(state["method"])
        steps_log = list(state.get("steps", []))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, best_acc, best_state, stale = state["history"], state["best_acc"], state["best_state"], state["stale"]
        start_epoch = state["epoch"] + 1
        # the next epoch's lr from this config: the saved one was set by the old config's
        # schedule (0 after a finished cosine when a run is extended to more epochs)
        for group, base in zip(opt.param_groups, sched.base_lrs):
            group["lr"] = base * lr_factor(start_epoch, cfg)
        torch.set_rng_state(state["torch_rng"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])  # fp16: resume at the loss scale reached
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = len(loader(method, train, cfg.batch_size, True, cfg.augment, gen, seed=cfg.seed)) if progress is True else 0
    steps = min(steps, cfg.max_steps_per_epoch or steps)
    bar = tqdm(total=steps * (cfg.epochs - start_epoch), desc=desc or type(method).__name__,
               disable=progress is not True or not distributed.is_main(), mininterval=1)
    t0 = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        gen.manual_seed(cfg.seed * 10007 + epoch)  # a resumed run shuffles as an uninterrupted one
        method.train()
        total, correct, counted, seen = 0.0, 0, 0, 0
        term_sums: dict[str, float] = {}
        for step, (x, y) in enumerate(loader(method, train, cfg.batch_size, True, cfg.augment, gen, epoch, cfg.seed)):
            if cfg.max_steps_per_epoch is not None and step >= cfg.max_steps_per_epoch:
                break
            opt.zero_grad(set_to_none=True)
            if distributed.active():  # this rank's share of the global batch, weighted by its size
                (x, y), n_batch, step_terms, step_loss, logits = _shard_step(method, x, y, device, cfg, params)
            else:
                x, y = x.to(device), y.to(device)
                n_batch = len(y)
                with _autocast(cfg, device):
                    logits = method(x)
                    terms = method.loss_terms(logits.float(), y)
                step_terms = {name: float(term.detach()) for name, term in terms.items()}
                if scaler is None:
                    loss = method.backward_step(terms)  # the sum of the terms, or the method's own gradient shaping
                    step_loss = float(loss.detach())
                else:  # fp16: gradients of the scaled terms (a method's gradient shaping is scale-invariant)
                    scale = scaler.get_scale()
                    step_loss = float(method.backward_step({k: scaler.scale(v) for k, v in terms.items()}).detach()) / scale
                    scaler.unscale_(opt)
            check_finite(step_loss, None if logits is None else logits.detach(), len(steps_log) + 1, epoch + 1,
                         precision, step_terms)
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)  # skipped where the scaled gradients overflowed; the scale then shrinks
                scaler.update()
            total += step_loss * n_batch
            for name, value in step_terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + value * n_batch
            steps_log.append({"epoch": epoch + 1, "step": len(steps_log) + 1, "loss": step_loss, **step_terms})
            step_hits, step_counted = hits(logits.detach(), y) if logits is not None else (0, 0)
            step_hits, step_counted = (int(v) for v in distributed.sum_values(step_hits, step_counted))
            correct, counted, seen = correct + step_hits, counted + step_counted, seen + n_batch
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{step_loss:.3f}", refresh=False)
        lr = opt.param_groups[0]["lr"]
        sched.step()
        val_loss, val_acc = _evaluate(method, val if cfg.validate else None, cfg)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": total / max(seen, 1), "train_acc": correct / max(counted, 1),
               "val_loss": val_loss, "val_acc": val_acc, "seconds": time.time() - t0,
               **{f"train_{name}": v / max(seen, 1) for name, v in term_sums.items()}}
        history.append(row)
        if progress == "lines":
            print(f"{desc or type(method).__name__} epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.3f} "
                  f"acc {row['train_acc']:.3f} val_acc {val_acc:.3f} lr {lr:.2e} {row['seconds']:.0f}s", flush=True)
        improved = not math.isnan(val_acc) and val_acc > best_acc
        if improved:
            best_acc, stale = val_acc, 0
            if cfg.select == "best":
                best_state = method.trainable_state()
        else:
            stale += 1
        if ckpt is not None and distributed.is_main():  # one writer; every rank can resume from it
            atomic_torch_save({"epoch": epoch, "method": method.trainable_state(), "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict(), "history": history, "best_acc": best_acc,
                               "best_state": best_state, "stale": stale, "torch_rng": torch.get_rng_state(),
                               "config": asdict(cfg), "fingerprint": ident, "steps": steps_log,
                               "scaler": scaler.state_dict() if scaler is not None else None},
                              ckpt)  # never a half-written checkpoint
        stop = any(cb(row, method) for cb in callbacks)
        if stop or (cfg.patience is not None and stale >= cfg.patience):
            break
    bar.close()
    if cfg.select == "best" and best_state is not None:
        method.load_trainable_state(best_state)
    method.eval()
    out = pd.DataFrame(history)
    out.attrs["steps"] = pd.DataFrame(steps_log)
    return out
