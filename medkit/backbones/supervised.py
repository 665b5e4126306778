"""An offline stand-in for supervised ImageNet-21k weights: MiniCLIP's image trunk shape,
trained by plain classification (one head per visual cue) on natural-domain renders.

The implant study compares ViT weights from label supervision (ImageNet-21k), image-text
contrast (CLIP) and self-distillation (DINOv2). Offline, MiniCLIP's tower stands in for
CLIP and this one for label supervision; both saw the same kind of natural photos, so the
comparison is about the training signal. Trained once (under a minute) and cached under
`data/vit_supervised/`.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from medkit.atomic import atomic_torch_save

VERSION = 1


@dataclass(frozen=True)
class SupervisedConfig:
    preset: str = "miniclip"  # trunk shape and rendering settings come from this MiniCLIP preset
    n_images: int = 2500
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 1

    @property
    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


PRESETS: dict[str, SupervisedConfig] = {
    "supervised": SupervisedConfig(),
    "supervised-smoke": SupervisedConfig(preset="miniclip-smoke", n_images=256, epochs=1, batch_size=64),
}


def build_trunk(preset: str = "miniclip", seed: int = 0) -> nn.Module:
    """A randomly initialised timm ViT of MiniCLIP's image-trunk shape (pooled features out)."""
    import timm

    from .miniclip import PRESETS, _stem_kwargs

    cfg = PRESETS[preset]
    with torch.random.fork_rng():  # initialised by `seed`, without moving the caller's RNG
        torch.manual_seed(seed)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=cfg.image_size, embed_dim=cfg.width,
                                 depth=cfg.depth, num_heads=cfg.heads, num_classes=0, global_pool="token",
                                 **_stem_kwargs(cfg))


def pretrain(cfg: SupervisedConfig, progress: bool | str = True, state_path: Path | None = None
             ) -> tuple[nn.Module, list[dict]]:
    """Supervised cue classification; epoch checkpoints in `state_path` resume a killed run."""
    from medkit.data.synthetic.cues import CUE_VALUES

    from .miniclip import PRESETS, _pretraining_set, load_resume_point, loop_state, restore_loop, say_epoch

    clip_cfg = replace(PRESETS[cfg.preset], n_images=cfg.n_images, seed=cfg.seed + 100)
    images, _, _, cue_index = _pretraining_set(clip_cfg, progress)
    trunk = build_trunk(cfg.preset, cfg.seed)
    heads = nn.ModuleList(nn.Linear(trunk.num_features, len(v)) for v in CUE_VALUES.values())
    params = list(trunk.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(cfg.n_images / cfg.batch_size) * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    cues = torch.from_numpy(cue_index)
    history, start_epoch = [], 0
    resumed = load_resume_point(state_path, cfg.key)
    if resumed is not None:
        trunk.load_state_dict(resumed["trunk"])
        heads.load_state_dict(resumed["heads"])
        history, start_epoch = restore_loop(resumed, opt, sched, gen)
    start = time.time() - (history[-1]["seconds"] if history else 0.0)
    trunk.train()
    per_epoch = math.ceil(cfg.n_images / cfg.batch_size)
    bar = tqdm(total=steps, initial=start_epoch * per_epoch, desc="pretraining supervised ViT stand-in",
               disable=progress is not True, mininterval=5)
    for epoch in range(start_epoch, cfg.epochs):
        order = torch.randperm(cfg.n_images, generator=gen)
        for b in range(0, cfg.n_images, cfg.batch_size):
            idx = order[b:b + cfg.batch_size]
            pooled = trunk(images[idx])
            loss = sum(F.cross_entropy(h(pooled), cues[idx, j]) for j, h in enumerate(heads)) / len(heads)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            history.append({"step": len(history), "epoch": epoch, "loss": float(loss.detach()), "seconds": time.time() - start})
            bar.update()
        say_epoch(progress, "pretraining supervised ViT stand-in", epoch, cfg.epochs, history[-1]["loss"],
                  history[-1]["seconds"])
        if state_path is not None:
            atomic_torch_save({"key": cfg.key, "trunk": trunk.state_dict(), "heads": heads.state_dict(),
                               **loop_state(opt, sched, gen, epoch, history)}, state_path)
    bar.close()
    return trunk.eval(), history


def load_or_train(cfg: SupervisedConfig = SupervisedConfig(), root: Path | str = "data",
                  progress: bool | str = True) -> nn.Module:
    folder = Path(root) / "vit_supervised" / f"v{VERSION}-{cfg.key}"
    weights = folder / "weights.pt"
    if weights.is_file():
        trunk = build_trunk(cfg.preset)
        trunk.load_state_dict(torch.load(weights, map_location="cpu"))
        return trunk.eval()
    # Training here must not move the global RNG: a run that finds the cache and one that
    # trains first would otherwise initialise the classifier after it differently.
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        trunk, history = pretrain(cfg, progress, folder / "pretrain_state.pt")
    (folder / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    import pandas as pd

    pd.DataFrame(history).to_csv(folder / "history.csv", index=False)
    atomic_torch_save(trunk.state_dict(), weights)  # appears only when complete
    (folder / "pretrain_state.pt").unlink(missing_ok=True)
    return trunk
