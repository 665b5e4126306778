"""DualCoOp (Sun et al., NeurIPS 2022): positive and negative learned contexts with
class-specific region aggregation, for multi-label recognition with partial or unseen labels.

Faithful to the reference: a positive and a negative context in front of the class name
(class-agnostic — what transfers to unseen findings — or class-specific), random N(0, 0.02)
init of 16 tokens each unless phrases are given ("Findings suggesting" / "No evidence of"
in the chest setting), cosine logits of every local token with both prompts scaled by
`region_scale` (reference: 20), a softmax over regions of the positive logits weighting both
maps, the weighted sums scaled by `output_scale` (reference: 5) and a softmax over the
(positive, negative) pair; ASL. Both scales are options here (the reference hard-codes them
and leaves its `--logit_scale` flag unused). The image tower is frozen: the local tokens come
from the feature cache (the reference projects each ResNet position through the attention
pool; on a ViT each patch token goes through the tower's final norm and projection).

`global_region=True` adds the pooled feature to the regions: a ViT's patch tokens are not
trained to align with text (only its class token is), unlike the positions of the ResNet
attention pool the reference reads; the default is the reference's regions (patches only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from medkit.backbones import BackboneAdapter
from medkit.config import TrainConfig
from medkit.methods import Budget, register
from medkit.methods.context import PromptContext
from medkit.methods.multilabel import LOSSES, MultiLabelMethod


# reference: SGD 0.002, 50 epochs, cosine, 1 warm-up epoch at 1e-5, batch 32, ASL
@register("dualcoop", kind="prompt", training=TrainConfig(epochs=50, batch_size=32, lr=0.002, warmup_epochs=1,
                                                          warmup_lr=1e-5),
          budgets={"tiny": Budget(train=dict(epochs=5, batch_size=64, lr=3e-3, optimizer="adamw",
                                             weight_decay=0.0, warmup_epochs=0, augment=False)),
                   "smoke": Budget(train=dict(epochs=1, batch_size=16, max_steps_per_epoch=2, augment=False))},
          example={"n_ctx": 2})
class DualCoOp(MultiLabelMethod):
    def __init__(self, adapter: BackboneAdapter, classnames: list[str], n_ctx: int | None = 16,
                 init_positive: str | None = None, init_negative: str | None = None, class_specific: bool = False,
                 region_scale: float = 20.0, output_scale: float = 5.0, loss: str = "asl",
                 global_region: bool = False) -> None:
        super().__init__(adapter, classnames)
        if loss not in LOSSES[:4]:
            raise ValueError(f"dualcoop loss {loss!r}: choose one of {LOSSES[:4]} (no pair prompts here)")
        self.loss_name = loss
        self.region_scale, self.output_scale, self.global_region = region_scale, output_scale, global_region
        self.positive = PromptContext(adapter, self.classnames, n_ctx if init_positive is None else None,
                                      init_positive, class_specific)
        self.negative = PromptContext(adapter, self.classnames, n_ctx if init_negative is None else None,
                                      init_negative, class_specific)

    def text_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.adapter.encode_text_shared_prefix
        p, n = self.positive, self.negative
        return enc(p.embeddings(), p.ids, p.shared_prefix), enc(n.embeddings(), n.ids, n.shared_prefix)

    def precompute_text(self) -> torch.Tensor:
        return torch.stack(self.text_features())

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        pos, neg = self.text_features() if text_features is None else text_features
        local = F.normalize(self.tokens(image_features)[:, 0 if self.global_region else 1:], dim=-1)  # [B, T, E]
        pos_map = self.region_scale * local @ F.normalize(pos.float(), dim=-1).T  # [B, T, C]
        neg_map = self.region_scale * local @ F.normalize(neg.float(), dim=-1).T
        weight = pos_map.softmax(dim=1)  # over regions, from the positive logits, for both maps
        pos_logit = self.output_scale * (weight * pos_map).sum(1)
        neg_logit = self.output_scale * (weight * neg_map).sum(1)
        return pos_logit - neg_logit  # log-odds: sigmoid = softmax over (pos, neg)

    def class_indexed_parameters(self) -> set[str]:
        return {"positive.ctx", "negative.ctx"} if self.positive.class_specific else set()
