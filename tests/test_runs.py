"""Run folders, config.json metadata and the shared results table."""
from __future__ import annotations

import json
import multiprocessing as mp
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import medkit.runs as runs  # noqa: E402
from medkit.runs import append_result, read_results, result_columns, start_run  # noqa: E402


class _FrozenClock(datetime):
    """datetime whose now() never moves, to force two runs into the same second."""

    @classmethod
    def now(cls, tz=None):
        return cls(2024, 5, 17, 12, 30, 45)


def test_same_tag_same_second_gets_distinct_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "datetime", _FrozenClock)
    a = start_run("nb01", "zero shot/clip", {}, root=tmp_path)
    b = start_run("nb01", "zero shot/clip", {}, root=tmp_path)
    c = start_run("nb01", "zero shot/clip", {}, root=tmp_path)
    assert a.id == "20240517-123045_nb01_zero_shot_clip"
    assert b.id == a.id + "-2" and c.id == a.id + "-3"
    for run in (a, b, c):
        assert (run.path / "figures").is_dir() and (run.path / "checkpoints").is_dir()
        assert run.path.parent == tmp_path / "runs"


def test_config_json_is_safe_and_has_meta(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a git repository
    config = {"data": Path("/data/implants"), "lr": np.float32(0.5), "epochs": np.int64(3),
              "sizes": (224, 224), "obj": object(), "nan": float("nan")}
    run = start_run("nb02", "coop", config, root=tmp_path / "out")
    saved = json.loads((run.path / "config.json").read_text())
    assert saved["data"] == "/data/implants"
    assert saved["lr"] == 0.5 and saved["epochs"] == 3 and saved["sizes"] == [224, 224]
    assert saved["obj"].startswith("<object") and saved["nan"] is None
    meta = saved["_meta"]
    assert meta["run_id"] == run.id and meta["notebook"] == "nb02"
    assert set(meta["packages"]) == set(runs.TRACKED_PACKAGES)
    assert meta["packages"]["numpy"] == np.__version__
    assert meta["git_commit"] is None and meta["git_dirty"] is None
    assert {"created", "python", "platform"} <= set(meta)


def test_metrics_history_figure_checkpoint(tmp_path):
    run = start_run("nb03", "probe", {}, root=tmp_path)
    run.save_metrics({"acc": 0.5, "auc": np.float64(0.7)})
    merged = run.save_metrics({"acc": 0.6, "kappa": 0.1})
    assert merged == {"acc": 0.6, "auc": 0.7, "kappa": 0.1}
    assert json.loads((run.path / "metrics.json").read_text()) == merged

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = run.save_figure(fig, "loss curve")
    assert path == run.path / "figures" / "loss_curve.png" and path.stat().st_size > 0
    assert plt.fignum_exists(fig.number)  # still open for the notebook to display
    plt.close(fig)
    assert run.checkpoint_path("best.pt") == run.path / "checkpoints" / "best.pt"


def test_results_accumulate_with_exact_columns(tmp_path):
    a = start_run("nb01", "zs", {}, root=tmp_path)
    b = start_run("nb04", "lp", {}, root=tmp_path)
    row = a.add_result(dataset="implants", split="test", method="zero-shot", seed=0, acc=np.float32(0.5))
    assert row["run_id"] == a.id and row["notebook"] == "nb01" and row["variant"] is None
    b.add_result(dataset="implants", split="test", method="linear probe", shots=16, seed=1, acc=0.75)
    text = (tmp_path / "results.csv").read_text().splitlines()
    assert text[0] == ",".join(result_columns()) and len(text) == 3
    a.complete()
    b.complete()
    df = read_results(tmp_path)
    assert list(df.columns) == result_columns() and len(df) == 2
    assert df["run_id"].tolist() == [a.id, b.id]
    assert df["acc"].tolist() == [0.5, 0.75]
    assert pd.isna(df.loc[0, "variant"]) and pd.isna(df.loc[0, "shots"])


def test_unknown_result_field_raises(tmp_path):
    run = start_run("nb01", "zs", {}, root=tmp_path)
    with pytest.raises(ValueError, match="accuracy"):
        run.add_result(dataset="x", accuracy=0.5)
    assert not (tmp_path / "results.csv").exists()


def test_read_results_missing_is_empty(tmp_path):
    df = read_results(tmp_path / "nothing")
    assert df.empty and list(df.columns) == result_columns()


def _append_many(root: str, worker: int) -> None:
    for i in range(25):
        append_result(root, {"run_id": f"w{worker}", "method": "m, with comma", "seed": i, "acc": 0.1})


def test_concurrent_appends_keep_one_header(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=20)
        assert p.exitcode == 0
    df = read_results(tmp_path)
    assert len(df) == 50 and (df["method"] == "m, with comma").all()
    assert (tmp_path / "results.csv").read_text().count("run_id") == 1


def test_tables_leave_out_rows_of_incomplete_runs_and_say_so(tmp_path, capsys):
    done, cut, failed = (start_run(n, "t", {}, root=tmp_path) for n in ("nb02", "nb03", "nb04"))
    for run, acc in ((done, 0.5), (cut, 0.6), (failed, 0.7)):
        run.add_result(dataset="d", method="m", acc=acc)
    done.complete()
    failed.mark("failed", "ValueError: broken")
    assert done.status == "complete" and cut.status == "running" and failed.status == "failed"
    assert read_results(tmp_path)["acc"].tolist() == [0.5]
    said = capsys.readouterr().out
    assert f"ignoring 2 rows of 2 incomplete run(s): {cut.id} (running), {failed.id} (failed)" in said
    assert read_results(tmp_path, current=cut)["acc"].tolist() == [0.5, 0.6]  # a notebook reads its own rows
    assert len(read_results(tmp_path, complete_only=False)) == 3
    with pytest.raises(ValueError, match="state='done'"):
        done.mark("done")
