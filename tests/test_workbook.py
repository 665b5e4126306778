"""The workbook runner: a smoke run of every notebook, and failures named precisely."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from medkit.runs import RESULT_COLUMNS
from medkit.workbook import WorkbookError, list_notebooks, run_workbook

REPO = Path(__file__).resolve().parents[1]


def test_notebooks_are_committed_clean_with_a_parameters_cell():
    for book in list_notebooks(REPO / "notebooks"):
        nb = nbformat.read(book, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{book.name} has outputs"
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, f"{book.name}: exactly one parameters cell"
        for name in ("profile", "interactive", "run_dir", "outputs_root", "data_root"):
            assert f"{name} =" in params[0].source, f"{book.name}: parameter {name} missing"


def test_smoke_workbook_end_to_end(tmp_path):
    """Every notebook runs headless on the smoke profile in a fresh data and outputs root."""
    outputs, data = tmp_path / "outputs", tmp_path / "data"
    results = run_workbook("smoke", notebooks_dir=REPO / "notebooks", outputs_root=outputs, data_root=data)
    names = [r.notebook.name for r in results]
    assert names == sorted(names) and "00_synthetic_world.ipynb" in names and "02_zero_shot.ipynb" in names
    for r in results:
        assert r.executed.is_file() and r.executed.parent.parent == outputs / "runs"
        assert (outputs / "executed" / r.notebook.name).is_file()
        cfg = json.loads((r.executed.parent / "config.json").read_text())
        assert cfg["profile"]["name"] == "smoke" and "git_commit" in cfg["_meta"] and cfg["_meta"]["packages"]["torch"]
        assert list((r.executed.parent / "figures").glob("*.png")), f"{r.notebook.name} saved no figure"
    df = pd.read_csv(outputs / "results.csv")
    assert list(df.columns) == RESULT_COLUMNS
    assert df["setting_id"].notna().all() and df["protocol"].notna().all() and df["options"].notna().all()
    zs = df[df.method == "zeroshot"]
    assert set(zs.dataset) == {"synth_implants45", "synth_ortho12"}
    assert {("xray", "train"), ("xray", "test"), ("natural", "test")} <= set(zip(zs.domain, zs.split))
    # what the notebooks' tables show: 03's study table has its zero-shot baseline row
    table = json.loads((_run_of(results, "03_coop") / "metrics.json").read_text())["table"]
    assert {"zeroshot", "coop"} <= {r["method"] for r in table}
    # the few-shot grid is the registry's: every method with a grid entry has rows in 07
    from medkit.methods import REGISTRY

    grid = {name for name, spec in REGISTRY.items() if spec.grid}
    assert grid <= set(df[(df.notebook == "07_knowledge_fewshot") & (df.protocol == "few_shot")].method)
    assert {"base", "novel"} <= set(df[df.protocol == "base_to_novel"].classes)
    assert {"groups", "all"} <= set(df[df.protocol == "hierarchical"].classes)
    assert {"descriptions", "name_study_template", "name_template_ensemble"} <= set(zs.variant)
    assert zs[zs.dataset == "synth_implants45"].group_acc.notna().all()
    assert zs[zs.dataset == "synth_ortho12"].group_acc.isna().all()
    assert zs.acc.between(0, 1).all()


def _run_of(results, notebook: str) -> Path:
    return next(r.executed.parent for r in results if r.notebook.stem == notebook)


def test_failure_names_notebook_and_cell(tmp_path):
    books = tmp_path / "nbs"
    books.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "tiny"\ninteractive = True')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('broken on purpose')")]
    nbformat.write(nb, books / "07_broken.ipynb")
    nbformat.write(nbformat.v4.new_notebook(), books / "08_never_reached.ipynb")
    with pytest.raises(WorkbookError, match=r"07_broken\.ipynb failed in cell \d+.*ValueError: broken on purpose"):
        run_workbook("smoke", notebooks_dir=books, outputs_root=tmp_path / "out", data_root=tmp_path / "data")
    assert not (tmp_path / "out" / "executed" / "08_never_reached.ipynb").exists()
    with pytest.raises(WorkbookError, match="no notebooks"):
        list_notebooks(books, only=["99"])
