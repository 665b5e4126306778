"""The explorers' logic without a browser: the functions behind every widget, and the widgets
themselves driven by setting a control's value (ipywidgets runs without a front end)."""
from __future__ import annotations

import ast
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from medkit.experiment import Experiment, Setting
from medkit.features import FeatureCache
from medkit.reporting import explore
from medkit.reporting.explore import ANY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tiny_dataset, adapters, tmp_path_factory, one_thread):
    """A zero-shot and a CoOp run (2 seeds) on the tiny dataset."""
    ex = Experiment(None, tiny_dataset, adapters["native"], "smoke", FeatureCache(tmp_path_factory.mktemp("c")), views=0,
                    log=lambda s: None)
    outs = ex.full([Setting("zeroshot", "names", {"templates": ["a photo of a {}."]})], [None])
    outs += ex.full([Setting("coop", "shared", {"n_ctx": 2})], [1, 2])
    return {tiny_dataset.id: outs}, {tiny_dataset.id: tiny_dataset}


def test_only_ui_imports_ipywidgets():
    for path in (ROOT / "medkit").rglob("*.py"):
        names = {a.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.Import,))
                 for a in n.names} | {n.module for n in ast.walk(ast.parse(path.read_text()))
                                      if isinstance(n, ast.ImportFrom) and n.module}
        assert ("ipywidgets" in names) == (path.name == "ui.py"), path


def test_prediction_table_and_filters():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 2.5, 0.5], [0.1, 0.0, 4.0]])
    labels = torch.tensor([0, 1, 2, 0])
    t = explore.prediction_table(logits, labels, ["a", "b", "c"], k=2)
    assert t["predicted"].tolist() == ["a", "b", "b", "c"] and t["correct"].tolist() == [True, True, False, False]
    assert t["top2"].tolist() == ["b", "c", "c", "a"]
    assert np.allclose(t["p1"], logits.softmax(1).max(1).values.numpy(), atol=1e-4)
    assert (t["p1"] >= t["p2"]).all()
    assert explore.filter_predictions(t, "mistakes").index.tolist() == [2, 3]
    assert explore.filter_predictions(t, "correct", true="a").index.tolist() == [0]
    assert explore.filter_predictions(t, true="c", predicted="b").index.tolist() == [2]  # one confusion cell
    assert explore.confusion_cells(t, ["a", "b", "c"]) == [("a", "c", 1), ("c", "b", 1)]
    assert ("a", "a", 1) in explore.confusion_cells(t, ["a", "b", "c"], mistakes_only=False)
    with pytest.raises(ValueError, match="show='wrong'"):
        explore.filter_predictions(t, "wrong")
    with pytest.raises(ValueError, match="true='z' is not a class"):
        explore.filter_predictions(t, true="z")


def test_prediction_browser_filters_and_lists_a_confusion_cell(runs):
    from medkit.ui import PredictionBrowser

    outcomes, datasets = runs
    b = PredictionBrowser(outcomes, datasets)
    assert len(b.runs) == 3 and "coop · shared" in list(b.runs)[1] and "seed 2" in list(b.runs)[2]
    n_all = len(b.table())
    assert b.shown[0] == f"{n_all} of {n_all} test images match"
    b.show.value = "mistakes"
    mistakes = b.matches()
    assert not mistakes["correct"].any() and b.shown[0] == f"{len(mistakes)} of {n_all} test images match"
    assert len(b.cell.options) > 1, "the fixture's zero-shot run makes mistakes"
    if True:  # pick the largest confusion cell: exactly its images are listed
        b.cell.value = b.cell.options[1]
        true, pred, count = b._cells[b.cell.value]
        rows = b.matches()
        assert len(rows) == count and set(rows["true"]) == {true} and set(rows["predicted"]) == {pred}
    b.cell.value = ANY
    b.show.value = "all"
    b.true.value = "plate"
    assert set(b.matches()["true"]) == {"plate"} and len(b.matches()) == 3
    assert list(b.shown[2].columns) == ["true", "p_true", "top1", "p1", "top2", "p2", "top3", "p3"]
    first = b.table()
    b.run.value = list(b.runs)[1]  # another run: class filter reset, its own predictions
    assert b.true.value == ANY and b.table() is not first
    figs = [x for x in b.shown if isinstance(x, plt.Figure)]
    assert len(figs) == 2
    plt.close("all")


def test_feature_explorer_embeds_once_and_recolours(runs, adapters):
    from medkit.ui import FeatureExplorer

    outcomes, datasets = runs
    f = FeatureExplorer(outcomes, datasets, adapters["native"], points=12)
    assert all("coop" in k for k in f.runs)  # zero-shot has no learned text features to compare
    pts = f.points_of(f.run.value)
    assert set(pts["panel"].unique()) == {"zero-shot (study template)", "coop · shared (seed 1)"}
    assert (pts["kind"] == "text").sum() == 2 * 4 and (pts["kind"] == "image").sum() == 2 * 12
    f.colour.value = "group"
    f.highlight.value = "round"
    assert f.points_of(f.run.value) is pts  # recolouring does not recompute the t-SNE
    ax = f.shown[0].axes[0]
    assert "highlighted: round" in ax.get_title()
    f.panel.value = "learned"
    assert len(f.shown[0].axes) == 1
    with pytest.raises(ValueError, match="colour_by='size'"):
        explore.tsne_view_figure(pts, "size")
    plt.close("all")


def results_frame() -> pd.DataFrame:
    rows = []
    for ds in ("d1", "d2"):
        for k in (1, 4):
            for seed, acc in ((1, 0.4 + 0.1 * k / 4), (2, 0.5 + 0.1 * k / 4)):
                rows.append(dict(dataset=ds, split="test", classes="all", protocol="few_shot", method="coop",
                                 variant="CoOp", shots=k, seed=seed, acc=acc, f1_macro=acc - 0.1))
        rows.append(dict(dataset=ds, split="test", classes="all", protocol="few_shot", method="zeroshot",
                         variant="names", shots=np.nan, seed=np.nan, acc=0.3, f1_macro=0.2))
        rows.append(dict(dataset=ds, split="val", classes="all", protocol="few_shot", method="coop",
                         variant="CoOp", shots=1, seed=1, acc=0.99, f1_macro=0.99))
    return pd.DataFrame(rows)


def test_results_view_and_table():
    df = results_frame()
    c = explore.result_choices(df)
    assert c.datasets == ["d1", "d2"] and c.methods == ["coop · CoOp", "zeroshot · names"] and c.shots == [1, 4]
    assert "acc" in c.metrics and "f1_macro" in c.metrics and "seed" not in c.metrics
    view = explore.results_view(df, "acc", datasets=["d1"], shots=[4])
    assert set(view["dataset"]) == {"d1"} and set(view["split"]) == {"test"}
    assert sorted(view["label"].unique()) == ["coop · CoOp", "zeroshot · names"]  # zero-shot has no K: kept
    t = explore.results_table(explore.results_view(df, "acc", datasets=["d1"]), "acc")
    assert list(t.columns) == ["—", "K=1", "K=4"]
    assert t.loc[("d1", "coop · CoOp"), "K=4"] == "0.550 ± 0.071"
    assert t.loc[("d1", "zeroshot · names"), "—"] == "0.300"
    with pytest.raises(ValueError, match="metric 'dice' has no value"):
        explore.results_view(df, "dice")


def test_results_explorer_updates_table_and_plot_on_each_control():
    from medkit.ui import ResultsExplorer

    r = ResultsExplorer(results_frame())
    table, fig = r.shown
    assert table.columns.name == "acc" and len(table) == 4
    r.metric.value = "f1_macro"
    assert r.shown[0].columns.name == "f1_macro" and r.shown[0].loc[("d1", "coop · CoOp"), "K=4"] == "0.450 ± 0.071"
    r.datasets.value = ("d2",)
    assert set(r.shown[0].index.get_level_values(0)) == {"d2"}
    r.methods.value = ("coop · CoOp",)
    r.shots.value = (1,)
    assert r.shown[0].to_dict() == {"K=1": {("d2", "coop · CoOp"): "0.375 ± 0.071"}}
    assert r.shown[1].axes[0].get_title() == "d2"
    r.protocol.value = "few_shot"
    assert r.shown[0].to_dict() == {"K=1": {("d2", "coop · CoOp"): "0.375 ± 0.071"}}
    plt.close("all")


def test_prompt_table_follows_the_rules_and_tau():
    from medkit.methods.biomedcoop import keep_prompts

    rng = np.random.default_rng(0)
    scores = rng.normal(10, 0.2, (5, 6))
    scores[:, 5] = 4.0  # one prompt far below the rest in every batch
    t = explore.prompt_table(scores, [f"s{i}" for i in range(6)], tau=1.5, outliers=np.array([0, 0, 0, 0, 0, 1], bool))
    assert not t.loc[5, "MAD kept"] and not t.loc[5, "z-score kept"] and t.loc[5, "known outlier"]
    want = np.mean([keep_prompts(torch.tensor(b), "mad", 1.5).numpy() for b in scores], axis=0)
    assert np.allclose(t["MAD keeps"], want.round(2))
    loose = explore.prompt_table(scores, [f"s{i}" for i in range(6)], tau=100.0)
    assert loose["MAD kept"].all() and loose["z-score kept"].all()
    with pytest.raises(ValueError, match="6 prompt scores for 5 sentences"):
        explore.prompt_table(scores, ["s"] * 5)
    with pytest.raises(ValueError, match="tau=0"):
        explore.prompt_table(scores, ["s"] * 6, tau=0)


def test_prompt_explorer_on_a_biomedcoop(tiny_dataset, adapters):
    from medkit.features import encode_split
    from medkit.methods import BiomedCoOp
    from medkit.ui import PromptExplorer

    probe = BiomedCoOp(adapters["native"], tiny_dataset.labels.classnames, tiny_dataset.descriptions)
    feats = encode_split(adapters["native"], tiny_dataset.splits["train"])
    scores = explore.prompt_batch_scores(probe, feats, batch_size=4)
    assert scores.shape == (4, 3)  # 16 images in batches of 4; 3 sentences per class
    p = PromptExplorer({tiny_dataset.id: (tiny_dataset, scores)})
    assert p.shown[0]["sentence"].tolist() == tiny_dataset.descriptions["oval"]
    p.klass.value = "screw"
    assert p.shown[0]["sentence"].tolist() == tiny_dataset.descriptions["screw"]
    p.tau.value = 0.25
    tight = p.shown[0]["MAD keeps"].sum()
    p.tau.value = 4.0
    assert p.shown[0]["MAD keeps"].sum() >= tight
    plt.close("all")


def test_show_if_builds_nothing_headless():
    from medkit.ui import show_if

    def boom():
        raise AssertionError("built in a headless run")

    assert show_if(False, boom) is None


def test_results_without_k_are_bars():
    rows = [dict(dataset="cxr", split="test", classes="all", method=m, variant="v", seed=s, macro_auc=a)
            for m, vals in (("pspg", (0.7, 0.72)), ("dualcoop", (0.6, 0.65))) for s, a in enumerate(vals)]
    view = explore.results_view(pd.DataFrame(rows), "macro_auc")
    fig = explore.results_figure(view, "macro_auc")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["pspg · v", "dualcoop · v"]
    assert explore.results_table(view, "macro_auc").loc[("cxr", "pspg · v"), "—"] == "0.710 ± 0.014"
    plt.close("all")


def test_results_explorer_on_segmentation_rows():
    """Segmentation rows leave `classes` empty and have no K: still one table and one plot."""
    from medkit.ui import ResultsExplorer

    rows = [dict(dataset="polyp", split="test", classes="", method=m, variant=v, seed=s, dice=d, prompt="p1")
            for m, v, vals in (("seg_coop", "CoOp (text)", (0.3, 0.35)), ("seg_finetune", "full fine-tuning", (0.5, 0.6)))
            for s, d in enumerate(vals)]
    r = ResultsExplorer(pd.DataFrame(rows), metric="dice")
    assert not any(isinstance(x, str) for x in r.shown), r.shown
    assert r.shown[0].loc[("polyp", "seg_finetune · full fine-tuning"), "—"] == "0.550 ± 0.071"
    plt.close("all")


def test_only_whole_label_set_test_runs_are_browsable(runs):
    outcomes, datasets = runs
    name = next(iter(outcomes))
    n = {name: datasets[name].labels.n_classes}
    assert len(explore.run_choices(outcomes, n)) == 3
    assert explore.run_choices(outcomes, {name: n[name] + 1}) == {}  # logits over another label set: not this dataset's
