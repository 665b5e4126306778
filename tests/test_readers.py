"""Tests for medkit.data.readers: every fixture is built in tmp_path with PIL/numpy."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from medkit.data.labels import LabelSpace
from medkit.data.readers import (
    DataError,
    DataWarning,
    ImageDataset,
    load_image,
    read_dassl_split,
    read_imagefolder,
    read_manifest_csv,
    read_medmnist_npz,
    split_summary,
)


def _png(path: Path, color: int | tuple = 128, mode: str = "L", size: tuple[int, int] = (6, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0


# ----------------------------------------------------------------------------- load_image


def test_grayscale_becomes_rgb_with_same_values(tmp_path):
    im = load_image(_png(tmp_path / "g.png", 77))
    assert im.mode == "RGB" and im.size == (6, 4)
    assert np.asarray(im).tolist()[0][0] == [77, 77, 77]
    rgb = load_image(_png(tmp_path / "c.png", (1, 2, 3), mode="RGB"))  # already RGB: returned usable
    assert rgb.mode == "RGB" and rgb.getpixel((5, 3)) == (1, 2, 3)


def test_rgba_and_la_alpha_composited_onto_black(tmp_path):
    a = np.zeros((2, 2, 4), np.uint8)
    a[..., :3] = 200
    a[..., 3] = [[0, 255], [128, 255]]
    Image.fromarray(a).save(tmp_path / "rgba.png")
    out = np.asarray(load_image(tmp_path / "rgba.png"))
    assert out[0, 0].tolist() == [0, 0, 0]  # fully transparent → black, not the hidden colour
    assert out[0, 1].tolist() == [200, 200, 200]
    assert 95 <= out[1, 0, 0] <= 105
    Image.fromarray(a[..., [0, 3]]).save(tmp_path / "la.png")  # 2 channels → LA
    assert Image.open(tmp_path / "la.png").mode == "LA"
    assert np.asarray(load_image(tmp_path / "la.png"))[:, :, 0].tolist() == out[:, :, 0].tolist()


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    p.putpixel((0, 0), 1)
    p.putpixel((1, 0), 2)
    p.save(tmp_path / "p.png")
    assert np.asarray(load_image(tmp_path / "p.png")).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    p.save(tmp_path / "pt.png", transparency=1)  # red index transparent → black
    assert np.asarray(load_image(tmp_path / "pt.png")).tolist() == [[[0, 0, 0], [0, 0, 255]]]


def _save_high_depth(path: Path, arr: np.ndarray, mode: str) -> None:
    if mode == "I;16B":  # big-endian 16-bit, as written by some DICOM→TIFF converters
        Image.frombytes(mode, arr.shape[::-1], arr.astype(">u2").tobytes()).save(path)
    else:
        Image.fromarray(arr.astype(np.int32) if mode == "I" else arr).save(path)


@pytest.mark.parametrize("name, mode", [("xr16.png", "I;16"), ("xr16b.tif", "I;16B"), ("xr32.tif", "I")])
def test_16bit_images_keep_their_place_in_the_type_range_or_stretch_on_request(tmp_path, name, mode):
    arr = np.linspace(0, 4095, 64, dtype=np.uint16).reshape(8, 8)  # 12-bit values in a 16-bit file
    _save_high_depth(tmp_path / name, arr, mode)
    assert Image.open(tmp_path / name).mode in {mode, "I"}  # older Pillow opens 16-bit PNG as "I"
    out = np.asarray(load_image(tmp_path / name))  # default "range": v / 257
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[..., 0].ravel().tolist() == np.rint(arr.ravel() / 257).astype(int).tolist()
    stretched = np.asarray(load_image(tmp_path / name, intensity="stretch"))
    assert stretched.max() == 255 and stretched.min() == 0 and len(np.unique(stretched)) > 10
    assert (np.diff(stretched[..., 0].ravel().astype(int)) >= 0).all()  # order preserved


def test_one_pixel_value_gives_one_tensor_value_at_every_bit_depth(tmp_path):
    """The same cell stored in 8 and in 16 bits decodes to the same RGB values (no per-image stretch)."""
    cells = np.array([[0, 64, 128], [192, 255, 30]], dtype=np.uint8)
    Image.fromarray(cells).save(tmp_path / "c8.png")
    Image.fromarray((cells.astype(np.uint16) * 257)).save(tmp_path / "c16.png")
    Image.fromarray(cells.astype(np.float32) / 255).save(tmp_path / "cf.tif")
    a8, a16, af = (np.asarray(load_image(tmp_path / n)) for n in ("c8.png", "c16.png", "cf.tif"))
    assert a8.tolist() == a16.tolist() == af.tolist()
    with pytest.raises(ValueError, match="intensity='auto'"):
        load_image(tmp_path / "c8.png", intensity="auto")


def test_float_and_cmyk_images(tmp_path):
    f = np.linspace(-1.0, 1.0, 16, dtype=np.float32).reshape(4, 4)
    Image.fromarray(f).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    out = np.asarray(load_image(tmp_path / "f.tif"))  # floats: 0..1 → 0..255, clipped
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and (out[:2, :, 0] == 0).all()
    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(tmp_path / "c.tif")
    r, g, b = np.asarray(load_image(tmp_path / "c.tif"))[0, 0]
    assert r > 200 and g < 50 and b < 50


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(DataError, match=r"nope\.png.*not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not a png")
    with pytest.raises(DataError, match=r"text\.png.*cannot read image"):
        load_image(tmp_path / "text.png")


def test_truncated_png_fails_even_if_someone_enabled_truncated_loading(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png.*cannot read image"):
        load_image(tmp_path / "cut.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match=r"cut\.png"):
        load_image(tmp_path / "cut.png")


# ----------------------------------------------------------------------------- imagefolder


def test_imagefolder_happy_path(tmp_path):
    root = tmp_path / "ds"
    for name in ("b.png", "a.jpg", "sub/c.PNG"):
        _png(root / "pneumonia" / name, mode="RGB", color=(1, 2, 3))
    _png(root / "normal" / "x.bmp")
    (root / "normal" / "notes.txt").write_text("x")
    (root / ".hidden").mkdir()
    with pytest.warns(DataWarning) as caught:
        split = read_imagefolder(root)
    assert split.labels.classnames == ("normal", "pneumonia")
    assert split.targets == [0, 1, 1, 1]
    assert [s.path.name for s in split.samples] == ["x.bmp", "a.jpg", "b.png", "c.PNG"]
    assert split.meta["ignored_files"] == [str(root / "normal" / "notes.txt"), str(root / ".hidden")]
    said = [str(w.message) for w in caught]  # skipped files are named, never dropped in silence
    assert any("not images" in m and "notes.txt" in m for m in said) and any("hidden" in m and ".hidden" in m for m in said)
    assert split_summary(split)["count"].tolist() == [1, 3]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing_root.*not found"):
        read_imagefolder(tmp_path / "missing_root")
    (tmp_path / "flat").mkdir()
    _png(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match=r"flat.*no class sub-folders"):
        read_imagefolder(tmp_path / "flat")
    _png(tmp_path / "ds" / "cat" / "a.png")
    (tmp_path / "ds" / "dog").mkdir()
    (tmp_path / "ds" / "dog" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"'dog' has no images"):
        read_imagefolder(tmp_path / "ds")


# ----------------------------------------------------------------------------- manifest CSV


def _manifest(tmp_path: Path, lines: list[str], name: str = "manifest.csv") -> Path:
    for line in lines[1:]:
        rel = line.split(",")[0]
        if rel and not rel.startswith("missing"):
            _png(tmp_path / rel)
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


ANY_OF = r"(?:\d+ problems:\n(?:.*\n)*  - )?"  # the problem alone, or one line of the list of all of them

GOOD = [
    "path,label,classname,group,split",
    "img/a.png,0,hip_A,zimmer,train",
    "img/b.png,1,hip_B,zimmer,train",
    "img/c.png,2,knee_C,stryker,test",
    "img/d.png,0,hip_A,zimmer,test",
]


def test_manifest_happy_path_groups_and_split_filter(tmp_path):
    csv_path = _manifest(tmp_path, GOOD)
    full = read_manifest_csv(csv_path)
    assert full.name == "manifest" and len(full) == 4
    assert full.labels.classnames == ("hip_A", "hip_B", "knee_C")
    assert full.labels.groups == ("zimmer", "stryker")
    assert full.samples[2].group == "stryker" and full.samples[0].path == tmp_path / "img/a.png"
    test = read_manifest_csv(csv_path, split_name="test")
    assert test.name == "test" and test.targets == [2, 0]
    assert test.labels == full.labels  # label space comes from the whole file
    summary = split_summary(test)
    assert summary.columns.tolist() == ["label", "classname", "group", "count"]
    assert summary["count"].tolist() == [1, 0, 1]


def test_manifest_explicit_root_and_label_space(tmp_path):
    _png(tmp_path / "imgs" / "x.png")
    csv_path = tmp_path / "meta" / "m.csv"
    csv_path.parent.mkdir()
    csv_path.write_text("label,classname,path\n1,b,x.png\n")
    space = LabelSpace(("a", "b"))
    split = read_manifest_csv(csv_path, root=tmp_path / "imgs", label_space=space)
    assert split.labels is space and split.targets == [1] and split.samples[0].group is None


@pytest.mark.parametrize(
    "bad_line, pattern",
    [
        (",1,hip_B,zimmer,train", r"row 3 \(line 4\), column 'path': empty value"),
        ("missing/z.png,1,hip_B,zimmer,train", r"row 3 \(line 4\), column 'path': value 'missing/z\.png'.*not found"),
        ("img/b.png,one,hip_B,zimmer,train", r"row 3 \(line 4\), column 'label': value 'one' is not an integer"),
        ("img/b.png,0,hip_B,zimmer,train", r"row 3 \(line 4\), column 'classname': value 'hip_B' but label 0 is 'hip_A' at row 1"),
        ("img/b.png,3,hip_A,zimmer,train", r"row 3 \(line 4\), column 'label': value 3 but the label of class 'hip_A' is 0 at row 1"),
        ("img/b.png,0,hip_A,stryker,train", r"row 3 \(line 4\), column 'group': value 'stryker' but the group of class 'hip_A' is 'zimmer' at row 1"),
        ("img/b.png,1,hip_B,,train", r"row 3 \(line 4\), column 'group': empty value"),
        ("img/b.png,1,hip_B,zimmer", r"row 3 \(line 4\): 4 fields but the header has 5"),
    ],
)
def test_manifest_row_errors_name_file_row_column_value(tmp_path, bad_line, pattern):
    lines = GOOD[:3] + [bad_line] + GOOD[3:]
    csv_path = _manifest(tmp_path, lines)
    with pytest.raises(DataError, match=r"manifest\.csv: " + ANY_OF + pattern):
        read_manifest_csv(csv_path)


def test_manifest_file_level_errors(tmp_path):
    with pytest.raises(DataError, match=r"absent\.csv.*not found"):
        read_manifest_csv(tmp_path / "absent.csv")
    cols = _manifest(tmp_path, ["file,label,name", "img/a.png,0,x"], "cols.csv")
    with pytest.raises(DataError, match=r"cols\.csv: missing column\(s\) \['path', 'classname'\]; present: \['file', 'label', 'name'\]"):
        read_manifest_csv(cols)
    gap = _manifest(tmp_path, ["path,label,classname", "img/a.png,0,x", "img/b.png,3,y"], "gap.csv")
    with pytest.raises(DataError, match=r"gap\.csv: labels must be contiguous 0\.\.3; missing label\(s\) \[1, 2\]"):
        read_manifest_csv(gap)
    good = _manifest(tmp_path, GOOD, "good.csv")
    with pytest.raises(DataError, match=r"good\.csv: no rows with split == 'val'; split values: \['test', 'train'\]"):
        read_manifest_csv(good, split_name="val")
    with pytest.raises(DataError, match=r"good\.csv: row 3 \(line 4\), column 'classname': value 'knee_C' is not in the given label space"):
        read_manifest_csv(good, label_space=LabelSpace(("hip_A", "hip_B")))
    with pytest.raises(DataError, match=r"good\.csv: " + ANY_OF + r"row 1 \(line 2\), column 'label': value 0 but the given label space has 'hip_A' at index 1"):
        read_manifest_csv(good, label_space=LabelSpace(("hip_B", "hip_A", "knee_C")))
    nosplit = _manifest(tmp_path, ["path,label,classname", "img/a.png,0,x", "img/b.png,1,y"], "nosplit.csv")
    with pytest.raises(DataError, match=r"nosplit\.csv: split_name='train' given but no 'split' column"):
        read_manifest_csv(nosplit, split_name="train")
    (tmp_path / "empty.csv").write_text("path,label,classname\n")
    with pytest.raises(DataError, match=r"empty\.csv: no samples"):
        read_manifest_csv(tmp_path / "empty.csv")


# ----------------------------------------------------------------------------- Dassl split JSON


def _dassl(tmp_path: Path, data: dict) -> Path:
    for entries in data.values():
        for rel, *_ in entries:
            if not rel.startswith("missing"):
                _png(tmp_path / "images" / rel)
    path = tmp_path / "split_demo.json"
    path.write_text(json.dumps(data))
    return path


DASSL = {
    "train": [["a/1.png", 0, "normal"], ["b/2.png", 1, "tumor"], ["a/3.png", 0, "normal"]],
    "val": [["a/4.png", 0, "normal"]],
    "test": [["b/5.png", 1, "tumor"], ["a/6.png", 0, "normal"]],
}


def test_dassl_happy_path(tmp_path):
    splits = read_dassl_split(_dassl(tmp_path, DASSL), tmp_path / "images")
    assert sorted(splits) == ["test", "train", "val"]
    assert [len(splits[k]) for k in ("train", "val", "test")] == [3, 1, 2]
    assert splits["train"].labels.classnames == ("normal", "tumor")
    assert splits["test"].targets == [1, 0] and splits["test"].name == "test"
    assert splits["train"].samples[1].path == tmp_path / "images" / "b" / "2.png"


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda d: d.update(val=[]), r"split 'val' is empty"),
        (lambda d: d["test"].__setitem__(1, ["a/6.png", "0", "normal"]), r"test\[1\], column 'label': value '0'"),
        (lambda d: d["test"].__setitem__(1, ["a/6.png", 0]), r"test\[1\]: expected \[relpath, label, classname\]"),
        (lambda d: d["test"].__setitem__(1, ["a/6.png", 1, "normal"]), r"test\[1\], column 'classname': value 'normal' but label 1 is 'tumor' at train\[1\]"),
        (lambda d: d["test"].__setitem__(1, ["a/6.png", 2, "normal"]), r"test\[1\], column 'label': value 2 but the label of class 'normal' is 0 at train\[0\]"),
        (lambda d: d["val"].__setitem__(0, ["missing/9.png", 0, "normal"]), r"val\[0\], column 'path': value 'missing/9\.png'.*not found"),
    ],
)
def test_dassl_errors(tmp_path, mutate, pattern):
    data = json.loads(json.dumps(DASSL))
    mutate(data)
    with pytest.raises(DataError, match=r"split_demo\.json: " + ANY_OF + pattern):
        read_dassl_split(_dassl(tmp_path, data), tmp_path / "images")


def test_dassl_label_space_check_and_bad_json(tmp_path):
    path = _dassl(tmp_path, DASSL)
    with pytest.raises(DataError, match=r"train\[1\], column 'classname': value 'tumor' is not in the given"):
        read_dassl_split(path, tmp_path / "images", label_space=LabelSpace(("normal",)))
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"split_demo\.json: not valid JSON"):
        read_dassl_split(path, tmp_path / "images")


# ----------------------------------------------------------------------------- MedMNIST npz


def _npz(tmp_path: Path, rgb: bool = False, **override) -> Path:
    rng = np.random.default_rng(1)
    shape = (28, 28, 3) if rgb else (28, 28)
    arrays = {}
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(n, 1).astype(np.uint8)
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp_path / "demomnist.npz"
    np.savez_compressed(path, **arrays)
    return path


def test_medmnist_happy_path(tmp_path):
    path = _npz(tmp_path, test_labels=np.array([2, 0, 1], dtype=np.int64))  # (N,) labels too
    splits = read_medmnist_npz(path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [5, 2, 3]
    assert splits["train"].labels.classnames == ("class_0", "class_1", "class_2")
    assert splits["test"].targets == [2, 0, 1]
    s = splits["train"].samples[4]
    assert s.path == path and s.array_index == 4 and s.label == 1 and s.classname == "class_1"
    named = read_medmnist_npz(path, classnames=["adipose", "debris", "lymph", "extra"])
    assert named["val"].samples[1].classname == "debris" and named["val"].labels.n_classes == 4


@pytest.mark.parametrize(
    "override, pattern",
    [
        ({"val_labels": None}, r"missing array\(s\) \['val_labels'\]; present: \[.*'train_images'"),
        ({"val_labels": np.zeros((3, 1), np.uint8)}, r"length mismatch: val_images has 2 rows, val_labels has 3"),
        ({"train_labels": np.zeros((5, 4), np.uint8)}, r"train_labels has shape \(5, 4\): multi-label .* not supported by this reader"),
        ({"test_images": np.zeros((3, 28, 28, 2), np.uint8)}, r"test_images has shape \(3, 28, 28, 2\)"),
    ],
)
def test_medmnist_errors(tmp_path, override, pattern):
    with pytest.raises(DataError, match=r"demomnist\.npz: " + pattern):
        read_medmnist_npz(_npz(tmp_path, **override))


def test_medmnist_classnames_too_short_and_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"demomnist\.npz: train_labels\[2\]: value 2 out of range for 2 class names"):
        read_medmnist_npz(_npz(tmp_path), classnames=["a", "b"])
    with pytest.raises(DataError, match=r"none\.npz.*not found"):
        read_medmnist_npz(tmp_path / "none.npz")


# ----------------------------------------------------------------------------- ImageDataset


def test_image_dataset_file_backed(tmp_path):
    split = read_dassl_split(_dassl(tmp_path, DASSL), tmp_path / "images")["train"]
    ds = ImageDataset(split, transform=_to_tensor)
    assert len(ds) == 3
    x, y = ds[1]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 4, 6) and y == 1
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert xb.shape == (3, 3, 4, 6) and yb.tolist() == [0, 1, 0]
    img, _ = ImageDataset(split)[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB"


@pytest.mark.parametrize("rgb", [False, True])
def test_image_dataset_npz_backed(tmp_path, rgb):
    path = _npz(tmp_path, rgb=rgb)
    splits = read_medmnist_npz(path)
    ds = ImageDataset(splits["test"], transform=_to_tensor)
    x, y = ds[2]
    assert x.shape == (3, 28, 28) and y == 2
    with np.load(path) as npz:
        raw = npz["test_images"][2]
    expected = raw if rgb else np.repeat(raw[..., None], 3, axis=-1)
    assert np.array_equal((x.permute(1, 2, 0) * 255).round().byte().numpy(), expected)
    assert len(ds._arrays) == 1  # loaded once, kept
    ds[0]
    assert len(ds._arrays) == 1


def test_summary_without_groups(tmp_path):
    splits = read_medmnist_npz(_npz(tmp_path))
    df = split_summary(splits["train"])
    assert df.columns.tolist() == ["label", "classname", "count"]
    assert df["count"].tolist() == [2, 2, 1]
    assert re.fullmatch(r"class_\d", df["classname"][0])
