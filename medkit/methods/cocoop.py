"""CoCoOp (Zhou et al., CVPR 2022): context conditioned on the image by a small meta-net.

Meta-net as in the reference: Linear(E → E/16) → ReLU → Linear(→ text width) on the
normalised image feature; its output is added to every context token. Unlike the
reference, which loops over the batch in Python and encodes K prompts per image, all
B·K prompts of a batch go through the text tower in one call (in chunks of
`text_chunk` rows to bound memory). Shared or class-specific context (only the context is
class-specific; the meta-net is shared), as in the implant study. `keep_underscores` and
`shared_class_init` as in CoOp (defaults: the reference's).
"""
from __future__ import annotations

import torch
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.config import TrainConfig
from medkit.methods import CONTEXT_CHOICE, OPTIMISER_SPACE, Budget, GridEntry, register
from medkit.methods.base import FrozenBackboneMethod
from medkit.methods.context import PromptContext


class MetaNet(nn.Sequential):
    def __init__(self, in_dim: int, out_dim: int, reduction: int = 16) -> None:
        hidden = max(1, in_dim // reduction)
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


# B·K text passes per step and per evaluated image: on the CPU profiles a few steps, no
# per-epoch validation, and a capped evaluation (~2 images per class at 45 classes)
@register("cocoop", kind="prompt", training=TrainConfig(epochs=10, batch_size=1, lr=0.002),
          budgets={"smoke": Budget(train=dict(batch_size=4), eval_images={"full": 8, "few_shot": 8}),
                   "tiny": Budget(train=dict(epochs=2, batch_size=4, max_steps_per_epoch=6, lr=0.01,
                                             optimizer="adamw", weight_decay=0.0, warmup_epochs=0,
                                             validate=False), steps=4, eval_images={"full": 90, "few_shot": 30})},
          grid=(GridEntry("CoCoOp", {"n_ctx": None, "ctx_init": "a photo of a"}),),
          search_space={**OPTIMISER_SPACE, "context": CONTEXT_CHOICE})
class CoCoOp(FrozenBackboneMethod):
    uses_cached_features = True

    def __init__(self, adapter: BackboneAdapter, classnames: list[str], n_ctx: int | None = 4,
                 ctx_init: str | None = "a photo of a", class_specific: bool = False, position: str = "end",
                 text_chunk: int = 2048, keep_underscores: bool = False, shared_class_init: bool = False) -> None:
        super().__init__(adapter, classnames)
        self.context = PromptContext(adapter, self.classnames, n_ctx, ctx_init, class_specific, position,
                                     keep_underscores=keep_underscores, shared_class_init=shared_class_init)
        self.meta_net = MetaNet(adapter.embed_dim, adapter.text_width)
        self.text_chunk = text_chunk

    def text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Per-image class text features `[B, K, E]` from one batched text pass."""
        c = self.context
        bias = self.meta_net(image_features.float())
        emb = c.embeddings(bias)                            # [B·K, L, D]
        ids = c.ids.repeat(image_features.shape[0], 1)
        feats = [self.adapter.encode_text_from_embeddings(emb[i:i + self.text_chunk], ids[i:i + self.text_chunk])
                 for i in range(0, emb.shape[0], self.text_chunk)]
        return torch.cat(feats).reshape(image_features.shape[0], c.n_prompts, -1)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.cosine_logits(image_features, self.text_features(image_features))

    def class_indexed_parameters(self) -> set[str]:
        return {"context.ctx"} if self.context.class_specific else set()
