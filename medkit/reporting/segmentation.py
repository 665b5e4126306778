"""Notebook 10's tables, findings and figures, from segmentation rows and outcomes."""
from __future__ import annotations

import textwrap
from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from medkit.reporting.findings import _fmt, stats, verdict
from medkit.reporting.tables import frame, mean_std

PROMPT_TUNED = ("text", "visual", "multimodal")


def seg_rows(rows: Sequence[Mapping] | pd.DataFrame) -> pd.DataFrame:
    df = frame(rows)
    return df[df["task"] == "segmentation"] if "task" in df else df


def strategy_table(rows, datasets: Sequence[str], metric: str = "dice") -> pd.DataFrame:
    """Strategies (rows) × datasets (columns): mean ± std over seeds of `metric`."""
    df = seg_rows(rows)
    df = df[df["dataset"].isin(datasets)]
    g = df.groupby(["method", "variant", "dataset"], sort=False)[metric].agg(["mean", "std", "size"]).reset_index()
    g["cell"] = [mean_std(m, s) for m, s in zip(g["mean"], g["std"])]
    table = g.pivot_table(index=["method", "variant"], columns="dataset", values="cell", aggfunc="first", sort=False)
    return table[[d for d in datasets if d in table.columns]]


def zeroshot_table(rows, datasets: Sequence[str], metric: str = "dice") -> pd.DataFrame:
    """Fixed prompts p0–p9 (rows) × datasets: zero-shot `metric`."""
    df = seg_rows(rows)
    df = df[(df["method"] == "seg_zeroshot") & df["dataset"].isin(datasets)]
    t = df.pivot_table(index="prompt", columns="dataset", values=metric, aggfunc="mean")
    return t[[d for d in datasets if d in t.columns]].round(3)


def sweep_table(rows, variants: Sequence[str], dataset: str, metric: str = "dice") -> pd.DataFrame:
    df = seg_rows(rows)
    df = df[(df["dataset"] == dataset) & df["variant"].isin(variants)]
    g = df.groupby("variant", sort=False)[metric].agg(["mean", "std", "size"])
    return g.reindex([v for v in variants if v in g.index]).rename(columns={"size": "seeds"}).round(3)


def _of(df: pd.DataFrame, variant: str, dataset: str | None = None, metric: str = "dice") -> tuple:
    d = df[df["variant"] == variant]
    return stats(d if dataset is None else d[d["dataset"] == dataset], metric)


def _best(df: pd.DataFrame, variants: Sequence[str], dataset: str, metric: str = "dice") -> tuple[str, tuple]:
    scored = [(v, _of(df, v, dataset, metric)) for v in variants]
    scored = [x for x in scored if x[1][2]]
    return max(scored, key=lambda x: x[1][0]) if scored else ("—", (np.nan, np.nan, 0))


def findings_10(rows, sweep_rows, datasets: Sequence[str], roles: Mapping[str, Sequence[str] | str],
                sweep_dataset: str, metric: str = "dice") -> pd.DataFrame:
    """The poster's findings, each decided against the seed spread (`verdict`). `rows`: the
    strategies × datasets grid and the zero-shot rows; `sweep_rows`: the sweep dataset's runs
    on the sweep seeds. `roles` names the variants of each side: prompt_tuned, visual,
    multimodal, finetune, text_init / random_init and upsampler / no_upsampler (paired lists),
    and per tower `deep_<tower>` / `shallow_<tower>` (text, visual, multimodal)."""
    df, sw = seg_rows(rows), seg_rows(sweep_rows)
    zs = sorted(set(df.loc[df["method"] == "seg_zeroshot", "variant"]))
    out = []

    def add(question: str, a: tuple[str, tuple], b: tuple[str, tuple], where: str, holds: Callable[[str], bool]) -> None:
        v = verdict(a[1], b[1])
        out.append({"finding": question, "where": where, "A": f"{a[0]}: {_fmt(a[1])}", "B": f"{b[0]}: {_fmt(b[1])}",
                    "A beats B": v, "holds here": "yes" if holds(v) else "no"})

    wins, par = (lambda v: v == "yes"), (lambda v: v != "no")  # par: a tie, or A ahead
    for ds in datasets:
        add("prompt tuning beats the best fixed prompt", _best(df, roles["prompt_tuned"], ds, metric),
            _best(df, zs, ds, metric), ds, wins)
    for ds in datasets:
        add("prompt tuning is comparable with fine-tuning (a tie, or ahead)", _best(df, roles["prompt_tuned"], ds, metric),
            _best(df, [roles["finetune"]], ds, metric), ds, par)
    for ds in datasets:
        add("vision tuning is on par with multimodal tuning (a tie, or ahead)", _best(df, [roles["visual"]], ds, metric),
            _best(df, roles["multimodal"], ds, metric), ds, par)
    for va, vb in zip(roles["text_init"], roles["random_init"]):
        add("initialisation matters (text init vs random: not a tie)", (va, _of(sw, va, sweep_dataset, metric)),
            (vb, _of(sw, vb, sweep_dataset, metric)), sweep_dataset, lambda v: not v.startswith("tie"))
    for va, vb in zip(roles["upsampler"], roles["no_upsampler"]):
        add("the learnable upsampler helps", (va, _of(sw, va, sweep_dataset, metric)),
            (vb, _of(sw, vb, sweep_dataset, metric)), sweep_dataset, wins)
    for tower in ("visual", "multimodal", "text"):
        deep, shallow = roles.get(f"deep_{tower}"), roles.get(f"shallow_{tower}")
        if deep and shallow:
            add(f"deeper prompts help {tower} tuning" + (" (poster: not for text)" if tower == "text" else ""),
                (deep, _of(sw, deep, sweep_dataset, metric)), (shallow, _of(sw, shallow, sweep_dataset, metric)),
                sweep_dataset, (lambda v: v != "yes") if tower == "text" else wins)
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- figures
def _show(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    x = image.permute(1, 2, 0).numpy() * np.asarray(std) + np.asarray(mean)
    return np.clip(x, 0, 1)


def samples_figure(datasets: Mapping[str, Mapping[str, object]], norm: tuple, n: int = 4,
                   keys: Sequence[str] = ("p1", "p3", "p9")) -> Figure:
    """A few training images per dataset with their mask outlined and some of their prompts."""
    fig, axes = plt.subplots(len(datasets), n, figsize=(2.6 * n, 2.9 * len(datasets)), squeeze=False)
    for r, (name, splits) in enumerate(datasets.items()):
        data = splits["train"]
        for c in range(n):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(data):
                continue
            ax.imshow(_show(data.images[c], *norm))
            ax.contour(data.masks[c].numpy(), levels=[0.5], colors="lime", linewidths=1)
            s = data.samples[c]
            lines = [textwrap.shorten(f"{k}: {s.prompt(k)}", 44) for k in keys if k in s.prompts]
            ax.set_title("\n".join(lines), fontsize=6.5, loc="left")
        axes[r, 0].text(-0.08, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right")
    fig.tight_layout()
    return fig


def zeroshot_figure(table: pd.DataFrame, metric: str = "Dice") -> Figure:
    fig, ax = plt.subplots(figsize=(8, 3.2))
    long = table.reset_index().melt(id_vars="prompt", var_name="dataset", value_name=metric)
    sns.barplot(long, x="prompt", y=metric, hue="dataset", ax=ax)
    ax.set_title(f"zero-shot {metric} per fixed prompt (p0 empty … p9 combined with location)")
    fig.tight_layout()
    return fig


def overlay_figure(data, logits: torch.Tensor, scores: np.ndarray, norm: tuple, title: str = "", n: int = 3) -> Figure:
    """The `n` best and `n` worst test images by Dice: truth (green) and prediction (magenta)."""
    order = np.argsort(scores)
    picks = [("best", i) for i in order[::-1][:n]] + [("worst", i) for i in order[:n]]
    fig, axes = plt.subplots(1, len(picks), figsize=(2.3 * len(picks), 2.6))
    for ax, (kind, i) in zip(np.atleast_1d(axes), picks):
        ax.imshow(_show(data.images[i], *norm))
        ax.contour(data.masks[i].numpy(), levels=[0.5], colors="lime", linewidths=1)
        pred = (torch.sigmoid(logits[i]) > 0.5).float().numpy()
        if pred.any():
            ax.contour(pred, levels=[0.5], colors="magenta", linewidths=1)
        ax.set_title(f"{kind} · Dice {scores[i]:.2f}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def curves_figure(histories: Mapping[str, pd.DataFrame], title: str = "") -> Figure:
    """Training loss and validation Dice per epoch of each named run."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    for name, h in histories.items():
        a.plot(h["epoch"], h["train_loss"], label=name)
        if "val_dice" in h:
            b.plot(h["epoch"], h["val_dice"], label=name)
    a.set(xlabel="epoch", ylabel="Dice + 0.2·CE", title="training loss")
    b.set(xlabel="epoch", ylabel="Dice", title="validation Dice")
    b.legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def sweep_figure(table: pd.DataFrame, groups: Mapping[str, tuple[Sequence, Sequence[str]]], xlabel: str,
                 title: str = "", metric: str = "Dice") -> Figure:
    """One line per group: `groups[name] = (x values, variants)`, error bars the seed std."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, (xs, variants) in groups.items():
        rows = table.reindex(list(variants))
        ax.errorbar(list(xs), rows["mean"], yerr=rows["std"].fillna(0), marker="o", capsize=3, label=name)
    ax.set(xlabel=xlabel, ylabel=metric, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
