"""Tables, findings and sweeps select rows by their fields; old results files still load."""
from __future__ import annotations

import csv

import pandas as pd

from medkit import grids
from medkit.experiment import Setting
from medkit.methods.cilmp import DEFAULT_RANK
from medkit.reporting import (cilmp_sweep, complete_rows, findings_08, knowledge_vs_names, latest, seed_table, select,
                              shot_table, study_findings, tau_sweep)
from medkit.runs import LEGACY_COLUMNS, append_result, read_results, result_columns


def rows_of(setting: Setting, accs, split="test", protocol="full", classes="all", run_id="20260101-000000_03_coop_tiny",
            dataset="d", shots=None, domain="xray", seed0=1) -> list[dict]:
    return [{"run_id": run_id, "dataset": dataset, "domain": domain, "split": split, "classes": classes,
             "protocol": protocol, "method": setting.method, "variant": setting.variant, "setting_id": setting.id,
             "options": setting.options_json, "backbone": "b", "shots": shots, "seed": seed0 + i if seed0 else None,
             "acc": a} for i, a in enumerate(accs)]


def test_the_coop_table_has_its_zero_shot_row():
    """03–05 said their table shows the zero-shot baseline; its split was `xray_test`, the
    table kept `test` only, and the row vanished. Now the domain is its own field."""
    coop = grids.STUDY_SETTINGS["coop"][1]
    zs = Setting("zeroshot", "name_study_template", {"templates": ["a photo of a {}."]})
    rows = rows_of(coop, [0.5, 0.7]) + rows_of(coop, [0.1], split="val") + rows_of(zs, [0.2], seed0=None)
    t = seed_table(rows, metrics=("acc",))
    assert t.loc[("d", "coop", coop.variant), "acc"] == "0.600 ± 0.141" and t.loc[("d", "coop", coop.variant), "n"] == 2
    assert t.loc[("d", "zeroshot", "name_study_template"), "acc"] == "0.200"


def test_latest_and_complete_rows_select_by_setting():
    s = grids.HIERARCHY_SETTINGS["coop"]["shared"]
    old = rows_of(s, [0.1], run_id="20260101-000000_03_coop_tiny")
    new = rows_of(s, [0.9], run_id="20260202-000000_05_other_tiny")  # whichever notebook ran it last
    df = pd.DataFrame(old + new)
    assert latest(df, dataset="d")["acc"].tolist() == [0.9]
    assert complete_rows(df, [s], [1], splits=("test",)) is not None
    assert complete_rows(df, [s], [1]) is None                          # no val rows
    assert complete_rows(df, [grids.HIERARCHY_SETTINGS["coop"]["class-specific"]], [1], splits=("test",)) is None


def test_findings_verdicts_follow_the_seed_spread():
    S = grids.STUDY_SETTINGS["coop"]
    zs = Setting("zeroshot", "name_study_template", {"templates": ["a photo of a {}."]})
    rows = (rows_of(S[3], [0.50, 0.52, 0.54]) + rows_of(S[1], [0.30, 0.31, 0.32]) + rows_of(S[2], [0.40, 0.45, 0.50])
            + rows_of(S[0], [0.41, 0.44, 0.49]) + rows_of(zs, [0.05], seed0=None, run_id="20260101-000000_02_zero_shot_tiny")
            + rows_of(zs, [0.9], seed0=None, domain="natural", run_id="20260101-000000_00_world_tiny"))
    f = study_findings(pd.DataFrame(rows), "b", ["d"])
    cs = f[f["finding"] == "class-specific > shared"].set_index("A")["holds (A > B)"]
    assert cs["coop: class-specific, text init"] == "yes"
    assert cs["coop: class-specific, random init"].startswith("tie")
    assert cs["cocoop: class-specific, random init"] == "not run"
    zs_row = f[f["finding"] == "prompt learning ≫ zero-shot"].iloc[0]
    assert zs_row["holds (A > B)"] == "yes" and zs_row["B acc"] == "0.050"  # the X-ray zero-shot, not the natural one
    text = f[f["finding"] == "text init > random init"].set_index("A")["holds (A > B)"]
    assert text["coop: class-specific, text init"] == "yes" and text["coop: shared, text init"] == "no"


def test_tables_and_the_knowledge_comparison():
    grid = {s.method: s for s in grids.few_shot_grid()}
    rows = []
    for seed, (a, b) in enumerate([(0.2, 0.3), (0.4, 0.5)], start=1):
        for k in (1, 2):
            rows += rows_of(grid["coop"], [a], protocol="few_shot", shots=k, seed0=seed)
            rows += rows_of(grid["biomedcoop"], [b], protocol="few_shot", shots=k, seed0=seed)
    table = shot_table(rows)
    assert table.loc[("d", "coop", "CoOp"), "K=1"] == "0.300 ± 0.141"
    kvn = knowledge_vs_names(pd.DataFrame(rows), shots=(1,))
    assert kvn["knowledge wins"].tolist() == [True] and kvn["difference"].tolist() == [0.1]
    assert select(rows, options={"ctx_init": "a photo of a"}, method="coop")["acc"].tolist() == [0.2, 0.2, 0.4, 0.4]


def test_sweeps_read_the_options_and_place_the_full_model_at_its_defaults_once():
    ablations = {s.variant: s for s in grids.cilmp_ablations(lengths=(1, 3), ranks=(2, DEFAULT_RANK), n_layers=6)}
    assert "length 3" not in ablations and f"rank {DEFAULT_RANK}" not in ablations
    acc = {"CILMP": 0.5, "length 1": 0.2, "rank 2": 0.6, "w/o RD": 0.1, "w/o intervention": 0.3}
    rows = pd.DataFrame([r for v, a in acc.items() for r in rows_of(ablations[v], [a, a], protocol="few_shot", shots=4)])
    sweep = cilmp_sweep(rows, n_layers=6)
    assert sweep.groupby("sweep")["value"].apply(list).to_dict() == {
        "length": [0, 0, 1, 1, 3, 3], "rank": [2, 2, DEFAULT_RANK, DEFAULT_RANK]}  # w/o RD is in neither sweep
    assert set(sweep.loc[sweep["value"] == 3, "variant"]) == {"CILMP"}
    lines = findings_08(rows.iloc[:0], rows, n_layers=6)
    assert f"rank sweep: 2 0.600, {DEFAULT_RANK} 0.500 (full CILMP); best rank 2" in lines
    assert "length sweep: 0 0.300, 1 0.200, 3 0.500 (full CILMP); best length 3" in lines
    taus = {s.variant: s for s in grids.biomedcoop_ablations(taus=(1.0, 2.5))}
    t_rows = [r for v in ("full (MAD, τ=1.5)", "MAD, τ=1", "MAD, τ=2.5", "no SCCM", "z-score rule (reference code), τ=1.5")
              for r in rows_of(taus[v], [0.4], protocol="few_shot", shots=4)]
    assert tau_sweep(t_rows)["tau"].tolist() == [1.0, 1.5, 2.5]


def test_old_results_files_load_and_take_new_rows(tmp_path):
    """A results.csv from before the row fields: its encodings become fields, and appending
    rewrites the header once, keeping every old row."""
    path = tmp_path / "results.csv"
    old = [["r1", "02_zero_shot", "d", "xray_test", "zeroshot", "name_study_template", "b", "", "", "0.1",
            "", "", "", "", "", "", ""],
           ["r2", "07", "d", "novel", "coop", "CoOp", "b", "16", "1", "0.3", "", "", "", "", "", "", ""],
           ["r3", "06", "d", "test", "coop", "hier. stage 1 (groups) · shared, text init", "b", "", "1", "0.6",
            "", "", "", "", "", "", ""],
           ["r4", "07", "d", "test", "coop", "CoOp", "b", "4", "2", "0.4", "", "", "", "", "", "", ""]]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([LEGACY_COLUMNS] + old)
    df = read_results(tmp_path)
    assert df["split"].tolist() == ["test", "test", "test", "test"]
    assert df["domain"].tolist()[0] == "xray"
    assert df["classes"].tolist() == ["all", "novel", "groups", "all"]
    assert df["protocol"].tolist() == ["full", "base_to_novel", "hierarchical", "few_shot"]
    append_result(tmp_path, {"run_id": "r5", "dataset": "d", "split": "test", "acc": 0.5, "setting_id": "coop-1"})
    header, *body = list(csv.reader(open(path)))
    assert header == result_columns() and len(body) == 5 and body[0][:4] == old[0][:4]
    assert read_results(tmp_path)["setting_id"].tolist()[-1] == "coop-1"
