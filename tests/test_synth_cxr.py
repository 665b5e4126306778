"""The embedded chest-radiograph world: real file formats, determinism, caching, label logic."""
from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medkit.data.synthetic import cxr
from medkit.data.synthetic.cxr import CXR_DATASETS, LABEL_MAPS, build_cxr, cxr_spec

CHEXPERT = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
            "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
            "Fracture", "Support Devices"]
NIH = {"Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
       "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"}
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
# words a report must use for a positive finding (independent of the generator's tables)
MENTIONS = {"Enlarged Cardiomediastinum": r"cardiomediastin|mediastinum", "Lung Opacity": r"opacit",
            "Cardiomegaly": r"cardiomegaly|heart is \w+ enlarged|enlarged cardiac", "Lung Lesion": r"nodule|mass",
            "Edema": r"edema", "Consolidation": r"consolidation", "Pneumonia": r"pneumonia", "Atelectasis": r"atelectasis",
            "Pneumothorax": r"pneumothorax", "Pleural Effusion": r"effusion", "Pleural Other": r"pleural thickening",
            "Fracture": r"rib.*fracture|fracture.*rib", "Support Devices": r"tube|catheter|line|pacemaker|leads"}
NEGATIONS = {"Pneumothorax": r"\bno pneumothorax|there is no pneumothorax", "Pleural Effusion": r"\bno (pleural )?effusion",
             "Edema": r"\bno (pulmonary )?edema", "Cardiomegaly": r"heart size is normal|\bno cardiomegaly"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cxr")
    return {name: build_cxr(name, "smoke", root, progress=False) for name in CXR_DATASETS}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _digest(folder: Path) -> dict[str, str]:
    files = (p for p in sorted(folder.rglob("*")) if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_spec_gives_identical_files_and_another_seed_does_not(built, tmp_path):
    again = build_cxr("synth_cxr", "smoke", tmp_path, progress=False)
    assert again.name == built["synth_cxr"].name
    assert _digest(again) == _digest(built["synth_cxr"])
    other = build_cxr("synth_cxr", "smoke", tmp_path, progress=False, seed=1)
    assert other != again
    a = (again / "CheXpert-v1.0-small" / "train.csv").read_bytes()
    assert a != (other / "CheXpert-v1.0-small" / "train.csv").read_bytes()


def test_second_call_reuses_the_folder_and_an_interrupted_one_is_rebuilt(tmp_path, monkeypatch):
    folder = build_cxr("synth_vindr", "smoke", tmp_path, progress=False)
    calls = []
    real = cxr.render_cxr
    monkeypatch.setattr(cxr, "render_cxr", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert build_cxr("synth_vindr", "smoke", tmp_path, progress=False) == folder
    assert calls == []
    (folder / "world.json").unlink()
    (folder / "labels.csv").write_text("broken")
    assert build_cxr("synth_vindr", "smoke", tmp_path, progress=False) == folder
    assert len(calls) == 120 and (folder / "world.json").is_file()
    assert _rows(folder / "labels.csv")[0]["path"].startswith("images/")


def test_chexpert_layout_and_values(built):
    root = built["synth_cxr"]
    patients = {}
    for fname, n in (("train.csv", 60), ("valid.csv", 20), ("test.csv", 40)):
        path = root / "CheXpert-v1.0-small" / fname
        with open(path, newline="") as fh:
            header = next(csv.reader(fh))
        assert header == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT]
        rows = _rows(path)
        assert len(rows) == n
        values = {r[c] for r in rows for c in CHEXPERT}
        if fname == "train.csv":
            assert values <= {"1.0", "0.0", "-1.0", ""} and {"-1.0", ""} <= values
        else:
            assert values == {"1.0", "0.0"}  # radiologist-labelled splits: certain and complete
        split = {"train.csv": "train", "valid.csv": "valid", "test.csv": "test"}[fname]
        for r in rows:
            assert re.fullmatch(rf"CheXpert-v1\.0-small/{split}/patient\d{{5}}/study\d+/view\d_(frontal|lateral)\.png", r["Path"])
            assert (root / r["Path"]).is_file()
            assert r["Frontal/Lateral"] in ("Frontal", "Lateral") and r["Sex"] in ("Male", "Female") and 18 <= int(r["Age"]) <= 90
            assert r["AP/PA"] == "" if r["Frontal/Lateral"] == "Lateral" else r["AP/PA"] in ("AP", "PA")
            assert r["Path"].endswith("lateral.png") == (r["Frontal/Lateral"] == "Lateral")
            patients.setdefault(r["Path"].split("/")[2], set()).add(split)
    assert all(len(s) == 1 for s in patients.values())  # patients never cross splits
    assert any(len({r["Path"].split("/")[3] for r in _rows(root / "CheXpert-v1.0-small/train.csv")
                    if r["Path"].split("/")[2] == p}) > 1 for p in patients)  # some patients have several studies


def test_no_finding_means_no_pathology(built):
    pathology = [c for c in CHEXPERT if c not in ("No Finding", "Support Devices")]
    for fname in ("train.csv", "valid.csv", "test.csv"):
        for r in _rows(built["synth_cxr"] / "CheXpert-v1.0-small" / fname):
            clean = not any(r[c] in ("1.0", "-1.0") for c in pathology)
            assert r["No Finding"] == ("1.0" if clean else ("" if fname == "train.csv" else "0.0"))
    for r in _rows(built["synth_vindr"] / "labels.csv"):
        others = [int(v) for k, v in r.items() if k not in ("path", "split", "No finding")]
        assert int(r["No finding"]) == int(not any(others))
    for r in _rows(built["synth_cxr14"] / "Data_Entry_2017.csv"):
        labels = r["Finding Labels"].split("|")
        assert labels == ["No Finding"] or "No Finding" not in labels


def test_chestxray14_layout(built):
    root = built["synth_cxr14"]
    lines = (root / "Data_Entry_2017.csv").read_text().splitlines()
    assert lines[0] == NIH_HEADER
    rows = [next(csv.reader([ln])) for ln in lines[1:]]
    assert len(rows) == 120 and all(len(r) == 11 for r in rows)
    patient_of = {}
    for r in rows:
        index, found, follow, pid, age, sex, view = r[:7]
        assert re.fullmatch(r"\d{8}_\d{3}\.png", index) and index == f"{int(pid):08d}_{int(follow):03d}.png"
        assert set(found.split("|")) <= NIH | {"No Finding"}
        assert view in ("PA", "AP") and sex in ("M", "F") and int(age) > 0
        assert (root / "images" / index).is_file()
        patient_of[index] = pid
    trainval = (root / "train_val_list.txt").read_text().split()
    test = (root / "test_list.txt").read_text().split()
    assert len(trainval) == 80 and len(test) == 40 and set(trainval) | set(test) == set(patient_of)
    assert not {patient_of[i] for i in trainval} & {patient_of[i] for i in test}
    assert any(r[1] != "No Finding" for r in rows) and any("|" in r[1] for r in rows)


def test_vindr_generic_csv(built):
    root = built["synth_vindr"]
    rows = _rows(root / "labels.csv")
    assert list(rows[0]) == ["path", "split", *LABEL_MAPS["synth_vindr"]]
    assert len(rows) == 120 and {r["split"] for r in rows} == {"train", "test"}
    assert sum(r["split"] == "test" for r in rows) == 40
    for r in rows:
        assert {v for k, v in r.items() if k not in ("path", "split")} <= {"0", "1"}
        assert r["path"].startswith(f"images/{r['split']}/") and (root / r["path"]).is_file()
        assert Image.open(root / r["path"]).mode == "L"


def test_lateral_views_are_present_and_look_like_a_side_view(built):
    rows = _rows(built["synth_cxr"] / "CheXpert-v1.0-small" / "train.csv")
    by_view = {"Frontal": [], "Lateral": []}
    for r in rows:
        by_view[r["Frontal/Lateral"]].append(np.asarray(Image.open(built["synth_cxr"] / r["Path"]), np.float32))
    assert len(by_view["Lateral"]) >= 3 and len(by_view["Frontal"]) > len(by_view["Lateral"])

    # a side silhouette: every image is nearer the mean image of its own view than of the other
    coarse = {v: [np.asarray(Image.fromarray(i.astype(np.uint8)).resize((8, 8), Image.BOX), np.float32) for i in imgs]
              for v, imgs in by_view.items()}
    centre = {v: np.mean(imgs, 0) for v, imgs in coarse.items()}
    for v, imgs in coarse.items():
        other = "Lateral" if v == "Frontal" else "Frontal"
        assert all(np.abs(i - centre[v]).mean() < np.abs(i - centre[other]).mean() for i in imgs)


def test_reports_name_every_positive_finding_and_agree_with_the_csv(built):
    root = built["synth_cxr"]
    train = {r["Path"]: r for r in _rows(root / "CheXpert-v1.0-small" / "train.csv")}
    lines = [json.loads(ln) for ln in (root / "reports.jsonl").read_text().splitlines()]
    assert [ln["filepath"] for ln in lines] == list(train)
    for ln in lines:
        text, row = ln["text"].lower(), train[ln["filepath"]]
        assert text.startswith("findings:") and "impression:" in text
        assert set(ln["labels"]) <= set(CHEXPERT)
        for lab in CHEXPERT[1:]:
            if row[lab] == "1.0":
                assert lab in ln["labels"]
            if lab in ln["labels"]:
                assert row[lab] in ("1.0", "-1.0"), (lab, row[lab])
                assert re.search(MENTIONS[lab], text), (lab, text)
                assert not re.search(NEGATIONS.get(lab, r"$^"), text), (lab, text)
            elif row[lab] == "0.0":
                assert lab not in ln["labels"]


def test_unseen_findings_reach_reports_but_not_labels():
    spec = cxr_spec("synth_cxr", "smoke", n_train=400)
    images = cxr.plan(spec)
    exams = [i.exam for i in images]
    assert any("emphysema" in e.findings for e in exams) and any("fibrosis" in e.findings for e in exams)
    e = next(e for e in exams if "emphysema" in e.findings)
    text = cxr.write_report(e.findings, e.uncertain, e.unsure, e.negated, np.random.default_rng(0))
    assert "emphysema" in text.lower()
    seen = {f for ids in LABEL_MAPS["synth_cxr"].values() for f in ids}
    assert {"emphysema", "fibrosis", "calcification", "hernia", "clavicle_fracture"}.isdisjoint(seen)


def test_latent_processes_make_findings_co_occur(tmp_path):
    folder = build_cxr("synth_cxr", "smoke", tmp_path, progress=False, n_train=700, image_size=32)
    rows = _rows(folder / "CheXpert-v1.0-small" / "train.csv")
    pos = lambda r, c: r[c] in ("1.0", "-1.0")  # noqa: E731 - mentioned as present
    edema = np.mean([pos(r, "Edema") for r in rows])
    cardio = [r for r in rows if pos(r, "Cardiomegaly")]
    assert len(cardio) > 30
    assert np.mean([pos(r, "Edema") for r in cardio]) > edema + 0.15
    world = json.loads((folder / "world.json").read_text())
    assert len(world["universe"]) == 24 and world["version"] == cxr.CXR_VERSION
    prev = world["label_prevalence"]["train"]
    assert prev["Support Devices"] > prev["Pleural Other"] and 0.25 < prev["Lung Opacity"] < 0.55


def test_bad_names_are_rejected():
    with pytest.raises(ValueError):
        cxr_spec("synth_nothing")
    with pytest.raises(ValueError):
        cxr_spec("synth_cxr", "huge")
    with pytest.raises(ValueError):
        cxr_spec("synth_cxr", "smoke", n_val=0)
