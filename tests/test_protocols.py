"""K-shot sampling and base-to-novel splits: deterministic, complete, and loud on shortfalls."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from medkit.data import DataError, LabelSpace, Sample, Split
from medkit.protocols import (base_novel_classes, few_shot, restrict, harmonic_mean, k_shot_indices,
                              save_indices)


def _split(name: str, counts: list[int], groups: bool = False) -> Split:
    names = [f"c{i}" for i in range(len(counts))]
    space = LabelSpace(names, {n: f"g{i // 2}" for i, n in enumerate(names)} if groups else None)
    samples = [Sample(Path(f"{name}/{c}_{j}.png"), c, names[c]) for c, n in enumerate(counts) for j in range(n)]
    return Split(name, samples, space)


def test_k_shot_draws_k_distinct_images_per_class_deterministically():
    sp = _split("train", [10, 7, 20])
    a, b, other = k_shot_indices(sp, 4, seed=1), k_shot_indices(sp, 4, seed=1), k_shot_indices(sp, 4, seed=2)
    assert a == b and a != other
    assert Counter(sp.samples[i].label for i in a) == {0: 4, 1: 4, 2: 4}
    assert len(set(a)) == len(a)  # no repeats when every class has enough


def test_too_few_images_is_an_error_naming_the_class_unless_repeats_are_allowed():
    sp = _split("train", [10, 3, 20])
    with pytest.raises(DataError, match=r"'c1' \(3\).*allow_repeats"):
        k_shot_indices(sp, 4, seed=1)
    idx = k_shot_indices(sp, 4, seed=1, allow_repeats=True)
    assert Counter(sp.samples[i].label for i in idx)[1] == 4
    with pytest.raises(DataError, match="no images at all"):
        k_shot_indices(_split("train", [5, 0]), 1, seed=1, allow_repeats=True)
    with pytest.raises(ValueError):
        k_shot_indices(sp, 0, seed=1)


def test_few_shot_caps_validation_at_four_and_keeps_test(tmp_path):
    splits = {"train": _split("train", [20, 20]), "val": _split("val", [8, 8]), "test": _split("test", [5, 5])}
    out, idx = few_shot(splits, 16, seed=3)
    assert len(out["train"]) == 32 and len(out["val"]) == 8 and out["test"] is splits["test"]
    assert len(few_shot(splits, 2, seed=3)[0]["val"]) == 4
    saved = json.loads(save_indices(tmp_path / "shots.json", idx, {"k": 16, "seed": 3}).read_text())
    assert saved["indices"] == idx and saved["k"] == 16


@pytest.mark.parametrize("n, n_base", [(45, 23), (12, 6), (5, 3), (1, 1)])
def test_base_classes_are_the_first_ceil_half(n, n_base):
    base, novel = base_novel_classes(LabelSpace([f"c{i}" for i in range(n)]))
    assert base == list(range(n_base)) and novel == list(range(n_base, n))


def test_base_to_novel_relabels_each_half_from_zero():
    splits = {k: _split(k, [2, 3, 4, 5, 6], groups=True) for k in ("train", "val", "test")}
    base, novel = base_novel_classes(splits["train"].labels)
    base_test, novel_test = restrict(splits["test"], base), restrict(splits["test"], novel)
    assert base_test.labels.classnames == ("c0", "c1", "c2") and novel_test.labels.classnames == ("c3", "c4")
    assert sorted({s.label for s in novel_test.samples}) == [0, 1]
    assert [s.classname for s in novel_test.samples if s.label == 0] == ["c3"] * 5
    assert novel_test.labels.group_of == {"c3": "g1", "c4": "g2"}
    assert len(base_test) + len(novel_test) == len(splits["test"])


def test_harmonic_mean():
    assert harmonic_mean(0.8, 0.4) == pytest.approx(2 * 0.32 / 1.2)
    assert harmonic_mean(0.5, 0.0) == 0.0
