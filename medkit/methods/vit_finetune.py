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
from typing import Any, Callable

import torch
from torch import nn

from medkit.config import TrainConfig
from medkit.methods import Budget, Ref, register
from medkit.methods.base import MethodBase

STUDY_WEIGHTS = {
    "in21k": "vit_base_patch16_224.augreg_in21k",
    "clip": "vit_base_patch16_clip_224.openai",
    "dinov2": "vit_base_patch14_dinov2.lvd142m",
}
MODES = ("full", "head")


def _resolved(value: Any, fallback: Any) -> Any:
    """A Ref the runner did not resolve (direct use): the fallback."""
    return fallback if isinstance(value, Ref) else value


# the implant study does not give its fine-tuning settings: common ViT transfer defaults
@register("vit_finetune", kind="finetune", defaults_by="mode", novel_classes=False,
          training={"full": TrainConfig(epochs=10, batch_size=32, optimizer="adamw", lr=1e-4, weight_decay=0.05,
                                        warmup_epochs=0, grad_clip=1.0),
                    "head": TrainConfig(epochs=50, batch_size=128, optimizer="adamw", lr=1e-3, weight_decay=0.0,
                                        warmup_epochs=0)},
          # tiny: the full run is 2 epochs; a linear head on cached trunk features costs milliseconds an epoch
          budgets={"tiny": {"full": Budget(train=dict(epochs=2, batch_size=64, lr=1e-3)),
                            "head": Budget(train=dict(epochs=60, batch_size=128, lr=1e-2, weight_decay=0.0))}})
class ViTClassifier(MethodBase):
    """A ViT trunk (pooled features, a timm model with `num_classes=0`) and a linear head.

    Built like every method, `(adapter, classnames, **options)`; the adapter is unused (the
    trunk comes from `weights`), `data_root` and `seed` are the run's (offline stand-ins are
    cached under the data folder; the random trunk is seeded)."""

    def __init__(self, adapter: Any, classnames: list[str], weights: str = "scratch", mode: str = "full",
                 data_root: Any = Ref("data_root"), seed: Any = Ref("seed")) -> None:
        if mode not in MODES:
            raise ValueError(f"fine-tuning mode {mode!r}: choose one of {MODES}")
        trunk, transforms = load_trunk(weights, _resolved(data_root, "data"), _resolved(seed, 0))
        super().__init__()
        self._build(trunk, list(classnames), mode, transforms, weights)

    @classmethod
    def from_trunk(cls, trunk: nn.Module, n_classes: int, mode: str = "full",
                   transforms: tuple[Callable, Callable] | None = None, weights: str = "") -> "ViTClassifier":
        """A classifier around a trunk you already have."""
        if mode not in MODES:
            raise ValueError(f"fine-tuning mode {mode!r}: choose one of {MODES}")
        self = cls.__new__(cls)
        MethodBase.__init__(self)
        self._build(trunk, [f"class {i}" for i in range(n_classes)], mode, transforms, weights)
        return self

    def _build(self, trunk: nn.Module, classnames: list[str], mode: str,
               transforms: tuple[Callable, Callable] | None, weights: str) -> None:
        self.trunk, self.mode, self.weights, self.classnames = trunk, mode, weights, classnames
        self.head = nn.Linear(trunk.num_features, len(classnames))
        self.preprocess_train, self.preprocess = transforms or (None, None)
        self.uses_cached_features = mode == "head"
        if mode == "head":
            for p in self.trunk.parameters():
                p.requires_grad_(False)

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

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

    def forward(self, x: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(x if self.mode == "head" else self.trunk(x))

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state, strict=False)


def build_vit(weights: str, n_classes: int, mode: str = "full", data_root: str | Path = "data",
              seed: int = 0) -> ViTClassifier:
    """A ViT classifier from a study weight family, a timm tag, or an offline stand-in
    (`"scratch"`, `"supervised"`, or a MiniCLIP preset name such as `"miniclip"`)."""
    return ViTClassifier(None, [f"class {i}" for i in range(n_classes)], weights, mode, data_root, seed)


def load_trunk(weights: str, data_root: str | Path = "data", seed: int = 0
               ) -> tuple[nn.Module, tuple[Callable, Callable]]:
    """(trunk, (training, evaluation) transforms) of a weight family, timm tag or stand-in."""
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
        return trunk, transforms(cfg)
    tag = STUDY_WEIGHTS.get(weights, weights)
    trunk = timm.create_model(tag, pretrained=True, num_classes=0)
    data_cfg = timm.data.resolve_data_config({}, model=trunk)
    tfs = (timm.data.create_transform(**data_cfg, is_training=True), timm.data.create_transform(**data_cfg))
    return trunk, tfs
