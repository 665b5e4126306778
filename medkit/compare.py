"""`python -m medkit compare DATA --backbone NAME`: every method that applies to a user's
single-label dataset over a K-shot grid and seeds, in one command, ending with a report.

The grid is the few-shot grid of the registry (zero-shot with class names and, when the
dataset has descriptions, with its description ensemble; linear probe, LP++, CLIP-Adapter,
Tip-Adapter(-F); CoOp, KgCoOp, CoCoOp, ProGrad, BiomedCoOp when there are descriptions;
CILMP when class representations are given) plus the MaPLe family (MaPLe, VPT-deep, IVLP at
their references' depth, 9 of 12 layers, or the same share of a smaller tower). One progress bar covers the whole grid. The run folder is fixed
per dataset × backbone × profile (`outputs/compare/<key>/run.txt` points at it), so a
killed or repeated command resumes: finished runs are restored from their checkpoints,
none is trained or written to `results.csv` twice.

The report (`outputs/compare/<key>/report.html`, figures embedded) has the accuracy-vs-K
curves, the best method per K with its spread and the runner-up, confusion matrices of the
best at the smallest and the largest K, and a recommendation per K (the best, and every
method whose mean is within the best's seed spread).
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from medkit.backbones import load_backbone
from medkit.data import Dataset, load_dataset
from medkit.experiment import Experiment, Outcome, Setting
from medkit.features import FeatureCache
from medkit.grids import few_shot_grid
from medkit.methods import Ref
from medkit.profiles import get_profile
from medkit.reporting.tables import mean_std
from medkit.runs import Run, pinned_run, sanitise

DEEP_PROMPTS = (("maple", "MaPLe"), ("vpt_deep", "VPT-deep"), ("ivlp", "IVLP"))
REFERENCE_DEPTH = (9, 12)  # MaPLe / IVLP prompt 9 of ViT-B's 12 layers


def deep_prompt_settings(adapter=None) -> list[Setting]:
    """The MaPLe family at the references' depth: 9 layers of a 12-layer tower, the same
    share of a smaller one (MiniCLIP's 4-layer vision tower: 3)."""
    depth, of = REFERENCE_DEPTH
    if adapter is not None:
        layers = min(adapter.text_depth, adapter.vision_depth)
        depth = depth if layers >= of else max(1, round(layers * depth / of))
    return [Setting(method, variant, {"depth": depth}) for method, variant in DEEP_PROMPTS]


class CompareError(ValueError):
    pass


def applicable(dataset: Dataset, knowledge: bool, profile=None, adapter=None) -> tuple[list[Setting], list[str]]:
    """The settings that can run on this dataset (and backbone), and why each other one cannot."""
    keep, skipped = [], []
    for s in [*few_shot_grid(profile), *deep_prompt_settings(adapter)]:
        refs = {v.name for v in s.options.values() if isinstance(v, Ref)}
        if "descriptions" in refs and not dataset.descriptions:
            skipped.append(f"{s.method} · {s.variant}: no descriptions.json next to the data")
        elif "knowledge" in refs and not knowledge:
            skipped.append(f"{s.method} · {s.variant}: no class representations (--knowledge DIR, or "
                           "--knowledge minilm for the MiniLM stand-in over the descriptions)")
        else:
            keep.append(s)
    return keep, skipped


@dataclass
class Comparison:
    key: str
    folder: Path
    run: Run
    dataset: Dataset
    rows: pd.DataFrame
    outcomes: list[Outcome]
    skipped: list[str]
    report: Path | None = None
    figures: dict[str, object] = field(default_factory=dict)


def comparison_key(dataset: Dataset, backbone: str, profile: str, knowledge: str | None = None) -> str:
    """dataset × backbone × profile (× which class representations CILMP reads: other ones are
    another comparison, never a resume of this one)."""
    tail = f"_k{hashlib.blake2b(knowledge.encode(), digest_size=4).hexdigest()}" if knowledge else ""
    return sanitise(f"{dataset.id}_{backbone}_{profile}{tail}")


def compare(data: str | Path, backbone: str = "", profile: str = "tiny", shots: Sequence[int] = (1, 2, 4, 8, 16),
            seeds: Sequence[int] = (1, 2, 3), outputs_root: str | Path = "outputs", data_root: str | Path = "data",
            knowledge: str | None = None, device: str = "", image_root: str | None = None,
            progress: bool = True, log: Callable[[str], None] | None = None) -> Comparison:
    """Run the whole comparison on `data` (a split JSON, CSV manifest, ImageFolder, synthetic
    name …) and write its report; see the module docstring."""
    from tqdm.auto import tqdm

    prof = get_profile(profile, backbone=backbone, device=device)
    outputs_root, data_root = Path(outputs_root), Path(data_root)
    dataset = load_dataset(data, "xray", prof.world, data_root, progress=progress, image_root=image_root)
    if dataset.splits["train"].multilabel:
        raise CompareError(f"{data}: a multi-label dataset; compare runs single-label methods — use notebook "
                           "09_multilabel_cxr (parameters train_dataset / eval_datasets)")
    resources = {}
    if knowledge:
        from medkit.knowledge import dataset_knowledge

        resources["knowledge"] = dataset_knowledge(dataset, data_root, None if knowledge == "minilm" else knowledge,
                                                   progress=progress)
    adapter = load_backbone(prof.backbone, device=prof.device, data_root=data_root, progress=progress)
    settings, skipped = applicable(dataset, bool(knowledge), prof, adapter)
    seeds, shots = prof.seeds(seeds), prof.shots(shots)
    key = comparison_key(dataset, adapter.name, prof.name,
                         None if not knowledge else knowledge if knowledge == "minilm" else str(Path(knowledge).resolve()))
    folder = outputs_root / "compare" / key
    config = {"profile": prof.as_dict(), "data": str(data), "dataset": dataset.id, "shots": list(shots),
              "seeds": list(seeds), "knowledge": knowledge or "", "settings": [s.id for s in settings]}
    run, before = pinned_run(folder, f"compare_{key}", prof.name, config, outputs_root)
    cells = [(s, k, seed) for s in settings for k in shots if s.shots is None or k in s.shots for seed in seeds]
    bar = tqdm(total=len(cells), desc=f"compare {dataset.id}", unit="run", disable=not progress)
    say = log or (bar.write if progress else print)
    ex = Experiment(run, dataset, adapter, prof, FeatureCache.at(data_root / "cache"), resources,
                    data_root=str(data_root), log=say)
    selections: dict[tuple[int, int], object] = {}
    outcomes = []
    try:
        for s, k, seed in cells:
            bar.set_postfix_str(f"{s.method} · K={k} · seed {seed}")
            if (k, seed) not in selections:  # one K-shot draw per (K, seed), shared by every method
                selections[k, seed] = ex.few_shot_selection(k, seed)
            outcomes.append(ex.run_one(s, seed, selections[k, seed]))
            bar.update()
        bar.close()
        rows = pd.DataFrame([r for o in outcomes for r in o.rows])
        result = Comparison(key, folder, run, dataset, rows, outcomes, skipped)
        result.report = write_report(result, folder / "report.html")
        run.save_metrics({"best_per_k": best_per_k(rows).to_dict("records"),
                          "recommendation": recommendation(rows).to_dict("records"), "skipped": skipped})
    except BaseException as e:
        bar.close()
        if before == "complete":  # an interrupted repeat of a finished comparison: every row it holds
            run.mark("complete")  # is a finished run's, so it stays readable (a rerun finishes any new cells)
        else:
            run.mark("failed", f"{type(e).__name__}: {e}"[:500])
        raise
    run.complete()
    return result


# --------------------------------------------------------------------------- what the report says


def _stats(rows: pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    test = rows[(rows["split"] == "test") & (rows["classes"] == "all")]
    g = test.assign(label=test["method"] + " · " + test["variant"]).groupby(["shots", "label"], sort=False)[metric]
    return g.agg(["mean", "std", "size"]).reset_index()


def best_per_k(rows: pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    """Per K: the best method (mean over seeds), its mean ± std, the runner-up and whether the
    margin between them exceeds the best's seed spread."""
    out = []
    for k, g in _stats(rows, metric).groupby("shots"):
        g = g.sort_values("mean", ascending=False)
        best, second = g.iloc[0], g.iloc[1] if len(g) > 1 else None
        margin = best["mean"] - second["mean"] if second is not None else np.nan
        spread = 0.0 if np.isnan(best["std"]) else best["std"]
        out.append({"K": int(k), "best": best["label"], metric: mean_std(best["mean"], best["std"]), "seeds": int(best["size"]),
                    "runner-up": second["label"] if second is not None else "",
                    f"runner-up {metric}": mean_std(second["mean"], second["std"]) if second is not None else "",
                    "margin": round(float(margin), 3), "margin > spread": bool(margin > spread)})
    return pd.DataFrame(out)


def recommendation(rows: pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    """Per K, what to use: the best method and every other whose mean is within the best's
    seed spread (they cannot be told apart on this dataset at these seeds)."""
    out = []
    for k, g in _stats(rows, metric).groupby("shots"):
        g = g.sort_values("mean", ascending=False)
        best = g.iloc[0]
        spread = 0.0 if np.isnan(best["std"]) else float(best["std"])
        ties = [r["label"] for _, r in g.iloc[1:].iterrows() if best["mean"] - r["mean"] <= spread]
        out.append({"K": int(k), "use": best["label"], metric: mean_std(best["mean"], best["std"]),
                    "as good within the seed spread": ", ".join(ties) or "none",
                    "why": "clearly best" if not ties else f"{len(ties) + 1} methods within ±{spread:.3f}"})
    return pd.DataFrame(out)


def _figure_html(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" style="max-width:100%">'


def write_report(result: Comparison, path: Path) -> Path:
    """One self-contained HTML page (figures embedded, nothing fetched when opened)."""
    import html as html_lib

    from medkit.plots import plot_shot_curves
    from medkit.reporting.figures import confusion_figure

    rows, ds = result.rows, result.dataset
    test = rows[rows["split"] == "test"]
    curves = plot_shot_curves(test, title=f"{ds.id}: test accuracy vs K (mean ± std over seeds)")
    result.run.save_figure(curves, "shots_vs_acc")
    best = best_per_k(rows)
    parts = [f"<h1>medkit compare · {html_lib.escape(ds.id)}</h1>",
             f"<p>{ds.labels.n_classes} classes · backbone <code>{html_lib.escape(str(rows['backbone'].iloc[0]))}</code> · "
             f"K = {sorted(int(k) for k in rows['shots'].dropna().unique())} · seeds "
             f"{sorted(int(s) for s in rows['seed'].dropna().unique())} · run folder <code>{result.run.path}</code></p>",
             "<h2>Recommendation</h2>", recommendation(rows).to_html(index=False),
             "<h2>Accuracy vs K</h2>", _figure_html(curves),
             "<h2>Best method per K</h2>", best.to_html(index=False)]
    for k in sorted({int(best["K"].min()), int(best["K"].max())}):
        label = best.loc[best["K"] == k, "best"].iloc[0]
        outs = [o for o in result.outcomes if o.shots == k and f"{o.setting.method} · {o.setting.variant}" == label]
        fig = confusion_figure(outs[0], ds, f"{ds.id} · {label} · test, K={k}, seed {outs[0].seed}")
        result.run.save_figure(fig, f"confusion_K{k}")
        parts += [f"<h2>Confusion matrix of the best at K={k}</h2>", _figure_html(fig)]
    table = _stats(rows).assign(cell=lambda d: [mean_std(m, s) for m, s in zip(d["mean"], d["std"])])
    parts += ["<h2>Every method × K (test accuracy, mean ± std)</h2>",
              table.pivot_table(index="label", columns="shots", values="cell", aggfunc="first").to_html()]
    if result.skipped:
        parts += ["<h2>Not run</h2><ul>", *[f"<li>{html_lib.escape(s)}</li>" for s in result.skipped], "</ul>"]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>medkit compare</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 6px}</style></head><body>" + "\n".join(parts) + "</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    (path.parent / "rows.json").write_text(json.dumps({"run": str(result.run.path), "rows": len(rows)}) + "\n")
    return path


__all__ = ["CompareError", "Comparison", "applicable", "best_per_k", "compare", "recommendation"]
