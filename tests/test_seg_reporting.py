"""Notebook 10's tables and findings on hand-made rows: each verdict follows the numbers."""
from __future__ import annotations

import pandas as pd

from medkit.reporting import segmentation as sr


def _rows(values: dict[str, list[float]], dataset: str = "d", method: str = "seg_coop") -> list[dict]:
    return [{"task": "segmentation", "dataset": dataset, "method": "seg_zeroshot" if v.startswith("zero-shot") else method,
             "variant": v, "seed": i + 1, "dice": x, "iou": x / 2, "prompt": v[-2:] if v.startswith("zero") else "p1"}
            for v, xs in values.items() for i, x in enumerate(xs)]


ROLES = {"prompt_tuned": ["CoOp", "VPT", "MaPLe"], "visual": "VPT", "multimodal": ["MaPLe"], "finetune": "FT",
         "text_init": ["CoOp"], "random_init": ["CoOp · random"], "upsampler": ["CoOp + up"], "no_upsampler": ["CoOp"],
         "deep_text": "CoOp · depth 6", "shallow_text": "CoOp", "deep_visual": "VPT", "shallow_visual": "VPT · depth 1"}


def test_findings_follow_the_numbers():
    rows = _rows({"zero-shot p1": [0.20], "zero-shot p3": [0.25], "CoOp": [0.40, 0.42, 0.41], "VPT": [0.50, 0.52, 0.51],
                  "MaPLe": [0.60, 0.61, 0.59], "FT": [0.61, 0.55, 0.66]})
    sweep = _rows({"CoOp": [0.40, 0.42], "CoOp · random": [0.41, 0.41], "CoOp + up": [0.50, 0.52],
                   "CoOp · depth 6": [0.60, 0.62], "VPT": [0.50, 0.52], "VPT · depth 1": [0.30, 0.31]})
    f = sr.findings_10(rows, sweep, ["d"], ROLES, "d").set_index("finding")
    assert f.loc["prompt tuning beats the best fixed prompt", "B"].startswith("zero-shot p3")
    assert f.loc["prompt tuning beats the best fixed prompt", "holds here"] == "yes"
    assert f.loc["prompt tuning is comparable with fine-tuning (a tie, or ahead)", "A beats B"].startswith("tie")
    assert f.loc["vision tuning is on par with multimodal tuning (a tie, or ahead)", "holds here"] == "no"
    assert f.loc["initialisation matters (text init vs random: not a tie)", "holds here"] == "no"
    assert f.loc["the learnable upsampler helps", "holds here"] == "yes"
    assert f.loc["deeper prompts help visual tuning", "holds here"] == "yes"
    assert f.loc["deeper prompts help text tuning (poster: not for text)", "holds here"] == "no"  # depth helped text


def test_tables_pivot_strategies_and_prompts():
    rows = _rows({"zero-shot p1": [0.2], "zero-shot p3": [0.3], "CoOp": [0.4, 0.5]}) + _rows({"CoOp": [0.6]}, "e")
    t = sr.strategy_table(rows, ["d", "e"])
    assert list(t.columns) == ["d", "e"] and t.loc[("seg_coop", "CoOp"), "d"] == "0.450 ± 0.071"
    z = sr.zeroshot_table(rows, ["d"])
    assert list(z.index) == ["p1", "p3"] and z.loc["p3", "d"] == 0.3
    s = sr.sweep_table(rows, ["CoOp", "missing"], "d")
    assert list(s.index) == ["CoOp"] and s.loc["CoOp", "seeds"] == 2
    assert isinstance(sr.seg_rows(pd.DataFrame(rows)), pd.DataFrame)
