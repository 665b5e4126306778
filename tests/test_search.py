"""medkit.search: the space (registry defaults, file overrides), validation-only objective,
the study resumed from its storage, exact trial counts and dead workers' trials retried."""
from __future__ import annotations

import json
import os
import socket

import optuna
import pandas as pd
import pytest
from optuna.trial import FixedTrial, TrialState

from medkit.experiment import Experiment
from medkit.methods import Choice, FloatRange, IntRange, get_spec
from medkit.search import (SearchError, configuration, load_space, make_storage, open_study, search, suggest,
                           trial_states, work)


class _Towers:
    text_depth, vision_depth = 4, 3


def test_every_trained_prompt_learner_declares_a_space_with_the_optimiser_in_it():
    for name in ("coop", "kgcoop", "cocoop", "biomedcoop", "prograd", "maple", "vpt_deep", "ivlp", "cilmp",
                 "clip_adapter", "tip_adapter_f"):
        space = get_spec(name).search_space
        assert isinstance(space["lr"], FloatRange) and space["lr"].log, name
    assert get_spec("biomedcoop").search_space["lambda_sccm"].high >= 20  # λ spans 0.25–20 between datasets


def test_a_space_file_overrides_drops_and_refuses_with_the_file_named(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text("lr: {low: 0.001, high: 0.05, log: true}\nweight_decay: null\nn_ctx: {choices: [4, 8]}\n")
    space = load_space("coop", f)
    assert space["lr"] == FloatRange(0.001, 0.05, True) and "weight_decay" not in space
    assert space["n_ctx"] == Choice((4, 8)) and "context" in space  # the rest stays the registry's
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"not_an_option": {"low": 0, "high": 1}}))
    with pytest.raises(SearchError, match=r"bad\.json: 'not_an_option' is neither a training field nor an option"):
        load_space("coop", bad)
    bad.write_text(json.dumps({"lr": {"low": 0.1, "high": 0.01}}))
    with pytest.raises(SearchError, match="low must be a number below high"):
        load_space("coop", bad)


def test_a_trial_unfolds_option_bundles_and_clips_depth_to_the_backbone():
    space = {**get_spec("coop").search_space, "depth": IntRange(1, "layers")}
    trial = FixedTrial({"lr": 0.01, "weight_decay": 1e-4, "context": "random 8", "depth": 3})
    options, train = suggest(trial, space, _Towers())
    assert options == {"n_ctx": 8, "ctx_init": None, "depth": 3} and train == {"lr": 0.01, "weight_decay": 1e-4}
    with pytest.warns(UserWarning, match=r"out of the range.*high=3"):  # the shallower tower has 3 layers
        suggest(FixedTrial({"lr": 0.01, "weight_decay": 1e-4, "context": "text init", "depth": 4}), space, _Towers())
    assert configuration({"context": "text init", "lr": 0.02}, space) == ({"n_ctx": None, "ctx_init": "a photo of a"},
                                                                         {"lr": 0.02})


def test_work_runs_exactly_the_trials_asked_and_retries_a_dead_workers_trial(tmp_path):
    storage = make_storage(f"journal:{tmp_path / 'study.log'}", tmp_path / "unused.db")
    study = open_study("s", storage, {"method": "toy"}, seed=0, startup=2)
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    dead.set_user_attr("worker", f"{socket.gethostname()}:{2 ** 22 + 12345}")  # a pid no process has
    calls = []

    def objective(trial):
        calls.append(trial.number)
        return trial.suggest_float("x", 0, 1)

    ran = work(study, storage, objective, n_trials=5, log=lambda _: None)
    trials = study.get_trials()
    assert sorted(ran) == sorted(calls) and len(calls) == 5 and len(set(calls)) == 5
    assert trials[dead.number].state == TrialState.FAIL and "died" in trials[dead.number].user_attrs["failed_because"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == trials[dead.number].params
    assert trial_states(study) == {"COMPLETE": 5, "FAIL": 1}
    assert work(study, storage, objective, n_trials=5) == [] and len(calls) == 5  # done: nothing more runs
    work(study, storage, objective, n_trials=6, log=lambda _: None)
    assert trial_states(study)["COMPLETE"] == 6


def test_a_search_tunes_on_validation_only_then_resumes_its_study(tmp_path, smoke_data, monkeypatch):
    seen: list[str] = []
    evaluate = Experiment.evaluate

    def spy(self, method, setting, sel, part, ci_resamples=0):
        if self.run is None:  # the study's own experiment (the retraining one has a run folder)
            seen.append(part.name)
        return evaluate(self, method, setting, sel, part, ci_resamples)

    monkeypatch.setattr(Experiment, "evaluate", spy)
    outputs = tmp_path / "outputs"
    kw = dict(profile="smoke", shots=2, seeds=[1], outputs_root=outputs, data_root=smoke_data, progress=False,
              log=lambda _: None)
    first = search("coop", "synth_ortho12", trials=3, **kw)
    assert seen and set(seen) == {"val"}  # the objective never scores test images
    assert first.summary["trials"] == {"COMPLETE": 3}
    db = outputs / "search" / f"{first.study.study_name}.db"
    assert db.is_file()
    rows = pd.read_csv(outputs / "results.csv")
    test = rows[rows["split"] == "test"]
    assert set(test["variant"]) == {"CoOp · default", f"CoOp · tuned ({first.study.study_name})"}
    assert len(test) == 2
    for key in ("history", "importances", "parallel", "best_vs_default"):
        assert (first.run.path / "figures" / f"search_{key}.png").is_file(), key
    summary = json.loads((first.folder / "summary.json").read_text())
    assert len(summary["best"]["val"]) == len(summary["default"]["test"]) == 1

    again = search("coop", "synth_ortho12", trials=3, **kw)  # the same command: the same study, nothing new
    assert len(again.study.trials) == 3 and again.run.path == first.run.path
    assert len(pd.read_csv(outputs / "results.csv")) == len(rows)  # restored runs write no row twice
    assert again.summary["best"]["test"] == first.summary["best"]["test"]
    more = search("coop", "synth_ortho12", trials=4, **kw)  # asking for more continues the study
    assert more.summary["trials"]["COMPLETE"] + more.summary["trials"].get("PRUNED", 0) == 4
    with pytest.raises(SearchError, match=r"made for another search \(differs in \['shots'\]"):
        search("coop", "synth_ortho12", trials=4, study=first.study.study_name, **{**kw, "shots": 1})


def test_a_trial_scores_the_mean_validation_accuracy_of_its_draws_and_reports_them_apart(
        tiny_dataset, adapters, tmp_path, monkeypatch):
    """One K-shot draw's validation set is a few images per class: a trial trains and
    validates on `draws` draws (seeds seed, seed+1, …) and scores their mean; the pruner sees
    draw i's epochs at steps i·100000 + epoch, so trials are compared draw by draw."""
    import medkit.search as search_module
    from medkit.experiment import Setting
    from medkit.features import FeatureCache
    from medkit.search import Objective

    exp = Experiment(None, tiny_dataset, adapters["native"], "smoke", FeatureCache(tmp_path / "c"), views=0,
                     log=lambda _: None)
    base = Setting("coop", "CoOp", {"n_ctx": None, "ctx_init": "a photo of a"})
    objective = Objective(exp, base, {"lr": FloatRange(1e-3, 1e-1, log=True)}, 1, 5, draws=2)
    trained, scores = [], []
    train, score = Experiment.train, search_module.validation_score
    monkeypatch.setattr(Experiment, "train", lambda self, m, st, seed, sel, **k: trained.append((seed, sel))
                        or train(self, m, st, seed, sel, **k))
    monkeypatch.setattr(search_module, "validation_score", lambda *a: scores.append(score(*a)) or scores[-1])

    class Recorded(FixedTrial):
        steps: list[int] = []

        def report(self, value, step):
            self.steps.append(step)

    value = objective(Recorded({"lr": 0.01}))
    assert [seed for seed, _ in trained] == [5, 6]
    assert [s.path for s in trained[0][1].train.split.samples] != [s.path for s in trained[1][1].train.split.samples]
    assert value == pytest.approx(sum(scores) / 2) and len(scores) == 2
    assert Recorded.steps and {st // 100_000 for st in Recorded.steps} == {0, 1}
    with pytest.raises(SearchError, match="at least one K-shot draw"):
        Objective(exp, base, {}, 1, 5, draws=0)


def test_a_method_without_a_space_is_refused_with_the_way_out(tmp_path, smoke_data):
    with pytest.raises(SearchError, match="linear_probe has no hyperparameters to search.*closed form.*--space"):
        search("linear_probe", "synth_ortho12", profile="smoke", outputs_root=tmp_path, data_root=smoke_data,
               progress=False)


def test_the_cli_starts_workers_without_their_own_workers_flag():
    from medkit.__main__ import _worker_argv

    argv = ["search", "--method", "coop", "--workers", "2", "--trials", "4", "--workers=3"]
    assert _worker_argv(argv) == ["--method", "coop", "--trials", "4"]
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_cpu_workers_split_the_cores_between_them_and_keep_a_thread_count_the_user_set(tmp_path, monkeypatch):
    """Each worker using every core oversubscribes them (a 12 s trial took 130-200 s with two
    workers on 2 cores): without GPUs each of N workers gets cores // N threads."""
    import medkit.studies as studies

    envs = []
    monkeypatch.setattr(studies, "visible_gpus", lambda: [])
    monkeypatch.setattr(studies.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(studies.subprocess, "Popen", lambda argv, env, **k: envs.append(env))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    studies.start_workers(["--method", "coop"], 3, tmp_path)
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["2", "2", "2"]
    envs.clear()
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    studies.start_workers(["--method", "coop"], 2, tmp_path)
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["5", "5"]


def test_the_budget_table_tells_a_plateau_from_a_curve_still_falling_and_findings_name_both_splits():
    from medkit.search import best_vs_default, budget_table, search_findings

    table = budget_table({10: ([4.0, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5], 0.1, 1.0),
                          40: ([4.0, 3.0, 2.0, 1.0], 0.4, 2.0)}, profile_steps=10).set_index("steps")
    assert table.loc[10, "last-quarter drop %"] == 0.0 and table.loc[10, "the profile's budget"]
    assert table.loc[40, "last-quarter drop %"] == 50.0 and table.loc[40, "val acc"] == 0.4
    summary = {"study": "s", "seeds": [1, 2], "default": {"variant": "d", "val": [0.1, 0.2], "test": [0.3, 0.3]},
               "best": {"variant": "b", "val": [0.3, 0.4], "test": [0.2, 0.2]}}
    lines = search_findings(summary, "tiny")
    assert "beats the default on val" in lines[0] and "does not beat the default on test" in lines[1]
    assert "(tiny)" in lines[0]
    assert best_vs_default(summary)["val acc"].tolist() == ["0.150 ± 0.071", "0.350 ± 0.071"]


def test_a_segmentation_strategy_is_searched_on_validation_dice_and_resumes(tmp_path, smoke_data, monkeypatch):
    import medkit.seg.train as seg_train
    from medkit.seg_search import fit_space
    from medkit.seg.strategies import SEG_STRATEGIES

    space = SEG_STRATEGIES["seg_shared_attn"].search_space
    assert space["lr"].log and space["weight_decay"] == FloatRange(1e-5, 1e-2, True) and space["depth"].high == "layers"
    clipseg_widths = type("T", (), {"text_width": 512, "vision_width": 768})()
    assert fit_space(space, clipseg_widths)["heads"] == Choice((16, 20, 32))  # the poster's heads all divide 1280
    assert fit_space(space, type("T", (), {"text_width": 32, "vision_width": 48})())["heads"] == Choice((16, 20))
    assert "heads" not in fit_space(space, type("T", (), {"text_width": 30, "vision_width": 41})())
    assert not SEG_STRATEGIES["seg_zeroshot"].search_space

    seen: list[str] = []
    predict = seg_train.predict_masks

    def spy(strategy, data, *args, **kwargs):
        seen.append(data.name)
        return predict(strategy, data, *args, **kwargs)

    monkeypatch.setattr(seg_train, "predict_masks", spy)  # what fit_seg (the study's trials) evaluates
    outputs = tmp_path / "outputs"
    kw = dict(profile="smoke", seeds=[1], outputs_root=outputs, data_root=smoke_data, progress=False, log=lambda _: None)
    first = search("seg_vpt_deep", "synth_skin", trials=3, **kw)
    assert seen and set(seen) == {"synth_skin:val"}  # a trial scores validation masks only
    assert first.summary["trials"] == {"COMPLETE": 3} and first.summary["metric"] == "dice"
    assert first.study.user_attrs["method"] == "seg_vpt_deep" and first.study.user_attrs["shots"] is None
    from medkit.search import prompt_layers
    from medkit.seg.load import load_seg_model

    layers = prompt_layers(load_seg_model("", data_root=smoke_data, progress=False, default="miniclip-smoke").adapter)
    assert all(1 <= t.params["depth"] <= layers for t in first.study.trials)  # "layers": the backbone's depth
    rows = pd.read_csv(outputs / "results.csv")
    test = rows[rows["split"] == "test"]
    assert set(test["variant"]) == {"seg_vpt_deep · default", f"seg_vpt_deep · tuned ({first.study.study_name})"}
    assert set(test["task"]) == {"segmentation"} and test["dice"].between(0, 1).all()
    assert (first.run.path / "figures" / "search_best_vs_default.png").is_file()
    from medkit.search import best_vs_default

    assert {"val dice", "test dice"} <= set(best_vs_default(first.summary).columns)
    again = search("seg_vpt_deep", "synth_skin", trials=3, **kw)
    assert len(again.study.trials) == 3 and len(pd.read_csv(outputs / "results.csv")) == len(rows)
    with pytest.raises(SearchError, match="seg_zeroshot has no hyperparameters to search.*trains nothing"):
        search("seg_zeroshot", "synth_skin", trials=1, **kw)
