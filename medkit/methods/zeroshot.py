"""Zero-shot classification: class text features from prompts, cosine logits."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.methods import register
from medkit.prompts import ensemble_from_templates


@register("zeroshot")
class ZeroShotClassifier(nn.Module):
    """Logits = logit_scale · norm(image) · norm(class text feature).

    A class's text feature is the normalised mean of its normalised sentence features,
    so one template, a template ensemble and an LLM/description ensemble are the same
    operation with different sentence lists.
    """

    def __init__(self, adapter: BackboneAdapter, class_features: torch.Tensor) -> None:
        super().__init__()
        self.adapter = adapter
        self.register_buffer("class_features", F.normalize(class_features.float(), dim=-1))

    @classmethod
    @torch.no_grad()
    def from_ensembles(cls, adapter: BackboneAdapter, ensembles: Mapping[str, Sequence[str]],
                       classnames: Sequence[str]) -> "ZeroShotClassifier":
        missing = [c for c in classnames if not ensembles.get(c)]
        if missing:
            raise ValueError(f"no sentences for classes {missing[:5]}")
        feats = []
        for c in classnames:
            f = adapter.encode_texts(list(ensembles[c]), normalize=True).float()
            feats.append(F.normalize(f.mean(0), dim=-1))
        return cls(adapter, torch.stack(feats))

    @classmethod
    def from_templates(cls, adapter: BackboneAdapter, templates: Sequence[str] | str,
                       classnames: Sequence[str]) -> "ZeroShotClassifier":
        templates = [templates] if isinstance(templates, str) else list(templates)
        return cls.from_ensembles(adapter, ensemble_from_templates(templates, classnames), classnames)

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        img = F.normalize(image_features.float(), dim=-1)
        return self.adapter.logit_scale.float().detach().cpu() * img.cpu() @ self.class_features.cpu().T

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.adapter.encode_image(images))
