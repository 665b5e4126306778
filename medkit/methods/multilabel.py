"""What the multi-label methods share: the token features, pos/neg scores, masked losses.

A multi-label method scores every finding with a positive and a negative prompt; the
probability of a finding is the softmax over the pair, i.e. `sigmoid(pos − neg)`, so every
multi-label method returns log-odds `[B, C]` (`medkit.tasks.MultiLabel` reads them so).
Targets are `[B, C]` with 1 / 0 / -1, and -1 (uncertain or unlabelled) is masked in every
loss (`medkit.losses`).

The image tower stays frozen and unprompted in DualCoOp and PsPG, so their inputs come from
the feature cache: the pooled feature and the local tokens, projected into the joint space
(`medkit.features.adapter_token_encoder`). One cache entry serves every multi-label method.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from medkit.features import ImageEncoder, adapter_token_encoder, tokens_view
from medkit.methods.base import FrozenBackboneMethod

POSITIVE_TEMPLATE = "Findings suggesting {}."
NEGATIVE_TEMPLATE = "No evidence of {}."
#: the losses a multi-label method trains with (`loss=`): pair losses need a method with pair prompts
LOSSES = ("bce", "asl", "ranking", "released", "asl+pcl", "asl+spcl")


def loss_terms(name: str, scores: torch.Tensor, targets: torch.Tensor,
               pairs: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The named, weighted loss terms of `name` (each term masks unknown targets).

    `released`: PsPG's released code, 0.1·ASL + 0.07·multi-label margin ranking;
    `asl+spcl`: the paper's ASL + soft pairwise co-occurrence loss (`asl+pcl`: hard targets);
    `pairs`: (pair log-odds `[B, P]` over the finding pairs i < j, the targets of those images)."""
    from medkit import losses

    if name not in LOSSES:
        raise ValueError(f"loss {name!r}: choose one of {LOSSES}")
    if name == "bce":
        return {"bce": losses.masked_bce(scores, targets)}
    if name == "asl":
        return {"asl": losses.asymmetric_loss(scores, targets)}
    if name == "ranking":
        return {"ranking": losses.ranking_loss(scores, targets)}
    if name == "released":
        return {"asl": 0.1 * losses.asymmetric_loss(scores, targets, eps=1e-6),  # the released code's eps
                "ranking": 0.07 * losses.ranking_loss(scores, targets)}
    if pairs is None:
        raise ValueError(f"loss {name!r} needs pair scores: this method has no pair prompts")
    return {"asl": losses.asymmetric_loss(scores, targets),
            name.split("+")[1]: losses.pairwise_cooccurrence_loss(*pairs, soft=name.endswith("spcl"))}


class MultiLabelMethod(FrozenBackboneMethod):
    """Base of the multi-label methods: token features in, log-odds out, masked losses."""

    uses_cached_features = True
    multilabel = True
    loss_name: str = "asl"

    def image_encoder(self) -> ImageEncoder:
        return adapter_token_encoder(self.adapter)

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """`[B, 1 + T, E]` from the cached, flattened token features."""
        return tokens_view(features.float(), self.adapter.embed_dim)

    def loss_terms(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return loss_terms(self.loss_name, logits, targets)


def pair_log_odds(image: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                  scale: torch.Tensor | float) -> torch.Tensor:
    """`sigmoid` of this = softmax over (pos, neg) of scale · cos: `[B, E]` images, text
    `[C, E]` (shared) or `[B, C, E]` (per image)."""
    img = F.normalize(image.float(), dim=-1)
    pos, neg = F.normalize(positive.float(), dim=-1), F.normalize(negative.float(), dim=-1)
    if pos.dim() == 2:
        return scale * (img @ (pos - neg).T)
    return scale * torch.einsum("be,bce->bc", img, pos - neg)
