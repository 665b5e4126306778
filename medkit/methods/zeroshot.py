"""Zero-shot classification: class text features from prompts, cosine logits."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from medkit.backbones import BackboneAdapter
from medkit.methods import GridEntry, Ref, register
from medkit.methods.base import FrozenBackboneMethod
from medkit.prompts import CLIP_DEFAULT_TEMPLATE, ensemble_from_templates


@torch.no_grad()
def class_text_features(adapter: BackboneAdapter, ensembles: Mapping[str, Sequence[str]],
                        classnames: Sequence[str]) -> torch.Tensor:
    """`[C, E]` unit norm: per class the normalised mean of its normalised sentence features."""
    missing = [c for c in classnames if not ensembles.get(c)]
    if missing:
        raise ValueError(f"no sentences for classes {missing[:5]}")
    feats = []
    for c in classnames:
        f = adapter.encode_texts(list(ensembles[c]), normalize=True).float()
        feats.append(F.normalize(f.mean(0), dim=-1))
    # normalised once more as a whole: a no-op but for the last bits, kept so that every
    # zero-shot weight medkit ever reported is reproduced bit for bit
    return F.normalize(torch.stack(feats).float(), dim=-1)


@register("zeroshot", kind="zeroshot",
          grid=(GridEntry("class names", {"templates": "a photo of a {}."}),
                GridEntry("description ensemble", {"ensembles": Ref("descriptions")})))
class ZeroShotClassifier(FrozenBackboneMethod):
    """Logits = logit_scale · norm(image feature) · norm(class text feature).

    A class's text feature is the normalised mean of its normalised sentence features,
    so one template, a template ensemble and an LLM/description ensemble are the same
    operation with different sentence lists: `templates` (one or several, `{}` the class
    name) or `ensembles` (`{classname: [sentences]}`, which wins when given, used as given).
    Template-filled names turn `_` into spaces, as CoOp's ZeroShotCLIP does;
    `keep_underscores=True` fills them in unchanged.
    """

    uses_cached_features = True
    trains_by_gradient = False
    eval_in_one_batch = True

    def __init__(self, adapter: BackboneAdapter, classnames: list[str],
                 templates: str | Sequence[str] = CLIP_DEFAULT_TEMPLATE,
                 ensembles: Mapping[str, Sequence[str]] | None = None, keep_underscores: bool = False) -> None:
        super().__init__(adapter, classnames)
        if ensembles is None:
            templates = [templates] if isinstance(templates, str) else list(templates)
            ensembles = ensemble_from_templates(templates, self.classnames, keep_underscores)
        self.register_buffer("class_features", class_text_features(adapter, ensembles, self.classnames))

    @classmethod
    def from_ensembles(cls, adapter: BackboneAdapter, ensembles: Mapping[str, Sequence[str]],
                       classnames: Sequence[str]) -> "ZeroShotClassifier":
        return cls(adapter, list(classnames), ensembles=ensembles)

    @classmethod
    def from_templates(cls, adapter: BackboneAdapter, templates: Sequence[str] | str,
                       classnames: Sequence[str]) -> "ZeroShotClassifier":
        return cls(adapter, list(classnames), templates=templates)

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        img = F.normalize(image_features.float(), dim=-1)
        return self.adapter.logit_scale.float().detach().cpu() * img.cpu() @ self.class_features.cpu().T

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits_from_features(image_features)

    def logits_from_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.adapter.encode_image(images))
