"""Multi-label losses on hand-computed small cases, masking of unknown labels, gradients."""
from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from medkit.losses import (
    asymmetric_loss,
    masked_bce,
    pair_indices,
    pairwise_cooccurrence_loss,
    ranking_loss,
    released_pspg_loss,
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(logit: float, target: float) -> float:
    p = sigmoid(logit)
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def random_case(seed: int = 0, b: int = 5, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, c, generator=g) * 2
    targets = torch.randint(0, 2, (b, c), generator=g)
    targets[0, 0], targets[0, 1] = 1, 0  # at least one positive and one negative
    return scores, targets


# --------------------------------------------------------------------------- ASL, BCE


def test_asl_one_by_two_by_hand() -> None:
    scores = torch.tensor([[0.4, 1.2]])
    targets = torch.tensor([[1, 0]])
    p_pos, p_neg = sigmoid(0.4), sigmoid(1.2)
    positive = -((1 - p_pos) ** 1.0) * math.log(p_pos)  # gamma+ = 1
    shifted = p_neg - 0.05  # probability shifting by the clip
    negative = -(shifted**2.0) * math.log(1 - shifted)  # gamma- = 2
    assert asymmetric_loss(scores, targets).item() == pytest.approx(positive + negative, rel=1e-6)
    assert asymmetric_loss(scores, targets, reduction="mean").item() == pytest.approx((positive + negative) / 2, rel=1e-6)


def test_asl_clip_discards_easy_negatives() -> None:
    # p = sigmoid(-4) ≈ 0.018 < clip: the negative is fully discarded (shifted probability 0).
    assert asymmetric_loss(torch.tensor([[-4.0]]), torch.tensor([[0]])).item() == 0.0
    assert asymmetric_loss(torch.tensor([[-4.0]]), torch.tensor([[0]]), clip=0.0).item() > 0.0


def test_asl_without_focusing_or_clip_is_bce() -> None:
    scores, targets = random_case()
    targets[1, 2] = -1
    known = targets >= 0
    expected = F.binary_cross_entropy_with_logits(scores[known], targets[known].float(), reduction="sum")
    plain = asymmetric_loss(scores, targets, gamma_pos=0.0, gamma_neg=0.0, clip=0.0)
    assert plain.item() == pytest.approx(expected.item(), rel=1e-5)
    mean = asymmetric_loss(scores, targets, gamma_pos=0, gamma_neg=0, clip=0, reduction="mean")
    assert mean.item() == pytest.approx(masked_bce(scores, targets).item(), rel=1e-5)
    assert masked_bce(scores, targets).item() == pytest.approx(expected.item() / known.sum().item(), rel=1e-5)


def test_asl_focusing_detached_by_default() -> None:
    scores, targets = random_case(1)
    grads = []
    for detach in (True, False):
        s = scores.clone().requires_grad_(True)
        value = asymmetric_loss(s, targets, detach_focusing=detach)
        value.backward()
        grads.append(s.grad)
    assert asymmetric_loss(scores, targets, detach_focusing=False).item() == pytest.approx(value.item())
    assert not torch.allclose(grads[0], grads[1])
    assert torch.isfinite(grads[1]).all()


# --------------------------------------------------------------------------- ranking


def torch_target(targets: torch.Tensor) -> torch.Tensor:
    """torch's MultiLabelMarginLoss target: positive indices first, then -1."""
    out = torch.full(targets.shape, -1, dtype=torch.long)
    for row, labels in enumerate(targets):
        positives = torch.nonzero(labels == 1).reshape(-1)
        out[row, : len(positives)] = positives
    return out


def test_per_image_ranking_equals_torch_unmasked() -> None:
    scores, targets = random_case(2, b=6, c=5)
    targets[3] = 0  # a row with no positive: 0 for that row, still counted in the mean
    expected = torch.nn.MultiLabelMarginLoss()(scores, torch_target(targets))
    got = ranking_loss(scores, targets, batch_pooled=False, on_probabilities=False)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    on_probs = ranking_loss(scores, targets, batch_pooled=False)
    assert on_probs.item() == pytest.approx(F.multilabel_margin_loss(scores.sigmoid(), torch_target(targets)).item(), rel=1e-6)


def test_per_image_ranking_ignores_unknowns() -> None:
    scores, targets = random_case(3, b=1, c=5)
    targets[0] = torch.tensor([1, 0, -1, 1, 0])
    keep = targets[0] >= 0
    expected = F.multilabel_margin_loss(scores[:, keep], torch_target(targets[:, keep]))  # the -1 column removed
    got = ranking_loss(scores, targets, batch_pooled=False, on_probabilities=False)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_pooled_ranking_by_hand() -> None:
    # Released PsPG: all known entries of the batch form one sample; pairs cross images.
    scores = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    targets = torch.tensor([[1, 0], [-1, 1]])
    p = {(0, 0): sigmoid(0.5), (0, 1): sigmoid(-1.0), (1, 1): sigmoid(0.0)}
    positives, negatives = [(0, 0), (1, 1)], [(0, 1)]
    total = sum(max(0.0, 1 - (p[j] - p[i])) for j in positives for i in negatives)
    assert ranking_loss(scores, targets).item() == pytest.approx(total / 3, rel=1e-6)  # 3 known entries


def test_released_loss_is_weighted_sum() -> None:
    scores, targets = random_case(4)
    asl = asymmetric_loss(scores, targets, eps=1e-6)
    expected = 0.1 * asl + 0.07 * ranking_loss(scores, targets)
    assert released_pspg_loss(scores, targets).item() == pytest.approx(expected.item(), rel=1e-6)


# --------------------------------------------------------------------------- pair losses


def test_pair_order_is_upper_triangle_row_major() -> None:
    i, j = pair_indices(4)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


PAIR_SCORES = torch.tensor([[0.5, -1.0, 2.0], [-0.3, 1.5, 0.7]])  # 2 images × pairs (0,1), (0,2), (1,2)


def test_pcl_and_spcl_by_hand() -> None:
    targets = torch.tensor([[1, 1, 0], [0, 1, 1]])
    # Per image c = y_i·y_j: image 0 → (1, 0, 0), image 1 → (0, 0, 1).
    z = PAIR_SCORES.tolist()
    pcl = sum(bce(z[0][m], c) + bce(z[1][m], d) for m, (c, d) in enumerate([(1, 0), (0, 0), (0, 1)])) / 6
    assert pairwise_cooccurrence_loss(PAIR_SCORES, targets, soft=False).item() == pytest.approx(pcl, rel=1e-6)
    # Batch-level q = (1, 0, 1); predictions max-pooled over the two images.
    pooled = [max(z[0][m], z[1][m]) for m in range(3)]
    spcl = (bce(pooled[0], 1) + bce(pooled[1], 0) + bce(pooled[2], 1)) / 3
    assert pairwise_cooccurrence_loss(PAIR_SCORES, targets, soft=True).item() == pytest.approx(spcl, rel=1e-6)


def test_spcl_with_unknowns_by_hand() -> None:
    targets = torch.tensor([[1, -1, 0], [0, 1, 1]])
    # Image 0: (0,1) = 1·? undetermined; (0,2) = 1·0 = 0; (1,2) = ?·0 = 0. Image 1: (0, 0, 1).
    z = PAIR_SCORES.tolist()
    spcl = (bce(z[1][0], 0) + bce(max(z[0][1], z[1][1]), 0) + bce(max(z[0][2], z[1][2]), 1)) / 3
    assert pairwise_cooccurrence_loss(PAIR_SCORES, targets).item() == pytest.approx(spcl, rel=1e-6)
    pcl = (bce(z[0][1], 0) + bce(z[0][2], 0) + bce(z[1][0], 0) + bce(z[1][1], 0) + bce(z[1][2], 1)) / 5
    assert pairwise_cooccurrence_loss(PAIR_SCORES, targets, soft=False).item() == pytest.approx(pcl, rel=1e-6)


def test_pair_loss_accepts_square_layout() -> None:
    targets = torch.tensor([[1, 1, 0], [0, 1, 1]])
    square = torch.full((2, 3, 3), 99.0)  # everything off the strict upper triangle is ignored
    i, j = pair_indices(3)
    square[:, i, j] = PAIR_SCORES
    for soft in (True, False):
        expected = pairwise_cooccurrence_loss(PAIR_SCORES, targets, soft=soft)
        assert pairwise_cooccurrence_loss(square, targets, soft=soft).item() == pytest.approx(expected.item())


def test_pair_loss_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError):
        pairwise_cooccurrence_loss(torch.zeros(2, 4), torch.zeros(2, 3, dtype=torch.long))


# --------------------------------------------------------------------------- masking and gradients

PER_LABEL: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bce": masked_bce,
    "asl": asymmetric_loss,
    "asl_undetached": lambda s, t: asymmetric_loss(s, t, detach_focusing=False),
    "asl_gamma0_undetached": lambda s, t: asymmetric_loss(s, t, gamma_neg=0.0, detach_focusing=False),
    "ranking_pooled": ranking_loss,
    "ranking_per_image": lambda s, t: ranking_loss(s, t, batch_pooled=False),
    "ranking_logits": lambda s, t: ranking_loss(s, t, batch_pooled=False, on_probabilities=False),
    "released": released_pspg_loss,
}


def loss_and_grad(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scores: torch.Tensor,
                  targets: torch.Tensor) -> tuple[float, torch.Tensor]:
    s = scores.clone().requires_grad_(True)
    value = fn(s, targets)
    value.backward()
    return value.item(), s.grad


@pytest.mark.parametrize("name", sorted(PER_LABEL))
def test_unknown_entry_has_no_effect(name: str) -> None:
    fn = PER_LABEL[name]
    scores, targets = random_case(5)
    targets[2, 1] = -1
    value, grad = loss_and_grad(fn, scores, targets)
    moved = scores.clone()
    moved[2, 1] = -30.0  # an extreme score on the unknown entry
    value_moved, grad_moved = loss_and_grad(fn, moved, targets)
    assert value_moved == pytest.approx(value, rel=1e-6)
    assert grad[2, 1] == 0.0 and grad_moved[2, 1] == 0.0
    assert torch.allclose(grad, grad_moved)
    assert torch.isfinite(grad).all()
    assert (grad[targets >= 0] != 0).any()  # gradients flow to the known scores


@pytest.mark.parametrize("soft", [True, False])
def test_undetermined_pair_has_no_effect(soft: bool) -> None:
    targets = torch.tensor([[1, -1, 0], [0, 1, 1]])  # image 0, pair (0,1) undetermined
    value, grad = loss_and_grad(lambda s, t: pairwise_cooccurrence_loss(s, t, soft=soft), PAIR_SCORES, targets)
    moved = PAIR_SCORES.clone()
    moved[0, 0] = 50.0  # would win the max pool over the batch if it were not masked
    value_moved, grad_moved = loss_and_grad(lambda s, t: pairwise_cooccurrence_loss(s, t, soft=soft), moved, targets)
    assert value_moved == pytest.approx(value, rel=1e-6)
    assert grad[0, 0] == 0.0 and torch.allclose(grad, grad_moved)
    assert (grad != 0).any()


def test_spcl_gradient_goes_to_the_pooled_image() -> None:
    targets = torch.tensor([[1, 1, 0], [0, 1, 1]])
    _, grad = loss_and_grad(pairwise_cooccurrence_loss, PAIR_SCORES, targets)
    winners = PAIR_SCORES.argmax(dim=0)
    for m in range(3):
        assert grad[winners[m], m] != 0 and grad[1 - winners[m], m] == 0


@pytest.mark.parametrize("name", sorted(PER_LABEL))
def test_all_unknown_gives_attached_zero(name: str) -> None:
    scores = torch.randn(3, 4, requires_grad=True)
    value = PER_LABEL[name](scores, torch.full((3, 4), -1))
    value.backward()
    assert value.item() == 0.0 and torch.equal(scores.grad, torch.zeros(3, 4))


def test_pair_loss_all_unknown_gives_attached_zero() -> None:
    pair = torch.randn(2, 3, requires_grad=True)
    value = pairwise_cooccurrence_loss(pair, torch.full((2, 3), -1))
    value.backward()
    assert value.item() == 0.0 and torch.equal(pair.grad, torch.zeros(2, 3))


def test_half_precision_scores() -> None:
    scores, targets = random_case(6)
    half = scores.half().requires_grad_(True)
    value = asymmetric_loss(half, targets)
    value.backward()
    assert value.dtype == torch.float32 and half.grad.dtype == torch.float16
    assert value.item() == pytest.approx(asymmetric_loss(scores.half().float(), targets).item(), rel=1e-5)
