"""Figures for the workbook: training curves, confusion matrices, t-SNE, per-class bars, image grids.

Every function returns a `matplotlib.figure.Figure` made through pyplot (so Jupyter's inline
backend shows it at the end of the cell) and never calls `plt.show()`; callers save it with
`Run.save_figure` and close it when they are done.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory
from sklearn.manifold import TSNE

from medkit.metrics import to_numpy

LEGEND_MAX_NAMES = 15


# --------------------------------------------------------------------------- helpers


def _tick_fontsize(n: int) -> float:
    """Tick labels shrink with the class count so 45 names still fit side by side."""
    return float(np.clip(360 / max(n, 1), 4, 10))


def group_order(groups: Sequence[str]) -> list[int]:
    """Class indices sorted by group (groups in order of first appearance), stable within a group."""
    first_seen = {g: i for i, g in reversed(list(enumerate(groups)))}
    return sorted(range(len(groups)), key=lambda i: first_seen[groups[i]])


def _row_normalise(cm: np.ndarray) -> np.ndarray:
    """Rows sum to 1; rows of classes never seen stay 0 instead of NaN."""
    cm = cm.astype(np.float64)
    sums = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)


def _group_spans(ordered_groups: Sequence[str]) -> list[tuple[str, int, int]]:
    """(group, start, stop) runs over an already group-sorted class list."""
    spans: list[tuple[str, int, int]] = []
    for i, g in enumerate(ordered_groups):
        if spans and spans[-1][0] == g:
            spans[-1] = (g, spans[-1][1], i + 1)
        else:
            spans.append((g, i, i + 1))
    return spans


def _image_array(image: Any) -> np.ndarray:
    """HW or HWC array for imshow from a PIL image, numpy array or CHW tensor."""
    arr = np.asarray(image) if not hasattr(image, "detach") else to_numpy(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # CHW tensors from torchvision transforms
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype.kind == "f" and arr.size and (arr.min() < 0 or arr.max() > 1):
        # Normalised tensors: rescale for display rather than letting imshow clip them.
        arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-12)
    return arr


# --------------------------------------------------------------------------- figures


def plot_confusion(
    cm: Any,
    classnames: Sequence[str],
    groups: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """Row-normalised confusion heatmap; with `groups` (one name per class) classes are
    ordered by group, separated by lines and labelled with the group name on top."""
    cm = to_numpy(cm)
    n = len(classnames)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix {cm.shape} does not match {n} class names")
    if groups is not None and len(groups) != n:
        raise ValueError(f"{len(groups)} groups given for {n} classes")
    order = group_order(groups) if groups is not None else list(range(n))
    names = [classnames[i] for i in order]
    cm = _row_normalise(cm)[np.ix_(order, order)]

    side = max(5.0, 0.2 * n + 3)
    fig, ax = plt.subplots(figsize=(side + 1, side), layout="constrained")
    sns.heatmap(cm, ax=ax, cmap="Blues", vmin=0, vmax=1, square=True,
                xticklabels=names, yticklabels=names, cbar_kws={"label": "fraction of true class", "shrink": 0.7})
    fontsize = _tick_fontsize(n)
    ax.tick_params(axis="both", labelsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if groups is not None:
        _draw_group_boundaries(ax, [groups[i] for i in order], fontsize)
    if groups is not None:
        fig.suptitle(title)  # constrained layout puts it above the rotated group names
    else:
        ax.set_title(title)
    return fig


def _draw_group_boundaries(ax: plt.Axes, ordered_groups: Sequence[str], fontsize: float) -> None:
    """Lines between consecutive groups and each group's name centred above its columns."""
    above = blended_transform_factory(ax.transData, ax.transAxes)  # x in cells, y in axes fraction
    spans = _group_spans(ordered_groups)
    for g, start, stop in spans:
        if start > 0:
            ax.axhline(start, color="black", linewidth=0.8)
            ax.axvline(start, color="black", linewidth=0.8)
        ax.text((start + stop) / 2, 1.01, g, transform=above, rotation=45, ha="left", va="bottom",
                fontsize=fontsize + 1)


def plot_tsne(
    features: Any,
    labels: Any,
    names: Sequence[str],
    title: str = "",
    seed: int = 0,
    perplexity: float = 30,
) -> Figure:
    """2-D t-SNE of (N, D) features coloured by label: a legend up to 15 names, else a colour bar."""
    x = to_numpy(features).astype(np.float32)
    y = to_numpy(labels).astype(np.int64).ravel()
    # sklearn requires perplexity < n_samples; tiny few-shot sets would otherwise fail.
    perplexity = float(min(perplexity, max(len(x) - 1, 1) * 0.99))
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)

    fig, ax = plt.subplots(figsize=(7, 6), layout="constrained")
    if len(names) <= LEGEND_MAX_NAMES:
        palette = sns.color_palette("tab20" if len(names) > 10 else "tab10", len(names))
        for label in np.unique(y):
            pts = emb[y == label]
            ax.scatter(pts[:, 0], pts[:, 1], s=12, color=palette[label], label=names[label])
        ax.legend(fontsize=8, markerscale=1.5, loc="best")
    else:
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=y, s=10, cmap="turbo", vmin=0, vmax=len(names) - 1)
        fig.colorbar(sc, ax=ax, label="class index")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "t-SNE")
    return fig


def plot_per_class_accuracy(
    acc: Any,
    classnames: Sequence[str],
    groups: Sequence[str] | None = None,
) -> Figure:
    """Accuracy per class as bars (NaN = class absent, no bar), grouped and coloured by group."""
    acc = to_numpy(acc).astype(np.float64)
    order = group_order(groups) if groups is not None else list(range(len(classnames)))
    df = pd.DataFrame({
        "class": [classnames[i] for i in order],
        "accuracy": acc[order],
        "group": [groups[i] for i in order] if groups is not None else "all",
    })
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(df) + 2), 4), layout="constrained")
    sns.barplot(data=df, x="class", y="accuracy", hue="group" if groups is not None else None,
                dodge=False, ax=ax, color=None if groups is not None else "tab:blue")
    ax.set_ylim(0, 1.05)
    ax.tick_params(axis="x", labelrotation=90, labelsize=_tick_fontsize(len(df)))
    ax.set_xlabel("")
    if groups is not None:
        ax.legend(fontsize=7, title="group", ncols=max(1, math.ceil(len(set(groups)) / 8)))
    return fig


def plot_sample_grid(
    images: Sequence[Any],
    titles: Sequence[str],
    ncols: int = 8,
    title: str = "",
) -> Figure:
    """Images (PIL, HW/HWC arrays or CHW tensors) in a grid with one small title each."""
    if len(images) == 0:
        raise ValueError("no images to plot")
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.8 * ncols, 1.9 * nrows + 0.4), squeeze=False,
                             layout="constrained")
    flat = axes.ravel()
    for ax, image, name in zip(flat, images, titles):
        arr = _image_array(image)
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None)
        ax.set_title(name, fontsize=7)
        ax.axis("off")
    for ax in flat[len(images):]:
        ax.remove()  # keep fig.axes equal to the images shown
    if title:
        fig.suptitle(title)
    return fig


def plot_training_curve(steps: Sequence[float], losses: Sequence[float], title: str = "") -> Figure:
    """A single loss-vs-step line, e.g. for contrastive pretraining."""
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.plot(to_numpy(steps), to_numpy(losses), linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig


def plot_step_losses(curves: Mapping[str, Sequence[float]], title: str = "", chance: float | None = None) -> Figure:
    """Training loss per optimizer step, one line per budget (or run); `chance`: the loss of
    uniform predictions, ln(classes), the plateau a stuck prompt learner sits on."""
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for label, losses in curves.items():
        ax.plot(np.arange(1, len(losses) + 1), to_numpy(losses), linewidth=1.2, label=label)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"uniform prediction (ln C = {chance:.2f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_bars(df: pd.DataFrame, x: str, y: str, hue: str | None = None, title: str = "") -> Figure:
    """Grouped bar chart; repeated rows (seeds) are averaged with a standard-deviation whisker."""
    n_bars = df[x].nunique() * (df[hue].nunique() if hue else 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * n_bars + 2), 4), layout="constrained")
    sns.barplot(data=df, x=x, y=y, hue=hue, errorbar="sd", ax=ax)
    if df[x].nunique() > 6:
        ax.tick_params(axis="x", labelrotation=45)
    ax.set_title(title)
    return fig


def plot_learned_vs_zeroshot(
    panels: Sequence[tuple[str, Any, Any]],
    labels: Any,
    names: Sequence[str],
    groups: Sequence[str] | None = None,
    seed: int = 0,
) -> Figure:
    """t-SNE panels side by side, e.g. ("zero-shot", image feats, class text feats) and
    ("learned", …) (text None: images only): image features as dots, class text features as stars, coloured by
    group when there are groups (45 class colours are unreadable), else by class."""
    y = to_numpy(labels).astype(np.int64).ravel()
    colour_names = list(dict.fromkeys(groups)) if groups is not None else list(names)
    colour_of_class = np.array([colour_names.index(g) for g in groups]) if groups is not None else np.arange(len(names))
    palette = sns.color_palette("tab10" if len(colour_names) <= 10 else "tab20", len(colour_names))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), layout="constrained", squeeze=False)
    for ax, (title, img, txt) in zip(axes[0], panels):
        img = to_numpy(img).astype(np.float32)
        txt = np.zeros((0, img.shape[1]), np.float32) if txt is None else to_numpy(txt).astype(np.float32)
        img = img / np.linalg.norm(img, axis=1, keepdims=True)
        txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
        x = np.concatenate([img, txt])
        perplexity = float(min(30, (len(x) - 1) * 0.99))
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
        pts, stars = emb[: len(img)], emb[len(img):]
        for c, name in enumerate(colour_names):
            sel = colour_of_class[y] == c
            ax.scatter(pts[sel, 0], pts[sel, 1], s=8, alpha=0.6, color=palette[c], label=name)
            own = colour_of_class == c
            if len(txt):
                ax.scatter(stars[own, 0], stars[own, 1], s=140, marker="*", color=palette[c], edgecolor="black", linewidth=0.6)
        ax.set_title(f"{title}\n(dots: test images" + (" · stars: class text features)" if len(txt) else ")"))
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(fontsize=8, markerscale=2, loc="best", title="group" if groups is not None else "class")
    return fig


def plot_histories(histories: Mapping[str, pd.DataFrame], title: str = "") -> Figure:
    """Loss and accuracy curves of several runs in two panels (train solid, val dashed)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    palette = sns.color_palette("tab10", max(len(histories), 1))
    for colour, (label, h) in zip(palette, histories.items()):
        ax_loss.plot(h["epoch"], h["train_loss"], "-o", color=colour, markersize=3, label=f"{label}")
        if h["val_loss"].notna().any():
            ax_loss.plot(h["epoch"], h["val_loss"], "--", color=colour)
        ax_acc.plot(h["epoch"], h["train_acc"], "-o", color=colour, markersize=3, label=f"{label}")
        if h["val_acc"].notna().any():
            ax_acc.plot(h["epoch"], h["val_acc"], "--", color=colour)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(f"{name} (solid: train · dashed: val)")
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_loss_terms(steps: Mapping[str, pd.DataFrame], title: str = "", ncols: int = 3) -> Figure:
    """Every named loss term per optimizer step (`fit`'s `history.attrs["steps"]`), one panel
    per run: the total in black, each term (as weighted in the total) in its colour."""
    n = max(len(steps), 1)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False, layout="constrained")
    terms = list(dict.fromkeys(c for d in steps.values() for c in d.columns if c not in ("step", "epoch", "loss")))
    colours = dict(zip(terms, sns.color_palette("tab10", max(len(terms), 1))))
    for ax, (label, d) in zip(axes.flat, steps.items()):
        ax.plot(d["step"], d["loss"], "-", color="black", lw=1.8, label="total")
        for term in [c for c in terms if c in d]:
            ax.plot(d["step"], d[term], "--", color=colours[term], lw=1.3, label=term)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(steps):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------- few-shot


def plot_shot_curves(rows: pd.DataFrame, metric: str = "acc", flat: Sequence[str] = ("zeroshot",),
                     title: str = "") -> Figure:
    """Accuracy vs K per method (variant), mean line and ± std band over seeds, one panel per
    dataset; methods in `flat` (training-free of K) as dashed horizontal lines."""
    df = rows[rows["split"] == "test"].copy()
    datasets = list(dict.fromkeys(df["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.2 * len(datasets), 4.6), squeeze=False)
    variants = list(dict.fromkeys(df["variant"]))
    colors = dict(zip(variants, sns.color_palette("tab20", len(variants))))
    for ax, name in zip(axes[0], datasets):
        d = df[df["dataset"] == name]
        shots = sorted(d["shots"].unique())
        for (method, variant), g in d.groupby(["method", "variant"], sort=False):
            stats = g.groupby("shots")[metric].agg(["mean", "std"]).reindex(shots).dropna(subset=["mean"])
            if method in flat:
                ax.axhline(stats["mean"].mean(), ls="--", lw=1.2, color=colors[variant], label=variant)
                continue
            x, m, s = stats.index.to_numpy(), stats["mean"].to_numpy(), stats["std"].fillna(0).to_numpy()
            ax.plot(x, m, marker="o", ms=3.5, lw=1.5, color=colors[variant], label=variant)
            ax.fill_between(x, m - s, m + s, color=colors[variant], alpha=0.15, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(int(k)) for k in shots])
        ax.set_xlabel("shots per class (K)")
        ax.set_ylabel(metric)
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.suptitle(title or f"{metric} vs shots (mean ± std over seeds)")
    fig.tight_layout()
    return fig


def plot_prompt_scores(scores: np.ndarray, kept: Mapping[str, np.ndarray], outliers: np.ndarray | None = None,
                       title: str = "") -> Figure:
    """Selective prompting: each prompt's score (batch mean of its max zero-shot logit) and
    which prompts each pruning rule keeps; known outliers ringed."""
    n = len(scores)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * n), 3.6))
    x = np.arange(n)
    ax.plot(x, scores, "o-", color="0.45", ms=5, lw=0.8, label="score")  # points: the axis need not start at 0
    lo = float(np.min(scores))
    marks = ("v", "^", "s", "D")
    for j, (rule, mask) in enumerate(kept.items()):
        ax.scatter(x[~mask], np.full((~mask).sum(), lo - (j + 1) * 0.04 * (np.ptp(scores) or 1)), marker=marks[j % 4],
                   s=30, label=f"pruned by {rule}")
    if outliers is not None and outliers.any():
        ax.scatter(x[outliers], scores[outliers], s=140, facecolors="none", edgecolors="crimson", lw=1.5,
                   label="known outlier sentence")
    ax.set_xlabel("prompt (sentence index, all classes)")
    ax.set_ylabel("score")
    ax.set_ylim(lo - (len(kept) + 1) * 0.04 * (np.ptp(scores) or 1), None)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title or "selective prompting")
    fig.tight_layout()
    return fig


def plot_prompt_tsne(image_features: Any, image_labels: Any, prompt_features: Any, prompt_labels: Any,
                     names: Sequence[str], title: str = "", seed: int = 0) -> Figure:
    """t-SNE of image features (dots) with the text features of their class prompts
    (crosses: one per image for image-conditioned prompts), coloured by class."""
    img, txt = to_numpy(image_features).astype(np.float32), to_numpy(prompt_features).astype(np.float32)
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    y, ty = to_numpy(image_labels).astype(np.int64).ravel(), to_numpy(prompt_labels).astype(np.int64).ravel()
    x = np.concatenate([img, txt])
    emb = TSNE(n_components=2, perplexity=float(min(30, (len(x) - 1) * 0.99)), init="pca",
               random_state=seed).fit_transform(x)
    pts, marks = emb[: len(img)], emb[len(img):]
    classes = list(dict.fromkeys(np.concatenate([y, ty]).tolist()))
    palette = sns.color_palette("tab10", max(len(classes), 1))
    fig, ax = plt.subplots(figsize=(7, 6), layout="constrained")
    for k, c in enumerate(classes):
        ax.scatter(*pts[y == c].T, s=16, alpha=0.7, color=palette[k], label=f"{names[c]} · images")
        ax.scatter(*marks[ty == c].T, s=46, marker="X", color=palette[k], edgecolor="black", linewidth=0.5,
                   label=f"{names[c]} · text prompts")
    ax.legend(fontsize=8, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "t-SNE: images and their class prompts")
    return fig


def plot_layer_cka(cka: Any, title: str = "") -> Figure:
    """Heatmap of the linear CKA between layers of the class representations (the CILMP
    paper's motivation: layers carry different information)."""
    m = to_numpy(cka)
    fig, ax = plt.subplots(figsize=(4.8, 4.2), layout="constrained")
    sns.heatmap(m, ax=ax, vmin=0, vmax=1, cmap="viridis", square=True, annot=len(m) <= 8, fmt=".2f",
                xticklabels=[str(i + 1) for i in range(len(m))], yticklabels=[str(i + 1) for i in range(len(m))])
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title(title or "linear CKA between layers")
    return fig
