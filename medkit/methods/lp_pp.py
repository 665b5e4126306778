"""LP++ (Huang et al., CVPR 2024): a linear probe blended with the zero-shot text classifier.

logits = f·Wᵀ + b + α ⊙ (f·Tᵀ): f the normalised image feature, T the frozen zero-shot
class text features `[C, E]` (unit norm, no logit scale), W `[C, E]` the visual
prototypes, b `[C]`, α `[C]` the class-wise blending multipliers. `prepare` fits all
three itself on the full training batch (cross-entropy), so the runner skips the
gradient loop.

Faithful to the reference: the logit form; W starts at the visual class centroids, b at 0,
α at the text-logit centroids; full-batch training on frozen features; with a validation
split the epoch with the best validation accuracy is kept (ties → the later epoch, as the
reference's `>=`).

Differs, deliberately simple: W starts at the *normalised class means* (the reference uses
unnormalised class sums); α_c starts at the mean, over the training images of class c,
of their text logit f·T_c — one value per class, where the reference multiplies these by
250 and starts every class at their mean; W, b and α are trained jointly by Adam
(lr 1e-3, 300 full-batch epochs) instead of the reference's block-coordinate descent
with step sizes from Lipschitz constants (SGD on W every step, a gradient step on α
every 10 epochs). Template-filled class names turn `_` into spaces as the CoOp-family
references do; `keep_underscores=True` keeps them.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.methods import GridEntry, register
from medkit.methods.base import FrozenBackboneMethod
from medkit.methods.clip_adapter import zero_shot_weights
from medkit.prompts import CLIP_DEFAULT_TEMPLATE

Features = tuple[torch.Tensor, torch.Tensor]


@register("lp_pp", kind="probe", grid=(GridEntry("LP++"),), novel_classes=False)
class LPPlusPlus(FrozenBackboneMethod):
    uses_cached_features = True
    trains_by_gradient = False

    def __init__(self, adapter: BackboneAdapter, classnames: list[str], epochs: int = 300, lr: float = 1e-3,
                 select_on_val: bool = True, templates: str | Sequence[str] = CLIP_DEFAULT_TEMPLATE,
                 ensembles: Mapping[str, Sequence[str]] | None = None, keep_underscores: bool = False) -> None:
        super().__init__(adapter, classnames)
        self.epochs, self.lr, self.select_on_val = epochs, lr, select_on_val
        self.register_buffer("text_weights", zero_shot_weights(adapter, self.classnames, templates, ensembles,
                                                               keep_underscores),
                             persistent=False)
        c, e = self.text_weights.shape
        # before `prepare` (W = 0, α = 1) the method is the zero-shot classifier (unscaled)
        self.weight = nn.Parameter(torch.zeros(c, e, device=self.text_weights.device))
        self.bias = nn.Parameter(torch.zeros(c, device=self.text_weights.device))
        self.alpha = nn.Parameter(torch.ones(c, device=self.text_weights.device))

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        f = F.normalize(image_features.float(), dim=-1)
        return f @ self.weight.T + self.bias + self.alpha * (f @ self.text_weights.T)

    @torch.no_grad()
    def initialise(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """W = normalised class means, b = 0, α_c = mean_{i: y_i = c} f_i·T_c."""
        counts = torch.bincount(labels, minlength=self.n_classes)
        missing = (counts == 0).nonzero().flatten().tolist()
        if missing:
            raise ValueError(f"LP++: no training images for classes {[self.classnames[i] for i in missing][:5]}")
        onehot = F.one_hot(labels, self.n_classes).float()  # [N, C]
        n = counts.float()
        self.weight.copy_(F.normalize(onehot.T @ feats / n[:, None], dim=-1))
        self.bias.zero_()
        self.alpha.copy_((onehot * (feats @ self.text_weights.T)).sum(0) / n)

    def prepare(self, train: Features, val: Features | None = None) -> None:
        device = self.weight.device
        x = F.normalize(train[0].detach().float().to(device), dim=-1)
        y = train[1].to(device).long()
        self.initialise(x, y)
        if val is not None and (not self.select_on_val or len(val[1]) == 0):
            val = None
        if val is not None:
            vx, vy = F.normalize(val[0].detach().float().to(device), dim=-1), val[1].to(device)
        params = [self.weight, self.bias, self.alpha]
        opt = torch.optim.Adam(params, lr=self.lr)
        best_acc, best = -1.0, None
        with torch.enable_grad():  # the runner may call prepare under no_grad
            for _ in range(self.epochs):
                loss = F.cross_entropy(self(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if val is not None:
                    with torch.no_grad():
                        acc = float((self(vx).argmax(1) == vy).float().mean())
                    if acc >= best_acc:
                        best_acc, best = acc, [p.detach().clone() for p in params]
        if best is not None:
            with torch.no_grad():
                for p, v in zip(params, best):
                    p.copy_(v)
