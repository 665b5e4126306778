"""CoOp (Zhou et al., IJCV 2022): learned context vectors in front of the class name.

Faithful to the reference: shared or class-specific (CSC) context, init N(0, 0.02) or a
phrase, class token at the end/middle/front, only the context trains, cosine logits with
the model's logit scale. Better than the reference: the image tower is frozen and
unprompted, so image features come from the feature cache instead of being recomputed
every step; the prompts are cut after their last real token; and on causal (CLIP) text
towers a shared context — identical in every class prompt — runs through the tower once,
not once per class.
"""
from __future__ import annotations

import torch

from medkit.backbones import BackboneAdapter
from medkit.methods import register
from medkit.methods.base import FrozenBackboneMethod
from medkit.methods.context import PromptContext


@register("coop")
class CoOp(FrozenBackboneMethod):
    uses_cached_features = True

    def __init__(self, adapter: BackboneAdapter, classnames: list[str], n_ctx: int | None = 16,
                 ctx_init: str | None = None, class_specific: bool = False, position: str = "end") -> None:
        super().__init__(adapter, classnames)
        self.context = PromptContext(adapter, self.classnames, n_ctx, ctx_init, class_specific, position)

    def text_features(self) -> torch.Tensor:
        c = self.context
        return self.adapter.encode_text_shared_prefix(c.embeddings(), c.ids, c.shared_prefix)

    def precompute_text(self) -> torch.Tensor:
        return self.text_features()

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        tf = self.text_features() if text_features is None else text_features
        return self.cosine_logits(image_features, tf)

    def class_indexed_parameters(self) -> set[str]:
        return {"context.ctx"} if self.context.class_specific else set()
