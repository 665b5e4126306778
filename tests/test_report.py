"""The report: published numbers beside medkit's on the same rows, from a small hand-made
results.csv; run folders read for findings, figures and the environment; offline HTML."""
from __future__ import annotations

import json

import nbformat
import numpy as np
import pandas as pd

from medkit.methods import REGISTRY
from medkit.reporting import report
from medkit.seg.strategies import SEG_STRATEGIES


def row(method, variant, acc, seed, dataset="synth_ortho12-0a1b2c3d", split="test", protocol="full", classes="all",
        shots=None, run_id="20260101-000000_03_coop_tiny", **extra):
    return dict(run_id=run_id, dataset=dataset, split=split, classes=classes, protocol=protocol, method=method,
                variant=variant, setting_id=f"{method}:{variant}", shots=shots, seed=seed, acc=acc, **extra)


def test_published_numbers_are_fractions_with_sources_and_registered_settings():
    pub = report.load_published()
    assert set(pub["seed"]) == set(report.SEEDS)
    assert pub["value"].between(0, 1).all() and pub["source"].str.contains(r"\.(?:txt|md):\d").all()
    known = set(REGISTRY) | set(SEG_STRATEGIES)
    assert set(pub.loc[pub["method"] != "", "method"]) <= known, set(pub["method"]) - known - {""}
    assert (pub.loc[pub["variant"] != "", "method"] != "").all()  # a setting always names its method
    t1 = pub[(pub["seed"] == "implant") & (pub["table"] == "Table 1")]
    assert len(t1) == 12 and set(t1["metric"]) == {"acc", "f1_macro", "auc"}  # 4 settings × Acc / F1 / AUC


def test_a_paper_table_puts_medkit_beside_the_paper_on_the_same_rows():
    pub = report.load_published()
    t1 = pub[(pub["seed"] == "implant") & (pub["table"] == "Table 1")]
    results = pd.DataFrame([
        row("coop", "shared, text init", 0.5, 1, auc=0.9, f1_macro=0.4),
        row("coop", "shared, text init", 0.6, 2, auc=0.8, f1_macro=0.5),
        row("coop", "shared, text init", 0.99, 1, split="val"),                  # validation: not the table's
        row("coop", "shared, text init", 0.01, 1, dataset="synth_implants45"),   # another dataset
        row("coop", "class-specific, text init", 0.1, 1, run_id="20250101-000000_03_coop_tiny"),  # superseded
        row("coop", "class-specific, text init", 0.7, 1, run_id="20260101-000000_03_coop_tiny"),
    ])
    table = report.paper_table(t1, report._test_rows(results))
    text = "Non-class specific (Text init.)"
    assert table.loc[text, ("acc", "paper")] == "0.433"
    assert table.loc[text, ("acc", "medkit")] == "0.550 ± 0.071 (n=2)"
    assert table.loc[text, ("auc", "medkit")] == "0.850 ± 0.071 (n=2)"
    assert table.loc["Class-specific (Text init.)", ("acc", "medkit")] == "0.700 (n=1)"  # the latest run only
    assert table.loc["Class-specific (Random)", ("acc", "medkit")] == report.NOT_RUN
    assert table.loc[text, ("", "medkit setting")] == "coop · shared, text init on synth_ortho12"
    assert [c for c in table.columns if c[0]][:2] == [("acc", "paper"), ("acc", "medkit")]


def test_k_columns_harmonic_means_and_averages_over_medkit_datasets():
    pub = report.load_published()
    bio = pub[pub["seed"] == "biomedcoop"]
    results = pd.DataFrame(
        [row("biomedcoop", "BiomedCoOp", a, s, dataset=d, protocol="few_shot", shots=1)
         for d, a, s in (("synth_ortho12", 0.4, 1), ("synth_implants45", 0.6, 1), ("synth_ortho12", 0.5, 2),
                         ("synth_implants45", 0.9, 2))]
        + [row("biomedcoop", "BiomedCoOp", a, 1, protocol="base_to_novel", shots=16, classes=c)
           for c, a in (("base", 0.8), ("novel", 0.6))])
    rows = report._test_rows(results)
    few = report.paper_table(bio[bio["table"] == "anchors: few-shot averages"], rows)
    assert ("K=1 · acc", "paper") in few.columns and few.loc["BiomedCoOp", ("K=1 · acc", "paper")] == "0.570"
    # per seed the mean over both datasets (0.5, 0.7), then mean ± std over the seeds
    assert few.loc["BiomedCoOp", ("K=1 · acc", "medkit")] == "0.600 ± 0.141 (n=2)"
    assert few.loc["BiomedCoOp", ("", "medkit setting")].endswith("mean over medkit's datasets")
    b2n = report.paper_table(bio[bio["table"] == "anchors: base-to-novel averages"], rows)
    hm = 2 * 0.8 * 0.6 / 1.4
    assert b2n.loc["BiomedCoOp", ("hm", "medkit")] == f"{hm:.3f} (n=1)"


def test_seed_tables_count_what_was_matched():
    results = pd.DataFrame([row("coop", "shared, text init", 0.5, 1, auc=0.9, f1_macro=0.4)])
    seeds = {s.seed: s for s in report.seed_tables(results)}
    assert list(seeds) == list(report.SEEDS)
    assert seeds["implant"].matched == 3 and seeds["pspg"].matched == 0  # acc, F1, AUC of one row
    assert seeds["implant"].total == int((report.load_published()["seed"] == "implant").sum())


def test_run_folders_give_findings_gallery_and_environment(tmp_path):
    for name, state, findings in (("06_hierarchical", "complete", None), ("07_knowledge_fewshot", "complete", ["a", "b"]),
                                  ("08_cilmp", "running", ["never shown"])):
        folder = tmp_path / "runs" / f"20260101-000000_{name}_tiny"
        (folder / "figures").mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"profile": {"name": "tiny", "backbone": "miniclip"},
                                                        "_meta": {"notebook": name, "git_commit": "abc123def456",
                                                                  "git_dirty": False, "packages": {"torch": "2.9"}}}))
        (folder / "status.json").write_text(json.dumps({"state": state}))
        (folder / "metrics.json").write_text(json.dumps({"findings": findings} if findings else {}))
        for fig in ("curves_a", "confusion_a"):
            (folder / "figures" / f"{fig}.png").write_bytes(b"png")
    pd.DataFrame([{"finding": "x", "holds (A > B)": "yes"}]).to_csv(
        tmp_path / "runs" / "20260101-000000_06_hierarchical_tiny" / "findings.csv", index=False)
    runs = report.latest_runs(tmp_path)
    assert list(runs) == ["06_hierarchical", "07_knowledge_fewshot"]  # the running one is not reported
    f = report.findings_tables(runs)
    assert f["06_hierarchical"]["holds (A > B)"].tolist() == ["yes"] and f["07_knowledge_fewshot"]["finding"].tolist() == ["a", "b"]
    assert f["07_knowledge_fewshot"]["profile"].tolist() == ["tiny", "tiny"]  # which profile decided each finding
    assert [p.stem for p in report.gallery(runs, 1)["06_hierarchical"]] == ["confusion_a"]  # confusion before curves
    env = report.environment(runs)
    assert env["git commit"].tolist() == ["abc123def4"] * 2 and env["torch"].tolist() == ["2.9"] * 2


def test_export_html_embeds_figures_and_fetches_nothing(tmp_path):
    import base64
    import io

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A report"),
                                         nbformat.v4.new_code_cell("secret_code = 1")])
    nb.cells[1].outputs = [nbformat.v4.new_output("display_data", {"image/png": base64.b64encode(buf.getvalue()).decode(),
                                                                   "text/plain": "<Figure>"})]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    html = report.export_html(path, tmp_path / "out" / "report.html").read_text()
    assert "data:image/png;base64," in html and "A report" in html
    assert "secret_code" not in html  # no code cells
    assert report.remote_assets(html) == []
    assert report.dataset_name("synth_ortho12-0a1b2c3d") == "synth_ortho12" and report.dataset_name("my-data") == "my-data"
    assert np.isnan(report.medkit_cell(pd.DataFrame(), report.load_published().iloc[0])[0])


def test_no_stand_in_gets_no_number_beside_it_but_the_embedded_worlds_after():
    pub = report.load_published()
    t = pub[(pub["seed"] == "cilmp") & (pub["table"] == "TABLE tab-main-ablation")]
    results = pd.DataFrame([row("cilmp", "CILMP", a, s, protocol="few_shot", shots=k, auc=0.9, f1_macro=0.5, kappa=0.4)
                            for k, s, a in ((16, 1, 0.6), (16, 2, 0.8), (4, 1, 0.1))])  # 07's K=4 row: not 08's K=16
    table = report.paper_table(t, report._test_rows(results))
    medkit = [c for c in table.columns if c[1] == "medkit" and not c[0].startswith(("embedded", "Average"))]
    assert set(table.loc["CILMP", medkit]) == {"no stand-in"}
    assert table.loc["CILMP", ("Average · acc", "medkit")] == "0.700 ± 0.141 (n=2)"  # the paper's average: medkit's
    assert table.attrs["matched"] == 4  # the Average columns' acc, F1, AUC, Kappa
    assert table.loc["CILMP", ("embedded world · acc", "medkit")] == "0.700 ± 0.141 (n=2)"
    assert table.loc["CILMP", ("embedded world · acc", "paper")] == ""
    assert list(table.columns)[-1][0].startswith("embedded world")


def test_the_newest_run_of_a_setting_hides_only_its_own_dataset_and_k():
    rows = pd.DataFrame([row("coop", "CoOp", 0.3, 1, protocol="few_shot", shots=1, run_id="2026-a_07"),
                         row("coop", "CoOp", 0.5, 1, protocol="few_shot", shots=16, run_id="2026-b_08"),
                         row("coop", "CoOp", 0.6, 1, protocol="few_shot", shots=16, run_id="2026-c_08"),
                         row("coop", "CoOp", 0.7, 1, protocol="few_shot", shots=16, run_id="2026-d_compare",
                             notebook="compare_x")])
    kept = report._test_rows(rows)
    assert sorted(zip(kept["shots"], kept["acc"])) == [(1, 0.3), (16, 0.6)]
