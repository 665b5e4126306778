"""Multi-label zero-shot with fixed positive / negative prompts (CheXzero-style).

For every finding c: "Findings suggesting {c}." and "No evidence of {c}."; the probability of
c is the softmax over the pair of cosine logits (= sigmoid of their difference), on the
pooled image feature. Templates are options (`positive`, `negative`; CheXzero's own pair is
"{}" / "no {}"). Nothing trains: the baseline every learned prompt must beat, and the only
method here that needs nothing but names for unseen findings.
"""
from __future__ import annotations

import torch

from medkit.backbones import BackboneAdapter
from medkit.methods import register
from medkit.methods.multilabel import NEGATIVE_TEMPLATE, POSITIVE_TEMPLATE, MultiLabelMethod, pair_log_odds
from medkit.prompts import prompt_name


@register("zeroshot_ml", kind="zeroshot")
class MultiLabelZeroShot(MultiLabelMethod):
    trains_by_gradient = False
    eval_in_one_batch = True

    def __init__(self, adapter: BackboneAdapter, classnames: list[str], positive: str = POSITIVE_TEMPLATE,
                 negative: str = NEGATIVE_TEMPLATE) -> None:
        super().__init__(adapter, classnames)
        names = [prompt_name(c) for c in self.classnames]
        with torch.no_grad():
            self.register_buffer("positive", adapter.encode_texts([positive.format(n) for n in names]).float())
            self.register_buffer("negative", adapter.encode_texts([negative.format(n) for n in names]).float())

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        return pair_log_odds(self.tokens(image_features)[:, 0], self.positive, self.negative,
                             self.adapter.logit_scale.float())
