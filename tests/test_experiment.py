"""The one runner on a tiny image dataset written to disk: every selection (full split,
K-shot, base-to-novel, hierarchy), the method lifecycle whatever the method, rows that
carry their fields, run folders, determinism, and the configuration each run gets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_knowledge
from medkit import grids
from medkit.config import TrainConfig
from medkit.data import LabelSpace, Sample, Split
from medkit.experiment import Experiment, Setting, inherit_from_groups, step_budget
from medkit.features import CachedFeatures, FeatureCache
from medkit.methods import CoCoOp, CoOp, MaPLe, Ref
from medkit.profiles import get_profile
from medkit.protocols import relabel_to_groups, subsample_per_class
from medkit.runs import RESULT_COLUMNS, read_results, start_run
from medkit.train import seed_everything

COOP = Setting("coop", "CoOp", {"n_ctx": None, "ctx_init": "a photo of a"}, {"batch_size": 4})
SETTINGS = [
    Setting("zeroshot", "class names", {"templates": "a photo of a {}."}),
    Setting("zeroshot", "description ensemble", {"ensembles": Ref("descriptions")}),
    Setting("linear_probe", "LP", {}),
    Setting("tip_adapter", "Tip-Adapter", {}),
    COOP,
    Setting("biomedcoop", "BiomedCoOp", {"ensembles": Ref("descriptions")}, {"batch_size": 4}),
    Setting("cilmp", "CILMP", {"knowledge": Ref("knowledge"), "prefix": 1, "suffix": 1}, {"batch_size": 2},
            shots=(1,)),
]


def experiment(run, dataset, adapters, tmp_path, views: int = 2) -> Experiment:
    return Experiment(run, dataset, adapters["native"], "smoke", FeatureCache(tmp_path / "cache"),
                      {"knowledge": tiny_knowledge()}, views=views, log=lambda s: None)


def test_few_shot_grid_rows_indices_and_zero_shot_repeats(tiny_dataset, adapters, tmp_path, one_thread):
    run = start_run("07_test", "smoke", {}, tmp_path / "out")
    ex = experiment(run, tiny_dataset, adapters, tmp_path)
    outs = ex.few_shot(SETTINGS, shots=[1, 2], seeds=[1, 2])
    df = read_results(tmp_path / "out", current=run)  # its own rows, while it runs
    expected = (len(SETTINGS) - 1) * 2 * 2 + 1 * 2       # CILMP only at K=1
    assert len(outs) == len(df) == expected
    assert list(df.columns[:len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert set(df["split"]) == {"test"} and set(df["shots"]) == {1, 2} and set(df["protocol"]) == {"few_shot"}
    assert set(df["classes"]) == {"all"} and set(df["task"]) == {"single_label"}
    zs = df[df["variant"] == "class names"]
    assert zs["acc"].nunique() == 1 and len(zs) == 4 and (zs["train_s"] == 0).all()  # evaluated once, a row per K × seed
    assert set(df.loc[df["method"] == "cilmp", "shots"]) == {1}
    # the options are data: the row's options give back the setting, and its id
    row = df[df["method"] == "cilmp"].iloc[0]
    assert json.loads(row["options"])["prefix"] == 1 and row["setting_id"] == SETTINGS[-1].id
    saved = json.loads((run.path / "fewshot_indices" / "tinyset_K2_s1.json").read_text())
    train = [tiny_dataset["train"].samples[i].label for i in saved["indices"]["train"]]
    assert sorted(train) == sorted([0, 1, 2, 3] * 2) and saved["shots"] == 2
    assert len(saved["indices"]["val"]) == 4 * 2              # min(K, 4) per class
    assert df["acc"].between(0, 1).all()
    # every trained run keeps its history and its parameters in the run folder
    histories = [p for p in (run.path / "histories").rglob("*.csv") if not p.stem.endswith("_steps")]
    steps = list((run.path / "histories").rglob("*_steps.csv"))
    checkpoints = list(run.checkpoints_dir.rglob("*.pt"))
    assert len(histories) == len(steps) == 4 * 2 + 2 and any(COOP.id in p.name for p in histories)  # trained by gradient
    assert {"ce", "sccm", "kdsp"} <= set(pd.read_csv(next(p for p in steps if "biomedcoop" in p.name)).columns)
    ckpt = torch.load(next(p for p in checkpoints if COOP.id in p.name), weights_only=False)
    assert ckpt["setting"] == COOP.id and "context.ctx" in ckpt["state"]
    assert any("linear_probe" in p.name for p in checkpoints) and not any("zeroshot" in p.name for p in checkpoints)


def test_same_seed_same_metrics(tiny_dataset, adapters, tmp_path, one_thread):
    a = experiment(None, tiny_dataset, adapters, tmp_path).few_shot(SETTINGS[4:6], shots=[2], seeds=[3])
    b = experiment(None, tiny_dataset, adapters, tmp_path).few_shot(SETTINGS[4:6], shots=[2], seeds=[3])
    assert [r.row["acc"] for r in a] == [r.row["acc"] for r in b]
    assert torch.equal(a[0].method.context.ctx, b[0].method.context.ctx)


def test_the_lifecycle_runs_for_every_method_on_the_full_split(tiny_dataset, adapters, tmp_path, one_thread):
    """The study runner used to call fit only: a linear probe got SGD instead of
    scikit-learn, Tip-Adapter failed with 'no trainable parameters'."""
    ex = experiment(None, tiny_dataset, adapters, tmp_path, views=0)
    lp, tip = ex.full([SETTINGS[2], SETTINGS[3]], seeds=[1])
    assert lp.history is None and lp.method.C is not None       # fitted by scikit-learn, no gradient loop
    assert tip.method.cache_keys is not None and tip.history is None
    assert [r["split"] for r in lp.rows] == ["val", "test"] and lp.rows[0]["protocol"] == "full"
    assert lp.row["acc"] > 0.5 and tip.row["acc"] >= 0.25


def test_base_to_novel_relabels_each_half(tiny_dataset, adapters, tmp_path, one_thread):
    ex = experiment(None, tiny_dataset, adapters, tmp_path)
    outs = ex.base_to_novel([SETTINGS[0], COOP, SETTINGS[6]], shots=2, seeds=[1])
    rows = [r for o in outs for r in o.rows]
    assert [(r["split"], r["classes"]) for r in rows] == [("test", "base"), ("test", "novel")] * 3
    assert {r["protocol"] for r in rows} == {"base_to_novel"}
    novel = outs[1].outputs[("test", "novel")][1]
    assert sorted(set(novel.tolist())) == [0, 1]              # novel classes relabelled 0..m-1
    from medkit.reporting import base_novel_table

    table = base_novel_table(rows)
    assert list(table.columns[:3]) == ["base", "novel", "HM"] and len(table) == 3
    with pytest.raises(ValueError, match="tied to the base classes"):
        ex.base_to_novel([SETTINGS[3]], shots=2, seeds=[1])


def test_hierarchical_rows_say_their_stage(tiny_dataset, adapters, tmp_path, one_thread):
    ex = experiment(None, tiny_dataset, adapters, tmp_path, views=0)
    setting = Setting("coop", "class-specific", {"n_ctx": 2, "class_specific": True})
    (s1, s2), = ex.hierarchical(setting, seeds=[1])
    assert {r["classes"] for r in s1.rows} == {"groups"} and {r["classes"] for r in s2.rows} == {"all"}
    assert {r["protocol"] for r in s1.rows + s2.rows} == {"hierarchical"}
    assert all(r["group_acc"] == r["acc"] for r in s1.rows)   # the labels are the groups
    assert s1.method.context.ctx.shape[0] == 2 and s2.method.context.ctx.shape[0] == 4


def test_missing_resource_is_named(tiny_dataset, adapters, tmp_path):
    ex = Experiment(None, tiny_dataset, adapters["native"], "smoke", FeatureCache(tmp_path / "cache"), views=0,
                    log=lambda s: None)
    with pytest.raises(ValueError, match="'knowledge'"):
        ex.few_shot([SETTINGS[-1]], shots=[1], seeds=[1])


def test_bad_options_fail_when_the_setting_is_made():
    with pytest.raises(TypeError, match=r"coop: unknown option\(s\) \['nctx'\]"):
        Setting("coop", "typo", {"nctx": 4})
    with pytest.raises(TypeError, match="coop: option class_specific='yes' is not a bool"):
        Setting("coop", "wrong type", {"class_specific": "yes"})
    with pytest.raises(TypeError, match=r"biomedcoop: option\(s\) \['ensembles'\] have no default"):
        Setting("biomedcoop", "no ensembles", {})


def test_setting_ids_are_stable_and_follow_the_options():
    a = Setting("coop", "label one", {"n_ctx": 4})
    assert a.id == Setting("coop", "another label", {"n_ctx": 4, "position": "end"}).id  # defaults filled in
    assert a.id != Setting("coop", "label one", {"n_ctx": 8}).id
    assert a.id != Setting("coop", "label one", {"n_ctx": 4}, {"lr": 0.1}).id
    assert a.id.startswith("coop-") and json.loads(a.options_json)["n_ctx"] == 4


def test_config_layers_reference_profile_budget_and_overrides(tiny_dataset, adapters, tmp_path):
    from medkit.methods import default_config

    assert default_config("coop").lr == 0.002 and default_config("maple").lr == 0.0035  # anchors.md
    assert default_config("vit_finetune", {"mode": "head"}).batch_size == 128
    tiny = Experiment(None, tiny_dataset, adapters["native"], "tiny", FeatureCache(tmp_path / "c"), views=0)
    sel = tiny.full_selection()
    cfg = tiny.config(COOP, 3, sel)
    assert cfg.seed == 3 and cfg.optimizer == "adamw" and cfg.epochs == 3 and cfg.batch_size == 4
    smoke = Experiment(None, tiny_dataset, adapters["native"], get_profile("smoke"), FeatureCache(tmp_path / "c"), views=0)
    few = smoke.few_shot_selection(2, 1)
    cfg = smoke.config(Setting("cocoop", "c"), 1, few)
    assert cfg.batch_size == 4 and not cfg.validate and cfg.max_steps_per_epoch == 2  # method budget + step budget
    with pytest.raises(TypeError, match="unknown TrainConfig"):
        tiny.config(Setting("coop", "x", {}, {"learning_rate": 1}), 1, sel)


def test_few_shot_steps_per_k_reach_the_run_config(tiny_dataset, adapters, tmp_path):
    """A profile's step budget per K: the value at the largest K not above the run's (the
    smallest K's below it; keys read back from JSON are strings), and a K-shot run trains that
    many optimizer steps (CoOp's tiny batch of 128 holds the whole draw: one step per epoch)."""
    from dataclasses import replace

    prof = replace(get_profile("tiny"), few_shot_steps={1: 3, "2": 8, 16: 20})
    assert [prof.steps_at(k) for k in (0, 1, 2, 3, 15, 16, 32)] == [3, 3, 8, 8, 8, 20, 20]
    assert get_profile("smoke").steps_at(16) == get_profile("smoke").few_shot_steps  # one number: every K
    assert get_profile("full").steps_at(16) is None
    exp = Experiment(None, tiny_dataset, adapters["native"], prof, FeatureCache(tmp_path / "c"), views=0)
    for k, steps in ((1, 3), (2, 8)):
        cfg = exp.config(Setting("coop", "CoOp", COOP.options), 1, exp.few_shot_selection(k, 1))
        assert cfg.batch_size == 4 * k and cfg.epochs == steps, (k, cfg)


def test_step_budget():
    cfg = TrainConfig(epochs=50, batch_size=32)
    assert step_budget(cfg, 12, 12).epochs == 12 and step_budget(cfg, 12, 12).batch_size == 12
    big = step_budget(cfg, 720, 12)                       # 23 batches per epoch > 12 steps
    assert (big.epochs, big.max_steps_per_epoch) == (1, 12)
    assert step_budget(cfg, 100, 12).epochs == 3          # 4 batches per epoch
    assert step_budget(cfg, 100, None) is cfg


def test_cached_features_take_keeps_views_and_relabels():
    cf = CachedFeatures(torch.arange(24.0).reshape(2, 4, 3), torch.tensor([0, 1, 2, 3]))
    sub = cf.take([3, 1], labels=[1, 0])
    assert sub.features.shape == (2, 2, 3) and torch.equal(sub.features[1, 0], cf.features[1, 3])
    assert sub.labels.tolist() == [1, 0]
    with pytest.raises(ValueError, match="1 labels for 2 rows"):
        cf.take([0, 1], labels=[0])


def test_the_few_shot_grid_comes_from_the_registry():
    tiny = grids.few_shot_grid(get_profile("tiny"))
    methods = [s.method for s in tiny]
    assert methods[:2] == ["zeroshot", "zeroshot"] and "coop" in methods and "maple" not in methods
    assert next(s for s in tiny if s.method == "cilmp").shots == (1, 4, 16)
    assert all(s.shots is None for s in grids.few_shot_grid(get_profile("paper")))
    b2n = {s.method for s in grids.base_to_novel_grid()}
    assert "coop" in b2n and not {"linear_probe", "lp_pp", "tip_adapter", "tip_adapter_f"} & b2n
    assert grids.uses_knowledge(next(s for s in tiny if s.method == "biomedcoop"))
    assert not grids.uses_knowledge(next(s for s in tiny if s.method == "coop"))


# --------------------------------------------------------------------------- hierarchy pieces

NAMES4 = ["round", "oval", "plate", "screw"]
GROUP_OF = {"round": "g1", "oval": "g1", "plate": "g2", "screw": "g2"}


def _split() -> Split:
    labels = LabelSpace(tuple(NAMES4), GROUP_OF)
    samples = [Sample(Path(f"{i}.png"), i % 4, NAMES4[i % 4], GROUP_OF[NAMES4[i % 4]]) for i in range(12)]
    return Split("train", samples, labels)


@pytest.mark.parametrize("family", ["native", "hf"])
@pytest.mark.parametrize("cls", [CoOp, CoCoOp, MaPLe])
def test_stage_two_starts_from_its_groups_prompts(adapters, family, cls):
    ad = adapters[family]
    kw = {"depth": "all"} if cls is MaPLe else {}
    seed_everything(0)
    stage1 = cls(ad, ["g1", "g2"], n_ctx=2, ctx_init=None, class_specific=True, **kw)
    with torch.no_grad():  # make the two group prompts clearly different
        stage1.context.ctx.copy_(torch.randn_like(stage1.context.ctx))
    stage2 = cls(ad, NAMES4, n_ctx=2, ctx_init=None, class_specific=True, **kw)
    c2g = [0, 0, 1, 1]
    inherit_from_groups(stage2, stage1, c2g)
    for c, g in enumerate(c2g):
        assert torch.equal(stage2.context.ctx[c], stage1.context.ctx[g])
    s1, s2 = stage1.trainable_state(), stage2.trainable_state()
    for name in s1:
        if name != "context.ctx":
            assert torch.equal(s1[name], s2[name]), name


def test_stage_two_refuses_mismatched_shapes(adapters):
    ad = adapters["native"]
    with pytest.raises(ValueError, match="context.ctx"):
        inherit_from_groups(CoOp(ad, NAMES4, n_ctx=3), CoOp(ad, ["g1", "g2"], n_ctx=2), [0, 0, 1, 1])


def test_relabel_to_groups_and_caps():
    split = _split()
    g = relabel_to_groups(split)
    assert g.labels.classnames == ("g1", "g2")
    assert [s.label for s in g.samples] == [[0, 0, 1, 1][s.label] for s in split.samples]
    capped = subsample_per_class(split, 2)
    assert np.bincount(capped.targets).tolist() == [2, 2, 2, 2]
    assert subsample_per_class(split, None) is split


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


def test_running_again_in_the_same_run_folder_restores_finished_runs_and_writes_no_row_twice(
        tiny_dataset, adapters, tmp_path, one_thread, monkeypatch):
    """What `workbook --resume` relies on: a notebook re-executed in its run folder restores
    every finished run (same trained state, same metrics, no training) and appends nothing."""
    import medkit.experiment as experiment_module
    from medkit.train import ResumeError

    run = start_run("03_test", "smoke", {}, tmp_path / "out")
    first = experiment(run, tiny_dataset, adapters, tmp_path).few_shot([COOP], shots=[1], seeds=[1])
    rows_before = read_results(tmp_path / "out", current=run)
    assert not list((run.path / "train_state").glob("*/*")), "a kept run leaves no resume point behind"

    monkeypatch.setattr(experiment_module, "fit", lambda *a, **k: pytest.fail("trained a finished run again"))
    again = experiment(run, tiny_dataset, adapters, tmp_path).few_shot([COOP], shots=[1], seeds=[1])
    assert again[0].row["acc"] == first[0].row["acc"]
    torch.testing.assert_close(again[0].method.trainable_state(), first[0].method.trainable_state(), rtol=0, atol=0)
    pd.testing.assert_frame_equal(again[0].history.drop(columns="seconds"), first[0].history.drop(columns="seconds"),
                                  check_dtype=False)
    assert len(read_results(tmp_path / "out", current=run)) == len(rows_before)

    # the finished checkpoint of another configuration under this run's name is refused, not reused
    ckpt = next(run.checkpoints_dir.rglob("*.pt"))
    saved = torch.load(ckpt, weights_only=False)
    saved["fingerprint"]["seed"] = 99
    torch.save(saved, ckpt)
    with pytest.raises(ResumeError, match=r"differs in \['seed'\]"):
        experiment(run, tiny_dataset, adapters, tmp_path).few_shot([COOP], shots=[1], seeds=[1])


def test_a_run_trained_by_one_notebook_is_restored_by_another_through_the_shared_store(
        tiny_dataset, adapters, tmp_path, one_thread, monkeypatch):
    """Two run folders (07 and 08 training the same K=16 prompt learners) train a setting once
    when they share a store; anything the run depends on — its config, a resource it is built
    with, a start other than the built method — makes it another entry, trained again."""
    import medkit.experiment as experiment_module
    from medkit.ledger import SharedRuns

    shared = SharedRuns(tmp_path / "trained")
    biomed = Setting("biomedcoop", "BiomedCoOp", {"ensembles": Ref("descriptions")}, {"batch_size": 4})

    def exp(name, descriptions=None):
        ex = experiment(start_run(name, "smoke", {}, tmp_path / "out"), tiny_dataset, adapters, tmp_path)
        ex.shared = shared
        if descriptions is not None:
            ex.resources["descriptions"] = descriptions
        return ex

    first = exp("07_test").few_shot([COOP, biomed], shots=[1], seeds=[1])
    assert len(list(shared.root.glob("*.pt"))) == 2
    real_fit = experiment_module.fit
    trained = []
    monkeypatch.setattr(experiment_module, "fit", lambda m, *a, **k: trained.append(type(m).__name__) or real_fit(m, *a, **k))
    again = exp("08_test").few_shot([COOP, biomed], shots=[1], seeds=[1])
    assert trained == [], "a run the store holds was trained again"
    for a, b in zip(first, again):
        assert a.row["acc"] == b.row["acc"] and a.row["f1_macro"] == b.row["f1_macro"]
        torch.testing.assert_close(a.method.trainable_state(), b.method.trainable_state(), rtol=0, atol=0)
        pd.testing.assert_frame_equal(a.history.attrs["steps"], b.history.attrs["steps"], check_dtype=False)

    lr = Setting(COOP.method, COOP.variant, COOP.options, {**COOP.train, "lr": 0.5})
    other = {k: [f"a sketch of {k}"] for k in tiny_dataset.labels.classnames}
    exp("08_lr").few_shot([lr], shots=[1], seeds=[1])
    exp("08_descriptions", descriptions=other).few_shot([biomed], shots=[1], seeds=[1])
    ex = exp("08_init")
    ex.run_one(COOP, 1, ex.few_shot_selection(1, 1), init=lambda m: None)
    assert trained == ["CoOp", "BiomedCoOp", "CoOp"]
    assert len(list(shared.root.glob("*.pt"))) == 4  # the lr and descriptions runs: new entries; an init: none


def test_a_derived_split_is_saved_in_the_run_folder_and_reads_back(tmp_path, adapters, one_thread):
    from medkit.data import load_dataset
    from userdata import imagefolder

    ds = load_dataset(imagefolder(tmp_path / "mine"), data_root=tmp_path / "data", progress=False)
    run = start_run("02_test", "smoke", {}, tmp_path / "out")
    Experiment(run, ds, adapters["native"], "smoke", FeatureCache(tmp_path / "cache"), log=lambda s: None)
    saved = run.path / "splits" / f"split_{ds.id}.json"
    assert json.loads(saved.with_suffix(".recipe.json").read_text())["dataset"] == ds.id
    back = load_dataset(saved, data_root=tmp_path / "data", progress=False)
    assert back.split_json() == ds.split_json()
