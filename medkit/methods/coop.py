"""CoOp (Zhou et al., IJCV 2022): learned context vectors in front of the class name.

Faithful to the reference: shared or class-specific (CSC) context, init N(0, 0.02) or a
phrase, class token at the end/middle/front, only the context trains, cosine logits with
the model's logit scale. Better than the reference: the image tower is frozen and
unprompted, so image features come from the feature cache instead of being recomputed
every step; the prompts are cut after their last real token; and on causal (CLIP) text
towers a shared context — identical in every class prompt — runs through the tower once,
not once per class.

Options beyond the reference's: `keep_underscores=True` feeds class names with their `_`
(the reference, and the default, turn them into spaces); `shared_class_init=True` starts a
random class-specific context from one draw copied to every class (the reference, and the
default, draw each class's context independently).
"""
from __future__ import annotations

import torch

from medkit.backbones import BackboneAdapter
from medkit.config import TrainConfig
from medkit.methods import CONTEXT_CHOICE, OPTIMISER_SPACE, Budget, GridEntry, register
from medkit.methods.base import FrozenBackboneMethod
from medkit.methods.context import PromptContext


# tiny: cached features, so a step is one text pass over the K class prompts (~0.25 s at 45
# classes): few epochs, AdamW at a larger lr than the reference's SGD (50–200 epochs), big batches
@register("coop", kind="prompt", training=TrainConfig(epochs=50, batch_size=32, lr=0.002),
          budgets={"tiny": Budget(train=dict(epochs=3, batch_size=128, lr=0.02,
                                             optimizer="adamw", weight_decay=0.0, warmup_epochs=0)),
                   "full": Budget(epochs_by_shots={1: 50, 2: 100, 4: 100, 8: 200, 16: 200})},
          grid=(GridEntry("CoOp", {"n_ctx": None, "ctx_init": "a photo of a"}),),
          search_space={**OPTIMISER_SPACE, "context": CONTEXT_CHOICE})
class CoOp(FrozenBackboneMethod):
    uses_cached_features = True

    def __init__(self, adapter: BackboneAdapter, classnames: list[str], n_ctx: int | None = 16,
                 ctx_init: str | None = None, class_specific: bool = False, position: str = "end",
                 keep_underscores: bool = False, shared_class_init: bool = False) -> None:
        super().__init__(adapter, classnames)
        self.context = PromptContext(adapter, self.classnames, n_ctx, ctx_init, class_specific, position,
                                     keep_underscores=keep_underscores, shared_class_init=shared_class_init)

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
