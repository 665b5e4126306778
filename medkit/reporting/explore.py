"""What the explorers of `medkit.ui` show, as plain functions of runner outcomes, datasets and
result rows: every widget callback is one call here, so it is tested without a browser and the
static cells of a notebook can call the same functions.

- predictions: per test image the true and predicted class, top-k classes with probabilities,
  filtered to mistakes, to one class or to one confusion-matrix cell;
- features: a t-SNE of test images and class text features, zero-shot and learned, computed once
  per run and re-coloured (class or group) or highlighted cheaply;
- results: `results.csv` narrowed by metric, datasets, methods and K, as a table and a
  metric-vs-K plot with ± std bands;
- prompts: a class's description sentences with their scores and whether MAD / z-score pruning
  keeps them at a chosen τ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from medkit.data import Dataset, ImageDataset
from medkit.experiment import Outcome
from medkit.metrics import confusion
from medkit.plots import plot_confusion, plot_shot_curves
from medkit.reporting.tables import mean_std, select

ANY = "(any)"

# --------------------------------------------------------------------------- runs to choose from


def run_label(dataset: str, outcome: Outcome) -> str:
    s = outcome.setting
    parts = [dataset, f"{s.method} · {s.variant}"]
    if outcome.shots:
        parts.append(f"K={outcome.shots}")
    if outcome.seed is not None:
        parts.append(f"seed {outcome.seed}")
    return " | ".join(parts)


def run_choices(outcomes: Mapping[str, Sequence[Outcome]], n_classes: Mapping[str, int] | None = None
                ) -> dict[str, tuple[str, Outcome]]:
    """{label: (dataset, outcome)} for every single-label outcome scored on the test split
    over the dataset's whole label set (not base / novel halves, not group labels, not
    multi-label), in the notebook's order; the label names dataset, method · variant, K, seed."""
    out: dict[str, tuple[str, Outcome]] = {}
    for name, outs in outcomes.items():
        for o in outs:
            row = o.row
            if row.get("split") != "test" or row.get("classes", "all") != "all" or row.get("train_dataset"):
                continue
            try:
                logits, labels = o.test_logits, o.test_labels
            except (KeyError, StopIteration):
                continue
            if logits.ndim != 2 or labels.ndim != 1 or (n_classes and logits.shape[1] != n_classes[name]):
                continue
            out.setdefault(run_label(name, o), (name, o))
    return out


# --------------------------------------------------------------------------- predictions


def prediction_table(logits: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str], k: int = 3,
                     paths: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per test image: `true`, `predicted`, `correct`, the softmax probability of
    the true class and of the top-k classes (`top1` … `topk`, `p1` … `pk`), and the image path."""
    logits = logits.float()
    probs = logits.softmax(1)
    k = min(k, logits.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    y = labels.long()
    df = pd.DataFrame({"true": [classnames[i] for i in y.tolist()],
                       "predicted": [classnames[i] for i in top_i[:, 0].tolist()]})
    df["correct"] = df["true"] == df["predicted"]
    df["p_true"] = probs.gather(1, y[:, None])[:, 0].numpy().round(4)
    for j in range(k):
        df[f"top{j + 1}"] = [classnames[i] for i in top_i[:, j].tolist()]
        df[f"p{j + 1}"] = top_p[:, j].numpy().round(4)
    if paths is not None:
        df["path"] = list(paths)
    return df


def filter_predictions(table: pd.DataFrame, show: str = "all", true: str = ANY, predicted: str = ANY) -> pd.DataFrame:
    """`show`: all, mistakes or correct; `true` / `predicted`: one class (ANY: every class).
    A confusion-matrix cell is `true=…, predicted=…`."""
    if show not in ("all", "mistakes", "correct"):
        raise ValueError(f"show={show!r}: choose all, mistakes or correct")
    keep = pd.Series(True, index=table.index)
    if show != "all":
        keep &= table["correct"] == (show == "correct")
    known = set(table.attrs.get("classes", ())) | set(table["true"]) | set(table["predicted"])
    for column, value in (("true", true), ("predicted", predicted)):
        if value != ANY:
            if value not in known:
                raise ValueError(f"{column}={value!r} is not a class of this run")
            keep &= table[column] == value
    return table[keep]


def confusion_cells(table: pd.DataFrame, classnames: Sequence[str], mistakes_only: bool = True) -> list[tuple[str, str, int]]:
    """The non-empty cells of the confusion matrix as (true, predicted, count), the largest
    first: what a user picks to list a cell's images."""
    idx = {c: i for i, c in enumerate(classnames)}
    cm = confusion(table["true"].map(idx).to_numpy(), table["predicted"].map(idx).to_numpy(), len(classnames))
    cells = [(classnames[i], classnames[j], int(cm[i, j])) for i, j in zip(*np.nonzero(cm))
             if not (mistakes_only and i == j)]
    return sorted(cells, key=lambda c: (-c[2], c[0], c[1]))


def cell_label(true: str, predicted: str, count: int) -> str:
    return f"{true} → {predicted} ({count})"


def run_predictions(dataset: Dataset, outcome: Outcome, k: int = 3) -> pd.DataFrame:
    test = dataset.splits["test"]
    logits, labels = outcome.test_logits, outcome.test_labels
    paths = [str(s.path) for s in test.samples] if len(test.samples) == len(labels) else None
    table = prediction_table(logits, labels, dataset.labels.classnames, k, paths)
    table.attrs["classes"] = list(dataset.labels.classnames)
    return table


def predictions_figure(dataset: Dataset, table: pd.DataFrame, n: int = 8, ncols: int = 4, title: str = "") -> Figure:
    """The first `n` images of `table` (rows of `prediction_table`), each with its top-k bars:
    green for the true class, red for a wrong top-1."""
    rows = table.head(n)
    k = sum(1 for c in table.columns if c.startswith("top"))
    nrows = max(1, int(np.ceil(len(rows) / ncols)))
    fig, axes = plt.subplots(2 * nrows, ncols, figsize=(3.0 * ncols, 4.2 * nrows),
                             gridspec_kw={"height_ratios": [3, 1.4] * nrows}, squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    test = dataset.splits["test"]
    for j, (i, r) in enumerate(rows.iterrows()):
        a_img, a_bar = axes[2 * (j // ncols), j % ncols], axes[2 * (j // ncols) + 1, j % ncols]
        if "path" in rows.columns:  # test logits of every image (not an evaluation subset)
            a_img.imshow(np.asarray(ImageDataset(test).image(i)), cmap="gray")
        a_img.set_title(f"#{i}  true: {r['true']}\npred: {r['predicted']}", fontsize=8,
                        color="darkgreen" if r["correct"] else "crimson")
        names = [r[f"top{t + 1}"] for t in range(k)][::-1]
        probs = [r[f"p{t + 1}"] for t in range(k)][::-1]
        colours = ["seagreen" if c == r["true"] else ("indianred" if t == k - 1 else "0.6")
                   for t, c in enumerate(names)]
        a_bar.axis("on")
        a_bar.barh(range(k), probs, color=colours)
        a_bar.set_yticks(range(k), names, fontsize=7)
        a_bar.set_xlim(0, 1)
        a_bar.tick_params(axis="x", labelsize=7)
    if rows.empty:
        axes[0, 0].text(0.5, 0.5, "no image matches", ha="center", va="center", transform=axes[0, 0].transAxes)
    fig.suptitle(title or f"{len(table)} images match; first {len(rows)} shown", fontsize=10)
    return fig


def run_confusion_figure(dataset: Dataset, table: pd.DataFrame, title: str = "") -> Figure:
    names = dataset.labels.classnames
    idx = {c: i for i, c in enumerate(names)}
    cm = confusion(table["true"].map(idx).to_numpy(), table["predicted"].map(idx).to_numpy(), len(names))
    groups = [dataset.labels.group_of[c] for c in names] if dataset.labels.has_groups else None
    return plot_confusion(cm, names, groups, title=title)


# --------------------------------------------------------------------------- features (t-SNE)


def tsne_points(panels: Sequence[tuple[str, torch.Tensor, torch.Tensor | None]], labels: torch.Tensor,
                classnames: Sequence[str], groups: Sequence[str] | None = None, seed: int = 0) -> pd.DataFrame:
    """One t-SNE per panel (name, image features [N, E], class text features [C, E] or None),
    as rows: panel, kind (image / text), x, y, class, group. Computed once; colouring and
    highlighting re-plot these points."""
    y = labels.long().numpy()
    frames = []
    for name, img, txt in panels:
        img = torch.nn.functional.normalize(img.float(), dim=-1).numpy()
        txt_np = np.zeros((0, img.shape[1]), np.float32) if txt is None else \
            torch.nn.functional.normalize(txt.float(), dim=-1).numpy()
        x = np.concatenate([img, txt_np])
        emb = TSNE(n_components=2, perplexity=float(min(30, (len(x) - 1) * 0.99)), init="pca",
                   random_state=seed).fit_transform(x)
        cls = [classnames[i] for i in y] + list(classnames[: len(txt_np)])
        frames.append(pd.DataFrame({"panel": name, "kind": ["image"] * len(img) + ["text"] * len(txt_np),
                                    "x": emb[:, 0], "y": emb[:, 1], "class": cls}))
    df = pd.concat(frames, ignore_index=True)
    group_of = dict(zip(classnames, groups)) if groups is not None else {}
    df["group"] = df["class"].map(group_of) if groups is not None else df["class"]
    return df


def tsne_view_figure(points: pd.DataFrame, colour_by: str = "class", highlight: str = ANY,
                     panels: Sequence[str] | None = None) -> Figure:
    """The t-SNE points coloured by `class` or `group`; with `highlight` one class stands out
    (its points full size, the others faded)."""
    if colour_by not in ("class", "group"):
        raise ValueError(f"colour_by={colour_by!r}: choose class or group")
    if highlight != ANY and highlight not in set(points["class"]):
        raise ValueError(f"highlight={highlight!r} is not a class of these points")
    panels = list(panels or dict.fromkeys(points["panel"]))
    names = list(dict.fromkeys(points[colour_by]))
    palette = dict(zip(names, sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.2), squeeze=False, layout="constrained")
    for ax, panel in zip(axes[0], panels):
        d = points[points["panel"] == panel]
        for kind, marker, size in (("image", "o", 10), ("text", "*", 150)):
            k = d[d["kind"] == kind]
            focus = (k["class"] == highlight) if highlight != ANY else pd.Series(True, index=k.index)
            for part, alpha, edge in ((k[~focus], 0.12, "none"), (k[focus], 0.85 if kind == "image" else 1.0, "black")):
                ax.scatter(part["x"], part["y"], s=size, marker=marker, alpha=alpha,
                           c=[palette[v] for v in part[colour_by]], edgecolors=edge if kind == "text" else "none",
                           linewidths=0.6)
        ax.set_title(panel + ("" if highlight == ANY else f"\nhighlighted: {highlight}"), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(names) <= 20:
        handles = [plt.Line2D([], [], marker="o", ls="", color=palette[n], label=n) for n in names]
        axes[0, -1].legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
                           title=colour_by, frameon=False)
    return fig


# --------------------------------------------------------------------------- results.csv


@dataclass(frozen=True)
class ResultChoices:
    metrics: list[str]
    datasets: list[str]
    methods: list[str]
    shots: list[int]


def result_choices(results: pd.DataFrame, split: str = "test") -> ResultChoices:
    """What the results explorer offers: the metric columns that have values, the datasets,
    the methods (`method · variant`) and the K of the rows of `split`."""
    df = results[results["split"] == split] if "split" in results else results
    numeric = [c for c in df.columns if c not in ("shots", "seed", "train_s", "eval_s", "classes_n")
               and pd.api.types.is_numeric_dtype(df[c]) and df[c].notna().any()]
    shots = sorted(int(k) for k in pd.to_numeric(df.get("shots", pd.Series(dtype=float)), errors="coerce").dropna().unique())
    return ResultChoices(numeric, list(dict.fromkeys(df["dataset"])), list(dict.fromkeys(method_labels(df))), shots)


def method_labels(df: pd.DataFrame) -> pd.Series:
    return df["method"].astype(str) + " · " + df["variant"].astype(str)


def results_view(results: pd.DataFrame, metric: str = "acc", datasets: Sequence[str] = (), methods: Sequence[str] = (),
                 shots: Sequence[int] = (), split: str = "test", classes: str = "all") -> pd.DataFrame:
    """The rows of `split` / `classes` for the chosen datasets, methods (`method · variant`)
    and K (empty: all; rows without K — full training, zero-shot — are kept whatever K is
    chosen), with a `label` column; a metric with no value there is an error naming it."""
    df = select(results, split=split)
    if "shots" not in df:  # segmentation rows: no K
        df = df.assign(shots=np.nan)
    if "classes" in df:  # segmentation rows leave it empty: one label set, `all`
        df = df[df["classes"].fillna("").replace("", "all") == classes]
    if metric not in df or not df[metric].notna().any():
        raise ValueError(f"metric {metric!r} has no value in these rows; choose from "
                         f"{result_choices(results, split).metrics}")
    df = df.assign(label=method_labels(df))
    if datasets:
        df = df[df["dataset"].isin(list(datasets))]
    if methods:
        df = df[df["label"].isin(list(methods))]
    if shots:
        k = pd.to_numeric(df["shots"], errors="coerce")
        df = df[k.isna() | k.isin([float(s) for s in shots])]
    return df[df[metric].notna()]


def results_table(view: pd.DataFrame, metric: str) -> pd.DataFrame:
    """mean ± std over seeds of `metric`: one row per dataset and method, one column per K
    (`—` for rows without K)."""
    if view.empty:
        return pd.DataFrame()
    df = view.assign(K=pd.to_numeric(view["shots"], errors="coerce").map(lambda k: "—" if np.isnan(k) else f"K={int(k)}"))
    g = df.groupby(["dataset", "label", "K"], sort=False)[metric].agg(["mean", "std", "size"]).reset_index()
    g["cell"] = [mean_std(m, s) for m, s in zip(g["mean"], g["std"])]
    table = g.pivot_table(index=["dataset", "label"], columns="K", values="cell", aggfunc="first", sort=False)
    order = sorted(table.columns, key=lambda c: (c != "—", int(c[2:]) if c != "—" else 0))
    table = table[order]
    table.columns.name = metric
    return table


def results_figure(view: pd.DataFrame, metric: str) -> Figure:
    """metric vs K per method, ± std bands, one panel per dataset; methods without K (or the
    zero-shot ones) as dashed lines."""
    df = view.copy()
    if df.empty:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no rows match", ha="center", va="center")
        return fig
    df["variant"] = df["label"]
    k = pd.to_numeric(df["shots"], errors="coerce")
    if k.isna().all():  # no K anywhere (multi-label, segmentation, full training): bars, ± std
        return _bars(df, metric)
    flat = set(df.loc[k.isna() | (df["method"] == "zeroshot"), "label"])  # by label: a method can have both
    df["method"] = df["label"]
    ks = sorted(k.dropna().unique())
    # rows without K (zero-shot, full training) stand at every K: a dashed line across the plot
    df = pd.concat([df[k.notna()], *[df[k.isna()].assign(shots=kk) for kk in (ks or [0])]], ignore_index=True)
    df["shots"] = df["shots"].astype(float)
    return plot_shot_curves(df, metric, flat=tuple(flat), title=f"{metric} (test, mean ± std over seeds)")


def _bars(df: pd.DataFrame, metric: str) -> Figure:
    labels = list(dict.fromkeys(df["label"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) * df["dataset"].nunique() ** 0.5), 4.2), layout="constrained")
    sns.barplot(df, x="label", y=metric, hue="dataset", errorbar="sd", ax=ax, order=labels)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("")
    ax.set_title(f"{metric} (test, mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    return fig


# --------------------------------------------------------------------------- prompts (BiomedCoOp)


def prompt_batch_scores(method: torch.nn.Module, features: torch.Tensor, batch_size: int = 32, seed: int = 0) -> np.ndarray:
    """`[B, S]`: every prompt's score on each of B random training batches — what
    BiomedCoOp's pruning rule sees at each step."""
    from medkit.methods.biomedcoop import prompt_scores

    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
    scale = method.adapter.logit_scale.float().detach()
    with torch.no_grad():
        return torch.stack([prompt_scores(features[order[i:i + batch_size]], method.sentences, scale)
                            for i in range(0, len(order), batch_size)]).numpy()


def prompt_table(batch_scores: np.ndarray, sentences: Sequence[str], tau: float = 1.5,
                 outliers: np.ndarray | None = None) -> pd.DataFrame:
    """One row per prompt of a class: its sentence, its mean score, and how often (over the
    batches) the paper's MAD rule and the reference code's z-score rule keep it at `tau`;
    `kept` columns say whether it survives most batches."""
    from medkit.methods.biomedcoop import keep_prompts

    if tau <= 0:
        raise ValueError(f"tau={tau}: the pruning threshold must be positive")
    s = torch.as_tensor(batch_scores)
    if s.shape[1] != len(sentences):
        raise ValueError(f"{s.shape[1]} prompt scores for {len(sentences)} sentences")
    df = pd.DataFrame({"sentence": list(sentences), "score": s.mean(0).numpy().round(3)})
    for rule, name in (("mad", "MAD"), ("zscore", "z-score")):
        freq = torch.stack([keep_prompts(b, rule, tau).float() for b in s]).mean(0).numpy()
        df[f"{name} keeps"] = freq.round(2)
        df[f"{name} kept"] = freq >= 0.5
    if outliers is not None:
        df["known outlier"] = np.asarray(outliers, dtype=bool)
    df.index.name = "prompt"
    return df


@torch.no_grad()
def feature_panels(outcome: Outcome, dataset: Dataset, adapter, points: int = 400
                   ) -> tuple[list[tuple[str, torch.Tensor, torch.Tensor | None]], torch.Tensor]:
    """The two panels of the zero-shot vs learned t-SNE (`tsne_points` input) and the labels of
    their test images: frozen image features with the study's hand-crafted prompt, and what the
    trained prompt method produces (the same images in both)."""
    from medkit.features import encode_split
    from medkit.methods import ZeroShotClassifier
    from medkit.prompts import study_template_for
    from medkit.reporting.figures import learned_features, spread_subset

    split = dataset.splits["test"]
    img_l, txt_l, y = learned_features(outcome.method, split, limit=points)
    zs = ZeroShotClassifier.from_templates(adapter, study_template_for(dataset.labels.has_groups), dataset.labels.classnames)
    img_z = encode_split(adapter, spread_subset(split, points))
    s = outcome.setting
    return [("zero-shot (study template)", img_z, zs.class_features),
            (f"{s.method} · {s.variant} (seed {outcome.seed})", img_l, txt_l)], y
