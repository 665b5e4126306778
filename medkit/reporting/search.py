"""What a search shows: Optuna's optimisation history, parameter importances and parallel
coordinates, best vs default over seeds, and the table of step budgets' loss curves."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd


def figures(study, summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Optimisation history, parameter importances, parallel coordinates, best vs default."""
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    import warnings

    out = {}
    target = f"val {(summary or {}).get('metric', 'acc')}"
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Target and region quantiles", category=UserWarning)  # few trials
        out["history"] = ovm.plot_optimization_history(study, target_name=target).figure
        if len(done) >= 2 and len({k for t in done for k in t.params}) >= 1:
            try:
                out["importances"] = ovm.plot_param_importances(study, target_name=target).figure
            except (RuntimeError, ValueError):  # every trial alike: nothing to attribute
                pass
            out["parallel"] = ovm.plot_parallel_coordinate(study, target_name=target).figure
    for fig in out.values():
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
    if summary:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        labels = ["default", "best"]
        for j, split in enumerate(("val", "test")):
            means = [np.mean(summary[c][split]) for c in labels]
            stds = [np.std(summary[c][split]) for c in labels]
            ax.bar(np.arange(2) + (j - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=4, label=split)
        ax.set_xticks(range(2), ["default configuration", "best trial's"])
        metric = {"acc": "accuracy", "dice": "Dice"}.get(summary.get("metric", "acc"), summary.get("metric"))
        ax.set_ylabel(f"{metric} (mean ± std over seeds)")
        ax.set_title(f"{study.study_name}: {len(summary['seeds'])} seeds", fontsize=9)
        ax.legend()
        fig.tight_layout()
        out["best_vs_default"] = fig
    return out


def best_vs_default(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Default and best configuration: validation and test accuracy (Dice for a segmentation
    study), mean ± std and per seed."""
    from medkit.reporting.tables import mean_std

    metric = summary.get("metric", "acc")
    rows = []
    for name in ("default", "best"):
        part = summary[name]
        rows.append({"configuration": part["variant"],
                     **{f"{split} {metric}": mean_std(float(np.mean(part[split])),
                                                 float(np.std(part[split], ddof=1)) if len(part[split]) > 1 else np.nan)
                        for split in ("val", "test")},
                     **{f"test s{seed}": round(v, 3) for seed, v in zip(summary["seeds"], part["test"])}})
    return pd.DataFrame(rows)


def search_findings(summary: Mapping[str, Any], profile: str) -> list[str]:
    """Whether the best trial's configuration beats the default one, on validation (what the
    study optimised) and on test (what it never saw), over the seeds."""
    out = []
    for split, why in (("val", "what the study optimised"), ("test", "never seen by the study")):
        best, default = float(np.mean(summary["best"][split])), float(np.mean(summary["default"][split]))
        out.append(f"{summary['study']} ({profile}): the best trial's configuration {'beats' if best > default else 'does not beat'} "
                   f"the default on {split} ({why}): {best:.3f} vs {default:.3f}, mean over seeds {summary['seeds']}")
    return out


def budget_table(curves: Mapping[int, tuple[list[float], float, float]], profile_steps: int | None = None
                 ) -> pd.DataFrame:
    """Per budget: first and last loss, how much the mean loss of the last quarter of the steps
    fell below the quarter before it (a flattening curve: a few percent), validation accuracy."""
    rows = []
    for steps, (losses, val, seconds) in curves.items():
        if not losses:
            continue
        q = max(1, len(losses) // 4)
        last = float(np.mean(losses[-q:]))
        before = float(np.mean(losses[-2 * q:-q])) if len(losses) >= 2 * q else float(losses[0])
        rows.append({"steps": steps, "first loss": round(losses[0], 3), "last loss": round(losses[-1], 3),
                     "last-quarter drop %": round(100 * (before - last) / before, 1), "val acc": round(val, 3),
                     "seconds": round(seconds, 1), "the profile's budget": steps == profile_steps})
    return pd.DataFrame(rows)


__all__ = ["best_vs_default", "budget_table", "figures", "search_findings"]
