"""BiomedCoOp: the pruning rules, SCCM and KDSP on hand-computed inputs, and the method on
both tower families (what trains, what the loss adds, the teacher)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medkit.methods import BiomedCoOp, ZeroShotClassifier
from medkit.methods.biomedcoop import (ensemble_features, kdsp_loss, keep_prompts, mad_keep, prompt_scores,
                                       sccm_loss, zscore_keep)

NAMES = ["round", "oval", "plate"]
ENSEMBLES = {
    "round": ["a round device", "a round implant with two leads", "the round marker", "an x-ray of a small device"],
    "oval": ["an oval device", "an oval implant with one lead", "the oval ring", "an x-ray of a large device"],
    "plate": ["a plate", "a plate with a screw", "the plate marker", "an x-ray of a grid"],
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run fastest on one thread


# --- the pruning rules ---------------------------------------------------------------

def test_mad_rule_on_hand_computed_scores():
    # median 3, |s − 3| = [2, 1, 0, 1, 97], MAD = 1 → robust z = [2, 1, 0, 1, 97]
    s = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])
    assert mad_keep(s, 1.5).tolist() == [False, True, True, True, False]
    assert mad_keep(s, 2.0).tolist() == [True, True, True, True, False]


def test_zscore_rule_on_hand_computed_scores():
    # mean 22, unbiased std sqrt(7610 / 4) = 43.62: z = [0.48, 0.46, 0.44, 0.41, 1.79]
    s = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])
    assert zscore_keep(s, 1.5).tolist() == [True, True, True, True, False]
    assert zscore_keep(s, 0.45).tolist() == [False, False, True, True, False]


def test_zscore_rule_is_the_reference_codes_restandardised_mad():
    """The reference computes MAD z-scores, then standardises them by their mean and std:
    the median and MAD cancel, so its mask is the plain z-score mask."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        s = torch.randn(50, generator=g) * 3 + torch.rand(1, generator=g) * 10
        z = (s - s.median()) / (s - s.median()).abs().median()
        reference = ((z - z.mean()) / z.std()).abs() <= 1.5
        assert torch.equal(zscore_keep(s, 1.5), reference)


def test_rules_differ_when_one_outlier_inflates_the_std():
    s = torch.tensor([8.1, 9.3, 9.1, 9.0, 8.3, 8.4, 9.2, 8.5, 2.9])
    mad, z = mad_keep(s, 1.5), zscore_keep(s, 1.5)
    assert not mad[-1] and not z[-1]            # both drop the gross outlier
    assert mad.sum() < z.sum()                  # the robust rule also drops the milder ones


def test_mad_zero_keeps_only_the_median_and_some_prompt_always_survives():
    assert mad_keep(torch.tensor([1.0, 1.0, 1.0, 5.0]), 1.5).tolist() == [True, True, True, False]
    for s in (torch.tensor([1.0, 2.0]), torch.tensor([3.0]), torch.randn(7)):
        assert mad_keep(s, 0.0).any()
    assert keep_prompts(torch.tensor([1.0, 50.0]), "none", 1.5).all()
    with pytest.raises(ValueError, match="pruning='median'"):
        keep_prompts(torch.tensor([1.0]), "median", 1.5)


def test_prompt_scores_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # sentence i of class c: prompt 0 = ([1, 0], [0, 1]); prompt 1 = ([0.6, 0.8], [0.8, 0.6])
    sent = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [0.8, 0.6]]])
    # prompt 0: image 1 → max(1, 0) = 1, image 2 → max(0, 1) = 1; prompt 1: max(.6, .8), max(.8, .6)
    assert torch.allclose(prompt_scores(img, sent, 2.0), torch.tensor([2.0, 1.6]))


# --- the loss terms -------------------------------------------------------------------

def test_sccm_is_the_mse_of_normalised_features():
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]])
    # normalised: (0.6, 0.8) vs (0, 1) → ((0.6)² + (0.2)²) / 2
    assert sccm_loss(a, b).item() == pytest.approx((0.36 + 0.04) / 2)
    assert sccm_loss(a, 2 * a).item() == pytest.approx(0.0, abs=1e-12)


def test_kdsp_is_kl_teacher_to_student_over_the_logit_count():
    student, teacher = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kdsp_loss(student, teacher).item() == pytest.approx(kl / 2, rel=1e-6)
    assert kdsp_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    assert kdsp_loss(teacher, student).item() != pytest.approx(kdsp_loss(student, teacher).item())  # direction matters


# --- the method ------------------------------------------------------------------------

def _feats(ad, n: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, ad.embed_dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("family", ["native", "hf"])
def test_loss_terms_and_gradients_reach_only_the_context(adapters, family):
    ad = adapters[family]
    m = BiomedCoOp(ad, NAMES, ENSEMBLES, lambda_sccm=2.0, lambda_kdsp=3.0).train()
    x, y = _feats(ad, 6), torch.tensor([0, 1, 2, 0, 1, 2])
    logits = m(x)
    loss = m.loss(logits, y)
    tf = m.text_features()
    expected = (F.cross_entropy(logits, y) + 2.0 * sccm_loss(tf, m.ensemble_mean)
                + 3.0 * kdsp_loss(logits, m.teacher_logits(x)))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    grads = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == {"context.ctx"}
    assert set(m.trainable_state()) == {"context.ctx"}


def test_zero_lambdas_give_coop_cross_entropy(adapters):
    ad = adapters["native"]
    m = BiomedCoOp(ad, NAMES, ENSEMBLES, lambda_sccm=0.0, lambda_kdsp=0.0).train()
    x, y = _feats(ad, 4), torch.tensor([0, 1, 2, 0])
    logits = m(x)
    assert torch.equal(m.loss(logits, y), F.cross_entropy(logits, y))


def test_unpruned_teacher_is_the_zero_shot_ensemble(adapters):
    ad = adapters["hf"]
    m = BiomedCoOp(ad, NAMES, ENSEMBLES, pruning="none")
    x = _feats(ad, 5)
    zs = ZeroShotClassifier.from_ensembles(ad, ENSEMBLES, NAMES)
    assert torch.allclose(m.teacher_logits(x), zs.logits_from_features(x), atol=1e-4)
    assert m.last_kept.all()


def test_ragged_ensembles_wrap_and_the_mean_counts_each_sentence_once(adapters):
    ad = adapters["native"]
    ragged = {**ENSEMBLES, "plate": ENSEMBLES["plate"][:2]}
    feats, mask = ensemble_features(ad, ragged, NAMES)
    assert feats.shape[:2] == (3, 4) and mask.sum(1).tolist() == [4, 4, 2]
    assert torch.equal(feats[2, 2], feats[2, 0]) and torch.equal(feats[2, 3], feats[2, 1])
    m = BiomedCoOp(ad, NAMES, ragged)
    own = F.normalize(ad.encode_texts(ragged["plate"], normalize=True).float().mean(0), dim=-1)
    assert torch.allclose(m.ensemble_mean[2], own, atol=1e-5)


def test_missing_sentences_and_bad_rule_are_errors(adapters):
    with pytest.raises(ValueError, match="no ensemble sentences for classes \\['plate'\\]"):
        BiomedCoOp(adapters["native"], NAMES, {k: v for k, v in ENSEMBLES.items() if k != "plate"})
    with pytest.raises(ValueError, match="pruning='mean'"):
        BiomedCoOp(adapters["native"], NAMES, ENSEMBLES, pruning="mean")
