"""ViT fine-tuning baselines of the implant study: a timm ViT + a linear head, trained
fully (`mode="full"`) or head only (`mode="head"`, frozen trunk → cached features).

Weights by the timm tags users know (`vit_base_patch16_224.augreg_in21k`,
`vit_base_patch16_clip_224.openai`, `vit_base_patch14_dinov2.lvd142m`; downloaded by timm
when online) or the offline stand-ins of the embedded world, which share MiniCLIP's
64-px trunk shape:

- `"scratch"`: random initialisation (no pretraining at all);
- `"supervised"`: the same trunk trained by cue classification on natural-domain renders,
  the stand-in for supervised ImageNet-21k weights (`medkit.backbones.supervised`);
- `"miniclip"`: MiniCLIP's contrastively pretrained image tower, the stand-in for CLIP
  weights (image-text pretraining on the natural domain).

There is no offline stand-in for DINOv2's self-distillation; `"dinov2"` needs the hub.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from medkit.methods import register

STUDY_WEIGHTS = {
    "in21k": "vit_base_patch16_224.augreg_in21k",
    "clip": "vit_base_patch16_clip_224.openai",
    "dinov2": "vit_base_patch14_dinov2.lvd142m",
}
MODES = ("full", "head")


@register("vit_finetune")
class ViTClassifier(nn.Module):
    """`trunk` maps images to pooled features (a timm model with `num_classes=0`)."""

    def __init__(self, trunk: nn.Module, n_classes: int, mode: str = "full",
                 transforms: tuple[Callable, Callable] | None = None, weights: str = "") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"fine-tuning mode {mode!r}: choose one of {MODES}")
        self.trunk, self.mode, self.weights = trunk, mode, weights
        self.head = nn.Linear(trunk.num_features, n_classes)
        self.preprocess_train, self.preprocess = transforms or (None, None)
        self.uses_cached_features = mode == "head"
        if mode == "head":
            for p in self.trunk.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ViTClassifier":
        super().train(mode)
        if self.mode == "head":
            self.trunk.eval()  # frozen: no dropout, no BatchNorm statistics drift
        return self

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        was = self.trunk.training
        self.trunk.eval()
        out = self.trunk(images.to(next(self.trunk.parameters()).device)).float()
        self.trunk.train(was)
        return out

    def image_encoder(self):
        """The frozen trunk's pooled features (head mode reads them from the feature cache)."""
        from medkit.features import ImageEncoder

        return ImageEncoder(self.encode_images, self.trunk, "timm_trunk_pooled", self.preprocess, self.preprocess_train)

    def precompute_text(self) -> None:
        return None

    def forward(self, x: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(x if self.mode == "head" else self.trunk(x))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, targets)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state, strict=False)

    def class_indexed_parameters(self) -> set[str]:
        return set()


def build_vit(weights: str, n_classes: int, mode: str = "full", data_root: str | Path = "data",
              seed: int = 0) -> ViTClassifier:
    """A ViT classifier from a study weight family, a timm tag, or an offline stand-in
    (`"scratch"`, `"supervised"`, or a MiniCLIP preset name such as `"miniclip"`)."""
    import timm

    from medkit.backbones import supervised
    from medkit.backbones.miniclip import PRESETS, load_or_train, transforms

    if weights == "scratch" or weights in supervised.PRESETS or weights in PRESETS:
        if weights == "scratch":
            cfg = PRESETS["miniclip"]
            trunk = supervised.build_trunk("miniclip", seed)
        elif weights in supervised.PRESETS:
            sup = supervised.PRESETS[weights]
            cfg = PRESETS[sup.preset]
            trunk = supervised.load_or_train(sup, root=data_root, progress=False)
            for p in trunk.parameters():
                p.requires_grad_(True)
        else:
            clip, cfg, _ = load_or_train(weights, root=data_root, progress=False)
            trunk = copy.deepcopy(clip.visual.trunk)
            for p in trunk.parameters():
                p.requires_grad_(True)
        return ViTClassifier(trunk, n_classes, mode, transforms(cfg), weights)
    tag = STUDY_WEIGHTS.get(weights, weights)
    trunk = timm.create_model(tag, pretrained=True, num_classes=0)
    data_cfg = timm.data.resolve_data_config({}, model=trunk)
    tfs = (timm.data.create_transform(**data_cfg, is_training=True), timm.data.create_transform(**data_cfg))
    return ViTClassifier(trunk, n_classes, mode, tfs, weights)
