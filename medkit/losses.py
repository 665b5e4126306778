"""Multi-label losses (PsPG, DualCoOp) with unknown labels masked.

Conventions shared by every function here:

* `scores` [B, C] are log-odds: p = sigmoid(score). A softmax over a (positive, negative)
  logit pair equals sigmoid(pos - neg), which is how the pos/neg-prompt methods produce them.
* `targets` [B, C] integers: 1 present, 0 absent, -1 unknown. An unknown entry takes no part in
  a loss: it contributes nothing and receives a gradient of exactly 0.
* Losses are computed in float32 whatever the input dtype (autocast gives float16 scores, and
  logs of small probabilities are not representable there); gradients flow back through the cast.
* When nothing is known the loss is a zero that stays attached to the graph, so a batch of
  unknowns neither crashes `backward()` nor produces NaN.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Reduction = Literal["sum", "mean"]


# --------------------------------------------------------------------------- helpers


def _check(scores: torch.Tensor, targets: torch.Tensor) -> None:
    if scores.shape != targets.shape or scores.dim() != 2:
        raise ValueError(f"scores and targets must both be [B, C]; got {tuple(scores.shape)} and {tuple(targets.shape)}")


def _split(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(float32 scores, float {0,1} targets with unknowns set to 0, bool known mask)."""
    _check(scores, targets)
    known = targets >= 0
    y = torch.where(known, targets, torch.zeros_like(targets)).to(torch.float32)
    return scores.float(), y, known


def _reduce(elementwise: torch.Tensor, known: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Sum or mean of `elementwise` over the known entries only.

    `torch.where` (not multiplication) drops the unknown entries so that a non-finite value
    there could not leak into the loss; its backward gives those entries a zero gradient.
    """
    kept = torch.where(known, elementwise, torch.zeros_like(elementwise))
    total = kept.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / known.sum().clamp(min=1)  # 0 / 1 = attached zero when nothing is known
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


# --------------------------------------------------------------------------- per-label losses


def masked_bce(scores: torch.Tensor, targets: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Binary cross-entropy on log-odds over the known entries.

    loss = -[y log sigmoid(s) + (1 - y) log(1 - sigmoid(s))] (computed stably by
    `F.binary_cross_entropy_with_logits`), averaged over the known entries by default: the
    normalisation of torch's `BCEWithLogitsLoss` (mean over all B·C elements) with the unknown
    ones removed from numerator and denominator. PsPG's BCE ablation row has no released code.
    """
    s, y, known = _split(scores, targets)
    return _reduce(F.binary_cross_entropy_with_logits(s, y, reduction="none"), known, reduction)


def asymmetric_loss(
    scores: torch.Tensor,
    targets: torch.Tensor,
    gamma_pos: float = 1.0,
    gamma_neg: float = 2.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    *,
    reduction: Reduction = "sum",
    detach_focusing: bool = True,
) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al., ICCV 2021) over the known entries.

    With p = sigmoid(s) and the shifted negative probability p_m = max(p - clip, 0):

        L+ = (1 - p)^gamma_pos · log(max(p, eps))                 for y = 1
        L- = p_m^gamma_neg     · log(max(1 - p_m, eps))           for y = 0
        loss = -sum over known entries of (L+ or L-)

    (the reference writes the negative branch as xs_neg = min(1 - p + clip, 1), so
    1 - xs_neg = p_m.) Defaults gamma_pos 1, gamma_neg 2, clip 0.05 are PsPG's
    (`cfg.MODEL.LOSS`, paper §4.1).

    Normalisation: `reduction="sum"` is the reference's — `-loss.sum()` over all known
    elements of the batch (batch and classes both summed, no division) in ASL's
    `src/loss_functions/losses.py`, PsPG's `utils/losses.py` (which drops -1 entries first)
    and DualCoOp's `utils/asymmetric_loss.py`. The loss therefore grows with batch size and
    class count; the released PsPG weights it by 0.1. "mean" divides by the known count.

    `detach_focusing=True` (the reference's `disable_torch_grad_focal_loss=True`) treats the
    focusing weights as constants in backward. `eps`: ASL's 1e-8; PsPG's and DualCoOp's copies
    use 1e-6 (`released_pspg_loss` passes that).
    """
    s, y, known = _split(scores, targets)
    p = torch.sigmoid(s)
    p_neg = (1 - p + clip).clamp(max=1) if clip and clip > 0 else 1 - p  # 1 - p_neg = max(p - clip, 0)
    log_pos = y * torch.log(p.clamp(min=eps))
    log_neg = (1 - y) * torch.log(p_neg.clamp(min=eps))
    # Focusing weights (1 - pt)^gamma: 1 - p for positives, 1 - p_neg = p_m for negatives.
    w_pos = _focusing(1 - p, gamma_pos, detach_focusing)
    w_neg = _focusing(1 - p_neg, gamma_neg, detach_focusing)
    return _reduce(-(w_pos * log_pos + w_neg * log_neg), known, reduction)


def _focusing(hardness: torch.Tensor, gamma: float, detach: bool) -> torch.Tensor | float:
    """hardness^gamma; 1 for gamma = 0 (no pow, whose derivative at 0 would be 0·inf = NaN)."""
    if gamma == 0:
        return 1.0
    if detach:
        return hardness.detach().pow(gamma)
    # p_m = 0 is common (every negative below the clip); the clamp keeps d/dh finite there.
    return hardness.clamp(min=1e-12).pow(gamma)


# --------------------------------------------------------------------------- ranking loss


def ranking_loss(
    scores: torch.Tensor,
    targets: torch.Tensor,
    *,
    batch_pooled: bool = True,
    on_probabilities: bool = True,
) -> torch.Tensor:
    """Multi-label margin ranking loss (torch's `MultiLabelMarginLoss`) with unknowns excluded.

    torch's formula for one sample x of length n with positive set P and negative set N:

        loss(x) = sum_{j in P} sum_{i in N} max(0, 1 - (x[j] - x[i])) / n

    PsPG's released `LossRanking` (`utils/losses.py`) applies it in an unusual way, which is
    the default here:

    * on probabilities, x = softmax(pos, neg)[pos] = sigmoid(score), not on log-odds
      (`on_probabilities=True`); since probability gaps are at most 1 the hinge never
      saturates, so the loss is linear in the gaps;
    * to the whole batch at once (`batch_pooled=True`): the [B, C] matrix is flattened, the
      unknown entries are removed, and the remaining n = #known entries form ONE sample, so
      positives of one image are ranked against negatives of every image and the sum is
      divided by n (the number of known entries in the batch). Removing the unknowns before
      the call is what makes them neither positive nor negative; torch's function then does
      the rest, exactly as in the reference.

    `batch_pooled=False` is the textbook use: one sample per image, pairs within an image,
    each image's sum divided by its number of known labels (= C when none is unknown, i.e.
    torch's 1/C), then the mean over the images that have a known label (torch's mean over
    the batch). torch cannot leave a label out of a row (every entry not listed as a positive
    counts as a negative), so this branch evaluates the formula itself; the tests check it
    against `F.multilabel_margin_loss` on unmasked inputs.
    """
    s, y, known = _split(scores, targets)
    x = torch.sigmoid(s) if on_probabilities else s
    if batch_pooled:
        return _pooled_margin_loss(x, y, known)
    return _per_image_margin_loss(x, y, known)


def _pooled_margin_loss(x: torch.Tensor, y: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """The released PsPG form: torch's loss on the flattened known entries as one sample."""
    flat_x, flat_y = x[known], y[known]
    if flat_x.numel() == 0:
        return x.sum() * 0.0
    # torch's target format: indices of the positives, then -1 ends the list.
    target = torch.full(flat_x.shape, -1, dtype=torch.long, device=x.device)
    positives = torch.nonzero(flat_y > 0.5).reshape(-1)
    target[: positives.numel()] = positives
    return F.multilabel_margin_loss(flat_x, target)


def _per_image_margin_loss(x: torch.Tensor, y: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Per-image margin ranking: all (positive j, known negative i) pairs within each row."""
    positive = known & (y > 0.5)
    negative = known & (y < 0.5)
    hinge = (1 - (x.unsqueeze(2) - x.unsqueeze(1))).clamp(min=0)  # [B, j, i]
    pairs = positive.unsqueeze(2) & negative.unsqueeze(1)
    per_row = torch.where(pairs, hinge, torch.zeros_like(hinge)).sum(dim=(1, 2))
    n_known = known.sum(dim=1)
    rows = n_known > 0
    per_row = per_row / n_known.clamp(min=1)
    return torch.where(rows, per_row, torch.zeros_like(per_row)).sum() / rows.sum().clamp(min=1)


def released_pspg_loss(
    scores: torch.Tensor,
    targets: torch.Tensor,
    asl_weight: float = 0.1,
    ranking_weight: float = 0.07,
) -> torch.Tensor:
    """The released PsPG default: 0.1 · ASL(sum) + 0.07 · batch-pooled ranking loss on probabilities.

    From `trainer.train_pspg` → `LossRanking(weight_a=0.1, weight_b=0.07)` with
    gamma_pos 1, gamma_neg 2 (`cfg.MODEL.LOSS`), clip 0.05 and eps 1e-6 (PsPG's ASL class
    default). The paper's loss is instead ASL + SPCL (`asymmetric_loss` +
    `pairwise_cooccurrence_loss`); the released code, with `ENABLE_PAIRLOSS` on, uses
    0.1 · ASL + 1 · SPCL (`LossMixture`). Callers wanting the terms separately call the pieces.
    """
    asl = asymmetric_loss(scores, targets, gamma_pos=1.0, gamma_neg=2.0, clip=0.05, eps=1e-6)
    return asl_weight * asl + ranking_weight * ranking_loss(scores, targets)


# --------------------------------------------------------------------------- pairwise co-occurrence


def pair_indices(n_classes: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(i, j) of the P = C(C-1)/2 class pairs with i < j, in the order pair scores must use.

    Row-major strict upper triangle: (0,1), (0,2), …, (0,C-1), (1,2), … — the same order as
    the reference's `torch.combinations(torch.arange(C), r=2)` that builds the pair prompts,
    and `torch.triu_indices(C, C, offset=1)`.
    """
    ij = torch.triu_indices(n_classes, n_classes, offset=1, device=device)
    return ij[0], ij[1]


def _pair_targets(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image pair co-occurrence c = y_i·y_j [B, P] and whether it is determined [B, P].

    y_i·y_j is known when both labels are known, and also when either is a known 0 (then the
    product is 0 whatever the other label is); it is unknown only when one label is -1 and the
    other is 1 or -1.
    """
    i, j = pair_indices(targets.shape[1], device=targets.device)
    yi, yj = targets[:, i], targets[:, j]
    both = (yi == 1) & (yj == 1)
    determined = ((yi >= 0) & (yj >= 0)) | (yi == 0) | (yj == 0)
    return both.to(torch.float32), determined


def _as_pair_matrix(pair_scores: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[B, P] pair scores from either [B, P] or [B, C, C] (strict upper triangle read)."""
    n_pairs = n_classes * (n_classes - 1) // 2
    if pair_scores.dim() == 3 and pair_scores.shape[1:] == (n_classes, n_classes):
        i, j = pair_indices(n_classes, device=pair_scores.device)
        return pair_scores[:, i, j]
    if pair_scores.dim() == 2 and pair_scores.shape[1] == n_pairs:
        return pair_scores
    raise ValueError(f"pair_scores must be [B, {n_pairs}] or [B, {n_classes}, {n_classes}], got {tuple(pair_scores.shape)}")


def pairwise_cooccurrence_loss(pair_scores: torch.Tensor, targets: torch.Tensor, soft: bool = True) -> torch.Tensor:
    """PsPG's pairwise co-occurrence loss: SPCL (`soft=True`, the paper's) or PCL (`soft=False`).

    Shapes. `targets` [B, C] in {1, 0, -1}. `pair_scores` are log-odds that classes i and j
    co-occur, one per image and class pair i < j (diagonal excluded, as in the paper: pairs
    "i, j ∈ [1, N_c], i < j", the strictly upper-triangular part of Q):

    * [B, P] with P = C(C-1)/2, column m ↔ pair (i_m, j_m) = `pair_indices(C)` (the
      reference's layout: one concatenated pair prompt [P_i; P_j] per pair, score =
      sim(u_n, w_ij)/τ, `pair_logits` of shape [64, 91] for C = 14), or
    * [B, C, C], of which only the strict upper triangle [:, i, j], i < j, is read.

    Targets: c_nm = y_ni · y_nj (1 when both present). It is determined when both labels are
    known or either is a known 0; only undetermined entries are masked (the reference instead
    sets every -1 to 0 first).

    PCL (`soft=False`, sample-level): mean over determined (n, m) of
    BCE-with-logits(s_nm, c_nm) — the reference's `MultilabelPairLoss(enable_maxpool=False)`,
    `nn.BCEWithLogitsLoss()` mean over B·P.

    SPCL (`soft=True`, batch-level; paper eqs. 5–8): Q = AᵀA counts co-occurrences in the
    batch, q_m = min(Q_{i_m j_m}, 1), i.e. 1 if any image has both; the prediction is max-
    pooled over the batch, pool_m = max_n s_nm (max of log-odds = log-odds of the max
    probability, so eq. 7 holds); loss = mean over pairs of BCE(pool_m, q_m) — the reference's
    `nn.BCEWithLogitsLoss()` mean over P (the paper's eq. 8 writes a sum). With unknowns, the
    batch for pair m is restricted to the images where c_nm is determined, for both q_m and
    pool_m; a pair determined in no image is left out.

    Weighting: the paper adds it to ASL with weight 1; the released `LossMixture` uses
    0.1 · ASL(sum) + 1 · SPCL. The released code's pair loss is off by default.
    """
    if targets.dim() != 2:
        raise ValueError(f"targets must be [B, C], got {tuple(targets.shape)}")
    s = _as_pair_matrix(pair_scores, targets.shape[1]).float()
    if s.shape[0] != targets.shape[0]:
        raise ValueError(f"pair_scores has {s.shape[0]} images, targets {targets.shape[0]}")
    c, determined = _pair_targets(targets)
    if not soft:
        return _reduce(F.binary_cross_entropy_with_logits(s, c, reduction="none"), determined, "mean")
    # Undetermined images must not win the max: -inf there, then the pair is dropped if all are.
    pooled = s.masked_fill(~determined, float("-inf")).max(dim=0).values
    q = (c * determined).amax(dim=0)
    valid = determined.any(dim=0)
    pooled = torch.where(valid, pooled, torch.zeros_like(pooled))  # keep -inf out of the BCE
    return _reduce(F.binary_cross_entropy_with_logits(pooled, q, reduction="none"), valid, "mean")
