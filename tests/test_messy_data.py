"""A user's messy dataset: every fault real folders have, each with its exact outcome —
an error naming file, row and value, or a warning naming the file; all of them in one run."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medkit.data import DataError, DataWarning, load_dataset, load_descriptions, read_manifest
from medkit.data.splits import stratified_split
from userdata import CLASSES, PER_CLASS, dassl_split, imagefolder, manifest_without_split


def _img(path: Path, size=(32, 32), mode="L", value=120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def _load(path, tmp_path, **kw):
    return load_dataset(path, data_root=tmp_path / "data", progress=False, **kw)


def _messages(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


# ----------------------------------------------------------------------------- image folders

def test_every_image_format_pillow_reads_is_read(tmp_path):
    root = imagefolder(tmp_path / "ds")
    Image.new("RGB", (32, 32), (9, 9, 9)).save(root / "pacemaker" / "extra.webp")
    Image.new("P", (32, 32)).save(root / "pacemaker" / "extra.gif")
    Image.new("RGB", (32, 32)).save(root / "pacemaker" / "extra.JPEG")
    ds = _load(root, tmp_path)
    every = [s.path.name for split in ds.splits.values() for s in split.samples]
    assert {"extra.webp", "extra.gif", "extra.JPEG"} <= set(every)
    assert len(every) == len(CLASSES) * PER_CLASS + 3


def test_stray_and_hidden_files_and_tiny_images_are_named_in_warnings(tmp_path):
    root = imagefolder(tmp_path / "ds")
    (root / "pacemaker" / "notes.txt").write_text("scanned on the old machine")
    (root / "pacemaker" / ".DS_Store").write_bytes(b"\0")
    (root / ".cache").mkdir()
    _img(root / "knee_implant" / "dot.png", size=(1, 1))
    with pytest.warns(DataWarning) as caught:
        ds = _load(root, tmp_path)
    said = _messages(caught)
    assert any("not images" in m and "notes.txt" in m for m in said)
    assert any("hidden" in m and ".DS_Store" in m and ".cache" in m for m in said)
    assert any("tiny images" in m and "dot.png (1×1)" in m for m in said)
    assert str(root / "pacemaker" / "notes.txt") in ds.meta["ignored_files"]


def test_a_folder_with_several_problems_reports_all_of_them_in_one_error(tmp_path):
    root = imagefolder(tmp_path / "ds")
    (root / "empty_class").mkdir()
    (root / "pacemaker" / "broken.png").write_text("this is not a png")
    good = root / "spinal_rod" / "spinal_rod_00.png"
    (root / "spinal_rod" / "cut.png").write_bytes(good.read_bytes()[:60])  # truncated
    with pytest.raises(DataError) as e:  # the folder's problem, found before any image is decoded
        _load(root, tmp_path)
    assert "class folder 'empty_class' has no images" in str(e.value)
    (root / "empty_class").rmdir()
    with pytest.raises(DataError) as e:  # the verification pass: every unreadable image at once
        _load(root, tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{root}: 2 problems:")
    assert f"{root / 'pacemaker' / 'broken.png'}: cannot read image" in msg
    assert f"{root / 'spinal_rod' / 'cut.png'}: cannot read image" in msg
    _load(root, tmp_path, verify=False)  # opting out of the pass: the loader does not decode


def test_verification_is_cached_by_file_fingerprint(tmp_path, monkeypatch):
    root = imagefolder(tmp_path / "ds")
    _load(root, tmp_path)
    cache = tmp_path / "data" / "cache" / "verify" / "verified.json"
    assert len(json.loads(cache.read_text())) == len(CLASSES) * PER_CLASS
    import medkit.data.checks as checks

    monkeypatch.setattr(checks, "_inspect", lambda p: pytest.fail(f"decoded {p} again"))
    _load(root, tmp_path)  # all verdicts from the cache
    (root / "pacemaker" / "pacemaker_00.png").write_text("now broken")  # new fingerprint: checked again
    monkeypatch.setattr(checks, "_inspect", lambda p: {"ok": False, "error": "OSError: broken"})
    with pytest.raises(DataError, match=r"pacemaker_00\.png: cannot read image \(OSError: broken\)"):
        _load(root, tmp_path)


def test_single_class_dataset_is_an_error(tmp_path):
    for i in range(4):
        _img(tmp_path / "ds" / "only" / f"{i}.png")
    with pytest.raises(DataError, match=r"only one class folder \('only'\): classification needs at least two"):
        _load(tmp_path / "ds", tmp_path)


def test_dark_16bit_images_are_named(tmp_path):
    root = imagefolder(tmp_path / "ds")
    Image.fromarray(np.full((32, 32), 4000, np.uint16)).save(root / "pacemaker" / "xr12.png")
    with pytest.warns(DataWarning, match=r"under 1/16 of their range.*xr12\.png \(max 4000\)"):
        _load(root, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        _load(root, tmp_path, intensity="stretch")  # asked for: no warning


# ----------------------------------------------------------------------------- manifests

def _csv(tmp_path: Path, rows: list[str], header="path,label,classname,split", name="m.csv", encoding="utf-8") -> Path:
    for i, c in enumerate(("a", "b", "c")):
        for j in range(4):
            _img(tmp_path / "img" / f"{c}{j}.png", value=40 * i + j)
    path = tmp_path / name
    path.write_bytes(("\n".join([header] + rows) + "\n").encode(encoding))
    return path


BASE = [f"img/{c}{j}.png,{i},{c},{'train' if j < 2 else 'val' if j == 2 else 'test'}"
        for i, c in enumerate("abc") for j in range(4)]


def test_latin1_manifest_and_descriptions_name_file_and_line(tmp_path):
    path = _csv(tmp_path, BASE[:3] + ["img/a3.png,0,a,test", "img/b0.png,1,b,train", "img/c0.png,2,Gerät,train"],
                encoding="latin-1")
    with pytest.raises(DataError, match=r"m\.csv: line 7, column 17: byte b'\\xe4' is not UTF-8.*Latin-1"):
        read_manifest(path)
    desc = tmp_path / "descriptions.json"
    desc.write_bytes('{"a": ["ein Gerät"]}'.encode("latin-1"))
    with pytest.raises(DataError, match=r"descriptions\.json: line 1, column 16: byte b'\\xe4' is not UTF-8"):
        load_descriptions(desc, read_manifest(_csv(tmp_path, BASE))["train"].labels)


def test_every_manifest_problem_is_named_with_its_row_in_one_error(tmp_path):
    (tmp_path / "outside.png").parent.mkdir(exist_ok=True)
    bad = BASE + [
        "../../etc/hostname,0,a,train",      # row 13: climbs out of the dataset
        "img/a0.png,1,b,train",              # row 14: same image, another label
        "img/b0.png,1,b,test",               # row 15: same image in train and test
        "img/c1.png,9,zebra,train",          # row 16: an unknown class whose label leaves a gap
        "img/missing.png,0,a,train",         # row 17: no such file
    ]
    with pytest.raises(DataError) as e:
        read_manifest(_csv(tmp_path, bad))
    msg = str(e.value)
    assert re.match(r".*m\.csv: \d+ problems:", msg)
    assert "row 13 (line 14), column 'path': value '../../etc/hostname' points outside the dataset root" in msg
    assert "row 14 (line 15), column 'path': value 'img/a0.png' is also at row 1 (line 2) with another label" in msg
    assert ("row 15 (line 16), column 'path': value 'img/b0.png' is in split 'test' and also in split 'train' "
            "at row 5 (line 6): the same image in two splits") in msg
    assert "labels must be contiguous 0..9; missing label(s) [3, 4, 5, 6, 7, 8] — label 9 ('zebra') at row 16 (line 17)" in msg
    assert "row 17 (line 18), column 'path': value 'img/missing.png': image file not found" in msg


def test_more_problems_than_shown_are_counted(tmp_path):
    rows = BASE + [f"img/none{i}.png,0,a,train" for i in range(30)]
    with pytest.raises(DataError, match=r"30 problems:(.|\n)*… and 10 more$"):
        read_manifest(_csv(tmp_path, rows))


def test_split_names_are_recognised_or_listed(tmp_path):
    rows = [r.replace(",val", ",validation").replace(",test", ",Testing") for r in BASE]
    ds = _load(_csv(tmp_path, rows), tmp_path)
    assert [len(ds[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    odd = [r.replace(",test", ",holdout") for r in BASE]
    with pytest.raises(DataError, match=r"unknown split name\(s\) \['holdout'\]; found \['holdout', 'train', 'val'\]; "
                                        r"expected train, val, test \(or training, validation, valid, dev, testing\)"):
        _load(_csv(tmp_path, odd, name="odd.csv"), tmp_path)


def test_duplicate_rows_of_the_same_image_and_label_are_a_warning(tmp_path):
    with pytest.warns(DataWarning, match=r"duplicate rows.*row 13 \(line 14\) = row 1 \(line 2\): img/a0\.png"):
        splits = read_manifest(_csv(tmp_path, BASE + ["img/a0.png,0,a,train"]))
    assert len(splits["train"]) == 7  # kept as the file says, and said


# ----------------------------------------------------------------------------- missing splits, identity

def test_a_manifest_without_splits_gets_a_seeded_stratified_split_that_is_saved_and_reused(tmp_path):
    path = manifest_without_split(tmp_path / "mine")
    ds = _load(path, tmp_path)
    sizes = {s: len(ds[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 36, "val": 12, "test": 24}  # 12 per class: round(6), round(2.4), rest
    for split in ds.splits.values():  # stratified: every class in every split
        assert set(split.targets) == set(range(len(CLASSES)))
    assert ds.meta["derived_split"]["rule"] == "stratified" and ds.meta["derived_split"]["ratios"] == [0.5, 0.2, 0.3]
    again = _load(path, tmp_path)
    assert ds.split_json() == again.split_json() and ds.id == again.id  # seeded
    other = _load(path, tmp_path, split_seed=2)
    assert other.split_json() != ds.split_json() and other.id != ds.id
    saved = ds.save_split(tmp_path / "elsewhere" / "split_mine.json")  # as a run folder keeps it
    reread = _load(saved, tmp_path)
    assert reread.split_json() == ds.split_json() and "derived_split" not in reread.meta


def test_train_and_test_only_get_val_from_train(tmp_path):
    rows = [r for r in BASE if not r.endswith(",val")]
    ds = _load(_csv(tmp_path, rows), tmp_path)
    assert [len(ds[s]) for s in ("train", "val", "test")] == [3, 3, 3]  # one of each class's two train images
    assert ds.meta["derived_split"]["rule"] == "val from train"


def test_too_small_classes_to_split_are_named(tmp_path):
    pool = read_manifest(_csv(tmp_path, [r.rsplit(",", 1)[0] for r in BASE[:11]], header="path,label,classname"))["all"]
    with pytest.raises(DataError, match=r"1 class\(es\) have too few images to split 50%/20%/30%.*'c' \(3\)"):
        stratified_split(pool)


def test_two_folders_with_one_name_have_two_identities(tmp_path):
    a = imagefolder(tmp_path / "a" / "data")
    b = imagefolder(tmp_path / "b" / "data")
    (b / "pacemaker" / "pacemaker_00.png").unlink()
    da, db, da2 = _load(a, tmp_path), _load(b, tmp_path), _load(a, tmp_path)
    assert da.name == db.name == "data"
    assert da.id != db.id and da.id == da2.id and da.id.startswith("data-")


def test_split_json_paths_stay_inside_the_image_root(tmp_path):
    path = dassl_split(tmp_path / "d")
    data = json.loads(path.read_text())
    data["test"][0][0] = "../../etc/hostname"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"test\[0\], column 'path': value '\.\./\.\./etc/hostname' points outside"):
        _load(path, tmp_path)
    data["test"][0][0] = json.loads(dassl_split(tmp_path / "fresh").read_text())["test"][0][0]
    path.write_text(json.dumps(data))
    elsewhere = tmp_path / "pictures"
    (tmp_path / "d" / "images").rename(elsewhere)  # the images moved: say where they are
    ds = _load(path, tmp_path, image_root=elsewhere)
    assert ds["test"].samples[0].path.parent.parent == elsewhere
