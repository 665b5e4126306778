"""The workbook runner: a smoke run of every notebook, and failures named precisely."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from medkit.runs import result_columns
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
        if book.name >= "02":  # every notebook from 02 on ends with its explorer, shown only when interactive
            assert "ui.show_if(interactive," in code[-1].source, f"{book.name}: no explorer in its last cell"


def explorers_in_last_cell(executed: Path) -> int:
    last = [c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"][-1]
    return sum("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in last.outputs)


def test_smoke_workbook_end_to_end(tmp_path, smoke_data):
    """Every notebook runs headless on the smoke profile in a fresh outputs root (the data root is the
    session's: whichever test runs first builds the smoke backbones and worlds there)."""
    outputs, data = tmp_path / "outputs", smoke_data
    results = run_workbook("smoke", notebooks_dir=REPO / "notebooks", outputs_root=outputs, data_root=data)
    names = [r.notebook.name for r in results]
    assert names == sorted(names) and "00_synthetic_world.ipynb" in names and "02_zero_shot.ipynb" in names
    for r in results:
        assert r.executed.is_file() and r.executed.parent.parent == outputs / "runs"
        assert (outputs / "executed" / r.notebook.name).is_file()
        cfg = json.loads((r.executed.parent / "config.json").read_text())
        assert cfg["profile"]["name"] == "smoke" and "git_commit" in cfg["_meta"] and cfg["_meta"]["packages"]["torch"]
        if r.notebook.name != "90_report.ipynb":  # the report shows the other notebooks' figures
            assert list((r.executed.parent / "figures").glob("*.png")), f"{r.notebook.name} saved no figure"
    for r in results:  # headless: the explorers stay hidden and progress is plain lines
        nb = nbformat.read(r.executed, as_version=4)
        widgets = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert not widgets, f"{r.notebook.name}: {len(widgets)} widget outputs in a headless run"
    # the last notebook is the report: one offline HTML page with the seeds' tables, medkit beside the paper
    assert names[-1] == "90_report.ipynb"
    page = (outputs / "report.html").read_text()
    from medkit.reporting.report import remote_assets

    assert remote_assets(page) == [] and "data:image/png;base64," in page and "report.seed_tables(" not in page  # no code
    for heading in ("The seeds' tables", "Findings of the notebooks", "Figure gallery", "Environment"):
        assert heading in page, heading
    seeds = json.loads((_run_of(results, "90_report") / "metrics.json").read_text())["seeds"]
    assert seeds["implant"]["matched"] > 0 and seeds["pspg"]["matched"] > 0 and seeds["vlsm"]["matched"] > 0, seeds
    df = pd.read_csv(outputs / "results.csv")
    assert list(df.columns) == result_columns()
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
    # 09: multi-label rows of every multi-label method on every evaluation dataset, seen / unseen / all
    ml = df[df.task == "multi_label"]
    assert set(ml.dataset) == {"synth_cxr", "synth_cxr14", "synth_vindr"}
    for method in ("zeroshot_ml", "dualcoop", "pspg", "clip_finetune_contrastive"):
        for ds in ("synth_cxr14", "synth_vindr"):
            assert {"all", "seen", "unseen"} <= set(ml[(ml.method == method) & (ml.dataset == ds)].classes), (method, ds)
    assert set(ml[ml.method == "linear_probe_ml"].classes) == {"all", "seen"}  # tied to its training findings
    assert ml.macro_auc.between(0, 1).all() and ml.acc.isna().all() and zs.macro_auc.isna().all()


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
        run_workbook("smoke", notebooks_dir=books, outputs_root=tmp_path / "out", data_root=tmp_path / "data",
                     prebuild=False)
    assert not (tmp_path / "out" / "executed" / "08_never_reached.ipynb").exists()
    with pytest.raises(WorkbookError, match="no notebooks"):
        list_notebooks(books, only=["99"])


def _book(folder: Path, name: str, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "tiny"\ninteractive = True\nrun_dir = ""\noutputs_root = "outputs"\n'
                                       'data_root = "data"')
    params.metadata["tags"] = ["parameters"]
    opening = ("from pathlib import Path\nfrom medkit.runs import notebook_run\n"
               f"run = notebook_run({name[:-6]!r}, profile, {{}}, run_dir, outputs_root)\n")
    nb.cells = [params, nbformat.v4.new_code_cell(opening + body), nbformat.v4.new_code_cell("run.complete()")]
    nbformat.write(nb, folder / name)


def test_resume_after_a_kill_continues_from_the_last_finished_notebook(tmp_path):
    """The kernel dies mid-notebook: its run folder is failed, its rows are ignored by readers;
    --resume skips what finished, runs the dead one again in its own folder, then the rest."""
    from medkit.runs import read_results, run_status

    books, out, marks = tmp_path / "nbs", tmp_path / "out", tmp_path / "marks"
    books.mkdir()
    marks.mkdir()
    _book(books, "01_first.ipynb", f"open({str(marks / 'first')!r}, 'a').write('ran\\n')")
    _book(books, "02_dies.ipynb",
          "run.add_result(dataset='d', method='m', acc=0.5)\n"
          f"flag = Path({str(marks / 'died')!r})\n"
          "if not flag.exists():\n    flag.touch()\n    import os\n    os._exit(9)  # killed mid-notebook")
    _book(books, "03_last.ipynb", "run.add_result(dataset='d', method='last', acc=1.0)")
    with pytest.raises(WorkbookError, match=r"02_dies\.ipynb failed"):
        run_workbook("smoke", notebooks_dir=books, outputs_root=out, prebuild=False)
    state = json.loads((out / "workbook.json").read_text())
    assert [v["state"] for v in state["notebooks"].values()] == ["complete", "failed", "pending"]
    dead = Path(state["notebooks"]["02_dies.ipynb"]["run_dir"])
    assert run_status(dead) == "failed"
    assert read_results(out, say=False).method.tolist() == []  # the dead run's row is not read
    assert read_results(out, complete_only=False).method.tolist() == ["m"]

    with pytest.raises(WorkbookError, match="ran profile 'smoke', not 'tiny'"):
        run_workbook("tiny", notebooks_dir=books, outputs_root=out, resume=True, prebuild=False)
    done = run_workbook(None, notebooks_dir=books, outputs_root=out, resume=True, prebuild=False)
    assert [r.notebook.name for r in done] == ["02_dies.ipynb", "03_last.ipynb"]
    assert done[0].executed.parent == dead and run_status(dead) == "complete"
    assert (marks / "first").read_text() == "ran\n"  # the finished notebook did not run again
    state = json.loads((out / "workbook.json").read_text())
    assert [v["state"] for v in state["notebooks"].values()] == ["complete"] * 3
    assert set(read_results(out, say=False).method) == {"m", "last"}  # the resumed run is read once complete


def test_a_users_imagefolder_and_csv_without_splits_run_through_the_notebooks(tmp_path, smoke_data):
    """A new user's data as the README offers it: by the `datasets` parameter alone, 02 and 03
    run on an ImageFolder and a CSV manifest that have no splits, and write rows, confusion
    matrices and the split they derived for each; their explorers build as in JupyterLab. (The
    few-shot grid on a user's files is test_compare's: `python -m medkit compare` on a split JSON.)"""
    from userdata import imagefolder, manifest_without_split

    from medkit.data import load_dataset

    paths = [imagefolder(tmp_path / "xrays"), manifest_without_split(tmp_path / "clinic")]
    ids = [load_dataset(p, data_root=smoke_data, progress=False).id for p in paths]
    outputs = tmp_path / "outputs"
    results = run_workbook("smoke", only=["02", "03"], notebooks_dir=REPO / "notebooks", outputs_root=outputs,
                           data_root=smoke_data, extra_parameters={"datasets": [str(p) for p in paths], "interactive": True})
    assert [explorers_in_last_cell(r.executed) for r in results] == [1, 2]  # as in JupyterLab: the explorers build
    df = pd.read_csv(outputs / "results.csv")
    for notebook in ("02_zero_shot", "03_coop"):
        assert set(df[df.notebook == notebook].dataset) == set(ids), notebook
    for notebook, stem in (("02_zero_shot", "confusion_{}_"), ("03_coop", "confusion_{}")):
        folder = _run_of(results, notebook)
        for ds_id in ids:
            assert list((folder / "figures").glob(stem.format(ds_id) + "*.png")), f"{notebook}: no confusion matrix of {ds_id}"
            assert (folder / "splits" / f"split_{ds_id}.json").is_file()
        assert json.loads((folder / "status.json").read_text())["state"] == "complete"
    table = json.loads((_run_of(results, "03_coop") / "metrics.json").read_text())["table"]
    assert {"zeroshot", "coop"} <= {r["method"] for r in table}  # the study table keeps its zero-shot rows


def test_a_users_chexpert_csv_and_a_local_backbone_run_through_the_multilabel_notebook(tmp_path, smoke_data,
                                                                                       model_configs):
    """09 by parameters only: a CheXpert-v1.0-small folder (train.csv with -1 / blank, valid.csv,
    lateral views), a ChestX-ray14 Data_Entry CSV to evaluate on, a PsPG JSONL of reports and an
    open_clip model config as the backbone (what a user with real files and weights changes)."""
    from userdata import chexpert_folder, nih_folder

    from medkit.data import load_dataset

    chexpert, nih = chexpert_folder(tmp_path / "chexpert"), nih_folder(tmp_path / "nih")
    ids = [load_dataset(p, data_root=smoke_data, progress=False).id for p in (chexpert, nih)]
    outputs = tmp_path / "outputs"
    results = run_workbook("smoke", only=["09"], notebooks_dir=REPO / "notebooks", outputs_root=outputs, data_root=smoke_data,
                           extra_parameters={"train_dataset": str(chexpert), "eval_datasets": [str(nih)],
                                             "reports": str(tmp_path / "chexpert" / "reports.jsonl"),
                                             "backbone": str(model_configs["hf"]), "ablation_seeds": [],
                                             "interactive": True})
    assert explorers_in_last_cell(results[0].executed) == 1
    df = pd.read_csv(outputs / "results.csv")
    ml = df[df.task == "multi_label"]
    assert set(ml.dataset) == set(ids) and set(ml.train_dataset.dropna()) == {ids[0]}
    assert {"all", "seen", "unseen"} <= set(ml[ml.dataset == ids[1]].classes)
    assert set(ml.backbone) >= {"tiny-timm-hf-clip"}
    assert {"zeroshot_ml", "linear_probe_ml", "dualcoop", "pspg", "clip_finetune_contrastive"} <= set(ml.method)
    folder = _run_of(results, "09_multilabel_cxr")
    assert list((folder / "figures").glob(f"per_finding_auroc_{ids[1]}*.png"))
    assert json.loads((folder / "status.json").read_text())["state"] == "complete"


def test_a_users_clipseg_folder_and_medvlsm_dataset_run_through_the_segmentation_notebook(tmp_path, smoke_data,
                                                                                          model_configs):
    """10 by parameters only: a CLIPSeg checkpoint folder (the hub layout, built locally with
    random weights) and a MedVLSM-format dataset (JPG images of two sizes, PNG masks, prompt
    lists), as a user with real files changes them."""
    from conftest import write_clipseg
    from userdata import medvlsm_folder

    clipseg = tmp_path / "my-clipseg"
    write_clipseg(clipseg, model_configs["hf_dual"])
    data = medvlsm_folder(tmp_path / "kvasir-like")
    outputs = tmp_path / "outputs"
    results = run_workbook("smoke", only=["10"], notebooks_dir=REPO / "notebooks", outputs_root=outputs,
                           data_root=smoke_data, extra_parameters={"model": str(clipseg), "datasets": [str(data)],
                                                                   "prompt": "p3", "sweep_seeds": [1], "interactive": True})
    assert explorers_in_last_cell(results[0].executed) == 1
    df = pd.read_csv(outputs / "results.csv")
    seg = df[df.task == "segmentation"]
    assert set(seg.dataset) == {"kvasir-like"} and set(seg.backbone) == {str(clipseg)}
    from medkit.seg.strategies import SEG_STRATEGIES

    assert set(seg.method) == set(SEG_STRATEGIES)
    assert set(seg[seg.method == "seg_zeroshot"].prompt) == {f"p{i}" for i in range(10)}
    assert set(seg[seg.method != "seg_zeroshot"].prompt) == {"p3"} and seg.dice.between(0, 1).all()
    folder = _run_of(results, "10_segmentation")
    assert list((folder / "figures").glob("overlays_kvasir-like*.png"))
    assert json.loads((folder / "status.json").read_text())["state"] == "complete"
