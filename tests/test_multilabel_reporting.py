"""The multi-label notebook's tables, findings and batch-dependence measurement, on rows and
methods made by hand."""
from __future__ import annotations

import pandas as pd
import torch

from medkit.reporting import multilabel as ml


def _rows() -> list[dict]:
    rows = []
    for variant, base in (("A", 0.80), ("B", 0.70)):
        for seed, jitter in ((1, 0.0), (2, 0.01), (3, -0.01)):
            for classes, shift in (("all", 0.0), ("seen", 0.05), ("unseen", -0.05)):
                rows.append({"task": "multi_label", "dataset": "eval", "classes": classes, "variant": variant,
                             "seed": seed, "macro_auc": base + jitter + shift, "micro_auc": 0.5, "map": 0.3})
    rows.append({"task": "single_label", "dataset": "eval", "classes": "all", "variant": "A", "seed": 1, "acc": 0.9})
    return rows


def test_table_has_mean_and_std_per_dataset_and_the_trainable_parameters():
    table = ml.dataset_table(_rows(), ["eval"], params={"A": 1234, "B": 0})
    assert list(table.index) == ["A", "B"]
    assert table.loc["A", ("eval", "Macro AUC")] == "0.800 ± 0.010" and table.loc["A", ("", "#P")] == "1,234"
    gz = ml.gzsl_table(_rows(), "eval")
    assert gz.loc["B", "unseen"] == "0.650 ± 0.010" and gz.loc["A", "seen"] == "0.850 ± 0.010"
    assert ml.dataset_table([], ["eval"]).empty  # no multi-label rows: an empty table, not an error


def test_findings_are_decided_against_the_seed_spread_and_a_floor_for_single_seeds():
    roles = {"pspg": "A", "dualcoop": "B"}
    f = ml.findings_09(_rows(), ["eval"], roles)
    unseen = f[(f.question == "PsPG beats DualCoOp on unseen findings")].iloc[0]
    assert unseen["A > B"] == "yes" and abs(unseen["A − B"] - 0.1) < 1e-9
    floored = ml.findings_09(_rows(), ["eval"], roles, min_margin={"eval": 0.2})
    assert (floored["A > B"] == "tie (within seed spread)").all()
    assert abs(ml.seed_spread(_rows(), "A")["eval"] - 0.01) < 1e-9


class _BatchMean(torch.nn.Module):
    """Scores that depend on the batch (the reference's failure mode), for the measurement."""

    def forward(self, x):
        return x - x.mean(0, keepdim=True)


def test_batch_dependence_is_zero_for_a_per_image_method_and_not_for_a_batch_one():
    x = torch.randn(10, 3)
    per_image = ml.batch_dependence(torch.nn.Identity(), x)
    batch = ml.batch_dependence(_BatchMean(), x)
    assert max(per_image.values()) == 0.0
    assert batch["alone: max |Δp|"] > 0.01


def test_prevalence_figure_and_per_finding_bars_render(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from medkit.data import Dataset, MultiLabelSpace, Sample, Split

    space = MultiLabelSpace(("a", "b"))
    split = Split("test", [Sample(tmp_path / f"{i}.png", -1, "", targets=(i % 2, 1 - i % 2)) for i in range(8)], space)
    fig = ml.prevalence_figure({"d": Dataset("d", {"test": split}, space, tmp_path)})
    assert len(fig.axes) == 1
    scores = torch.randn(8, 2)
    targets = torch.tensor([[i % 2, 1 - i % 2] for i in range(8)])
    fig, table = ml.per_finding_figure({"m": (scores, targets)}, ["a", "b"], [True, False], n_resamples=50)
    assert list(table.finding) == ["a", "b"] and table.seen.tolist() == [True, False]
    assert isinstance(table, pd.DataFrame) and table.auc.between(0, 1).all()
