"""What notebooks rely on: project-anchored paths, re-opening the runner's run folder, profiles."""
from __future__ import annotations

import json

import pytest

from medkit.paths import PROJECT_ROOT, project_path
from medkit.profiles import PROFILES, get_profile
from medkit.runs import notebook_run, open_run, start_run


def test_relative_paths_anchor_at_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as JupyterLab started in another folder
    assert project_path("outputs") == PROJECT_ROOT / "outputs"
    assert project_path(tmp_path / "x") == tmp_path / "x"


def test_notebook_reopens_the_runner_folder_and_merges_its_config(tmp_path):
    made = start_run("02_zero_shot", "tiny", {"profile": {"name": "tiny"}}, root=tmp_path)
    run = notebook_run("02_zero_shot", "tiny", {"datasets": ["synth_ortho12"]}, run_dir=str(made.path), root=tmp_path)
    assert run.path == made.path and run.notebook == "02_zero_shot"
    cfg = json.loads((made.path / "config.json").read_text())
    assert cfg["datasets"] == ["synth_ortho12"] and cfg["profile"]["name"] == "tiny" and "_meta" in cfg
    row = run.add_result(dataset="synth_ortho12", method="zeroshot", acc=0.5)
    assert row["run_id"] == made.id and (tmp_path / "results.csv").is_file()
    fresh = notebook_run("02_zero_shot", "tiny", {}, run_dir="", root=tmp_path)
    assert fresh.path != made.path
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        open_run(tmp_path / "nowhere")


def test_profiles():
    assert set(PROFILES) == {"smoke", "tiny", "full", "paper"}
    full = get_profile("full")
    assert full.few_shot_steps is None and full.world == get_profile("tiny").world  # the references' epochs, same world
    assert get_profile("tiny", backbone="").backbone == "miniclip"  # '' means the default
    assert get_profile("tiny", backbone="ViT-B-16/openai").backbone == "ViT-B-16/openai"
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        get_profile("huge")
