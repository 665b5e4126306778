"""KgCoOp (Yao et al., CVPR 2023): CoOp kept close to the hand-crafted prompt's text features.

Faithful to the reference: CoOp with 4 context vectors initialised from "a photo of a";
loss = CE + w · (1 − mean over classes of cos(learned class text feature, frozen
hand-crafted class text feature)), w = 8; the hand-crafted features come from
"a photo of a {}." and are computed once, frozen.

Differs: the hand-crafted features may be a template ensemble or LLM sentence ensembles
(`templates`, `ensembles`), and CoOp's feature cache / shared-prefix speed-ups apply. The
regulariser reuses the class text features of the step's forward pass (the reference does
the same inside one forward): the text tower runs once per step, not twice.
`keep_underscores` (the learned and the hand-crafted prompts) and `shared_class_init` as
in CoOp (defaults: the reference's).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from medkit.backbones import BackboneAdapter
from medkit.config import TrainConfig
from medkit.methods import CONTEXT_CHOICE, OPTIMISER_SPACE, Budget, FloatRange, GridEntry, register
from medkit.methods.clip_adapter import zero_shot_weights
from medkit.methods.coop import CoOp
from medkit.prompts import CLIP_DEFAULT_TEMPLATE


# CoOp's settings (KgCoOp's README: batch 128)
@register("kgcoop", kind="prompt", training=TrainConfig(epochs=50, batch_size=32, lr=0.002),
          budgets={"tiny": Budget(train=dict(batch_size=32, lr=0.02,
                                             optimizer="adamw", weight_decay=0.0, warmup_epochs=0, validate=False))},
          grid=(GridEntry("KgCoOp"),),
          search_space={**OPTIMISER_SPACE, "context": CONTEXT_CHOICE, "weight": FloatRange(0.5, 20.0, log=True)})
class KgCoOp(CoOp):
    uses_cached_features = True

    def __init__(self, adapter: BackboneAdapter, classnames: list[str], n_ctx: int | None = 4,
                 ctx_init: str | None = "a photo of a", class_specific: bool = False, position: str = "end",
                 weight: float = 8.0, templates: str | Sequence[str] = CLIP_DEFAULT_TEMPLATE,
                 ensembles: Mapping[str, Sequence[str]] | None = None, keep_underscores: bool = False,
                 shared_class_init: bool = False) -> None:
        super().__init__(adapter, classnames, n_ctx, ctx_init, class_specific, position,
                         keep_underscores=keep_underscores, shared_class_init=shared_class_init)
        self.weight = weight
        self.register_buffer("hand_crafted", zero_shot_weights(adapter, self.classnames, templates, ensembles,
                                                               keep_underscores),
                             persistent=False)
        # the training step's class text features, kept from `forward` for `loss` (with
        # their graph): recomputing them would run the text tower a second time
        self._step_text: torch.Tensor | None = None

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        tf = self.text_features() if text_features is None else text_features
        # only training needs them; in eval they would just pin memory
        self._step_text = tf if self.training else None
        return self.cosine_logits(image_features, tf)

    def regulariser(self, text_features: torch.Tensor) -> torch.Tensor:
        """1 − mean over classes of cos(learned, hand-crafted): 0 when they coincide."""
        cos = F.cosine_similarity(text_features.float(), self.hand_crafted, dim=-1, eps=1e-7)
        return 1.0 - cos.mean()

    def loss_terms(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """`ce` and `kg` (w · the regulariser), logged per epoch."""
        terms = {"ce": F.cross_entropy(logits, targets)}
        if not self.training or self.weight == 0:
            return terms
        if self._step_text is None:
            raise RuntimeError("KgCoOp.loss_terms in training needs the forward pass of the same step first")
        terms["kg"] = self.weight * self.regulariser(self._step_text)
        return terms
