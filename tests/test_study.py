"""The study glue: hierarchical initialisation, group relabelling, per-class caps, the
seed tables and the verdicts of the findings table."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medkit.data import LabelSpace, Sample, Split
from medkit.methods import CoCoOp, CoOp, MaPLe
from medkit.reports import findings, flat_rows, latest_rows
from medkit.study import (HIERARCHY_SETTINGS, Setting, inherit_from_groups, relabel_to_groups, seed_table,
                          subsample_per_class, train_config)
from medkit.train import seed_everything

NAMES = ["round", "oval", "plate", "screw"]
GROUP_OF = {"round": "g1", "oval": "g1", "plate": "g2", "screw": "g2"}
GROUPS = ["g1", "g2"]


def _split() -> Split:
    labels = LabelSpace(tuple(NAMES), GROUP_OF)
    samples = [Sample(Path(f"{i}.png"), i % 4, NAMES[i % 4], GROUP_OF[NAMES[i % 4]]) for i in range(12)]
    return Split("train", samples, labels)


@pytest.mark.parametrize("family", ["native", "hf"])
@pytest.mark.parametrize("cls", [CoOp, CoCoOp, MaPLe])
def test_stage_two_starts_from_its_groups_prompts(adapters, family, cls):
    ad = adapters[family]
    kw = {"depth": "all"} if cls is MaPLe else {}
    seed_everything(0)
    stage1 = cls(ad, GROUPS, n_ctx=2, ctx_init=None, class_specific=True, **kw)
    with torch.no_grad():  # make the two group prompts clearly different
        stage1.context.ctx.copy_(torch.randn_like(stage1.context.ctx))
    stage2 = cls(ad, NAMES, n_ctx=2, ctx_init=None, class_specific=True, **kw)
    c2g = [0, 0, 1, 1]
    inherit_from_groups(stage2, stage1, c2g)
    for c, g in enumerate(c2g):
        assert torch.equal(stage2.context.ctx[c], stage1.context.ctx[g])
    # everything that is not class-indexed (meta-net, deep prompts, couplings) is copied as is
    s1, s2 = stage1.trainable_state(), stage2.trainable_state()
    for name in s1:
        if name != "context.ctx":
            assert torch.equal(s1[name], s2[name]), name


def test_shared_stage_two_copies_the_one_prompt(adapters):
    ad = adapters["native"]
    stage1 = CoOp(ad, GROUPS, n_ctx=3)
    stage2 = CoOp(ad, NAMES, n_ctx=3)
    assert not torch.equal(stage1.context.ctx, stage2.context.ctx)
    inherit_from_groups(stage2, stage1, [0, 0, 1, 1])
    assert torch.equal(stage1.context.ctx, stage2.context.ctx)


def test_stage_two_refuses_mismatched_shapes(adapters):
    ad = adapters["native"]
    with pytest.raises(ValueError, match="context.ctx"):
        inherit_from_groups(CoOp(ad, NAMES, n_ctx=3), CoOp(ad, GROUPS, n_ctx=2), [0, 0, 1, 1])


def test_relabel_to_groups_and_caps():
    split = _split()
    g = relabel_to_groups(split)
    assert g.labels.classnames == ("g1", "g2")
    assert [s.label for s in g.samples] == [[0, 0, 1, 1][s.label] for s in split.samples]
    assert all(s.classname == ("g1" if s.label == 0 else "g2") for s in g.samples)
    capped = subsample_per_class(split, 2)
    assert np.bincount(capped.targets).tolist() == [2, 2, 2, 2]
    assert subsample_per_class(split, None) is split


def test_profile_budgets_override_the_reference_defaults():
    assert train_config("coop", "paper").lr == 0.002  # anchors.md: CoOp SGD lr 0.002
    assert train_config("maple", "paper").lr == 0.0035
    tiny = train_config("coop", "tiny", seed=3)
    assert tiny.seed == 3 and tiny.optimizer == "adamw"
    with pytest.raises(TypeError, match="unknown TrainConfig"):
        train_config("coop", "tiny", learning_rate=1)


def _rows(method: str, variant: str, accs: list[float], split: str = "test", notebook: str = "03_coop",
          run_id: str = "20260101-000000_03_coop_tiny", dataset: str = "d") -> list[dict]:
    return [{"run_id": run_id, "notebook": notebook, "dataset": dataset, "split": split, "method": method,
             "variant": variant, "backbone": "b", "seed": i + 1, "acc": a} for i, a in enumerate(accs)]


def test_seed_table_shows_mean_and_std():
    t = seed_table(_rows("coop", "x", [0.5, 0.7]) + _rows("coop", "x", [0.1], split="val"), metrics=("acc",))
    assert t.loc[("d", "coop", "x"), "acc"] == "0.600 ± 0.141"
    assert t.loc[("d", "coop", "x"), "n"] == 2


def test_latest_rows_take_the_newest_run_only():
    old = _rows("coop", "x", [0.1], run_id="20260101-000000_03_coop_tiny")
    new = _rows("coop", "x", [0.9], run_id="20260202-000000_03_coop_tiny")
    df = pd.DataFrame(old + new)
    assert latest_rows(df, "03_coop", "b", "d")["acc"].tolist() == [0.9]
    setting = HIERARCHY_SETTINGS["coop"]["shared"]
    assert flat_rows(df, "coop", "b", "d", [setting], [1]) is None  # that variant is missing


def test_findings_verdicts_follow_the_seed_spread():
    rows = (_rows("coop", "class-specific, text init", [0.50, 0.52, 0.54])
            + _rows("coop", "shared, text init", [0.30, 0.31, 0.32])
            + _rows("coop", "class-specific, random init", [0.40, 0.45, 0.50])
            + _rows("coop", "shared, random init", [0.41, 0.44, 0.49])
            + _rows("zeroshot", "name_study_template", [0.05], split="xray_test", notebook="02_zero_shot",
                    run_id="20260101-000000_02_zero_shot_tiny"))  # notebook 02 names the domain in `split`
    f = findings(pd.DataFrame(rows), "b", ["d"])
    cs = f[f["finding"] == "class-specific > shared"].set_index("A")["holds (A > B)"]
    assert cs["coop: class-specific, text init"] == "yes"
    assert cs["coop: class-specific, random init"].startswith("tie")
    assert cs["cocoop: class-specific, random init"] == "not run"
    zs = f[f["finding"] == "prompt learning ≫ zero-shot"].iloc[0]
    assert zs["holds (A > B)"] == "yes" and zs["B acc"] == "0.050"
    text = f[f["finding"] == "text init > random init"].set_index("A")["holds (A > B)"]
    assert text["coop: class-specific, text init"] == "yes"
    assert text["coop: shared, text init"] == "no"


def test_training_a_cached_stand_in_leaves_the_global_rng_alone(tmp_path):
    """A run that pretrains the supervised stand-in first must seed the classifier after it
    exactly as a run that finds it cached (found as a 0.06 vs 0.03 accuracy difference)."""
    from medkit.backbones import supervised

    cfg = supervised.SupervisedConfig(preset="miniclip-smoke", n_images=32, epochs=1, batch_size=16)
    torch.manual_seed(7)
    supervised.load_or_train(cfg, root=tmp_path, progress=False)  # trains
    after_training = torch.rand(3)
    torch.manual_seed(7)
    supervised.load_or_train(cfg, root=tmp_path, progress=False)  # loads
    assert torch.equal(torch.rand(3), after_training)
