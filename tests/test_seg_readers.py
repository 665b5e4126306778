"""Segmentation readers: MedVLSM's annotation JSON, image/mask folders and a CSV, with errors
that name the file, the record and the value."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from medkit.data.checks import DataError
from medkit.data.segmentation import read_mask, read_mask_folders, read_medvlsm, read_seg_csv


def _pair(root, name, size=(16, 16), mask_values=(0, 255), suffix=".png"):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(root / "images" / f"{name}.jpg")
    m = np.full(size, mask_values[0], np.uint8)
    m[4:10, 4:10] = mask_values[1]
    Image.fromarray(m).save(root / "masks" / f"{name}{suffix}")


def _record(name, prompts=None):
    return {"img_name": f"{name}.jpg", "mask_name": f"{name}.png", "bbox": [4, 4, 6, 6], "cat": "polyp",
            "sentences": [{"sent": "a pink polyp"}],
            "prompts": prompts or {"p0": "", "p1": "polyp", "p3": ["pink polyp", "red polyp"]}}


def test_medvlsm_layout_reads_prompts_strings_and_lists(tmp_path):
    for n in ("a", "b"):
        _pair(tmp_path, n)
    (tmp_path / "anns").mkdir()
    (tmp_path / "anns" / "train.json").write_text(json.dumps([_record("a"), _record("b")]))
    samples = read_medvlsm(tmp_path, "train", prompt_keys=["p1", "p3"])
    assert [s.image.name for s in samples] == ["a.jpg", "b.jpg"] and samples[0].category == "polyp"
    assert samples[0].prompt("p1") == "polyp" and samples[0].prompt("p0") == ""
    drawn = {samples[0].prompt("p3", random.Random(seed)) for seed in range(20)}
    assert drawn == {"pink polyp", "red polyp"}
    mask = read_mask(samples[0].mask)
    assert mask.dtype == bool and mask.sum() == 36
    with pytest.raises(KeyError, match="p9"):
        samples[0].prompt("p9")


def test_medvlsm_errors_name_the_file_the_record_and_the_value(tmp_path):
    _pair(tmp_path, "ok")
    _pair(tmp_path, "grey", mask_values=(0, 128))
    (tmp_path / "masks" / "grey.png").unlink()
    m = np.zeros((16, 16), np.uint8)
    m[0, 0], m[1, 1] = 100, 255  # three values: not binary
    Image.fromarray(m).save(tmp_path / "masks" / "grey.png")
    _pair(tmp_path, "small", size=(8, 8))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / "small.jpg")  # 16 vs 8
    (tmp_path / "anns").mkdir()
    records = [_record("ok"), _record("grey"), _record("small"), _record("gone"),
               {"img_name": "x.jpg"}, _record("ok", {"p1": "polyp", "p12": "?"}), _record("ok", {"p1": 3})]
    (tmp_path / "anns" / "test.json").write_text(json.dumps(records))
    with pytest.raises(DataError) as err:
        read_medvlsm(tmp_path, "test", prompt_keys=["p1"])
    msg = str(err.value)
    assert "test.json: 7 problems" in msg  # every problem of the file in one error
    for expected in ("record 1 (grey.jpg)", "not a binary mask: values [0, 100, 255]",
                     "record 2 (small.jpg)", "16×16 but mask small.png is 8×8",
                     "record 3 (gone.jpg)", "gone.jpg not found", "record 4 (x.jpg)", "missing keys ['mask_name', 'prompts']",
                     "unknown prompt keys ['p12']", "prompt 'p1' is 3"):
        assert expected in msg, expected
    with pytest.raises(DataError, match=r"annotation files there: \['test.json'\]"):
        read_medvlsm(tmp_path, "val")


def test_folders_and_csv_pair_images_with_masks(tmp_path):
    for n in ("c1", "c2"):
        _pair(tmp_path, n, suffix=".jpg")  # JPEG masks: thresholded, compression noise and all
    samples = read_mask_folders(tmp_path / "images", tmp_path / "masks", prompt="lesion")
    assert len(samples) == 2 and samples[0].prompt("p1") == "lesion"
    assert read_mask(samples[0].mask).sum() == 36
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / "lonely.jpg")
    with pytest.raises(DataError, match="lonely.jpg: no mask named lonely"):
        read_mask_folders(tmp_path / "images", tmp_path / "masks")
    (tmp_path / "list.csv").write_text("image,mask,prompt,split\nimages/c1.jpg,masks/c1.jpg,a lesion,train\n"
                                       "images/c2.jpg,masks/c2.jpg,,test\nimages/c3.jpg,masks/c3.jpg,x,train\n")
    with pytest.raises(DataError, match=r"row 3 \(line 4\): image .*c3.jpg not found"):
        read_seg_csv(tmp_path / "list.csv")
    train = read_seg_csv(tmp_path / "list.csv", split="train", check=False)
    assert [s.prompt("p1") for s in train] == ["a lesion", "x"]
    assert [s.image.name for s in read_seg_csv(tmp_path / "list.csv", split="test")] == ["c2.jpg"]
