"""Multi-label readers (CheXpert, ChestX-ray14, PsPG JSONL, generic CSV), finding synonyms and
seen/unseen matching, patient-grouped derived splits, and `load_dataset` on multi-label data.
Every fixture is a few tiny PNGs and text files written into tmp_path."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from medkit.data import Dataset, MultiLabelSpace, load_dataset
from medkit.data.checks import DataError
from medkit.data.findings import (SYNONYMS, canonical_finding, match_label_spaces, normalise_finding,
                                  seen_unseen_table, synonyms_for)
from medkit.data.labels import LabelSpace
from medkit.data.multilabel import (NIH_FINDINGS, multilabel_summary, read_chestxray14, read_chexpert_csv,
                                    read_multilabel_csv, read_pspg_jsonl, sniff_multilabel)
from medkit.data.splits import grouped_split, patient_of

CHEXPERT = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
            "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
            "Fracture", "Support Devices")
HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT)


def _png(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (20, 20), value).save(path)
    return path


def _chexpert_row(folder: str, patient: int, view: str, values: dict[str, str]) -> str:
    rel = f"CheXpert-v1.0-small/{folder}/patient{patient:05d}/study1/view1_{view.lower()}.png"
    return ",".join([rel, "Female", "60", view, "AP" if view == "Frontal" else ""]
                    + [values.get(c, "") for c in CHEXPERT])


def chexpert(base: Path, n_train: int = 12, n_valid: int = 3, images: bool = True) -> Path:
    """base/CheXpert-v1.0-small/{train,valid}.csv: one frontal and one lateral image per patient;
    Cardiomegaly 1.0 / 0.0 / -1.0 in turn, Edema 1 on even patients, the rest blank."""
    folder = base / "CheXpert-v1.0-small"
    folder.mkdir(parents=True, exist_ok=True)
    for name, split, n, first in (("train.csv", "train", n_train, 1), ("valid.csv", "valid", n_valid, 64541)):
        rows = []
        for p in range(first, first + n):
            values = {"Cardiomegaly": ("1.0", "0.0", "-1.0")[p % 3], "Edema": "1" if p % 2 == 0 else ""}
            for view in ("Frontal", "Lateral"):
                rows.append(_chexpert_row(split, p, view, values))
                if images:
                    _png(base / rows[-1].split(",")[0], 40 + p % 100)
        (folder / name).write_text("\n".join([HEADER, *rows]) + "\n")
    return folder


# ----------------------------------------------------------------------------- CheXpert

def test_chexpert_reads_targets_views_patients_and_blank_as_zero(tmp_path):
    folder = chexpert(tmp_path)
    splits = read_chexpert_csv(folder / "train.csv")
    assert list(splits) == ["train"]
    train = splits["train"]
    assert isinstance(train.labels, MultiLabelSpace) and train.labels.classnames == CHEXPERT
    assert train.multilabel and len(train) == 12  # laterals dropped
    assert train.meta["lateral_dropped"] == 12 and train.meta["uncertainty"] == "mask"
    first = train.samples[0]  # patient 1: Cardiomegaly 0.0, Edema blank
    assert first.path.is_absolute() and first.path.is_file() and first.view == "frontal"
    assert first.label == -1 and first.targets == (0,) * 14 and first.classname == ""
    cardio, edema = CHEXPERT.index("Cardiomegaly"), CHEXPERT.index("Edema")
    second = train.samples[1]  # patient 2: Cardiomegaly -1.0 (masked), Edema 1
    assert second.targets[cardio] == -1 and second.targets[edema] == 1 and second.classname == "Edema"
    assert train.samples[2].classname == "Cardiomegaly"  # patient 3: 1.0
    assert patient_of(train)[:2] == ["patient00001", "patient00002"]
    assert train.labels.synonyms["Pleural Effusion"][0] == "Effusion"  # the space carries its synonyms
    summary = multilabel_summary(train).set_index("finding")
    assert summary.loc["Cardiomegaly"].tolist() == [4, 4, 4] and summary.loc["Edema", "positive"] == 6


@pytest.mark.parametrize("policy, expected", [("mask", -1), ("ones", 1), ("zeros", 0)])
def test_uncertainty_policies(tmp_path, policy, expected):
    train = read_chexpert_csv(chexpert(tmp_path) / "train.csv", uncertainty=policy)["train"]
    cardio = CHEXPERT.index("Cardiomegaly")
    assert train.samples[1].targets[cardio] == expected  # patient 2 is -1.0 in the file
    assert train.samples[0].targets[cardio] == 0 and train.samples[2].targets[cardio] == 1  # others unchanged
    assert {t[CHEXPERT.index("Fracture")] for t in train.targets} == {0}  # blank is 0 whatever the policy


def test_an_unknown_uncertainty_policy_lists_the_choices(tmp_path):
    folder = chexpert(tmp_path, n_train=3, n_valid=0)
    with pytest.raises(ValueError, match=r"uncertainty='u-ones': use one of \['mask', 'ones', 'zeros'\]"):
        read_chexpert_csv(folder / "train.csv", uncertainty="u-ones")
    with pytest.raises(ValueError, match=r"use one of \['mask', 'ones', 'zeros'\]"):
        load_dataset(folder, data_root=tmp_path / "data", progress=False, uncertainty="U-Ones")


def test_frontal_only_false_keeps_the_laterals(tmp_path):
    train = read_chexpert_csv(chexpert(tmp_path) / "train.csv", frontal_only=False)["train"]
    assert len(train) == 24 and [s.view for s in train.samples[:2]] == ["frontal", "lateral"]


def test_chexpert_paths_resolve_against_root_then_the_csv_folder(tmp_path):
    chexpert(tmp_path / "data", n_train=3, images=False)
    csv = tmp_path / "data" / "CheXpert-v1.0-small" / "train.csv"
    for row in csv.read_text().splitlines()[1:]:
        _png(tmp_path / "elsewhere" / row.split(",")[0])
    assert len(read_chexpert_csv(csv, root=tmp_path / "elsewhere")["train"]) == 3
    for row in csv.read_text().splitlines()[1:]:  # beside the CSV, as a flattened copy has them
        _png(csv.parent / row.split(",")[0])
    assert read_chexpert_csv(csv)["train"].samples[0].path.is_relative_to(csv.parent)


def test_a_missing_chexpert_image_names_the_row_column_and_path(tmp_path):
    folder = chexpert(tmp_path, n_train=3, n_valid=0)
    (tmp_path / "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.png").unlink()
    with pytest.raises(DataError, match=r"train\.csv: row 3 \(line 4\), column 'Path': value "
                                        r"'CheXpert-v1\.0-small/train/patient00002/study1/view1_frontal\.png': "
                                        r"image file not found at "):
        read_chexpert_csv(folder / "train.csv")


def test_bad_chexpert_values_are_all_named_at_once(tmp_path):
    folder = chexpert(tmp_path, n_train=2, n_valid=0)
    csv = folder / "train.csv"
    csv.write_text(csv.read_text().replace(",1,", ",yes,", 1).replace("Frontal,AP", "Front,AP", 1))
    with pytest.raises(DataError) as err:
        read_chexpert_csv(csv, frontal_only=False)
    msg = str(err.value)
    assert "2 problems" in msg and "column 'Frontal/Lateral': value 'Front' is not Frontal or Lateral" in msg
    assert re.search(r"row \d \(line \d\), column 'Edema': value 'yes' is not 1, 0, -1 or blank", msg)


def test_a_chexpert_folder_reads_train_and_valid(tmp_path):
    chexpert(tmp_path)
    for path in (tmp_path / "CheXpert-v1.0-small", tmp_path):  # the folder, or the one above it
        splits = read_chexpert_csv(path)
        assert {k: len(v) for k, v in splits.items()} == {"train": 12, "val": 3}
        assert splits["train"].labels is splits["val"].labels


# ----------------------------------------------------------------------------- ChestX-ray14

def nih(base: Path, labels: list[str], lists: bool = True) -> Path:
    """base/Data_Entry_2017.csv (+ lists), images under images_001/images/ as the release has them;
    two images per patient, the last patient in the test list."""
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
            "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"]
    names = []
    for i, label in enumerate(labels):
        patient = i // 2 + 1
        names.append(f"{patient:08d}_{i % 2:03d}.png")
        _png(base / "images_001" / "images" / names[-1])
        rows.append(f"{names[-1]},{label},{i % 2},{patient},58,M,{'PA' if i % 2 else 'AP'},2682,2749,0.143,0.143,")
    (base / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    if lists:
        (base / "train_val_list.txt").write_text("\n".join(names[:-2]) + "\n")
        (base / "test_list.txt").write_text("\n".join(names[-2:]) + "\n")
    return base / "Data_Entry_2017.csv"


def test_chestxray14_reads_findings_lists_and_views(tmp_path):
    csv = nih(tmp_path, ["Effusion|Mass", "No Finding", "Pleural_Thickening", "Hernia", "No Finding", "Emphysema"])
    splits = read_chestxray14(csv)
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "test": 2}
    space = splits["train"].labels
    assert space.classnames == (*NIH_FINDINGS, "No Finding") and space.n_classes == 15  # "No Finding" last
    first, second = splits["train"].samples[:2]
    assert first.classname == "Effusion|Mass" and sum(first.targets) == 2 and first.view == "frontal"
    assert second.classname == "No Finding" and second.targets[-1] == 1 and sum(second.targets) == 1
    assert patient_of(splits["train"]) == ["1", "1", "2", "2"]
    assert splits["test"].samples[1].classname == "Emphysema"
    assert read_chestxray14(tmp_path)["test"].samples[0].path == splits["test"].samples[0].path  # the folder works


def test_chestxray14_unknown_finding_names_the_row_and_value(tmp_path):
    csv = nih(tmp_path, ["Effusion", "No Finding", "Effusion|Pneumonitis"], lists=False)
    with pytest.raises(DataError, match=r"Data_Entry_2017\.csv: row 3 \(line 4\), column 'Finding Labels': "
                                        r"value 'Pneumonitis' \(in 'Effusion\|Pneumonitis'\) is not a ChestX-ray14 finding"):
        read_chestxray14(csv)


# ----------------------------------------------------------------------------- PsPG JSONL

def _jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_pspg_jsonl_vectors_with_labels_or_labels_json(tmp_path):
    for i in range(3):
        _png(tmp_path / f"img{i}_frontal.png")
    rows = [{"id": f"patient{i}", "filepath": f"img{i}_frontal.png", "text": "small effusion" if i else "",
             "labels": [float(i == 1), 0.0, -1.0 if i == 2 else 1.0]} for i in range(3)]
    path = _jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"0/1 vectors: pass labels="):
        read_pspg_jsonl(path)
    names = ["Pleural Effusion", "Edema", "Cardiomegaly"]
    train = read_pspg_jsonl(path, labels=names)["train"]
    assert train.labels.classnames == tuple(names)
    assert train.targets == [(0, 0, 1), (1, 0, 1), (0, 0, -1)]
    assert train.samples[0].text is None and train.samples[1].text == "small effusion"
    assert train.samples[0].view == "frontal" and patient_of(train)[0] == "patient0"
    (tmp_path / "labels.json").write_text(json.dumps({"labels_name": names}))  # as PsPG's converter writes it
    assert read_pspg_jsonl(path)["train"].targets == train.targets


def test_pspg_jsonl_names_and_split_keys(tmp_path):
    for i in range(3):
        _png(tmp_path / "imgs" / f"{i}.png")
    rows = [{"filepath": "imgs/0.png", "text": "", "labels": ["Edema", "Atelectasis"], "split": "train"},
            {"filepath": "imgs/1.png", "text": "", "labels": [], "split": "validation"},
            {"filepath": "imgs/2.png", "text": "", "labels": ["Edema"], "split": "test"}]
    splits = read_pspg_jsonl(_jsonl(tmp_path / "data.jsonl", rows))
    assert sorted(splits) == ["test", "train", "val"]
    assert splits["train"].labels.classnames == ("Atelectasis", "Edema")  # sorted names seen
    assert splits["train"].targets == [(1, 1)] and splits["val"].targets == [(0, 0)]
    with pytest.raises(DataError, match=r"line 1, column 'labels': value 'Atelectasis' is not a finding"):
        read_pspg_jsonl(tmp_path / "data.jsonl", labels=["Edema", "Pneumonia"])


def test_a_broken_jsonl_line_is_named_with_its_column(tmp_path):
    _png(tmp_path / "a.png")
    path = _jsonl(tmp_path / "test.jsonl", [{"filepath": "a.png", "labels": ["Edema"]},
                                            '{"filepath": "a.png" "labels": []}',
                                            {"filepath": "b.png", "labels": ["Edema"]}])
    with pytest.raises(DataError) as err:
        read_pspg_jsonl(path)
    msg = str(err.value)
    assert "2 problems" in msg and "line 2, column 22: not valid JSON (Expecting ',' delimiter)" in msg
    assert "line 3, column 'filepath': value 'b.png': image file not found" in msg


# ----------------------------------------------------------------------------- generic CSV

def generic(tmp_path: Path, rows: list[str], header: str = "image,split,view,report,Edema,Effusion,Nodule") -> Path:
    for row in rows:
        _png(tmp_path / row.split(",")[0])
    path = tmp_path / "findings.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_generic_csv_blank_is_unknown_and_splits_are_canonical(tmp_path):
    path = generic(tmp_path, ["a.png,training,PA,clear lungs,0,0,", "b.png,Test,lateral,,1,-1,0", "c.png,dev,,,,1,1"])
    splits = read_multilabel_csv(path)
    assert sorted(splits) == ["test", "train", "val"]
    assert splits["train"].labels.classnames == ("Edema", "Effusion", "Nodule")
    a, b, c = splits["train"].samples[0], splits["test"].samples[0], splits["val"].samples[0]
    assert a.targets == (0, 0, -1) and a.view == "frontal" and a.text == "clear lungs"  # blank → -1
    assert b.targets == (1, -1, 0) and b.view == "lateral" and b.text is None and b.classname == "Edema"
    assert c.classname == "Effusion|Nodule" and c.view is None


def test_generic_csv_bad_value_names_file_row_column_and_value(tmp_path):
    path = generic(tmp_path, ["a.png,train,,,0,1,0", "b.png,train,,,2,1,0"])
    with pytest.raises(DataError, match=r"findings\.csv: row 2 \(line 3\), column 'Edema': value '2' is not 1, 0, -1 "
                                        r"or blank"):
        read_multilabel_csv(path)


def test_sniffing_tells_the_readers_apart(tmp_path):
    chexpert(tmp_path / "cx", n_train=1, n_valid=1)
    assert sniff_multilabel(tmp_path / "cx" / "CheXpert-v1.0-small" / "valid.csv") == "chexpert"
    assert sniff_multilabel(tmp_path / "cx") == sniff_multilabel(tmp_path / "cx" / "CheXpert-v1.0-small") == "chexpert"
    nih(tmp_path / "nih", ["Edema", "No Finding"], lists=False)
    assert sniff_multilabel(tmp_path / "nih") == sniff_multilabel(tmp_path / "nih" / "Data_Entry_2017.csv") == "chestxray14"
    assert sniff_multilabel(_jsonl(tmp_path / "x.jsonl", [])) == "pspg_jsonl"
    (tmp_path / "j").mkdir()
    _jsonl(tmp_path / "j" / "val.jsonl", [])
    assert sniff_multilabel(tmp_path / "j") == "pspg_jsonl"
    assert sniff_multilabel(generic(tmp_path / "g", ["a.png,train,,,0,1,"])) == "multilabel_csv"
    single = tmp_path / "manifest.csv"
    single.write_text("path,label,classname\na.png,0,x\n")
    assert sniff_multilabel(single) is None
    words = tmp_path / "words.csv"
    words.write_text("path,colour,size\na.png,red,big\n")
    assert sniff_multilabel(words) is None and sniff_multilabel(tmp_path / "g") is None  # folders of images too


# ----------------------------------------------------------------------------- findings

def test_normalised_and_canonical_names():
    assert normalise_finding(" Pleural_Thickening ") == normalise_finding("pleural-thickening") == "pleural thickening"
    assert normalise_finding("Nodule/Mass") == "nodule mass"
    assert canonical_finding("EFFUSION") == "Pleural Effusion" and canonical_finding("normal") == "No Finding"
    assert canonical_finding("Pulmonary fibrosis") == "Fibrosis" and canonical_finding("Infiltrate") == "Infiltration"
    assert canonical_finding("Rib fracture") != canonical_finding("Fracture")  # a child, not a synonym
    for child in ("Nodule", "Mass"):
        assert canonical_finding(child) != canonical_finding("Lung Lesion")
    assert canonical_finding("Pneumonitis") is None
    assert "Pleural Thickening" in synonyms_for(["Pleural_Thickening"])["Pleural_Thickening"]  # the readable name


def test_no_name_is_a_synonym_of_two_findings():
    owner: dict[str, str] = {}
    for canon, names in SYNONYMS.items():
        for name in (canon, *names):
            assert owner.setdefault(normalise_finding(name), canon) == canon, name


def test_chestxray14_effusion_is_seen_after_chexpert_with_synonyms_but_not_exactly():
    train = LabelSpace(CHEXPERT)
    target = MultiLabelSpace((*NIH_FINDINGS, "No Finding"))
    matched = match_label_spaces(train, target)
    assert "Effusion" in matched.seen and matched.train_name["Effusion"] == "Pleural Effusion"
    assert "Emphysema" not in matched.seen and "Nodule" not in matched.seen  # Lung Lesion is their parent
    assert matched.subset_index("unseen") == [i for i, c in enumerate(target.classnames) if c not in matched.seen]
    exact = match_label_spaces(train, target, how="exact")  # PsPG: lower-cased exact names
    assert "Effusion" not in exact.seen and "Cardiomegaly" in exact.seen and "No Finding" in exact.seen
    table = seen_unseen_table(matched).set_index("finding")
    assert table.loc["Effusion"].tolist() == [True, "Pleural Effusion", "synonym"]
    assert table.loc["Edema"].tolist() == [True, "Edema", "exact"]
    assert table.loc["Emphysema"].tolist() == [False, "", ""]
    vindr = MultiLabelSpace(("Pleural thickening", "Pulmonary fibrosis", "Rib fracture"))
    nih_space = LabelSpace((*NIH_FINDINGS, "No Finding"))
    assert match_label_spaces(nih_space, vindr).train_name == {"Pleural thickening": "Pleural_Thickening",
                                                                "Pulmonary fibrosis": "Fibrosis"}
    assert match_label_spaces(nih_space, vindr, how="normalised").seen == ("Pleural thickening",)
    with pytest.raises(ValueError, match=r"how='fuzzy'"):
        match_label_spaces(train, target, how="fuzzy")


# ----------------------------------------------------------------------------- splits, load_dataset

def test_patient_grouped_split_keeps_patients_together_and_is_seeded(tmp_path):
    chexpert(tmp_path, n_train=30, n_valid=0)
    pool = read_chexpert_csv(tmp_path / "CheXpert-v1.0-small" / "train.csv", frontal_only=False)["train"]
    parts = grouped_split(pool, seed=1)
    owners: dict[str, str] = {}
    for name, split in parts.items():
        for patient in patient_of(split):
            assert owners.setdefault(patient, name) == name  # no patient in two splits
    assert sum(len(s) for s in parts.values()) == 60 and {len(s) for s in parts.values()} != {0}
    assert abs(len(parts["train"]) - 30) <= 2
    again = grouped_split(pool, seed=1)
    assert all(again[n].samples == parts[n].samples for n in parts)
    assert grouped_split(pool, seed=2)["test"].samples != parts["test"].samples
    with pytest.raises(DataError, match=r"2 patient\(s\) \(4 images\) are too few to split"):
        grouped_split(type(pool)("train", pool.samples[:4], pool.labels, pool.meta))


def test_load_dataset_on_a_chexpert_folder_end_to_end(tmp_path):
    chexpert(tmp_path / "cx", n_train=20, n_valid=4)
    folder = tmp_path / "cx" / "CheXpert-v1.0-small"
    ds = load_dataset(folder, data_root=tmp_path / "data", progress=False, verify=True)
    assert isinstance(ds, Dataset) and ds.multilabel and isinstance(ds.labels, MultiLabelSpace)
    assert ds.labels.classnames == CHEXPERT and ds.name == "CheXpert-v1.0-small"
    assert len(ds["test"]) == 4 and len(ds["train"]) + len(ds["val"]) == 20  # valid.csv is the test set
    recipe = ds.meta["derived_split"]
    assert recipe["rule"] == "val from train, grouped by patient" and recipe["test_from"] == "val"
    train_patients = set(patient_of(ds["train"]))
    assert not train_patients & set(patient_of(ds["val"]))
    assert ds.fingerprint and ds["train"].samples[0].targets is not None
    ones = load_dataset(folder, data_root=tmp_path / "data", progress=False, uncertainty="ones")
    zeros = load_dataset(folder, data_root=tmp_path / "data", progress=False, uncertainty="zeros")
    assert len({ds.fingerprint, ones.fingerprint, zeros.fingerprint}) == 3
    assert load_dataset(folder, data_root=tmp_path / "data", progress=False).id == ds.id  # seeded
    assert len(load_dataset(folder, data_root=tmp_path / "data", progress=False, frontal_only=False)["test"]) == 8
    # the derived split is saved as a multi-label CSV and reads back the same, wherever it lies
    saved = ones.save_split(tmp_path / "run" / "splits" / f"split_{ones.id}.json")
    assert saved.suffix == ".csv" and json.loads(saved.with_suffix(".recipe.json").read_text())["uncertainty"] == "ones"
    back = load_dataset(saved, data_root=tmp_path / "data", progress=False)
    assert "derived_split" not in back.meta and back.labels.classnames == CHEXPERT
    for name in ("train", "val", "test"):
        assert back[name].samples == ones[name].samples
    assert patient_of(back["train"]) == patient_of(ones["train"]) and back.fingerprint == ones.fingerprint


def test_load_dataset_on_chestxray14_carves_val_by_patient(tmp_path):
    nih(tmp_path, ["Effusion"] * 10 + ["No Finding"] * 10)
    ds = load_dataset(tmp_path, data_root=tmp_path / "data", progress=False)
    assert len(ds["test"]) == 2 and len(ds["train"]) + len(ds["val"]) == 18 and ds.labels.n_classes == 15
    assert not set(patient_of(ds["train"])) & set(patient_of(ds["val"]))
    assert ds.meta["derived_split"]["rule"] == "val from train, grouped by patient"
