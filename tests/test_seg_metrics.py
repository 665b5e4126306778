"""Segmentation loss and metrics on hand-made masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medkit.seg.metrics import seg_loss, seg_scores, summarise


def _masks() -> tuple[torch.Tensor, torch.Tensor]:
    true = torch.zeros(3, 16, 16)
    pred = torch.zeros(3, 16, 16)
    true[0, 4:12, 4:12] = 1   # 64 pixels
    pred[0, 4:12, 4:8] = 1    # 32 of them
    true[1, 0:4, 0:4] = 1     # 16 pixels, missed entirely
    # image 2: nothing there, nothing predicted
    return pred, true


def test_dice_iou_and_boundary_on_hand_made_masks():
    pred, true = _masks()
    logits = (pred * 2 - 1) * 10
    s = seg_scores(logits, true)
    np.testing.assert_allclose(s["dice"], [2 * 32 / (64 + 32), 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(s["iou"], [32 / 64, 0.0, 1.0], atol=1e-6)
    assert s["hd95"][0] == pytest.approx(4.0, abs=0.5)  # the missed half is 4 px wide
    assert np.isnan(s["hd95"][1:]).all()  # no boundary to measure on an empty side
    summary = summarise(s)
    assert summary["dice"] == pytest.approx((2 / 3 + 0 + 1) / 3) and summary["hd95"] == pytest.approx(s["hd95"][0])


def test_the_threshold_is_on_probabilities():
    pred, true = _masks()
    logits = torch.where(pred.bool(), torch.tensor(0.1), torch.tensor(-5.0))  # p ≈ 0.52 on the predicted half
    assert seg_scores(logits, true, boundary=False)["dice"][0] == pytest.approx(2 / 3)
    assert seg_scores(logits, true, threshold=0.6, boundary=False)["dice"][0] == 0.0


def test_loss_is_dice_plus_a_fifth_of_bce_and_falls_as_logits_fit():
    _, true = _masks()
    logits = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    bce = F.binary_cross_entropy_with_logits(logits, true)
    torch.testing.assert_close(seg_loss(logits, true) - seg_loss(logits, true, lambda_ce=0.0), 0.2 * bce,
                               rtol=1e-5, atol=1e-6)
    perfect = (true * 2 - 1) * 10
    assert seg_loss(perfect[:2], true[:2]) < 0.01 < seg_loss(logits, true)
    # per-image Dice: the empty third image costs ~1 however well it is predicted; batch=True pools it
    assert seg_loss(perfect, true) == pytest.approx(1 / 3, abs=0.01)
    assert seg_loss(perfect, true, batch=True) < 0.01


def test_bad_masks_are_errors():
    pred, true = _masks()
    with pytest.raises(ValueError, match="binary"):
        seg_scores(pred, true * 255)
    with pytest.raises(ValueError, match="shape"):
        seg_scores(pred[:, :8], true)


def test_dataset_iou_pools_pixels_over_the_split_as_torchmetrics_jaccard_does():
    from medkit.seg.metrics import dataset_iou
    from medkit.tasks import SEGMENTATION

    pred, true = _masks()
    logits = pred * 20 - 10
    inter = float((pred * true).sum())
    union = float(((pred + true) > 0).sum())
    assert dataset_iou(logits, true) == pytest.approx(inter / union)
    # per-sample IoU averages images (the empty, empty-predicted third counts 1); pooled it weighs nothing
    per_sample = seg_scores(logits, true, boundary=False)["iou"]
    assert per_sample.mean() != pytest.approx(inter / union)
    m = SEGMENTATION.metrics(logits, true)
    assert set(SEGMENTATION.columns) <= set(m) and m["iou_dataset"] == pytest.approx(inter / union)
    assert m["dice"] == pytest.approx(seg_scores(logits, true)["dice"].mean()) and len(m["per_sample"]["dice"]) == 3
    assert dataset_iou(torch.full((1, 4, 4), -9.0), torch.zeros(1, 4, 4)) == 1.0
