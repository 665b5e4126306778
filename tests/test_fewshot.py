"""The few-shot runner on a tiny image dataset written to disk: every setting × K × seed,
saved indices, zero-shot rows, determinism, base-to-novel relabelling, tables, findings."""
from __future__ import annotations

import json
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medkit.data import Dataset, LabelSpace, Sample, Split
from medkit.features import CachedFeatures, FeatureCache
from medkit import fewshot as fs
from medkit.knowledge import LLMRepresentations
from medkit.runs import read_results, start_run
from medkit.study import Setting
from medkit.train import TrainConfig

NAMES = ["oval", "plate", "round", "screw"]
PER_SPLIT = {"train": 4, "val": 2, "test": 3}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    root = tmp_path_factory.mktemp("tinyset")
    rng = np.random.default_rng(0)
    labels = LabelSpace(NAMES)
    splits = {}
    for split, n in PER_SPLIT.items():
        samples = []
        for c, name in enumerate(NAMES):
            for i in range(n):
                path = root / f"{split}_{name}_{i}.png"
                px = np.clip(rng.normal(60 * c, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(path)
                samples.append(Sample(path, c, name))
        splits[split] = Split(split, samples, labels)
    desc = {n: [f"a {n} device", f"an x-ray of a {n} implant", f"the {n} with two leads"] for n in NAMES}
    return Dataset("tinyset", splits, labels, root, desc)


def reps() -> LLMRepresentations:
    h = torch.randn(len(NAMES), 4, 8, generator=torch.Generator().manual_seed(1))
    return LLMRepresentations(NAMES, h, NAMES, "test", "encoder", "q")


SETTINGS = [
    Setting("zeroshot", "class names", {"templates": "a photo of a {}."}),
    Setting("zeroshot", "description ensemble", {"ensembles": fs.Ref("descriptions")}),
    Setting("linear_probe", "LP", {}),
    Setting("tip_adapter", "Tip-Adapter", {}),
    Setting("coop", "CoOp", {"n_ctx": None, "ctx_init": "a photo of a"}, {"batch_size": 4}),
    Setting("biomedcoop", "BiomedCoOp", {"ensembles": fs.Ref("descriptions")}, {"batch_size": 4}),
    Setting("cilmp", "CILMP", {"knowledge": fs.Ref("knowledge"), "prefix": 1, "suffix": 1}, {"batch_size": 2},
            shots=(1,)),
]


def experiment(run, dataset, adapters, tmp_path) -> fs.Experiment:
    return fs.Experiment(run, dataset, adapters["native"], "smoke", FeatureCache(tmp_path / "cache"),
                         {"knowledge": reps()}, views=2, steps={"default": 2}, eval_images={"cilmp": 4}, log=lambda s: None)


def test_grid_rows_indices_and_zero_shot_repeats(dataset, adapters, tmp_path):
    run = start_run("07_test", "smoke", {}, tmp_path / "out")
    ex = experiment(run, dataset, adapters, tmp_path)
    runs = ex.few_shot(SETTINGS, shots=[1, 2], seeds=[1, 2])
    df = read_results(tmp_path / "out")
    expected = (len(SETTINGS) - 1) * 2 * 2 + 1 * 2       # CILMP only at K=1
    assert len(runs) == len(df) == expected
    assert set(df["split"]) == {"test"} and set(df["shots"]) == {1, 2}
    zs = df[df["variant"] == "class names"]
    assert zs["acc"].nunique() == 1 and len(zs) == 4          # evaluated once, a row per K × seed
    assert set(df.loc[df["method"] == "cilmp", "shots"]) == {1}
    saved = json.loads((run.path / "fewshot_indices" / "tinyset_K2_s1.json").read_text())
    train = [dataset["train"].samples[i].label for i in saved["indices"]["train"]]
    assert sorted(train) == sorted([0, 1, 2, 3] * 2) and saved["shots"] == 2
    assert len(saved["indices"]["val"]) == 4 * 2              # min(K, 4) per class
    assert df["acc"].between(0, 1).all()


def test_same_seed_same_metrics(dataset, adapters, tmp_path):
    a = experiment(None, dataset, adapters, tmp_path).few_shot(SETTINGS[4:6], shots=[2], seeds=[3])
    b = experiment(None, dataset, adapters, tmp_path).few_shot(SETTINGS[4:6], shots=[2], seeds=[3])
    assert [r.row["acc"] for r in a] == [r.row["acc"] for r in b]
    assert torch.equal(a[0].method.context.ctx, b[0].method.context.ctx)


def test_base_to_novel_relabels_each_half(dataset, adapters, tmp_path):
    ex = experiment(None, dataset, adapters, tmp_path)
    rows = ex.base_to_novel([SETTINGS[0], SETTINGS[4], SETTINGS[6]], shots=2, seeds=[1])
    assert [r["split"] for r in rows] == ["base", "novel"] * 3
    table = fs.base_novel_table(rows)
    assert list(table.columns[:3]) == ["base", "novel", "HM"] and len(table) == 3
    with pytest.raises(ValueError, match="tied to the base classes"):
        ex.base_to_novel([SETTINGS[3]], shots=2, seeds=[1])


def test_missing_resource_is_named(dataset, adapters, tmp_path):
    ex = fs.Experiment(None, dataset, adapters["native"], "smoke", FeatureCache(tmp_path / "cache"), views=0,
                       log=lambda s: None)
    with pytest.raises(ValueError, match="'knowledge'"):
        ex.few_shot([SETTINGS[-1]], shots=[1], seeds=[1])


def test_cached_features_take_keeps_views_and_relabels():
    cf = CachedFeatures(torch.arange(24.0).reshape(2, 4, 3), torch.tensor([0, 1, 2, 3]))
    sub = cf.take([3, 1], labels=[1, 0])
    assert sub.features.shape == (2, 2, 3) and torch.equal(sub.features[1, 0], cf.features[1, 3])
    assert sub.labels.tolist() == [1, 0]
    assert cf.take([2]).labels.tolist() == [2]
    with pytest.raises(ValueError, match="1 labels for 2 rows"):
        cf.take([0, 1], labels=[0])


def test_step_budget():
    cfg = TrainConfig(epochs=50, batch_size=32)
    assert fs.step_budget(cfg, 12, 12).epochs == 12 and fs.step_budget(cfg, 12, 12).batch_size == 12
    big = fs.step_budget(cfg, 720, 12)                       # 23 batches per epoch > 12 steps
    assert (big.epochs, big.max_steps_per_epoch) == (1, 12)
    assert fs.step_budget(cfg, 100, 12).epochs == 3          # 4 batches per epoch
    assert fs.step_budget(cfg, 100, None) is cfg


def test_tables_and_the_knowledge_comparison():
    rows = []
    for seed, (a, b) in enumerate([(0.2, 0.3), (0.4, 0.5)], start=1):
        for k in (1, 2):
            rows += [{"dataset": "d", "split": "test", "method": "coop", "variant": "CoOp", "shots": k, "seed": seed, "acc": a},
                     {"dataset": "d", "split": "test", "method": "biomedcoop", "variant": "BiomedCoOp", "shots": k,
                      "seed": seed, "acc": b}]
    table = fs.shot_table(rows)
    assert table.loc[("d", "coop", "CoOp"), "K=1"] == "0.300 ± 0.141"
    kvn = fs.knowledge_vs_names(pd.DataFrame(rows), shots=(1,))
    assert kvn["knowledge wins"].tolist() == [True] and kvn["difference"].tolist() == [0.1]
    assert fs.outlier_mask(5, 2).tolist() == [False, False, False, True, True]


def test_cilmp_sweep_places_the_full_model_at_its_defaults_once():
    from medkit.methods.cilmp import DEFAULT_RANK, default_length
    assert default_length(6) == 3 and default_length(32) == 4
    variants = [s.variant for s in fs.cilmp_ablations(lengths=(1, 3), ranks=(2, DEFAULT_RANK), n_layers=6)]
    assert "length 3" not in variants and f"rank {DEFAULT_RANK}" not in variants
    assert {"length 1", "rank 2", "CILMP"} <= set(variants)
    acc = {"CILMP": 0.5, "length 1": 0.2, "length 3": 0.5, "rank 2": 0.6, "w/o RD": 0.1}
    rows = pd.DataFrame([{"dataset": "d", "split": "test", "variant": v, "seed": s, "acc": a}
                         for v, a in acc.items() for s in (1, 2)])
    sweep = fs.cilmp_sweep(rows, n_layers=6)
    # the explicit "length 3" duplicates the full model's configuration: counted once, as CILMP
    assert sweep.groupby("sweep")["value"].apply(list).to_dict() == {
        "length": [1, 1, 3, 3], "rank": [2, 2, DEFAULT_RANK, DEFAULT_RANK]}
    assert set(sweep.loc[sweep["value"] == 3, "variant"]) == {"CILMP"}
    lines = fs.findings_08(rows.iloc[:0], rows, n_layers=6)
    assert f"rank sweep: 2 0.600, {DEFAULT_RANK} 0.500 (full CILMP); best rank 2" in lines
    assert "length sweep: 1 0.200, 3 0.500 (full CILMP); best length 3" in lines
