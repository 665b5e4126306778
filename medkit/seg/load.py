"""The segmentation models a notebook names, and the offline default's decoder pretraining.

- `"miniclip"` / `"miniclip-smoke"` (the CPU profiles' default): MiniCLIP's towers and a
  CLIPSeg decoder pretrained here once on natural-domain scenes with referring phrases
  (`medkit.data.synthetic.seg_world.scenes`, cue vocabulary, never a medical-looking image),
  cached under `data/segdecoder/` with its config and loss curve (a progress bar while it trains).
- A CLIPSeg folder (`CLIPSegForImageSegmentation` hub layout, e.g. saved by
  `python -m medkit models download clipseg-rd64-refined --to DIR`), a hub name
  (`CIDAS/clipseg-rd64-refined`, `CIDAS/clipseg-rd64`) or its zoo key: towers and decoder as
  trained, loaded strictly.
- `"fresh:BACKBONE"` (e.g. `fresh:biomedclip`, MedVLSM's BiomedCLIPSeg): any backbone with a
  new CLIPSeg decoder, to be trained by `seg_decoder` or `seg_finetune`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from medkit.atomic import atomic_torch_save

from .metrics import seg_loss
from .model import SegmentationModel, build_decoder, default_layers, load_clipseg

DECODER_VERSION = 1
CLIPSEG_REPOS = {"clipseg-rd64-refined": "CIDAS/clipseg-rd64-refined", "clipseg-rd64": "CIDAS/clipseg-rd64"}


@dataclass(frozen=True)
class DecoderPretraining:
    n_scenes: int = 4000
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    reduce_dim: int = 64
    heads: int = 4
    intermediate: int = 512  # CLIPSeg's is 2048 at reduce_dim 64; a quarter is plenty at 64 px
    seed: int = 0


PRESETS = {"miniclip": DecoderPretraining(), "miniclip-smoke": DecoderPretraining(n_scenes=128, epochs=1)}


def _key(backbone_digest: str, cfg: DecoderPretraining, layers: list[int]) -> str:
    blob = json.dumps({"backbone": backbone_digest, "cfg": asdict(cfg), "layers": layers, "v": DECODER_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def pretrain_decoder(adapter, cfg: DecoderPretraining, progress: bool | str = True
                     ) -> tuple[SegmentationModel, pd.DataFrame]:
    """A fresh CLIPSeg decoder on `adapter`'s frozen towers, trained on referring scenes: the
    activations and the phrase features are computed once (both towers frozen)."""
    from medkit.data.synthetic.seg_world import scenes

    from .data import seg_transform

    layers = default_layers(len(adapter.vision_blocks()))
    torch.manual_seed(cfg.seed)
    model = SegmentationModel(adapter, build_decoder(adapter, layers, cfg.reduce_dim, cfg.heads, cfg.intermediate),
                              layers)
    for p in adapter.parameters():
        p.requires_grad_(False)
    adapter.eval()
    images, masks, phrases = scenes(cfg.n_scenes, adapter.image_size, cfg.seed)
    tf = seg_transform(adapter)
    from PIL import Image

    unique = sorted(set(phrases))
    with torch.no_grad():
        text = adapter.encode_texts(unique, normalize=False).float()
        acts = []
        for start in tqdm(range(0, len(images), 128), desc="scene activations", disable=progress is not True):
            x = torch.stack([tf(Image.fromarray(a)) for a in images[start:start + 128]])
            acts.append(torch.stack(adapter.encode_image_layers(x, layers), 1).half())
    acts = torch.cat(acts)
    target = torch.as_tensor(masks).float()
    phrase_index = torch.as_tensor([unique.index(p) for p in phrases])
    opt = torch.optim.AdamW(model.decoder.parameters(), lr=cfg.lr)
    steps = -(-len(images) // cfg.batch_size) * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    bar = tqdm(total=steps, desc="pretraining the segmentation decoder", disable=progress is not True, mininterval=1)
    model.decoder.train()
    for epoch in range(cfg.epochs):
        total = 0.0
        for rows in torch.randperm(len(images), generator=gen).split(cfg.batch_size):
            logits = model.decode(list(acts[rows].float().unbind(1)), text[phrase_index[rows]])
            loss = seg_loss(logits, target[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(rows)
            bar.update()
        history.append({"epoch": epoch + 1, "loss": total / len(images)})
        if progress == "lines":
            print(f"segmentation decoder epoch {epoch + 1}/{cfg.epochs} loss {history[-1]['loss']:.3f}", flush=True)
    bar.close()
    model.eval()
    return model, pd.DataFrame(history)


def miniclip_seg(preset: str = "miniclip", data_root: str | Path = "data", device: str = "cpu",
                 progress: bool | str = True) -> SegmentationModel:
    """MiniCLIP + its pretrained decoder (pretrained once, then loaded from `data/segdecoder/`)."""
    from medkit.backbones import load_backbone
    from medkit.features import module_digest

    if preset not in PRESETS:
        raise ValueError(f"unknown decoder preset {preset!r}; choose from {sorted(PRESETS)}")
    cfg = PRESETS[preset]
    adapter = load_backbone(preset, data_root=data_root, progress=bool(progress))
    layers = default_layers(len(adapter.vision_blocks()))
    folder = Path(data_root) / "segdecoder" / f"{preset}-{_key(module_digest(adapter.model), cfg, layers)}"
    weights = folder / "decoder.pt"
    if weights.is_file():
        decoder = build_decoder(adapter, layers, cfg.reduce_dim, cfg.heads, cfg.intermediate)
        decoder.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        model = SegmentationModel(adapter, decoder, layers)
    else:
        with torch.random.fork_rng():  # the caller's RNG is the same whether cached or trained
            model, history = pretrain_decoder(adapter, cfg, progress)
        folder.mkdir(parents=True, exist_ok=True)
        history.to_csv(folder / "history.csv", index=False)
        (folder / "config.json").write_text(json.dumps({"preset": preset, **asdict(cfg), "layers": layers}, indent=1))
        atomic_torch_save(model.decoder.state_dict(), weights)  # appears only when complete
    for p in model.parameters():
        p.requires_grad_(False)
    model.source, model.pretraining = preset, folder
    return model.eval().to(device)


def decoder_history(model: SegmentationModel) -> pd.DataFrame | None:
    """The decoder pretraining's loss per epoch of an offline default model (None for others)."""
    folder = getattr(model, "pretraining", None)
    return pd.read_csv(folder / "history.csv") if folder is not None and (folder / "history.csv").is_file() else None


def load_seg_model(name: str = "", data_root: str | Path = "data", device: str = "cpu",
                   progress: bool | str = True, default: str = "miniclip") -> SegmentationModel:
    """The segmentation model a notebook's `model` parameter names (see the module docstring)."""
    name = str(name or default)
    if name in PRESETS:
        return miniclip_seg(name, data_root, device, progress)
    if name.startswith("fresh:"):
        from medkit.backbones import load_backbone

        adapter = load_backbone(name.removeprefix("fresh:"), device=device, data_root=data_root, progress=bool(progress))
        layers = default_layers(len(adapter.vision_blocks()))
        model = SegmentationModel(adapter, build_decoder(adapter, layers), layers)
        model.source = name
        return model.to(device)
    path = Path(name).expanduser()
    if path.is_dir():
        model = load_clipseg(path, device=device)
    elif name in CLIPSEG_REPOS or name in CLIPSEG_REPOS.values():
        from medkit.backbones.local import hub_snapshot

        model = load_clipseg(hub_snapshot(CLIPSEG_REPOS.get(name, name)), name=name, device=device)
    else:
        raise FileNotFoundError(f"segmentation model {name!r}: not a preset ({sorted(PRESETS)}), a CLIPSeg folder, "
                                f"a CLIPSeg hub name ({sorted(CLIPSEG_REPOS.values())}) or fresh:BACKBONE")
    for p in model.parameters():
        p.requires_grad_(False)
    model.source = name
    return model
