"""MaPLe (Khattak et al., CVPR 2023): multimodal prompts coupled text → vision, per layer.

As in the reference: `n_ctx=2` text context initialised from "a photo of a" (only the
first `n_ctx` words learn, the rest stay as fixed text), deeper text prompts of their own
(std 0.02) for layers 1..depth-1, and every vision prompt a linear projection of the text
prompt of its layer. The layer-0 projection is a Linear of its own; the projections of
layers 1..depth-1 start as identical copies of one freshly initialised Linear (the
reference's `_get_clones`, a deep copy per layer) and then train separately.
`independent_couplings=True` initialises each deeper projection on its own instead
(medkit's former behaviour). Vision prompts are appended after
the embeddings and replaced per layer; beyond the depth they carry through. Unlike the
reference nothing is hard-wired: widths come from the adapter, so it runs on open_clip
native towers and on timm + HuggingFace towers (BiomedCLIP, MiniCLIP).

`class_specific=True` makes only the first-layer text context class-specific (the
implant study's variant); the image side must not depend on the class, so the layer-0
coupling sees the class-mean context. `depth=0` is the frozen zero-shot model with the
init prompt. `keep_underscores` and `shared_class_init` as in CoOp (defaults: the reference's).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.config import TrainConfig
from medkit.methods import OPTIMISER_SPACE, Budget, Choice, IntRange, register
from medkit.methods.base import FrozenBackboneMethod
from medkit.methods.context import PromptContext
from medkit.methods.deep import prompt_stack, resolve_depth


def coupling_layers(depth: int, text_width: int, vision_width: int, independent: bool = False) -> nn.ModuleList:
    """`depth` text → vision projections: layer 0's its own Linear (the reference's `proj`), layers
    1..depth-1 deep copies of one Linear (its `compound_prompt_projections = _get_clones(...)`),
    or each drawn on its own when `independent`."""
    if depth == 0:
        return nn.ModuleList()
    first = nn.Linear(text_width, vision_width)
    if independent:
        deeper = [nn.Linear(text_width, vision_width) for _ in range(depth - 1)]
    else:
        template = nn.Linear(text_width, vision_width)
        deeper = [copy.deepcopy(template) for _ in range(depth - 1)]  # equal at the start, separate parameters
    return nn.ModuleList([first, *deeper])


# tiny: the image tower runs every step: 2 epochs of 6 batches, validated once at the end
@register("maple", kind="deep_prompt", training=TrainConfig(epochs=5, batch_size=4, lr=0.0035),
          budgets={"tiny": Budget(train=dict(epochs=2, batch_size=32, max_steps_per_epoch=6, lr=0.01, optimizer="adamw",
                                             weight_decay=0.0, warmup_epochs=0, validate=False))},
          example={"depth": 1},
          search_space={**OPTIMISER_SPACE, "depth": IntRange(1, "layers"), "n_ctx": Choice((2, 4, 8))})
class MaPLe(FrozenBackboneMethod):
    uses_cached_features = False

    def __init__(self, adapter: BackboneAdapter, classnames: list[str], n_ctx: int = 2,
                 ctx_init: str | None = "a photo of a", depth: int | str = 9, class_specific: bool = False,
                 position: str = "end", keep_underscores: bool = False, shared_class_init: bool = False,
                 independent_couplings: bool = False) -> None:
        super().__init__(adapter, classnames)
        self.depth = resolve_depth(adapter, depth)
        self.context = PromptContext(adapter, self.classnames, n_ctx, ctx_init, class_specific, position,
                                     keep_underscores=keep_underscores, shared_class_init=shared_class_init)
        self.context.ctx.requires_grad_(self.depth > 0)
        self.deep_text = prompt_stack(max(0, self.depth - 1), self.context.n_ctx, adapter.text_width)
        self.couplings = coupling_layers(self.depth, adapter.text_width, adapter.vision_width, independent_couplings)

    def text_prompts(self) -> list[torch.Tensor | None]:
        return [None, *self.deep_text]

    def vision_prompts(self) -> list[torch.Tensor] | None:
        if self.depth == 0:
            return None
        sources = [self.context.shared_context(), *self.deep_text]
        return [proj(src) for proj, src in zip(self.couplings, sources)]

    def text_features(self) -> torch.Tensor:
        c = self.context
        return self.adapter.encode_text_from_embeddings(c.embeddings(), c.ids, deep_prompts=self.text_prompts(),
                                                        prompt_positions=c.positions)

    def precompute_text(self) -> torch.Tensor:
        return self.text_features()

    def forward(self, images: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        img = self.adapter.encode_image(images, prompts=self.vision_prompts())
        tf = self.text_features() if text_features is None else text_features
        return self.cosine_logits(img, tf)

    def class_indexed_parameters(self) -> set[str]:
        return {"context.ctx"} if self.context.class_specific else set()
