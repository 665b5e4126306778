"""ProGrad (Zhu et al., ICCV 2023): CoOp whose updates never oppose the zero-shot model's.

Two losses on the same logits: cross entropy on the labels, and the "general knowledge"
loss, KL from the frozen zero-shot prediction (hand-crafted "a photo of a {}." text
features) to the learned one, `T² · Σ −softmax(zs/T) · log_softmax(logits/T)` averaged over
the batch. Only the cross entropy is minimised; its gradient is projected so that it never
points against the general-knowledge gradient: where g_ce · g_kl < 0,
`g_ce ← g_ce − λ (g_ce · g_kl / ‖g_kl‖²) g_kl` (per parameter tensor, as the reference;
CoOp's context is one tensor). Reference defaults: T = 1, λ = 1, CoOp's training settings.

Differs: the context starts from "a photo of a" (4 tokens, the few-shot grid's CoOp),
and CoOp's feature cache and shared-prefix text pass apply. The gradient shaping is the
method's `backward_step`: the training loop is the same as every method's.
`keep_underscores` (the learned and the hand-crafted prompts) and `shared_class_init` as
in CoOp (defaults: the reference's).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from medkit.backbones import BackboneAdapter
from medkit.config import TrainConfig
from medkit.methods import OPTIMISER_SPACE, Budget, FloatRange, GridEntry, register
from medkit.methods.clip_adapter import zero_shot_weights
from medkit.methods.coop import CoOp
from medkit.prompts import CLIP_DEFAULT_TEMPLATE


def general_knowledge_loss(logits: torch.Tensor, zero_shot_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T² · mean over the batch of the cross entropy from softmax(zs/T) to log_softmax(logits/T)."""
    teacher = F.softmax(zero_shot_logits.float() / temperature, dim=-1)
    return -(teacher * F.log_softmax(logits.float() / temperature, dim=-1)).sum(1).mean() * temperature ** 2


def project_conflicting(grad: torch.Tensor, general: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """`grad` with its component against `general` removed (scaled by `strength`) when they conflict."""
    dot = (grad * general).sum()
    norm = (general * general).sum()
    if dot >= 0 or norm == 0:
        return grad
    return grad - strength * dot / norm * general


@register("prograd", kind="prompt", training=TrainConfig(epochs=50, batch_size=32, lr=0.002),
          budgets={"tiny": Budget(train=dict(batch_size=32, lr=0.02, optimizer="adamw", weight_decay=0.0,
                                             warmup_epochs=0, validate=False))},
          grid=(GridEntry("ProGrad"),),
          search_space={**OPTIMISER_SPACE, "strength": FloatRange(0.0, 1.0)})
class ProGrad(CoOp):
    uses_cached_features = True

    def __init__(self, adapter: BackboneAdapter, classnames: list[str], n_ctx: int | None = None,
                 ctx_init: str | None = "a photo of a", class_specific: bool = False, position: str = "end",
                 temperature: float = 1.0, strength: float = 1.0, templates: str | Sequence[str] = CLIP_DEFAULT_TEMPLATE,
                 ensembles: Mapping[str, Sequence[str]] | None = None, keep_underscores: bool = False,
                 shared_class_init: bool = False) -> None:
        super().__init__(adapter, classnames, n_ctx, ctx_init, class_specific, position,
                         keep_underscores=keep_underscores, shared_class_init=shared_class_init)
        self.temperature, self.strength = temperature, strength
        self.register_buffer("zero_shot_text", zero_shot_weights(adapter, self.classnames, templates, ensembles,
                                                                 keep_underscores),
                             persistent=False)
        self._step_images: torch.Tensor | None = None

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if self.training:
            self._step_images = image_features
        return super().forward(image_features, text_features)

    def loss_terms(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """`ce` (minimised) and `kl` (the general-knowledge loss: steers the direction only)."""
        terms = {"ce": F.cross_entropy(logits, targets)}
        if self.training and self._step_images is not None:
            with torch.no_grad():
                zs = self.cosine_logits(self._step_images, self.zero_shot_text)
            self._step_images = None
            terms["kl"] = general_knowledge_loss(logits, zs, self.temperature)
        return terms

    def backward_step(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        if "kl" not in terms:
            return super().backward_step(terms)
        params = [p for p in self.parameters() if p.requires_grad]
        general = torch.autograd.grad(terms["kl"], params, retain_graph=True, allow_unused=True)
        terms["ce"].backward()
        with torch.no_grad():
            for p, g in zip(params, general):
                if p.grad is not None and g is not None:
                    p.grad.copy_(project_conflicting(p.grad, g, self.strength))
        return terms["ce"]
