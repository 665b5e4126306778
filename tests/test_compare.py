"""`python -m medkit compare`: every applicable method on a user's dataset over K and seeds,
one report, resumable; synth_ortho12 given as a user would give it (its split JSON)."""
from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from medkit.compare import CompareError, applicable, best_per_k, compare, recommendation
from medkit.data import load_dataset
from medkit.reporting.report import remote_assets


def test_what_applies_follows_the_resources(tiny_dataset):
    with_all, skipped = applicable(tiny_dataset, knowledge=True)
    methods = {s.method for s in with_all}
    assert {"zeroshot", "linear_probe", "coop", "cocoop", "biomedcoop", "cilmp", "maple", "vpt_deep", "ivlp"} <= methods
    assert not skipped
    bare = dataclasses.replace(tiny_dataset, descriptions=None)
    some, skipped = applicable(bare, knowledge=False)
    assert {"biomedcoop", "cilmp"}.isdisjoint({s.method for s in some})
    assert "description ensemble" not in {s.variant for s in some}
    assert any(s.startswith("biomedcoop") and "descriptions.json" in s for s in skipped)
    assert any(s.startswith("cilmp") and "--knowledge" in s for s in skipped)


def test_best_and_recommendation_follow_the_seed_spread():
    rows = []
    for k, accs in ((1, {"a": (0.50, 0.52), "b": (0.49, 0.53), "c": (0.10, 0.12)}),
                    (4, {"a": (0.70, 0.71), "b": (0.50, 0.52), "c": (0.20, 0.21)})):
        for label, values in accs.items():
            rows += [dict(split="test", classes="all", method=label, variant="v", shots=k, seed=i, acc=v)
                     for i, v in enumerate(values)]
    df = pd.DataFrame(rows)
    best = best_per_k(df).set_index("K")
    assert best.loc[1, "best"] == "a · v" and not best.loc[1, "margin > spread"]   # a and b overlap at K=1
    assert best.loc[4, "best"] == "a · v" and best.loc[4, "margin > spread"]
    rec = recommendation(df).set_index("K")
    assert rec.loc[1, "as good within the seed spread"] == "b · v" and rec.loc[4, "why"] == "clearly best"


def test_compare_on_a_split_json_writes_its_report_and_resumes(tmp_path, smoke_data):
    world = load_dataset("synth_ortho12", "xray", "smoke", smoke_data, progress=False)
    split_json = next(world.root.glob("split_*.json"))
    outputs = tmp_path / "outputs"
    lines: list[str] = []
    first = compare(split_json, "", "smoke", shots=[1, 2, 4], seeds=[1, 2], outputs_root=outputs, data_root=smoke_data,
                    progress=False, log=lines.append)
    rows = pd.read_csv(outputs / "results.csv")
    test = rows[rows["split"] == "test"]
    assert set(test["shots"]) == {1, 2} and set(test["seed"].dropna()) == {1}  # the smoke profile: 2 K, 1 seed
    ran = set(test["method"])
    assert {"zeroshot", "linear_probe", "lp_pp", "clip_adapter", "tip_adapter", "tip_adapter_f", "coop", "kgcoop",
            "cocoop", "prograd", "biomedcoop", "maple", "vpt_deep", "ivlp"} <= ran and "cilmp" not in ran
    assert "description ensemble" in set(test["variant"])  # descriptions.json sits next to the split JSON
    assert any("cilmp" in s for s in first.skipped)
    page = first.report.read_text()
    for section in ("Recommendation", "Accuracy vs K", "Best method per K", "Confusion matrix of the best at K=1",
                    "Confusion matrix of the best at K=2"):
        assert section in page, section
    assert page.count('src="data:image/png;base64,') == 3 and remote_assets(page) == []
    assert (first.run.path / "figures" / "shots_vs_acc.png").is_file()
    # the same command again: the same run folder, every run restored, no row written twice
    lines.clear()
    kept = sorted(p.name for p in (first.run.path / "checkpoints").rglob("*") if p.is_file())
    assert kept  # the trained runs were kept, so a rerun restores instead of training
    again = compare(split_json, "", "smoke", shots=[1, 2, 4], seeds=[1, 2], outputs_root=outputs, data_root=smoke_data,
                    progress=False, log=lines.append)
    assert again.run.path == first.run.path and len(pd.read_csv(outputs / "results.csv")) == len(rows)
    assert again.rows["acc"].tolist() == first.rows["acc"].tolist()
    assert sorted(p.name for p in (again.run.path / "checkpoints").rglob("*") if p.is_file()) == kept
    assert json.loads((again.run.path / "status.json").read_text())["state"] == "complete"
    assert (outputs / "compare" / again.key / "run.txt").read_text().strip().startswith("..")  # relative: outputs/ can move


def test_compare_refuses_multilabel_data(tmp_path, smoke_data):
    with pytest.raises(CompareError, match="multi-label dataset.*09_multilabel_cxr"):
        compare("synth_cxr14", "", "smoke", outputs_root=tmp_path / "o", data_root=smoke_data, progress=False)
