"""The benchmark's reference paths really are the reference, its rows check agreement on
both tower families, and a disagreement fails the command."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from medkit import bench
from medkit.features import FeatureCache

SIZES = bench.Sizes(coop_batch=4, cocoop_batch=2, eval_images=6, eval_batch=3, naive_steps=2, medkit_steps=2)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    return bench.implant_split("train", 4, 32, root, seed=1), bench.implant_split("test", 6, 32, root, seed=2)


@pytest.mark.parametrize("family", ["native", "hf"])
def test_full_length_twin_runs_every_position_with_the_same_context(adapters, splits, family):
    ad = adapters[family]
    fast, slow = bench._coop(ad, list(splits[0].labels.classnames))
    assert slow.context.ids.shape[1] == ad.tokenize(["x"]).shape[1] > fast.context.ids.shape[1]
    assert slow.context.ctx is fast.context.ctx  # one parameter: a step on either moves both
    with torch.no_grad():
        torch.testing.assert_close(slow.text_features(), fast.text_features(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["native", "hf"])
def test_every_row_agrees_with_its_reference(adapters, splits, tmp_path, family):
    ad, (train, test) = adapters[family], splits
    names = list(train.labels.classnames)
    assert len(names) == bench.N_CLASSES
    cache = FeatureCache(tmp_path / "cache")
    dev = torch.device("cpu")
    rows = [bench.bench_text_cut(ad, names, SIZES, dev, False),
            bench.bench_coop_step(ad, names, train, cache, SIZES, dev, False),
            bench.bench_cocoop_step(ad, names, train, cache, SIZES, dev, False),
            bench.bench_eval_pass(ad, names, test, tmp_path / "cache", SIZES, dev, False)]
    for r in rows:
        assert r.agrees, (r.name, r.max_abs_diff)
        assert r.naive_s > 0 and r.medkit_s > 0 and r.ratio > 0


def test_a_disagreement_fails_the_command(monkeypatch, tmp_path):
    bad = bench.Row("coop_step", "x", 2.0, 1.0, 2.0, max_abs_diff=0.5, peak_mb=1.0)
    good = bench.Row("text_cut", "x", 2.0, 1.0, 2.0, max_abs_diff=0.0, peak_mb=1.0)
    notes = {"device": "cpu", "sizes": {"eval_images": 6}}
    monkeypatch.setattr(bench, "run", lambda *a, **k: ([good], notes))
    assert bench.main(["--outputs", str(tmp_path)]) == 0
    monkeypatch.setattr(bench, "run", lambda *a, **k: ([good, bad], notes))
    assert bench.main(["--outputs", str(tmp_path)]) == 1
    df = pd.read_csv(tmp_path / "bench.csv")
    assert list(df.columns) == ["name", "backbone", "naive_s", "medkit_s", "ratio", "max_abs_diff", "peak_mb"]
    assert "✗" in (tmp_path / "bench.md").read_text()
