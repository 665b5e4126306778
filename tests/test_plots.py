"""Every plot returns a Figure with the expected axes; no window is ever opened."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from medkit.plots import (  # noqa: E402
    group_order,
    plot_bars,
    plot_confusion,
    plot_histories,
    plot_loss_terms,
    plot_per_class_accuracy,
    plot_sample_grid,
    plot_training_curve,
    plot_tsne,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_histories_two_panels_with_and_without_validation():
    h = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.7, 0.5], "val_loss": [1.1, 0.9, np.nan],
                      "train_acc": [0.4, 0.6, 0.7], "val_acc": [0.3, 0.5, np.nan]})
    fig = plot_histories({"a": h, "b": h.assign(val_loss=np.nan, val_acc=np.nan)})
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert len(fig.axes[0].lines) == 3  # a: train + val, b: train only


def test_loss_terms_one_line_per_term():
    steps = pd.DataFrame({"step": [1, 2, 3], "loss": [3.0, 2.0, 1.5], "ce": [2.0, 1.5, 1.2], "sccm": [0.5, 0.3, 0.2],
                          "kdsp": [0.5, 0.2, 0.1]})
    fig = plot_loss_terms({"BiomedCoOp": steps, "CoOp": steps[["step", "loss", "ce"]]}, title="terms")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2 and len(visible[0].lines) == 4 and len(visible[1].lines) == 2
    assert {t.get_text() for t in visible[0].get_legend().get_texts()} == {"total", "ce", "sccm", "kdsp"}


def test_group_order_is_stable_by_first_appearance():
    assert group_order(["B", "A", "B", "A", "C"]) == [0, 2, 1, 3, 4]


def test_confusion_without_groups():
    fig = plot_confusion(np.array([[3, 1], [0, 2]]), ["x", "y"], title="cm")
    assert len(fig.axes) == 2  # heatmap + colour bar
    assert fig.axes[0].get_title() == "cm"


def test_confusion_with_groups_reorders_classes():
    names = ["a1", "b1", "a2", "b2"]
    groups = ["A", "B", "A", "B"]
    cm = np.diag([1, 2, 3, 4])
    cm[0, 1] = 1  # a1 → b1 confusions: half of a1's row
    fig = plot_confusion(cm, names, groups=groups)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a1", "a2", "b1", "b2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a1", "a2", "b1", "b2"]
    values = ax.collections[0].get_array().reshape(4, 4)
    np.testing.assert_allclose(values[0], [0.5, 0, 0.5, 0])  # row a1, columns a1 a2 b1 b2
    assert {t.get_text() for t in ax.texts} == {"A", "B"}


def test_confusion_45_classes_and_shape_check():
    n = 45
    groups = [f"G{i % 5}" for i in range(n)]
    fig = plot_confusion(np.random.default_rng(0).integers(0, 5, (n, n)), [f"c{i}" for i in range(n)], groups)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError):
        plot_confusion(np.eye(3), ["a", "b"])


def test_tsne_small_legend_and_many_classes_colourbar():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(10, 8))
    fig = plot_tsne(feats, np.arange(10) % 3, ["a", "b", "c"], title="t")
    assert len(fig.axes) == 1 and fig.axes[0].get_legend() is not None
    fig = plot_tsne(feats, np.arange(10), [f"c{i}" for i in range(20)])
    assert len(fig.axes) == 2  # scatter + colour bar


def test_per_class_accuracy_bars():
    acc = np.array([0.9, np.nan, 0.5, 0.2])
    fig = plot_per_class_accuracy(acc, ["a1", "b1", "a2", "b2"])
    assert len(fig.axes) == 1
    fig = plot_per_class_accuracy(acc, ["a1", "b1", "a2", "b2"], groups=["A", "B", "A", "B"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a1", "a2", "b1", "b2"]
    assert ax.get_legend() is not None


def test_sample_grid_mixed_inputs():
    images = [Image.new("RGB", (16, 16), "red"), np.zeros((16, 16)), np.random.rand(3, 16, 16) * 4 - 2]
    fig = plot_sample_grid(images, ["pil", "gray", "chw"], ncols=2, title="grid")
    assert len(fig.axes) == 3  # the unused 4th cell is removed
    assert fig.axes[0].get_title() == "pil"


def test_training_curve_and_bars():
    fig = plot_training_curve([0, 10, 20], [2.0, 1.5, 1.2], "pretraining")
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 1
    df = pd.DataFrame({"method": ["zs", "zs", "lp", "lp"], "acc": [0.5, 0.52, 0.7, 0.72],
                       "backbone": ["vit", "rn", "vit", "rn"]})
    fig = plot_bars(df, x="method", y="acc", hue="backbone", title="bars")
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "bars"
    assert len(plot_bars(df, x="method", y="acc").axes) == 1
