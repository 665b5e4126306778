"""CoCoOp (Zhou et al., CVPR 2022): context conditioned on the image by a small meta-net.

Meta-net as in the reference: Linear(E → E/16) → ReLU → Linear(→ text width) on the
normalised image feature; its output is added to every context token. Unlike the
reference, which loops over the batch in Python and encodes K prompts per image, all
B·K prompts of a batch go through the text tower in one call (in chunks of
`text_chunk` rows to bound memory). Shared or class-specific context (only the context is
class-specific; the meta-net is shared), as in the implant study.
"""
from __future__ import annotations

import torch
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.methods import register
from medkit.methods.base import FrozenBackboneMethod
from medkit.methods.context import PromptContext


class MetaNet(nn.Sequential):
    def __init__(self, in_dim: int, out_dim: int, reduction: int = 16) -> None:
        hidden = max(1, in_dim // reduction)
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


@register("cocoop")
class CoCoOp(FrozenBackboneMethod):
    uses_cached_features = True

    def __init__(self, adapter: BackboneAdapter, classnames: list[str], n_ctx: int | None = 4,
                 ctx_init: str | None = "a photo of a", class_specific: bool = False, position: str = "end",
                 text_chunk: int = 2048) -> None:
        super().__init__(adapter, classnames)
        self.context = PromptContext(adapter, self.classnames, n_ctx, ctx_init, class_specific, position)
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
