"""VPT-deep (Jia et al., ECCV 2022) as the MaPLe paper runs it: vision prompts at every
layer up to `depth` (8 tokens, all layers by default) and fixed text features of a
hand-crafted template. `depth=0` is the frozen zero-shot model. Class names enter the
template with `_` turned into spaces, as the reference does; `keep_underscores=True` keeps them."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from medkit.backbones import BackboneAdapter
from medkit.config import TrainConfig
from medkit.methods import OPTIMISER_SPACE, Budget, Choice, IntRange, register
from medkit.methods.base import FrozenBackboneMethod
from medkit.methods.deep import prompt_stack, resolve_depth
from medkit.prompts import fill


@register("vpt_deep", kind="deep_prompt", training=TrainConfig(epochs=5, batch_size=4, lr=0.0025),
          budgets={"tiny": Budget(train=dict(epochs=2, batch_size=32, max_steps_per_epoch=6, lr=0.01, optimizer="adamw",
                                             weight_decay=0.0, warmup_epochs=0, validate=False))},
          example={"depth": 1},
          search_space={**OPTIMISER_SPACE, "depth": IntRange(1, "layers"), "n_ctx": Choice((2, 4, 8))})
class VPTDeep(FrozenBackboneMethod):
    uses_cached_features = False

    def __init__(self, adapter: BackboneAdapter, classnames: list[str], n_ctx: int = 8, depth: int | str = "all",
                 template: str = "a photo of a {}.", keep_underscores: bool = False) -> None:
        super().__init__(adapter, classnames)
        self.depth = resolve_depth(adapter, depth, towers=("vision",))
        self.vision = prompt_stack(self.depth, n_ctx, adapter.vision_width)
        with torch.no_grad():
            feats = adapter.encode_text(fill(template, self.classnames, keep_underscores)).float()
        self.register_buffer("class_features", F.normalize(feats, dim=-1), persistent=False)

    def precompute_text(self) -> torch.Tensor:
        return self.class_features

    def forward(self, images: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        img = self.adapter.encode_image(images, prompts=list(self.vision) or None)
        return self.cosine_logits(img, self.class_features)
