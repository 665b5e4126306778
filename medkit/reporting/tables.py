"""Tables over result rows, selected by their fields: mean ± std over seeds, K columns,
base/novel with the harmonic mean, validation-vs-test gaps, option sweeps.

Rows are dicts or a DataFrame of results.csv (`medkit.runs.read_results`); options are read
back from the `options` JSON of a row, never parsed out of a label.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from medkit.protocols import harmonic_mean


def frame(rows: Sequence[Mapping] | pd.DataFrame) -> pd.DataFrame:
    return rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))


def options_of(rows: Sequence[Mapping] | pd.DataFrame) -> pd.DataFrame:
    """The options of every row as columns (index aligned with the rows)."""
    df = frame(rows)
    parsed = [json.loads(o) if isinstance(o, str) and o else {} for o in df.get("options", pd.Series(index=df.index))]
    return pd.DataFrame(parsed, index=df.index, dtype=object)  # object: None stays None (an option's default)


def select(rows: Sequence[Mapping] | pd.DataFrame, options: Mapping[str, Any] | None = None, **fields: Any) -> pd.DataFrame:
    """Rows whose fields equal `fields` (a list or tuple value: any of them) and whose
    options equal `options`."""
    df = frame(rows)
    keep = pd.Series(True, index=df.index)
    for key, value in fields.items():
        col = df[key] if key in df else pd.Series(np.nan, index=df.index)
        keep &= col.isin(list(value)) if isinstance(value, (list, tuple, set)) else (col == value).fillna(False)
    if options:
        opts = options_of(df)
        for key, value in options.items():
            col = opts[key] if key in opts else pd.Series(np.nan, index=df.index, dtype=object)
            keep &= col.map(lambda v: v == value).astype(bool)
    return df[keep.astype(bool)]


def mean_std(mean: float, std: float) -> str:
    """"0.512 ± 0.013"; the mean alone when the std is undefined (one seed)."""
    return f"{mean:.3f}" if std is None or np.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def seed_table(rows: Sequence[Mapping] | pd.DataFrame, split: str = "test",
               metrics: Sequence[str] = ("acc", "top3", "f1_macro", "auc", "group_acc"),
               index: Sequence[str] = ("dataset", "method", "variant"), classes: str = "all") -> pd.DataFrame:
    """The study's table with mean ± std over seeds (n = number of seeds)."""
    df = select(rows, split=split, classes=classes)
    metrics = [m for m in metrics if m in df and df[m].notna().any()]
    g = df.groupby(list(index), sort=False)
    mean, std = g[metrics].mean(), g[metrics].std()
    out = pd.DataFrame(index=mean.index)
    out["n"] = g.size()
    for m in metrics:
        out[m] = [mean_std(a, b) for a, b in zip(mean[m], std[m])]
    return out


def metric_table(rows: Sequence[Mapping] | pd.DataFrame, index: Sequence[str],
                 columns: Sequence[str] = ("acc", "top3", "f1_macro", "auc", "kappa", "group_acc")) -> pd.DataFrame:
    """One row per result, metrics rounded to 3 decimals (single runs: zero-shot)."""
    df = frame(rows)
    cols = [c for c in columns if c in df.columns and df[c].notna().any()]
    return df.set_index(list(index))[cols].astype(float).round(3)


def shot_table(rows: Sequence[Mapping] | pd.DataFrame, metric: str = "acc", split: str = "test") -> pd.DataFrame:
    """mean ± std over seeds, one row per (dataset, method, variant), one column per K."""
    df = select(rows, split=split, classes="all")
    g = df.groupby(["dataset", "method", "variant", "shots"], sort=False)[metric]
    stats = g.agg(["mean", "std"]).reset_index()
    stats["cell"] = [mean_std(m, s) for m, s in zip(stats["mean"], stats["std"])]
    table = stats.pivot_table(index=["dataset", "method", "variant"], columns="shots", values="cell", aggfunc="first",
                              sort=False)
    table.columns = [f"K={int(k)}" for k in table.columns]
    return table


def base_novel_table(rows: Sequence[Mapping] | pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    """Base, novel (mean ± std over seeds) and the harmonic mean of the mean accuracies
    (HM per seed, then averaged, is also given)."""
    df = select(rows, protocol="base_to_novel", classes=["base", "novel"])
    wide = df.pivot_table(index=["dataset", "method", "variant", "seed"], columns="classes", values=metric,
                          aggfunc="mean").reset_index()
    wide["hm"] = [harmonic_mean(b, n) for b, n in zip(wide["base"], wide["novel"])]
    g = wide.groupby(["dataset", "method", "variant"], sort=False)
    out = g[["base", "novel", "hm"]].agg(["mean", "std"])
    table = pd.DataFrame(index=out.index)
    for col in ("base", "novel"):
        table[col] = [mean_std(m, s) for m, s in out[col].values]
    table["HM"] = [harmonic_mean(b, n) for b, n in zip(out[("base", "mean")], out[("novel", "mean")])]
    table["HM per seed"] = [mean_std(m, s) for m, s in out["hm"].values]
    table["n"] = g.size()
    return table


def latest(rows: Sequence[Mapping] | pd.DataFrame, **fields: Any) -> pd.DataFrame:
    """The rows matching `fields`, for each setting only those of its most recent run (run
    ids start with a timestamp)."""
    df = select(rows, **fields)
    if df.empty:
        return df
    newest = df.groupby(["setting_id", "protocol", "classes"], dropna=False)["run_id"].transform("max")
    return df[df["run_id"] == newest]


def complete_rows(results: pd.DataFrame, settings: Sequence, seeds: Sequence[int], splits: Sequence[str] = ("val", "test"),
                  **fields: Any) -> list[dict] | None:
    """The rows of `settings` × seeds × splits from the latest run that has them all, or None."""
    df = latest(results, setting_id=[s.id for s in settings], split=list(splits), **fields)
    df = df[df["seed"].astype(float).isin([float(s) for s in seeds])]
    if len(df) < len(settings) * len(seeds) * len(splits):
        return None
    records = df.to_dict("records")
    for r in records:
        r["seed"] = int(r["seed"])
    return records


def val_test_gap(rows: Sequence[Mapping] | pd.DataFrame) -> pd.DataFrame:
    """Mean val and test accuracy per (method, variant) and the drop from val to test."""
    df = select(rows, classes="all")
    piv = df.pivot_table(index=["method", "variant"], columns="split", values="acc", aggfunc="mean", sort=False)
    piv["val − test"] = piv["val"] - piv["test"]
    return piv[["val", "test", "val − test"]].round(3)


def option_sweep(rows: Sequence[Mapping] | pd.DataFrame, base: Any, swept: Mapping[str, Sequence[str]],
                 resolved: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The rows of one-option sweeps around a base setting, with columns `sweep` and `value`.

    `base`: the full model's `Setting`; `swept`: {sweep name: [options that move together]}
    (CILMP's length moves prefix and suffix). A row belongs to a sweep when every other
    option equals the base's; its value is the first moving option's (`resolved` maps an
    option whose default is None to what the method makes of it). The base's own rows stand
    in every sweep at its value, so no configuration is counted twice or missing."""
    df = select(rows, method=base.method)
    opts = options_of(df)
    reference = json.loads(base.options_json)
    resolved = dict(resolved or {})
    frames = []
    for name, moving in swept.items():
        keep = pd.Series(True, index=df.index)
        for option, value in reference.items():
            if option not in moving:
                col = opts[option] if option in opts else pd.Series(None, index=df.index, dtype=object)
                keep &= col.map(lambda v, ref=value: v == ref).astype(bool)
        values = opts.loc[keep, moving[0]].map(lambda v: resolved.get(moving[0], v) if v is None else v)
        values = pd.to_numeric(values) if len(values) else values  # ints stay ints, τ stays a float
        frames.append(df[keep].assign(sweep=name, value=values))
    out = pd.concat(frames, ignore_index=True) if frames else df.iloc[:0].assign(sweep=[], value=[])
    return out.sort_values(["sweep", "value"], kind="stable").reset_index(drop=True)
