"""Backbones: `load_backbone(name)` returns a `BackboneAdapter` for any supported model.

Names users know (`python -m medkit models` lists the zoo):
- a zoo key: `"biomedclip"`, `"quiltnet-b-16"`, `"pubmedclip"`, `"medsiglip-448"`,
  `"chexzero"` (with `pretrained=` the state-dict file), … (`medkit.backbones.zoo`);
- `"miniclip"` / `"miniclip-smoke"`: the offline MiniCLIP (trained once, cached in data/);
- `"ViT-B-16"` with `pretrained="openai"`, or the string `"ViT-B-16/openai"`: any
  open_clip architecture and tag; with `pretrained=` a file, that state dict (strictly);
- `"hf-hub:org/repo"`: an open_clip repo on the HuggingFace hub; `"org/repo"` (not an
  open_clip architecture) or `"hf:org/repo"`: a transformers dual encoder (CLIP, SigLIP,
  CLIPSeg's towers). Offline (`HF_HUB_OFFLINE=1`) both resolve from the local HF cache;
- a local folder in the hub's layout (open_clip or transformers; what `python -m medkit
  models download` writes), for machines without internet;
- `"NAME@PATH"`: NAME with `pretrained=PATH` (a state-dict file or folder), in one string;
- a path to an open_clip model-config JSON (random init, e.g. tiny configs for tests).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .adapter import BackboneAdapter, HFTextAdapter, OpenCLIPNativeAdapter, wrap
from .errors import BackboneNotAvailable, CheckpointMismatch
from .hf_dual import HFDualAdapter
from .miniclip import PRESETS as MINICLIP_PRESETS
from .zoo import ZOO

__all__ = ["BackboneAdapter", "BackboneNotAvailable", "CheckpointMismatch", "HFDualAdapter", "HFTextAdapter",
           "OpenCLIPNativeAdapter", "ZOO", "build_offline", "finetuned_path", "load_backbone", "save_finetuned", "wrap"]

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
    base = getattr(adapter, "source_args", (getattr(adapter, "source", adapter.name), None))
    if base[0] == name:
        raise ValueError(f"a fine-tuned backbone cannot be kept under its base's own name {name!r}: "
                         "load_backbone would then load itself; choose another name")
    atomic_torch_save({"base": base[0], "base_pretrained": base[1], "state": adapter.model.state_dict()}, path)
    return path


def build_offline(names: list[str], data_root: str | Path = "data", progress: bool | str = "lines") -> list[str]:
    """Build (or find cached) the offline stand-ins among `names` — MiniCLIP presets (with the
    segmentation decoder pretrained on them) and supervised ViT stand-ins — outside any notebook: the workbook runner calls this first, so
    a one-off pretraining never runs under papermill's cell timeout, prints a line per epoch
    headless, and resumes from its last epoch after a kill. Returns the names it built."""
    from . import miniclip, supervised

    built = []
    for name in dict.fromkeys(names):
        if name in MINICLIP_PRESETS:
            miniclip.load_or_train(name, root=data_root, progress=progress)
            from medkit.seg.load import PRESETS as SEG_PRESETS, miniclip_seg

            if name in SEG_PRESETS:  # notebook 10's decoder on this MiniCLIP, pretrained once
                miniclip_seg(name, data_root, progress=progress)
        elif name in supervised.PRESETS:
            supervised.load_or_train(supervised.PRESETS[name], root=data_root, progress=progress)
        else:
            continue  # hub checkpoints download where they are used
        built.append(name)
    return built


def load_backbone(name: str, pretrained: str | None = None, device: str = "cpu",
                  data_root: str | Path = "data", progress: bool = True) -> BackboneAdapter:
    """The adapter of `name`; its `source` is what loads it again (a fine-tuned copy records it).

    `"NAME@PATH"` is `load_backbone(NAME, pretrained=PATH)` in one string (a notebook's
    `backbone` parameter): `"chexzero@/data/chexzero/best_64_5e-05_original_22000_0.864.pt"`."""
    name = str(name)
    if pretrained is None and "@" in name:
        head, tail = name.split("@", 1)
        if Path(tail).expanduser().exists():
            name, pretrained = head, tail
        elif _looks_like_path(tail):
            raise FileNotFoundError(f"{name}: no such file or folder {tail}")
    if _looks_like_path(name) and not name.endswith(".json") and not Path(name).expanduser().exists() \
            and not finetuned_path(name, data_root).is_file():
        raise FileNotFoundError(f"no such model folder or file: {name}")
    pretrained = None if pretrained is None else str(pretrained)
    adapter = _load(name, pretrained, device, data_root, progress)
    if not hasattr(adapter, "source"):
        is_path = pretrained is not None and Path(pretrained).expanduser().exists()
        adapter.source = name if pretrained is None else f"{name}{'@' if is_path else '/'}{pretrained}"
        adapter.source_args = (name, pretrained)
    return adapter


def _load(name: str, pretrained: str | None, device: str, data_root: str | Path, progress: bool) -> BackboneAdapter:
    from . import local

    tuned = finetuned_path(name, data_root)
    if tuned.is_file():  # a backbone fine-tuned here (e.g. PsPG's contrastive phase), by its name
        saved = torch.load(tuned, map_location="cpu", weights_only=False)
        adapter = load_backbone(saved["base"], saved.get("base_pretrained"), device=device, data_root=data_root,
                                progress=progress)
        adapter.model.load_state_dict(saved["state"], strict=True)
        adapter.name, adapter.source, adapter.source_args = name, name, (name, None)
        return adapter.eval()
    if name in MINICLIP_PRESETS:
        from . import miniclip

        model, cfg, _ = miniclip.load_or_train(name, root=data_root, progress=progress)
        train_tf, eval_tf = miniclip.transforms(cfg)
        return wrap(model, miniclip.tokenizer(cfg), train_tf, eval_tf, name).to(device)
    if name in ZOO:
        return _load_zoo(name, pretrained, device)
    if name.endswith(".json"):
        return _from_config_file(Path(name), device)
    if Path(name).expanduser().is_dir():
        return local.load_folder(name, device=device)
    if pretrained is not None and Path(pretrained).expanduser().is_dir():
        return local.load_folder(pretrained, name, device)
    if pretrained is not None and Path(pretrained).expanduser().is_file():
        return local.load_state_dict_file(name, pretrained, device)
    if name.startswith("hf-hub:"):
        return local.load_folder(local.hub_snapshot(name.removeprefix("hf-hub:"), pretrained), name, device,
                                 tokenizer_from_folder=False)
    if name.startswith("hf:"):
        return local.load_folder(local.hub_snapshot(name.removeprefix("hf:"), pretrained), name, device)
    if "/" in name and pretrained is None:
        arch, tag = name.split("/", 1)
        if not _is_open_clip_architecture(arch):  # org/repo: a transformers dual encoder on the hub
            return local.load_folder(local.hub_snapshot(name), name, device)
        name, pretrained = arch, tag
    return _open_clip_tag(name, pretrained, device)


def _looks_like_path(name: str) -> bool:
    """A filesystem path rather than a hub id (`org/repo` has one slash and no leading dot)."""
    return (name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
            or name.endswith((".pt", ".pth", ".bin", ".safetensors")))


def _is_open_clip_architecture(name: str) -> bool:
    import open_clip

    return open_clip.get_model_config(name) is not None


def _open_clip_tag(arch: str, tag: str | None, device: str) -> BackboneAdapter:
    """A built-in open_clip architecture and pretrained tag (open_clip downloads, or reads its
    HF cache offline, and loads strictly)."""
    import open_clip

    if not _is_open_clip_architecture(arch):
        raise ValueError(f"{arch!r} is neither a zoo entry ({', '.join(sorted(ZOO))}), a local folder, nor an "
                         "open_clip architecture (open_clip.list_models())")
    # open_clip 3 builds ViT-B-16 with GELU and only warns that the `openai` weights were
    # trained with QuickGELU: the features would be off. The tag's own setting wins here.
    from .local import tag_uses_quick_gelu

    quick = tag_uses_quick_gelu(arch, tag) and not open_clip.get_model_config(arch).get("quick_gelu", False)
    try:
        model, train_tf, eval_tf = open_clip.create_model_and_transforms(arch, pretrained=tag, device=device,
                                                                         force_quick_gelu=quick)
    except RuntimeError as e:
        if tag and "download" in str(e).lower():
            from .local import is_offline

            raise BackboneNotAvailable(
                f"{arch}/{tag}: the weights are not in the local cache and could not be downloaded"
                + (" (HF_HUB_OFFLINE=1)" if is_offline() else "") + ": on a machine with internet run "
                "`python -m medkit models download NAME --to DIR`, then load_backbone('DIR/NAME')") from e
        raise
    label = f"{arch}/{tag}" if tag else arch
    return wrap(model, open_clip.get_tokenizer(arch), train_tf, eval_tf, label).to(device)


def _load_zoo(key: str, pretrained: str | None, device: str) -> BackboneAdapter:
    from . import local
    from .zoo import entry

    e = entry(key)
    if pretrained is not None and Path(pretrained).expanduser().is_dir():
        return local.load_folder(pretrained, key, device)
    if e.route == "external":
        raise NotImplementedError(f"{key}: {e.notes}; it needs {e.needs}")
    if e.route == "state_dict":
        if pretrained is None:
            raise BackboneNotAvailable(f"{key}: its weights are not on a hub; get the file ({e.source}) and pass "
                                       f"load_backbone({key!r}, pretrained='PATH/TO/FILE.pt')")
        adapter = local.load_state_dict_file(e.architecture, pretrained, device, e.preprocess)
        adapter.name = key
        return adapter
    if pretrained is not None and Path(pretrained).expanduser().is_file():
        if e.route != "open_clip":
            raise ValueError(f"{key}: pretrained={pretrained!r} is a file, but {key} loads from a hub repo or a "
                             "folder in its layout; a bare state dict needs its architecture: "
                             "load_backbone(ARCHITECTURE, pretrained=FILE)")
        arch, tag = e.source.split("/", 1)
        adapter = local.load_state_dict_file(arch, pretrained, device, quick_gelu=local.tag_uses_quick_gelu(arch, tag))
    elif e.route == "open_clip":
        arch, tag = e.source.split("/", 1)
        adapter = _open_clip_tag(arch, pretrained or tag, device)
    else:
        adapter = local.load_folder(local.hub_snapshot(e.hub_id, pretrained, e.weights_file), key, device,
                                    tokenizer_from_folder=e.route != "open_clip_hub")
    adapter.name = key
    return adapter


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
