"""Segmentation loss and metrics: Dice + 0.2·CE for training, MONAI's `DiceCELoss(sigmoid=True,
lambda_dice=1, lambda_ce=0.2)` with its other defaults, as TuneVLSeg configures it
(`configs/model/coop/clipseg.yaml`); per-sample Dice and IoU at a 0.5 threshold, and the
95th-percentile Hausdorff distance as the boundary metric, for evaluation (MONAI).

TuneVLSeg's own evaluation uses torchmetrics: `Dice(threshold=0.5, average="samples")` (per
sample, as here) and `JaccardIndex(task="binary")`, which accumulates over the whole split (a
dataset-level IoU, not a per-sample mean): rows that compare with its IoU need that variant.

Masks are binary `[B, H, W]` (1 = the structure); logits the same shape. An image whose mask is
empty and whose prediction is empty scores Dice = IoU = 1 (MONAI's `ignore_empty=False`): a
dataset with lesion-free images otherwise drops them from the mean; the distance is NaN there
(undefined without a boundary) and the summaries skip NaN.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch


def seg_loss(logits: torch.Tensor, masks: torch.Tensor, lambda_dice: float = 1.0, lambda_ce: float = 0.2,
             batch: bool = False) -> torch.Tensor:
    """MONAI's DiceCELoss on sigmoid probabilities (one channel: the CE term is BCE), MONAI's
    defaults otherwise. Its Dice term is per image: an image with an empty mask contributes
    ~1 however well it is predicted (the smoothing is 1e-5); `batch=True` (a deviation, off by
    default) pools the Dice over the batch instead, the usual fix for lesion-free images."""
    from monai.losses import DiceCELoss

    loss = DiceCELoss(sigmoid=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce, batch=batch)
    return loss(logits.float().unsqueeze(1), masks.float().unsqueeze(1))


def seg_scores(logits: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5,
               boundary: bool = True) -> dict[str, np.ndarray]:
    """Per-sample `dice`, `iou` (and `hd95` in pixels) of `sigmoid(logits) > threshold`."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU

    if logits.shape != masks.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and masks {tuple(masks.shape)} differ in shape")
    values = torch.unique(masks)
    if not bool(((values == 0) | (values == 1)).all()):
        raise ValueError(f"masks must be binary (0/1); found values {values[:8].tolist()}")
    pred = (torch.sigmoid(logits.float()) > threshold).float().unsqueeze(1).cpu()
    true = masks.float().unsqueeze(1).cpu()
    out = {"dice": DiceMetric(include_background=True, reduction="none", ignore_empty=False)(pred, true),
           "iou": MeanIoU(include_background=True, reduction="none", ignore_empty=False)(pred, true)}
    if boundary:
        empty = (pred.flatten(1).sum(1) == 0) | (true.flatten(1).sum(1) == 0)
        hd = torch.full((len(pred), 1), float("nan"))
        if (~empty).any():
            with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal argument
                warnings.simplefilter("ignore", FutureWarning)
                hd[~empty] = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(
                    pred[~empty], true[~empty]).float()
        out["hd95"] = hd
    return {k: v.flatten().numpy().astype(np.float64) for k, v in out.items()}


def dataset_iou(logits: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> float:
    """Intersection over union pooled over every pixel of the split (MONAI's confusion counts
    summed over images, then its threat score): torchmetrics' `JaccardIndex(task="binary")`,
    TuneVLSeg's IoU. An image without the structure then weighs nothing instead of 0 or 1."""
    from monai.metrics import compute_confusion_matrix_metric, get_confusion_matrix

    pred = (torch.sigmoid(logits.float()) > threshold).float().unsqueeze(1).cpu()
    counts = get_confusion_matrix(pred, masks.float().unsqueeze(1).cpu(), include_background=True).sum(0)
    tp, fp, fn = (float(counts[0, i]) for i in (0, 1, 3))
    if tp + fp + fn == 0:
        return 1.0  # nothing to find and nothing found
    return float(compute_confusion_matrix_metric("threat score", counts)[0])


def summarise(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """`<metric>` (mean) and `<metric>_std` over samples, NaN skipped."""
    out = {}
    for name, values in scores.items():
        finite = values[np.isfinite(values)]
        out[name] = float(finite.mean()) if len(finite) else float("nan")
        out[f"{name}_std"] = float(finite.std()) if len(finite) else float("nan")
    return out
