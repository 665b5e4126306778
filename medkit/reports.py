"""Figures and tables of the study notebooks (01, 03–06), built from `study` outcomes and
results.csv, so that the notebooks stay a few lines each."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from medkit.backbones import BackboneAdapter
from medkit.data import Dataset
from medkit.features import FeatureCache
from medkit.metrics import confusion
from medkit.methods import ZeroShotClassifier
from medkit.plots import plot_confusion, plot_histories, plot_learned_vs_zeroshot

from medkit.prompts import study_template_for
from medkit.study import HIERARCHY_SETTINGS, Outcome, spread_subset, learned_features


def mean_test_acc(outcomes: Sequence[Outcome], variant: str) -> float:
    return float(np.mean([o.rows[-1]["acc"] for o in outcomes if o.setting.variant == variant]))


def best_outcome(outcomes: Sequence[Outcome]) -> Outcome:
    """The first seed of the setting with the best mean test accuracy."""
    best = max(dict.fromkeys(o.setting.variant for o in outcomes), key=lambda v: mean_test_acc(outcomes, v))
    return next(o for o in outcomes if o.setting.variant == best)


def curves_figure(outcomes: Sequence[Outcome], title: str = "") -> Figure:
    """Loss and accuracy per epoch of every setting (first seed of each)."""
    first: dict[str, pd.DataFrame] = {}
    for o in outcomes:
        label = f"{o.setting.method}: {o.setting.variant}" if len({x.setting.method for x in outcomes}) > 1 else o.setting.variant
        first.setdefault(label, o.history)
    return plot_histories(first, title)


def confusion_figure(outcome: Outcome, dataset: Dataset, title: str = "") -> Figure:
    labels = dataset.labels
    groups = [labels.group_of[c] for c in labels.classnames] if labels.has_groups else None
    cm = confusion(outcome.test_labels.numpy(), outcome.test_logits.argmax(1).numpy(), labels.n_classes)
    return plot_confusion(cm, labels.classnames, groups, title=title or
                          f"{dataset.name} · {outcome.setting.method} ({outcome.setting.variant}) · test, seed {outcome.seed}")


@torch.no_grad()
def tsne_figure(outcome: Outcome, dataset: Dataset, adapter: BackboneAdapter, points: int = 600) -> Figure:
    """Test images and class text features, zero-shot (frozen image features, the study's
    hand-crafted prompt) next to what the trained prompt method produces."""
    split = dataset.splits["test"]
    img_l, txt_l, y = learned_features(outcome.method, split, limit=points)
    zs = ZeroShotClassifier.from_templates(adapter, study_template_for(dataset.labels.has_groups), dataset.labels.classnames)
    from medkit.data import Split
    from medkit.features import encode_split

    img_z = encode_split(adapter, Split(split.name, spread_subset(split.samples, points), split.labels, split.meta))
    labels = dataset.labels
    groups = [labels.group_of[c] for c in labels.classnames] if labels.has_groups else None
    s = outcome.setting
    return plot_learned_vs_zeroshot([("zero-shot (class name, study template)", img_z, zs.class_features),
                                     (f"{s.method} · {s.variant} (seed {outcome.seed})", img_l, txt_l)],
                                    y, labels.classnames, groups)


def zero_shot_rows(adapter: BackboneAdapter, dataset: Dataset, cache: FeatureCache | None = None) -> list[dict]:
    """The study's hand-crafted zero-shot baseline on val and test (for the tables)."""
    from medkit.evaluation import zero_shot_prompt_sets
    from medkit.worldviews import zero_shot_rows as rows_for

    sets = {k: v for k, v in zero_shot_prompt_sets(dataset).items() if k == "name_study_template"}
    rows, _ = rows_for(adapter, dataset, sets, ["val", "test"], progress=False, cache=cache)
    return [{**r, "method": "zeroshot", "variant": "class name, study template", "seed": 0} for r in rows]


# --------------------------------------------------------------------------- results.csv

def latest_rows(df: pd.DataFrame, notebook: str, backbone: str | None = None, dataset: str | None = None) -> pd.DataFrame:
    """Rows of the most recent run of `notebook` (run ids start with a timestamp)."""
    sel = df[df["notebook"] == notebook]
    if backbone is not None:
        sel = sel[sel["backbone"] == backbone]
    if dataset is not None:
        sel = sel[sel["dataset"] == dataset]
    if sel.empty:
        return sel
    return sel[sel["run_id"] == sorted(sel["run_id"].unique())[-1]]


def val_test_gap(df: pd.DataFrame) -> pd.DataFrame:
    """Mean val and test accuracy per (method, variant) and the drop from val to test."""
    piv = df.pivot_table(index=["method", "variant"], columns="split", values="acc", aggfunc="mean", sort=False)
    piv["val − test"] = piv["val"] - piv["test"]
    return piv[["val", "test", "val − test"]].round(3)


# --------------------------------------------------------------------------- the study's findings

STUDY_NOTEBOOKS = {"coop": "03_coop", "cocoop": "04_cocoop", "maple": "05_maple", "vpt_deep": "05_maple",
                   "ivlp": "05_maple"}


def _stats(df: pd.DataFrame, method: str, variant: str, split: str = "test") -> tuple[float, float, int]:
    sel = df[(df["method"] == method) & (df["variant"] == variant) & (df["split"] == split)]["acc"].astype(float)
    return (float(sel.mean()), float(sel.std()) if len(sel) > 1 else 0.0, len(sel)) if len(sel) else (np.nan, np.nan, 0)


def _verdict(a: tuple[float, float, int], b: tuple[float, float, int]) -> str:
    """'yes' when A beats B by more than the larger seed std, 'no' when B wins by as much,
    else 'tie' (the difference is within the seed spread)."""
    if not a[2] or not b[2]:
        return "not run"
    margin = max(a[1], b[1], 1e-9)
    diff = a[0] - b[0]
    return "yes" if diff > margin else "no" if diff < -margin else "tie (within seed spread)"


def _fmt(s: tuple[float, float, int]) -> str:
    return "—" if not s[2] else f"{s[0]:.3f} ± {s[1]:.3f}" if s[2] > 1 else f"{s[0]:.3f}"


def findings(results: pd.DataFrame, backbone: str, datasets: Sequence[str]) -> pd.DataFrame:
    """Each qualitative finding of the implant study → whether it holds here, with numbers
    (test accuracy, mean ± std over seeds, latest run of each notebook)."""
    out = []
    for ds in datasets:
        rows = pd.concat([latest_rows(results, nb, backbone, ds) for nb in dict.fromkeys(STUDY_NOTEBOOKS.values())]
                         + [latest_rows(results, "06_hierarchical", backbone, ds)], ignore_index=True)
        zs_df = latest_rows(results, "02_zero_shot", backbone, ds)
        zs = _stats(zs_df.assign(split=zs_df["split"].str.split("_").str[-1]), "zeroshot", "name_study_template")  # "xray_test"

        def add(finding: str, a_label: str, a: tuple, b_label: str, b: tuple) -> None:
            out.append({"finding": finding, "dataset": ds, "A": a_label, "B": b_label, "A acc": _fmt(a), "B acc": _fmt(b),
                        "holds (A > B)": _verdict(a, b)})

        prompt = rows[rows["split"] == "test"].groupby(["method", "variant"])["acc"].mean()
        flat = prompt[[not v.startswith("hier") for _, v in prompt.index]] if len(prompt) else prompt
        if len(flat):
            (bm, bv) = flat.idxmax()
            add("prompt learning ≫ zero-shot", f"best prompt setting ({bm}: {bv})", _stats(rows, bm, bv),
                "zero-shot, class name + study template", zs)
        for m, cs, sh in (("coop", "class-specific, text init", "shared, text init"),
                          ("coop", "class-specific, random init", "shared, random init"),
                          ("cocoop", "class-specific, random init", "shared, random init"),
                          ("maple", "class-specific, all layers", "shared, all layers")):
            add("class-specific > shared", f"{m}: {cs}", _stats(rows, m, cs), f"{m}: {sh}", _stats(rows, m, sh))
        for kind in ("shared", "class-specific"):
            add("text init > random init", f"coop: {kind}, text init", _stats(rows, "coop", f"{kind}, text init"),
                f"coop: {kind}, random init", _stats(rows, "coop", f"{kind}, random init"))
        best = {}
        for m in ("maple", "cocoop", "coop"):
            sel = flat[[mm == m for mm, _ in flat.index]] if len(flat) else flat
            best[m] = (f"{m}: {sel.idxmax()[1]}", _stats(rows, m, sel.idxmax()[1])) if len(sel) else (m, (np.nan, np.nan, 0))
        add("MaPLe > CoCoOp", *best["maple"], *best["cocoop"])
        add("CoCoOp > CoOp", *best["cocoop"], *best["coop"])
        add("deeper prompts help", "maple: shared, all layers", _stats(rows, "maple", "shared, all layers"),
            "maple: shared, first layer", _stats(rows, "maple", "shared, first layer"))
        for m in ("coop", "cocoop", "maple"):
            for kind in ("shared", "class-specific"):
                v = HIERARCHY_SETTINGS[m][kind].variant
                h, f = _stats(rows, m, f"hier. · {v}"), _stats(rows, m, v)
                if not h[2]:
                    continue
                add("hierarchical > flat (test acc)", f"{m}: hier. · {v}", h, f"{m}: flat · {v}", f)
                gap = lambda var: _stats(rows, m, var, "val")[0] - _stats(rows, m, var)[0]  # noqa: E731
                gh, gf = gap(f"hier. · {v}"), gap(v)
                out.append({"finding": "hierarchical generalises better (smaller val − test drop)", "dataset": ds,
                            "A": f"{m}: hier. · {v}", "B": f"{m}: flat · {v}", "A acc": f"gap {gh:+.3f}",
                            "B acc": f"gap {gf:+.3f}", "holds (A > B)": "yes" if gh < gf - 0.01 else
                            "no" if gh > gf + 0.01 else "tie (within 0.01)"})
    return pd.DataFrame(out)


@torch.no_grad()
def vit_tsne_figure(outcome: Outcome, dataset: Dataset, data_root: str = "data", points: int = 600) -> Figure:
    """Test-image features of the ViT trunk before (pretrained weights) and after fine-tuning."""
    from medkit.data import Split
    from medkit.features import encode_split
    from medkit.methods import build_vit

    split = dataset.splits["test"]
    sub = Split(split.name, spread_subset(split.samples, points), split.labels, split.meta)
    before = build_vit(outcome.setting.options["weights"], dataset.labels.n_classes, "head", data_root, seed=outcome.seed)
    feats = {label: encode_split(model, sub) for label, model in (("pretrained", before), ("fine-tuned", outcome.method))}
    y = torch.tensor([s.label for s in sub.samples])
    labels = dataset.labels
    groups = [labels.group_of[c] for c in labels.classnames] if labels.has_groups else None
    s = outcome.setting
    return plot_learned_vs_zeroshot([(f"{s.options['weights']} trunk, before fine-tuning", feats["pretrained"], None),
                                     (f"after: {s.variant} (seed {outcome.seed})", feats["fine-tuned"], None)],
                                    y, labels.classnames, groups)


def flat_rows(results: pd.DataFrame, method: str, backbone: str, dataset: str, settings: Sequence,
              seeds: Sequence[int]) -> list[dict] | None:
    """The flat rows of `settings` from the latest run of the method's notebook, or None
    when any (variant, seed, split) is missing there."""
    df = latest_rows(results, STUDY_NOTEBOOKS[method], backbone, dataset)
    df = df[(df["method"] == method) & df["variant"].isin([s.variant for s in settings])
            & df["seed"].astype(float).isin([float(s) for s in seeds]) & df["split"].isin(["val", "test"])]
    if len(df) < len(settings) * len(seeds) * 2:
        return None
    records = df.to_dict("records")
    for r in records:
        r["seed"] = int(r["seed"])
    return records


def gap_figure(gap: pd.DataFrame) -> Figure:
    """Validation and test accuracy per setting, side by side."""
    import matplotlib.pyplot as plt

    labels = [f"{m}\n{v}" for m, v in gap.index]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(labels)), 4.5), layout="constrained")
    ax.bar(x - 0.2, gap["val"], 0.4, label="validation")
    ax.bar(x + 0.2, gap["test"], 0.4, label="test")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("accuracy (mean over seeds)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return fig
