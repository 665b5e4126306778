"""Multi-label linear probe: one logistic regression per finding on the frozen pooled
feature (scikit-learn, L-BFGS), fitted on the images whose label is known (-1 masked), C
chosen per finding on validation AUROC. Tied to its training findings: on an evaluation
dataset it scores the seen findings only (for scale, as an upper reference of what the
frozen features hold), never the unseen ones.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.methods import register
from medkit.methods.multilabel import MultiLabelMethod


@register("linear_probe_ml", kind="probe", novel_classes=False)
class MultiLabelLinearProbe(MultiLabelMethod):
    trains_by_gradient = False  # fitted in `prepare`

    def __init__(self, adapter: BackboneAdapter, classnames: list[str],
                 grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)) -> None:
        super().__init__(adapter, classnames)
        self.grid = tuple(grid)
        self.linear = nn.Linear(adapter.embed_dim, len(classnames))

    def _pooled(self, features: torch.Tensor) -> np.ndarray:
        return F.normalize(self.tokens(features)[:, 0], dim=-1).numpy()

    def prepare(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score

        x, y = self._pooled(train[0]), train[1].numpy()
        xv, yv = (self._pooled(val[0]), val[1].numpy()) if val is not None else (None, None)
        weight, bias = np.zeros((self.n_classes, x.shape[1]), np.float32), np.zeros(self.n_classes, np.float32)
        for c in range(self.n_classes):
            known = y[:, c] >= 0
            yc = y[known, c]
            if len(np.unique(yc)) < 2:  # a finding always or never present: a constant score
                bias[c] = 8.0 if (len(yc) and yc[0] == 1) else -8.0
                continue
            best, best_auc = None, -1.0
            for C in self.grid if xv is not None else (1.0,):  # no validation: sklearn's default C
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    clf = LogisticRegression(C=C, max_iter=1000).fit(x[known], yc)
                auc = 0.0
                if xv is not None:
                    kv = yv[:, c] >= 0
                    if len(np.unique(yv[kv, c])) == 2:
                        auc = roc_auc_score(yv[kv, c], clf.decision_function(xv[kv]))
                if auc > best_auc:
                    best, best_auc = clf, auc
            weight[c], bias[c] = best.coef_[0], best.intercept_[0]
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(weight))
            self.linear.bias.copy_(torch.from_numpy(bias))

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(F.normalize(self.tokens(image_features)[:, 0], dim=-1))
