"""Linear probe: multinomial logistic regression on frozen, normalised image features.

As in CoOp's linear-probe baseline, scikit-learn's L-BFGS logistic regression with the
inverse regularisation C chosen on the validation split (a small log-spaced grid).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.methods import GridEntry, register
from medkit.methods.base import FrozenBackboneMethod


@register("linear_probe", kind="probe", grid=(GridEntry("LP"),), novel_classes=False)
class LinearProbe(FrozenBackboneMethod):
    uses_cached_features = True
    trains_by_gradient = False  # scikit-learn's L-BFGS fits it in `prepare`

    def __init__(self, adapter: BackboneAdapter, classnames: list[str]) -> None:
        super().__init__(adapter, classnames)
        self.linear = nn.Linear(adapter.embed_dim, len(classnames))
        self.C: float | None = None

    def fit(self, features: torch.Tensor, labels: torch.Tensor, val_features: torch.Tensor | None = None,
            val_labels: torch.Tensor | None = None, grid: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0),
            seed: int = 1, max_iter: int = 1000) -> "LinearProbe":
        """Fit on features; with a validation split, pick C by its accuracy (ties → smaller C)."""
        from sklearn.linear_model import LogisticRegression

        x, y = features.float().numpy(), labels.numpy()
        missing = sorted(set(range(self.n_classes)) - set(y.tolist()))
        if missing:
            raise ValueError(f"linear probe: no training images for classes {[self.classnames[i] for i in missing][:5]}")
        candidates = list(grid) if val_features is not None else [1.0]
        best, best_acc = None, -1.0
        for c in candidates:
            with warnings.catch_warnings():
                # 1-shot sets have as many classes as samples: sklearn then wonders whether y is a regression target
                warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
                clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(x, y)
            acc = clf.score(val_features.float().numpy(), val_labels.numpy()) if val_features is not None else 0.0
            if acc > best_acc:
                best, best_acc = clf, acc
        self.C = float(best.C)
        coef, bias = best.coef_, best.intercept_
        if coef.shape[0] == 1:  # binary: sklearn keeps one row (class 1's logit z); ±z/2 keeps softmax = sigmoid(z)
            coef, bias = np.concatenate([-coef, coef]) / 2, np.concatenate([-bias, bias]) / 2
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(coef.astype(np.float32)))
            self.linear.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
        return self

    def prepare(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.fit(*train, *(val if val is not None else (None, None)))

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(image_features.float())
