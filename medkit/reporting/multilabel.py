"""Tables, figures and findings of the multi-label notebook (09), from rows and outcomes.

Rows are multi-label results (`task == "multi_label"`): one per evaluation dataset ×
findings subset (`classes`: all / seen / unseen) × setting × seed; `train_dataset` names
what the method trained on.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from medkit.multilabel_metrics import binarize, choose_thresholds, cooccurrence, per_finding_auroc
from medkit.reporting.findings import _fmt, stats, verdict
from medkit.reporting.tables import frame, mean_std

TABLE_METRICS = ("macro_auc", "micro_auc", "map")
LABELS = {"macro_auc": "Macro AUC", "micro_auc": "Micro AUC", "map": "mAP", "map_pr_trapezoid": "mAP (PR trapezoid)"}


def prevalence_figure(datasets: Mapping[str, "object"], split: str = "test") -> Figure:
    """Share of images with each finding (known labels), one panel per dataset: the long tail."""
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 4.2), squeeze=False)
    for ax, (name, ds) in zip(axes[0], datasets.items()):
        y = np.asarray(ds.splits[split].targets)
        known = y >= 0
        share = (y == 1).sum(0) / np.maximum(known.sum(0), 1)
        order = np.argsort(share)
        ax.barh(np.asarray(ds.labels.classnames)[order], share[order], color="tab:blue")
        ax.set_title(f"{name} ({split}, {len(y)} images)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("share of images")
    fig.tight_layout()
    return fig


def trainable_parameters(method: torch.nn.Module) -> int:
    """#P: what a method trains (its trainable state; a fine-tuned backbone counts whole)."""
    return int(sum(v.numel() for v in method.trainable_state().values()))


def _multilabel_rows(rows: Sequence[Mapping] | pd.DataFrame) -> pd.DataFrame:
    """The multi-label rows (an empty frame with the needed columns when there are none)."""
    df = frame(rows)
    if df.empty or "task" not in df:
        return pd.DataFrame(columns=["task", "dataset", "classes", "variant", "seed", *LABELS])
    return df[df["task"] == "multi_label"]


def dataset_table(rows: Sequence[Mapping] | pd.DataFrame, datasets: Sequence[str], classes: str = "all",
                  metrics: Sequence[str] = TABLE_METRICS, params: Mapping[str, int] | None = None) -> pd.DataFrame:
    """The paper's Table 1 layout: variants × (evaluation dataset, metric), mean ± std over seeds,
    and the trainable parameters #P of each variant."""
    df = _multilabel_rows(rows)
    df = df[(df["classes"] == classes) & df["dataset"].isin(list(datasets))]
    order = list(dict.fromkeys(df["variant"]))
    out = pd.DataFrame(index=pd.Index(order, name="method"))
    if params is not None:
        out["#P"] = [f"{params.get(v, 0):,}" for v in order]
    for ds in datasets:
        for m in metrics:
            g = df[df["dataset"] == ds].groupby("variant", sort=False)[m]
            mean, std = g.mean(), g.std()
            out[(ds, LABELS.get(m, m))] = [mean_std(mean[v], std[v]) if v in mean else "—" for v in order]
    out.columns = pd.MultiIndex.from_tuples([c if isinstance(c, tuple) else ("", c) for c in out.columns])
    return out


def gzsl_table(rows: Sequence[Mapping] | pd.DataFrame, dataset: str, metric: str = "macro_auc") -> pd.DataFrame:
    """Seen / unseen / all findings of one evaluation dataset, mean ± std over seeds."""
    df = _multilabel_rows(rows)
    df = df[df["dataset"] == dataset]
    order = list(dict.fromkeys(df["variant"]))
    out = pd.DataFrame(index=pd.Index(order, name="method"))
    for subset in ("seen", "unseen", "all"):
        g = df[df["classes"] == subset].groupby("variant", sort=False)[metric]
        mean, std, n = g.mean(), g.std(), g.size()
        out[subset] = [mean_std(mean[v], std[v]) if v in mean else "—" for v in order]
    return out


def per_finding_figure(results: Mapping[str, tuple[torch.Tensor, torch.Tensor]], names: Sequence[str],
                       seen: Sequence[bool], n_resamples: int = 1000, title: str = "") -> tuple[Figure, pd.DataFrame]:
    """Per-finding AUROC with bootstrap 95% CIs for each method (bars side by side); unseen
    findings are hatched and marked with *."""
    tables = {label: per_finding_auroc(s.numpy(), y.numpy(), list(names), n_resamples=n_resamples)
              for label, (s, y) in results.items()}
    fig, ax = plt.subplots(figsize=(min(18, max(8, 0.5 * len(names) + 2)), 4.2))
    width = 0.8 / max(1, len(tables))
    x = np.arange(len(names))
    for k, (label, t) in enumerate(tables.items()):
        err = np.vstack([t["auc"] - t["ci_low"], t["ci_high"] - t["auc"]])
        bars = ax.bar(x + k * width, t["auc"], width, yerr=np.nan_to_num(err), capsize=2, label=label)
        for bar, is_seen in zip(bars, seen):
            if not is_seen:
                bar.set_hatch("//")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x + width * (len(tables) - 1) / 2)
    ax.set_xticklabels([n if s else f"{n} *" for n, s in zip(names, seen)], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("AUROC (95% CI)")
    ax.set_ylim(0.0, 1.0)
    ax.set_title(title or "per-finding AUROC (* hatched: unseen in training)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    long = pd.concat([t.assign(method=label) for label, t in tables.items()], ignore_index=True)
    long["seen"] = list(seen) * len(tables)
    return fig, long


def roc_figure(scores: torch.Tensor, targets: torch.Tensor, names: Sequence[str], seen: Sequence[bool],
               title: str = "") -> Figure:
    """ROC curves per finding (solid: seen, dashed: unseen)."""
    s, y = scores.numpy(), targets.numpy()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for j, (name, is_seen) in enumerate(zip(names, seen)):
        known = y[:, j] >= 0
        if len(np.unique(y[known, j])) < 2:
            continue
        fpr, tpr, _ = roc_curve(y[known, j], s[known, j])
        ax.plot(fpr, tpr, lw=1, ls="-" if is_seen else "--", label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title or "ROC per finding (dashed: unseen)")
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    fig.tight_layout()
    return fig


def cooccurrence_figure(scores: torch.Tensor, targets: torch.Tensor, names: Sequence[str],
                        val: tuple[torch.Tensor, torch.Tensor] | None = None, title: str = "") -> Figure:
    """True vs predicted co-occurrence P(column | row), predictions thresholded per finding
    on validation (`val`; else at probability 0.5)."""
    import seaborn as sns

    s, y = scores.numpy(), targets.numpy()
    thresholds = choose_thresholds(val[0].numpy(), val[1].numpy()) if val is not None else np.zeros(s.shape[1])
    predicted = binarize(s, thresholds)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    for ax, matrix, label in ((axes[0], cooccurrence(y), "true"), (axes[1], cooccurrence(predicted), "predicted")):
        sns.heatmap(matrix, ax=ax, vmin=0, vmax=1, cmap="viridis", xticklabels=names, yticklabels=names, cbar=label == "predicted")
        ax.set_title(f"{label}: P(column | row)")
        ax.tick_params(labelsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@torch.no_grad()
def batch_dependence(method: torch.nn.Module, features: torch.Tensor, orders: int = 3, seed: int = 0) -> dict[str, float]:
    """How much a method's test predictions move with their batch-mates: the images scored
    together in their order vs in `orders` shuffled orders (other batch-mates when there are
    more images than an evaluation batch) and vs one image at a time; max and mean |Δ p|."""
    method.eval()
    base = torch.sigmoid(method(features))
    gen = torch.Generator().manual_seed(seed)
    shuffled = []
    for _ in range(orders):
        perm = torch.randperm(len(features), generator=gen)
        back = torch.empty_like(base)
        back[perm] = torch.sigmoid(method(features[perm]))
        shuffled.append((back - base).abs())
    alone = (torch.cat([torch.sigmoid(method(f[None])) for f in features]) - base).abs()
    d = torch.stack(shuffled)
    return {"shuffled: max |Δp|": float(d.max()), "shuffled: mean |Δp|": float(d.mean()),
            "alone: max |Δp|": float(alone.max()), "alone: mean |Δp|": float(alone.mean())}


def seed_spread(rows: Sequence[Mapping] | pd.DataFrame, variant: str, metric: str = "macro_auc",
                classes: str = "all") -> dict[str, float]:
    """Per dataset, the std over seeds of one variant's metric: the noise level single-seed
    comparisons are decided against."""
    df = _multilabel_rows(rows)
    df = df[(df["variant"] == variant) & (df["classes"] == classes)]
    return {ds: float(g[metric].std()) if len(g) > 1 else 0.0 for ds, g in df.groupby("dataset", sort=False)}


def findings_09(rows: Sequence[Mapping] | pd.DataFrame, eval_datasets: Sequence[str], variants: Mapping[str, str],
                metric: str = "macro_auc", min_margin: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The notebook's questions, decided against the seed spread (`verdict`): `variants` maps
    a role (pspg, dualcoop, zeroshot, spcl, pcl, sf, no_sf, two, one) to its variant label;
    `min_margin` (per dataset) is the least difference that counts, for comparisons whose
    sides ran one seed (the default's seed spread)."""
    df = _multilabel_rows(rows)

    def of(role: str, dataset: str, classes: str) -> tuple:
        return stats(df[(df["variant"] == variants[role]) & (df["dataset"] == dataset) & (df["classes"] == classes)], metric)

    questions = [("PsPG beats DualCoOp on unseen findings", "pspg", "dualcoop", "unseen"),
                 ("PsPG beats DualCoOp on seen findings", "pspg", "dualcoop", "seen"),
                 ("trained PsPG beats the fixed prompts on seen findings", "pspg", "zeroshot", "seen"),
                 ("trained PsPG beats the fixed prompts on unseen findings", "pspg", "zeroshot", "unseen"),
                 ("DualCoOp beats the fixed prompts on seen findings", "dualcoop", "zeroshot", "seen"),
                 ("SPCL beats PCL", "spcl", "pcl", "all"),
                 ("spatial fusion helps (G&L+SF vs G&L)", "sf", "no_sf", "all"),
                 ("two decoders beat one", "two", "one", "all")]
    out = []
    for question, a, b, classes in questions:
        if a not in variants or b not in variants:
            continue
        for ds in eval_datasets:
            sa, sb = of(a, ds, classes), of(b, ds, classes)
            if not sa[2] and not sb[2]:
                continue
            floor = (min_margin or {}).get(ds, 0.0)
            decided = verdict((sa[0], max(sa[1], floor), sa[2]), (sb[0], max(sb[1], floor), sb[2]))
            out.append({"question": question, "dataset": ds, "findings": classes, "A": variants[a], "B": variants[b],
                        f"A {metric}": _fmt(sa), f"B {metric}": _fmt(sb), "A − B": round(sa[0] - sb[0], 3),
                        "A > B": decided})
    return pd.DataFrame(out)
