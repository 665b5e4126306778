"""Zero-shot classifier and the single-label task's metrics."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import FAMILIES
import torch
import torch.nn.functional as F

from medkit.data import LabelSpace
from medkit.reporting import metric_table
from medkit.tasks import SINGLE_LABEL
from medkit.methods import REGISTRY, ZeroShotClassifier, get_method
from medkit.prompts import ensemble_from_templates, fill

CLASSES = ["CRV-101", "CRV-202", "HAL-303"]


def test_registry_names():
    assert get_method("zeroshot") is ZeroShotClassifier and "zeroshot" in REGISTRY
    assert ZeroShotClassifier.from_templates is not None
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        get_method("nope")


@pytest.mark.parametrize("family", FAMILIES)
def test_single_template_equals_direct_encoding(adapters, family):
    ad = adapters[family]
    clf = ZeroShotClassifier.from_templates(ad, "a photo of a {}.", CLASSES)
    with torch.no_grad():
        direct = F.normalize(ad.encode_text(fill("a photo of a {}.", CLASSES)), dim=-1)
    torch.testing.assert_close(clf.class_features, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_ensemble_is_normalised_mean_of_normalised_sentences(adapters, family):
    ad = adapters[family]
    templates = ["a photo of a {}.", "an x-ray of the {}", "{} implant"]
    clf = ZeroShotClassifier.from_templates(ad, templates, CLASSES)
    with torch.no_grad():
        per = torch.stack([F.normalize(ad.encode_text(fill(t, CLASSES)), dim=-1) for t in templates])
    torch.testing.assert_close(clf.class_features, F.normalize(per.mean(0), dim=-1), rtol=1e-5, atol=1e-6)
    x = torch.randn(4, 3, ad.image_size, ad.image_size)
    with torch.no_grad():
        logits = clf.logits_from_images(x)
        img = F.normalize(ad.encode_image(x), dim=-1)
    torch.testing.assert_close(logits, ad.logit_scale * img @ clf.class_features.T, rtol=1e-4, atol=1e-4)


def test_missing_sentences_and_bad_template_are_errors(adapters):
    with pytest.raises(ValueError, match="HAL-303"):
        ZeroShotClassifier.from_ensembles(adapters["native"], {"CRV-101": ["a"], "CRV-202": ["b"]}, CLASSES)
    with pytest.raises(ValueError, match="placeholder"):
        ensemble_from_templates(["a photo"], CLASSES)


def test_evaluate_logits_group_accuracy_and_ci():
    labels = LabelSpace(("a1", "a2", "b1", "b2"), {"a1": "A", "a2": "A", "b1": "B", "b2": "B"})
    y = np.array([0, 1, 2, 3, 0, 2])
    logits = np.eye(4)[[1, 1, 2, 0, 0, 3]] * 5.0  # right: idx 1,2,4 ; same group wrong: 0,5 ; cross: 3
    m = SINGLE_LABEL.metrics(logits, y, labels, ci_resamples=200)
    assert m["acc"] == pytest.approx(3 / 6)
    assert m["group_acc"] == pytest.approx(5 / 6)
    lo, hi = m["acc_ci"]
    assert lo <= 0.5 <= hi
    flat = SINGLE_LABEL.metrics(logits, y, LabelSpace(("a1", "a2", "b1", "b2")))
    assert flat["group_acc"] is None
    table = metric_table([{"variant": "v", **m}], ["variant"])
    assert list(table.columns) == ["acc", "top3", "f1_macro", "auc", "kappa", "group_acc"]
