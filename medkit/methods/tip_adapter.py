"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): a key-value cache of the few shots.

Faithful to the reference: the cache keys are the normalised training features `[N, E]`,
the values their one-hot labels `[N, C]`; for a normalised query f,
`logits = clip_logits + α · exp(−β (1 − f·Kᵀ)) · V`, with α = 1, β = 5.5 until the
validation search (`finish`) over the reference's grid
`β_i = 0.1 + i (β_max − 0.1) / n_β` (likewise α), β outer, α inner, first best wins.
Tip-Adapter is training-free; Tip-Adapter-F trains the keys only (the reference's
`nn.Linear` initialised with the keys, values fixed, keys not renormalised), with the
reference schedule in `TipAdapterF.REFERENCE_TRAINING`.

Differs: clip_logits use the backbone's logit scale (`cosine_logits`) instead of the
reference's hard-coded 100 (CLIP's own scale, but not BiomedCLIP's); the search keeps
the current (α, β) unless a grid point is strictly better on validation, so it never
lowers validation accuracy; the keys are the un-augmented features the runner gives
`prepare`, where the reference averages 10 augmented views per image. Template-filled
class names turn `_` into spaces as the reference does; `keep_underscores=True` keeps them.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.config import TrainConfig
from medkit.methods import OPTIMISER_SPACE, Budget, GridEntry, register
from medkit.methods.base import FrozenBackboneMethod
from medkit.methods.clip_adapter import zero_shot_weights
from medkit.prompts import CLIP_DEFAULT_TEMPLATE

Features = tuple[torch.Tensor, torch.Tensor]


def search_grid(scale: float, steps: int) -> list[float]:
    """The reference's `search_hp` grid: `steps` values from 0.1 towards `scale` (end excluded)."""
    return [0.1 + i * (scale - 0.1) / steps for i in range(steps)]


@register("tip_adapter", kind="adapter", grid=(GridEntry("Tip-Adapter"),), novel_classes=False)
class TipAdapter(FrozenBackboneMethod):
    uses_cached_features = True
    trains_by_gradient = False
    #: Tip-Adapter-F makes the keys a Parameter; here they are a buffer (nothing trains)
    learn_keys = False

    def __init__(self, adapter: BackboneAdapter, classnames: list[str], alpha: float = 1.0, beta: float = 5.5,
                 search_scale: tuple[float, float] = (10.0, 5.0), search_steps: tuple[int, int] = (10, 10),
                 templates: str | Sequence[str] = CLIP_DEFAULT_TEMPLATE,
                 ensembles: Mapping[str, Sequence[str]] | None = None, keep_underscores: bool = False) -> None:
        super().__init__(adapter, classnames)
        self.alpha, self.beta = float(alpha), float(beta)
        self.search_scale, self.search_steps = search_scale, search_steps  # (β, α) as in the reference
        self.register_buffer("text_weights", zero_shot_weights(adapter, self.classnames, templates, ensembles,
                                                               keep_underscores),
                             persistent=False)
        # the cache's size is the training set's: unknown until `prepare`
        if self.learn_keys:
            self.register_parameter("cache_keys", None)
        else:
            self.register_buffer("cache_keys", None)
        self.register_buffer("cache_values", None)

    def prepare(self, train: Features, val: Features | None = None) -> None:
        feats, labels = train
        device = self.text_weights.device
        labels = labels.to(device).long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise ValueError(f"labels must lie in [0, {self.n_classes})")
        keys = F.normalize(feats.detach().float().to(device), dim=-1)
        self.cache_keys = nn.Parameter(keys.clone()) if self.learn_keys else keys
        self.cache_values = F.one_hot(labels, self.n_classes).float()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything `prepare` and `finish` fitted: the cache (keys, values) and the searched
        α, β — a checkpoint of a training-free method is its cache."""
        state = super().trainable_state()  # Tip-Adapter-F: the keys are its parameter
        if self.cache_keys is not None:
            state.setdefault("cache_keys", self.cache_keys.detach().clone())
            state["cache_values"] = self.cache_values.detach().clone()
        state["alpha"], state["beta"] = torch.tensor(self.alpha), torch.tensor(self.beta)
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.alpha = float(state.pop("alpha", self.alpha))
        self.beta = float(state.pop("beta", self.beta))
        keys, values = state.pop("cache_keys", None), state.pop("cache_values", None)
        if keys is not None:
            device = self.text_weights.device
            if self.cache_keys is not None and self.cache_keys.shape == keys.shape:
                with torch.no_grad():  # in place: an optimizer holding the keys keeps them (resume)
                    self.cache_keys.copy_(keys)
            else:
                self.cache_keys = nn.Parameter(keys.clone().to(device)) if self.learn_keys else keys.clone().to(device)
            self.cache_values = values.clone().to(device)
        super().load_trainable_state(state)

    def _check_prepared(self) -> None:
        if self.cache_keys is None:
            raise RuntimeError(f"{type(self).__name__}: call prepare(train) first, it builds the cache")

    def parts(self, image_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(clip logits `[B, C]`, affinity f·Kᵀ `[B, N]`) of a batch: what α and β act on."""
        self._check_prepared()
        f = F.normalize(image_features.float(), dim=-1)
        return self.cosine_logits(f, self.text_weights), f @ self.cache_keys.float().T

    def combine(self, clip_logits: torch.Tensor, affinity: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        cache_logits = torch.exp(-beta * (1 - affinity)) @ self.cache_values
        return clip_logits + alpha * cache_logits

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.combine(*self.parts(image_features), self.alpha, self.beta)

    @torch.no_grad()
    def finish(self, val: Features | None) -> None:
        """Grid search of (α, β) on validation accuracy; without validation data the
        current values stay."""
        if val is None or len(val[1]) == 0:
            return
        feats, labels = val
        labels = labels.to(self.text_weights.device)
        clip_logits, affinity = self.parts(feats.to(self.text_weights.device))

        def accuracy(alpha: float, beta: float) -> float:
            return float((self.combine(clip_logits, affinity, alpha, beta).argmax(1) == labels).float().mean())

        best, best_acc = (self.alpha, self.beta), accuracy(self.alpha, self.beta)
        for beta in search_grid(self.search_scale[0], self.search_steps[0]):
            for alpha in search_grid(self.search_scale[1], self.search_steps[1]):
                acc = accuracy(alpha, beta)
                if acc > best_acc:  # strictly better: ties keep the earlier candidate
                    best, best_acc = (alpha, beta), acc
        self.alpha, self.beta = best


@register("tip_adapter_f", kind="adapter",
          training=TrainConfig(epochs=20, batch_size=256, optimizer="adamw", lr=1e-3, weight_decay=0.01, warmup_epochs=0),
          budgets={"tiny": Budget(train=dict(batch_size=32, lr=0.01,
                                             optimizer="adamw", weight_decay=0.0, warmup_epochs=0, validate=False))},
          grid=(GridEntry("Tip-Adapter-F"),), novel_classes=False,
          search_space=OPTIMISER_SPACE)  # alpha and beta: searched on validation by `finish`, as in the reference
class TipAdapterF(TipAdapter):
    """Tip-Adapter with the cache keys trained by the generic loop (only they train)."""

    trains_by_gradient = True
    learn_keys = True
    #: the reference's training of the keys (TrainConfig has no eps: AdamW's default applies)
    REFERENCE_TRAINING: dict[str, Any] = {"optimizer": "adamw", "lr": 1e-3, "eps": 1e-4, "epochs": 20,
                                          "batch_size": 256, "schedule": "cosine (per step)", "warmup_epochs": 0}
