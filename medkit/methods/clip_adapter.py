"""CLIP-Adapter (Gao et al., IJCV 2023): a residual bottleneck MLP on the image feature.

Faithful to the reference: the adapter is Linear(E → E/reduction, no bias) → ReLU →
Linear(→ E, no bias) → ReLU, reduction 4; the adapted feature is
`ratio · A(x) + (1 − ratio) · x` with ratio 0.2; logits are the model's cosine logits
against frozen hand-crafted class text features ("a photo of a {}." by default); only the
adapter trains.

Differs: the reference adapts the raw image feature, here the cached feature is already
normalised. That changes nothing: without biases and with ReLU (both positively
homogeneous) `A(s·x) = s·A(x)` for s > 0, so the adapted feature only changes by the
factor s and the cosine logits are identical. The class text features may also be a
template ensemble or LLM sentence ensembles (`ensembles`). `keep_underscores=True` fills
the templates with the class names as given (default: `_` → space, as the references do).

`zero_shot_weights` is the one place every cached-feature baseline builds its frozen
zero-shot class text weights from templates or sentence ensembles.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.config import TrainConfig
from medkit.methods import OPTIMISER_SPACE, Budget, Choice, FloatRange, GridEntry, register
from medkit.methods.base import FrozenBackboneMethod
from medkit.methods.zeroshot import class_text_features
from medkit.prompts import CLIP_DEFAULT_TEMPLATE, ensemble_from_templates


@torch.no_grad()
def zero_shot_weights(adapter: BackboneAdapter, classnames: Sequence[str],
                      templates: str | Sequence[str] = CLIP_DEFAULT_TEMPLATE,
                      ensembles: Mapping[str, Sequence[str]] | None = None,
                      keep_underscores: bool = False) -> torch.Tensor:
    """Frozen zero-shot class text features `[C, E]`, unit norm: per class the normalised
    mean of its normalised sentence features. Sentence ensembles `{class: [sentences]}`,
    when given, win over the templates (and are used as given); template-filled names turn
    `_` into spaces unless `keep_underscores` (`medkit.prompts.prompt_name`)."""
    if ensembles is None:
        ensembles = ensemble_from_templates([templates] if isinstance(templates, str) else list(templates), classnames,
                                            keep_underscores)
    return class_text_features(adapter, ensembles, list(classnames)).detach().float()


class Adapter(nn.Sequential):
    def __init__(self, dim: int, reduction: int = 4) -> None:
        hidden = max(1, dim // reduction)
        super().__init__(nn.Linear(dim, hidden, bias=False), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim, bias=False), nn.ReLU(inplace=True))


# the few-shot benchmark's adapter baselines (BiomedCoOp's repository); tiny: AdamW, a step budget
@register("clip_adapter", kind="adapter", training=TrainConfig(epochs=20, batch_size=32, lr=0.01),
          budgets={"tiny": Budget(train=dict(batch_size=32, lr=0.01,
                                             optimizer="adamw", weight_decay=0.0, warmup_epochs=0, validate=False))},
          grid=(GridEntry("CLIP-Adapter"),),
          search_space={**OPTIMISER_SPACE, "ratio": FloatRange(0.05, 0.95), "reduction": Choice((2, 4, 8))})
class CLIPAdapter(FrozenBackboneMethod):
    uses_cached_features = True

    def __init__(self, adapter: BackboneAdapter, classnames: list[str], ratio: float = 0.2, reduction: int = 4,
                 templates: str | Sequence[str] = CLIP_DEFAULT_TEMPLATE,
                 ensembles: Mapping[str, Sequence[str]] | None = None, keep_underscores: bool = False) -> None:
        super().__init__(adapter, classnames)
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        self.ratio = ratio
        self.mlp = Adapter(adapter.embed_dim, reduction)
        # derived from the frozen tower and the prompts: rebuilt at construction, never saved
        self.register_buffer("text_weights", zero_shot_weights(adapter, self.classnames, templates, ensembles,
                                                               keep_underscores),
                             persistent=False)

    def adapt(self, image_features: torch.Tensor) -> torch.Tensor:
        x = image_features.float()
        return self.ratio * self.mlp(x) + (1 - self.ratio) * x

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.cosine_logits(self.adapt(image_features), self.text_weights)
