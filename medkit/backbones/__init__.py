"""Backbones: `load_backbone(name)` returns a `BackboneAdapter` for any supported model.

Names users know:
- `"miniclip"` / `"miniclip-smoke"`: the offline MiniCLIP (trained once, cached in data/).
- `"ViT-B-16"` with `pretrained="openai"`, or the string `"ViT-B-16/openai"`: any
  open_clip architecture and tag.
- `"hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"`: open_clip models on
  the HuggingFace hub (timm vision + HF text towers).
- a path to an open_clip model-config JSON (random init, e.g. tiny configs for tests).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .adapter import BackboneAdapter, HFTextAdapter, OpenCLIPNativeAdapter, wrap
from .miniclip import PRESETS as MINICLIP_PRESETS

__all__ = ["BackboneAdapter", "HFTextAdapter", "OpenCLIPNativeAdapter", "build_offline", "finetuned_path", "load_backbone",
           "save_finetuned", "wrap"]

FINETUNED_DIR = "backbones"


def finetuned_path(name: str, data_root: str | Path = "data") -> Path:
    """Where a fine-tuned backbone called `name` is kept (`save_finetuned`)."""
    return Path(data_root) / FINETUNED_DIR / f"{name.replace('/', '_')}.pt"


def save_finetuned(adapter: BackboneAdapter, name: str, data_root: str | Path = "data") -> Path:
    """Keep a fine-tuned backbone under `name`: `load_backbone(name)` then rebuilds its base
    model and loads these weights (strictly: a missing or unexpected key is an error)."""
    from medkit.atomic import atomic_torch_save

    path = finetuned_path(name, data_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"base": getattr(adapter, "source", adapter.name), "state": adapter.model.state_dict()}, path)
    return path


def build_offline(names: list[str], data_root: str | Path = "data", progress: bool | str = "lines") -> list[str]:
    """Build (or find cached) the offline stand-ins among `names` — MiniCLIP presets and
    supervised ViT stand-ins — outside any notebook: the workbook runner calls this first, so
    a one-off pretraining never runs under papermill's cell timeout, prints a line per epoch
    headless, and resumes from its last epoch after a kill. Returns the names it built."""
    from . import miniclip, supervised

    built = []
    for name in dict.fromkeys(names):
        if name in MINICLIP_PRESETS:
            miniclip.load_or_train(name, root=data_root, progress=progress)
        elif name in supervised.PRESETS:
            supervised.load_or_train(supervised.PRESETS[name], root=data_root, progress=progress)
        else:
            continue  # hub checkpoints download where they are used
        built.append(name)
    return built


def load_backbone(name: str, pretrained: str | None = None, device: str = "cpu",
                  data_root: str | Path = "data", progress: bool = True) -> BackboneAdapter:
    """The adapter of `name`; its `source` is what loads it again (a fine-tuned copy records it)."""
    adapter = _load(name, pretrained, device, data_root, progress)
    if not hasattr(adapter, "source"):
        adapter.source = name if pretrained is None else f"{name}/{pretrained}"
    return adapter


def _load(name: str, pretrained: str | None, device: str, data_root: str | Path, progress: bool) -> BackboneAdapter:
    import open_clip

    tuned = finetuned_path(name, data_root)
    if tuned.is_file():  # a backbone fine-tuned here (e.g. PsPG's contrastive phase), by its name
        saved = torch.load(tuned, map_location="cpu", weights_only=False)
        adapter = load_backbone(saved["base"], device=device, data_root=data_root, progress=progress)
        adapter.model.load_state_dict(saved["state"], strict=True)
        adapter.name, adapter.source = name, name
        return adapter.eval()
    if name in MINICLIP_PRESETS:
        from . import miniclip

        model, cfg, _ = miniclip.load_or_train(name, root=data_root, progress=progress)
        train_tf, eval_tf = miniclip.transforms(cfg)
        return wrap(model, miniclip.tokenizer(cfg), train_tf, eval_tf, name).to(device)
    if name.endswith(".json"):
        return _from_config_file(Path(name), device)
    if not name.startswith("hf-hub:") and "/" in name and pretrained is None:
        name, pretrained = name.split("/", 1)
    model, train_tf, eval_tf = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    label = f"{name}/{pretrained}" if pretrained else name
    return wrap(model, open_clip.get_tokenizer(name), train_tf, eval_tf, label).to(device)


def _from_config_file(path: Path, device: str) -> BackboneAdapter:
    """A randomly initialised model from an open_clip config JSON (tests, new architectures)."""
    import open_clip

    if not path.is_file():
        raise FileNotFoundError(f"open_clip model config not found: {path}")
    import json

    text_cfg = json.loads(path.read_text()).get("text_cfg", {})
    open_clip.add_model_config(path)
    # open_clip loads an HF text tower's pretrained weights unless told otherwise: honour the
    # config's own flag so a tiny local config never reaches for weights it doesn't have.
    model, train_tf, eval_tf = open_clip.create_model_and_transforms(
        path.stem, pretrained=None, device=device, pretrained_text=text_cfg.get("hf_model_pretrained", True))
    return wrap(model, open_clip.get_tokenizer(path.stem), train_tf, eval_tf, path.stem).to(device)
