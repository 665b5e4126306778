"""The notebooks' conclusions, checked against the rows with their numbers.

Every comparison names its settings (`medkit.grids`) and selects their rows by setting id,
protocol, split and classes: a relabelled variant cannot silently drop out of a finding.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from medkit import grids
from medkit.grids import knowledge_guided
from medkit.experiment import Setting
from medkit.methods import REGISTRY
from medkit.reporting.tables import frame, latest, mean_std, option_sweep, select

Stats = tuple[float, float, int]


def stats(df: pd.DataFrame, metric: str = "acc") -> Stats:
    """(mean, std, n) of a metric over rows (std 0 for one row, NaNs for none)."""
    v = df[metric].astype(float)
    return (float(v.mean()), float(v.std()) if len(v) > 1 else 0.0, len(v)) if len(v) else (np.nan, np.nan, 0)


def _fmt(s: Stats) -> str:
    return "—" if not s[2] else f"{s[0]:.3f} ± {s[1]:.3f}" if s[2] > 1 else f"{s[0]:.3f}"


def verdict(a: Stats, b: Stats) -> str:
    """'yes' when A beats B by more than the larger seed std, 'no' when B wins by as much,
    else 'tie' (the difference is within the seed spread)."""
    if not a[2] or not b[2]:
        return "not run"
    margin = max(a[1], b[1], 1e-9)
    diff = a[0] - b[0]
    return "yes" if diff > margin else "no" if diff < -margin else "tie (within seed spread)"


# --------------------------------------------------------------------------- the implant study (06)

def study_findings(results: pd.DataFrame, backbone: str, datasets: Sequence[str]) -> pd.DataFrame:
    """Each qualitative finding of the implant study → whether it holds here, with numbers
    (test accuracy, mean ± std over seeds, the latest run of each setting)."""
    out = []
    S, H = grids.STUDY_SETTINGS, grids.HIERARCHY_SETTINGS
    for ds in datasets:
        rows = latest(results, backbone=backbone, dataset=ds, classes="all")
        flat, hier = select(rows, protocol="full"), select(rows, protocol="hierarchical")

        def of(setting: Setting, df: pd.DataFrame = flat, split: str = "test") -> Stats:
            return stats(select(df, setting_id=setting.id, split=split))

        def add(finding: str, a_label: str, a: Stats, b_label: str, b: Stats) -> None:
            out.append({"finding": finding, "dataset": ds, "A": a_label, "B": b_label, "A acc": _fmt(a), "B acc": _fmt(b),
                        "holds (A > B)": verdict(a, b)})

        zero_shot = select(flat, method="zeroshot", variant="name_study_template", split="test")
        zs = stats(zero_shot[zero_shot["domain"].fillna("") != "natural"])
        prompt = select(flat, split="test", method=[n for n, s in REGISTRY.items() if s.kind in ("prompt", "deep_prompt")])
        by_setting = prompt.groupby("setting_id")["acc"].mean()
        labels = prompt.drop_duplicates("setting_id").set_index("setting_id")
        if len(by_setting):
            best = by_setting.idxmax()
            add("prompt learning ≫ zero-shot", f"best prompt setting ({labels.loc[best, 'method']}: "
                f"{labels.loc[best, 'variant']})", stats(select(prompt, setting_id=best)),
                "zero-shot, class name + study template", zs)
        for cs, sh in ((S["coop"][3], S["coop"][1]), (S["coop"][2], S["coop"][0]), (S["cocoop"][1], S["cocoop"][0]),
                       (S["maple"][2], S["maple"][1])):
            add("class-specific > shared", f"{cs.method}: {cs.variant}", of(cs), f"{sh.method}: {sh.variant}", of(sh))
        for text, rand in ((S["coop"][1], S["coop"][0]), (S["coop"][3], S["coop"][2])):
            add("text init > random init", f"coop: {text.variant}", of(text), f"coop: {rand.variant}", of(rand))
        best = {}
        for m in ("maple", "cocoop", "coop"):
            run = [s for s in S[m] if s.method == m and of(s)[2]]  # the table's settings of this method that ran
            top = max(run, key=lambda s: of(s)[0]) if run else None  # ties: the table's first
            best[m] = (f"{m}: {top.variant}", of(top)) if top else (m, (np.nan, np.nan, 0))
        add("MaPLe > CoCoOp", *best["maple"], *best["cocoop"])
        add("CoCoOp > CoOp", *best["cocoop"], *best["coop"])
        add("deeper prompts help", f"maple: {S['maple'][1].variant}", of(S["maple"][1]),
            f"maple: {S['maple'][0].variant}", of(S["maple"][0]))
        for m in ("coop", "cocoop", "maple"):
            for kind in ("shared", "class-specific"):
                s = H[m][kind]
                h, f = of(s, hier), of(s)
                if not h[2]:
                    continue
                add("hierarchical > flat (test acc)", f"{m}: hier. · {s.variant}", h, f"{m}: flat · {s.variant}", f)
                gh = of(s, hier, "val")[0] - h[0]
                gf = of(s, flat, "val")[0] - f[0]
                out.append({"finding": "hierarchical generalises better (smaller val − test drop)", "dataset": ds,
                            "A": f"{m}: hier. · {s.variant}", "B": f"{m}: flat · {s.variant}", "A acc": f"gap {gh:+.3f}",
                            "B acc": f"gap {gf:+.3f}", "holds (A > B)": "yes" if gh < gf - 0.01 else
                            "no" if gh > gf + 0.01 else "tie (within 0.01)"})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- few-shot (07)

def knowledge_vs_names(rows, shots: Sequence[int] = (1, 2)) -> pd.DataFrame:
    """Per dataset and K: the best name-only and the best knowledge-guided prompt (zero-shot
    or a prompt learner; mean test accuracy over seeds) and the difference."""
    df = select(rows, split="test", classes="all", protocol="few_shot",
                method=[n for n, s in REGISTRY.items() if s.kind in ("zeroshot", "prompt")])
    df = df[df["shots"].isin(shots)].assign(knowledge=lambda d: d["options"].map(knowledge_guided))
    out = []
    for (name, k), g in df.groupby(["dataset", "shots"]):
        mean = g.groupby(["setting_id", "variant", "knowledge"])["acc"].agg(["mean", "std"]).reset_index()
        best = {}
        for family, flag in (("name-only", False), ("knowledge-guided", True)):
            sub = mean[mean["knowledge"] == flag]
            if len(sub):
                r = sub.loc[sub["mean"].idxmax()]
                best[family] = (r["variant"], r["mean"], r["std"])
        if len(best) == 2:
            (nv, nm, ns), (kv, km, ks) = best["name-only"], best["knowledge-guided"]
            out.append({"dataset": name, "K": int(k), "best name-only": f"{nv} {mean_std(nm, ns)}",
                        "best knowledge-guided": f"{kv} {mean_std(km, ks)}", "difference": round(km - nm, 3),
                        "knowledge wins": bool(km > nm)})
    return pd.DataFrame(out)


def findings_07(results, knowledge_table: pd.DataFrame, ablations, selection_table: pd.DataFrame) -> list[str]:
    """The notebook's conclusions as sentences with their numbers."""
    results, ablations = frame(results), frame(ablations)
    lines = []
    if len(knowledge_table):
        wins = int(knowledge_table["knowledge wins"].sum())
        lines.append(f"knowledge-guided prompts beat name-only prompts at low K in {wins} of {len(knowledge_table)} "
                     f"(dataset, K) cases: " + "; ".join(
                         f"{r['dataset']} K={r['K']}: {r['best knowledge-guided']} vs {r['best name-only']} "
                         f"({r['difference']:+.3f})" for _, r in knowledge_table.iterrows()))
    grid = {s.method: s for s in grids.few_shot_grid()}
    test = select(results, split="test", classes="all")
    for name in dict.fromkeys(test["dataset"]):
        d = select(test, dataset=name)
        parts = []
        for k in sorted(d["shots"].dropna().unique()):
            b = stats(select(d, setting_id=grid["biomedcoop"].id, shots=k))
            c = stats(select(d, setting_id=grid["coop"].id, shots=k))
            if b[2] and c[2]:
                parts.append(f"K={int(k)} {b[0]:.3f} vs {c[0]:.3f}")
        if parts:
            lines.append(f"{name}: BiomedCoOp vs CoOp (mean test acc): " + ", ".join(parts))
    full, zscore = grids.biomedcoop_ablations()[0], grids.biomedcoop_ablations()[4]
    for name in dict.fromkeys(ablations.get("dataset", [])):
        d = select(ablations, dataset=name, split="test")
        mad, z = stats(select(d, setting_id=full.id)), stats(select(d, setting_id=zscore.id))
        if mad[2] and z[2]:
            spread = max(mad[1], z[1])
            verdict_ = "within the seeds' spread" if abs(mad[0] - z[0]) <= spread else "larger than the seeds' spread"
            sel = selection_table[selection_table["dataset"] == name].set_index("rule") if len(selection_table) else None
            kept = ""
            if sel is not None and {"mad τ=1.5", "zscore τ=1.5"} <= set(sel.index):
                m, zz = sel.loc["mad τ=1.5"], sel.loc["zscore τ=1.5"]
                kept = (f"; the rules keep {m['kept per batch']} vs {zz['kept per batch']} of {m['prompts']} prompts per "
                        f"batch and prune {m['outliers pruned']} vs {zz['outliers pruned']} known outliers "
                        f"({m['true prompts pruned']} vs {zz['true prompts pruned']} true prompts)")
            lines.append(f"{name}: MAD rule {_fmt(mad)} vs z-score rule {_fmt(z)} test acc "
                         f"({mad[0] - z[0]:+.3f}, {verdict_}){kept}")
    return lines


def tau_sweep(ablation_rows) -> pd.DataFrame:
    """BiomedCoOp's MAD rule at every τ run (the full model at its τ = 1.5)."""
    sweep = option_sweep(ablation_rows, grids.biomedcoop_ablations()[0], {"tau": ["tau"]})
    return sweep.rename(columns={"value": "tau"})


# --------------------------------------------------------------------------- CILMP (08)

def cilmp_sweep(ablation_rows, n_layers: int) -> pd.DataFrame:
    """The length (prefix = suffix) and rank sweeps around the full CILMP, which stands at its
    default length and rank; the no-intervention ablation is the sweep's length 0."""
    d = grids.cilmp_defaults(n_layers)
    return option_sweep(ablation_rows, grids.cilmp_ablations()[0], {"length": ["prefix", "suffix"], "rank": ["rank"]},
                        resolved={"prefix": d["length"], "suffix": d["length"]})


def findings_08(table_rows, ablation_rows, n_layers: int) -> list[str]:
    """CILMP against the other prompt learners and its ablations, as sentences with numbers."""
    lines = []
    cilmp = grids.cilmp_ablations()[0]
    test = select(table_rows, split="test", classes="all")
    for name in dict.fromkeys(test["dataset"]):
        d = select(test, dataset=name)
        means = d.groupby("setting_id")[["acc", "f1_macro", "auc", "kappa"]].mean()
        label = d.drop_duplicates("setting_id").set_index("setting_id")["variant"]
        if cilmp.id not in means.index:
            continue
        others = means.drop(index=cilmp.id)
        if others.empty:
            continue
        rival = others["acc"].idxmax()
        c, r = means.loc[cilmp.id], means.loc[rival]
        lines.append(f"{name}: CILMP acc {c['acc']:.3f} F1 {c['f1_macro']:.3f} AUC {c['auc']:.3f} kappa {c['kappa']:.3f} "
                     f"vs the best other method, {label[rival]}: acc {r['acc']:.3f} F1 {r['f1_macro']:.3f} AUC {r['auc']:.3f} "
                     f"kappa {r['kappa']:.3f}")
    a = select(ablation_rows, split="test", classes="all")
    if len(a):
        full = stats(select(a, setting_id=cilmp.id))
        if full[2]:
            parts = []
            for s in grids.cilmp_ablations()[1:4]:
                st = stats(select(a, setting_id=s.id))
                if st[2]:
                    parts.append(f"{s.variant} {_fmt(st)} ({st[0] - full[0]:+.3f})")
            lines.append(f"{a['dataset'].iloc[0]} ablations (acc; full CILMP {_fmt(full)}): " + ", ".join(parts))
        defaults = grids.cilmp_defaults(n_layers)
        for kind, g in cilmp_sweep(a, n_layers).groupby("sweep", sort=False):
            means = g.groupby("value")["acc"].mean()
            lines.append(f"{kind} sweep: " + ", ".join(
                f"{v} {m:.3f}" + (" (full CILMP)" if v == defaults[kind] else "") for v, m in means.items())
                + f"; best {kind} {means.idxmax()}")
    return lines
