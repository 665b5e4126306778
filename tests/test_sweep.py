"""`python -m medkit sweep`: a grid on a pool of workers, resumable from results.csv, rows from
concurrent workers appended whole; notebook parameter sets through papermill."""
from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest

from medkit import sweep as sweep_module
from medkit.profiles import get_profile
from medkit.sweep import SweepError, grid_cells, load_parameter_sets, parse_overrides, sweep, sweep_notebook


def test_the_grid_is_the_registrys_entries_narrowed_by_each_methods_budget():
    tiny = get_profile("tiny")
    cells = grid_cells(["coop", "cilmp"], ["a", "b"], [1, 2, 16], [1, 2], tiny)
    assert len([c for c in cells if c.method == "coop"]) == 2 * 3 * 2
    assert {c.shots for c in cells if c.method == "cilmp"} == {1, 16}  # its tiny budget runs K in (1, 4, 16)
    with pytest.raises(SweepError, match=r"unknown method\(s\) \['nope'\]"):
        grid_cells(["nope"], ["a"], [1], [1])
    assert parse_overrides(["batch_size=64", "lr=0.002", "max_steps_per_epoch=none", "augment=false",
                            "optimizer=sgd"]) == {"batch_size": 64, "lr": 0.002, "max_steps_per_epoch": None,
                                                  "augment": False, "optimizer": "sgd"}
    with pytest.raises(SweepError, match="KEY=VALUE"):
        parse_overrides(["batch_size"])


def test_a_sweep_on_two_workers_writes_every_cell_once_and_resumes(tmp_path, smoke_data):
    outputs = tmp_path / "outputs"
    kw = dict(profile="smoke", outputs_root=outputs, data_root=smoke_data, progress=False, log=lambda _: None)
    first = sweep(["coop", "linear_probe"], ["synth_ortho12"], [1, 2], [1], workers=2, **kw)
    assert (first["cells"], first["skipped"], first["ran"], first["failed"]) == (4, 0, 4, [])
    rows = pd.read_csv(outputs / "results.csv")  # two writers: every line whole, the header once
    test = rows[rows["split"] == "test"]
    assert len(test) == 4 and set(zip(test["method"], test["shots"])) == {("coop", 1), ("coop", 2),
                                                                           ("linear_probe", 1), ("linear_probe", 2)}
    assert json.loads((first["run"] / "status.json").read_text())["state"] == "complete"
    again = sweep(["coop", "linear_probe"], ["synth_ortho12"], [1, 2], [1], workers=2, **kw)
    assert (again["skipped"], again["ran"]) == (4, 0) and again["run"] == first["run"]
    assert len(pd.read_csv(outputs / "results.csv")) == len(rows)


def test_a_failing_cell_is_reported_and_the_others_run(tmp_path, smoke_data, monkeypatch):
    real = sweep_module.run_cell

    def flaky(cell, *args):
        if cell.shots == 2:
            raise RuntimeError("out of memory (pretend)")
        return real(cell, *args)

    monkeypatch.setattr(sweep_module, "run_cell", flaky)
    out = sweep(["linear_probe"], ["synth_ortho12"], [1, 2], [1], profile="smoke", outputs_root=tmp_path,
                data_root=smoke_data, progress=False, log=lambda _: None)
    assert out["ran"] == 1 and len(out["failed"]) == 1 and "out of memory" in out["failed"][0][1]
    assert json.loads((out["run"] / "status.json").read_text())["state"] == "failed"


def test_notebook_parameter_sets_run_through_papermill_once_each(tmp_path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 0\ninteractive = True")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("open(f'out_{x}.txt', 'w').write(str(x * 10))")]
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nbformat.write(nb, folder / "42_toy.ipynb")
    sets_file = tmp_path / "sets.yaml"
    sets_file.write_text("- {x: 1}\n- {x: 2}\n")
    sets = load_parameter_sets(sets_file)
    out = sweep_notebook("42", sets, workers=2, notebooks=folder, outputs_root=tmp_path / "outputs", progress=False)
    assert (out["ran"], out["failed"]) == (2, [])
    assert (folder / "out_1.txt").read_text() == "10" and (folder / "out_2.txt").read_text() == "20"
    assert len(list(out["folder"].glob("42_toy_*.ipynb"))) == 2
    again = sweep_notebook("42", sets, workers=2, notebooks=folder, outputs_root=tmp_path / "outputs", progress=False)
    assert (again["skipped"], again["ran"]) == (2, 0)
    (tmp_path / "bad.yaml").write_text("x: 1\n")
    with pytest.raises(SweepError, match="a list of parameter mappings"):
        load_parameter_sets(tmp_path / "bad.yaml")
