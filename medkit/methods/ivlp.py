"""IVLP (independent vision-language prompting; the MaPLe paper's baseline): deep text
prompts and deep vision prompts with no coupling between them. `depth=0` is the frozen
zero-shot model with the init prompt. `keep_underscores` and `shared_class_init` as in CoOp
(defaults: the reference's)."""
from __future__ import annotations

import torch

from medkit.backbones import BackboneAdapter
from medkit.config import TrainConfig
from medkit.methods import OPTIMISER_SPACE, Budget, Choice, IntRange, register
from medkit.methods.base import FrozenBackboneMethod
from medkit.methods.context import PromptContext
from medkit.methods.deep import prompt_stack, resolve_depth


@register("ivlp", kind="deep_prompt", training=TrainConfig(epochs=5, batch_size=4, lr=0.0025),
          budgets={"tiny": Budget(train=dict(epochs=2, batch_size=32, max_steps_per_epoch=6, lr=0.01, optimizer="adamw",
                                             weight_decay=0.0, warmup_epochs=0, validate=False))},
          example={"depth": 1},
          search_space={**OPTIMISER_SPACE, "depth": IntRange(1, "layers"), "n_ctx": Choice((2, 4)), "n_vision_ctx": Choice((2, 4, 8))})
class IVLP(FrozenBackboneMethod):
    uses_cached_features = False

    def __init__(self, adapter: BackboneAdapter, classnames: list[str], n_ctx: int = 2,
                 ctx_init: str | None = "a photo of a", depth: int | str = "all", n_vision_ctx: int = 2,
                 class_specific: bool = False, keep_underscores: bool = False, shared_class_init: bool = False) -> None:
        super().__init__(adapter, classnames)
        self.depth = resolve_depth(adapter, depth)
        self.context = PromptContext(adapter, self.classnames, n_ctx, ctx_init, class_specific,
                                     keep_underscores=keep_underscores, shared_class_init=shared_class_init)
        self.context.ctx.requires_grad_(self.depth > 0)
        self.deep_text = prompt_stack(max(0, self.depth - 1), self.context.n_ctx, adapter.text_width)
        self.vision = prompt_stack(self.depth, n_vision_ctx, adapter.vision_width)

    def text_features(self) -> torch.Tensor:
        c = self.context
        return self.adapter.encode_text_from_embeddings(c.embeddings(), c.ids, deep_prompts=[None, *self.deep_text],
                                                        prompt_positions=c.positions)

    def precompute_text(self) -> torch.Tensor:
        return self.text_features()

    def forward(self, images: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        img = self.adapter.encode_image(images, prompts=list(self.vision) or None)
        tf = self.text_features() if text_features is None else text_features
        return self.cosine_logits(img, tf)

    def class_indexed_parameters(self) -> set[str]:
        return {"context.ctx"} if self.context.class_specific else set()
