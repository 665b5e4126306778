"""A user's own small dataset, built in each supported format (the way a new user brings data).

Six classes whose names carry underscores (as Dassl split files keep them), 12 images each,
colour-coded so that even a tiny model learns something; every format has a
`descriptions.json` beside it. Used by the tests and by `python tests/userdata.py DIR`.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("dental_screw", "hip_prosthesis", "knee_implant", "pacemaker", "shoulder_plate", "spinal_rod")
GROUPS = {"dental_screw": "head", "hip_prosthesis": "joint", "knee_implant": "joint", "pacemaker": "chest",
          "shoulder_plate": "joint", "spinal_rod": "chest"}
PER_CLASS = 12
SIZE = 32


def _image(label: int, i: int) -> np.ndarray:
    rng = np.random.default_rng(1000 * label + i)
    base = np.zeros((SIZE, SIZE, 3), np.float64)
    base[..., label % 3] = 140 + 20 * (label // 3)
    base[label * 5:label * 5 + 6, :, :] += 80  # a band whose height says the class
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def descriptions(names) -> dict[str, list[str]]:
    return {c: [f"an X-ray showing a {c.replace('_', ' ')}", f"a radiograph with a {c.replace('_', ' ')} in it",
                f"the {c.replace('_', ' ')} appears as a bright metal shape"] for c in names}


def _write_images(root: Path) -> list[tuple[str, int, str]]:
    rows = []
    for label, c in enumerate(CLASSES):
        for i in range(PER_CLASS):
            rel = f"{c}/{c}_{i:02d}.png"
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(label, i)).save(root / rel)
            rows.append((rel, label, c))
    return rows


def imagefolder(root: Path) -> Path:
    _write_images(root)
    (root / "descriptions.json").write_text(json.dumps(descriptions(CLASSES)))
    return root


def manifest_without_split(root: Path) -> Path:
    rows = _write_images(root / "images")
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "classname", "group"])
        w.writerows([f"images/{rel}", label, c, GROUPS[c]] for rel, label, c in rows)
    (root / "descriptions.json").write_text(json.dumps(descriptions(CLASSES)))
    return root / "manifest.csv"


def dassl_split(root: Path) -> Path:
    rows = _write_images(root / "images")
    split = {"train": [], "val": [], "test": []}
    for rel, label, c in rows:
        i = int(rel[-6:-4])
        split["train" if i < 6 else "val" if i < 8 else "test"].append([rel, label, c])
    (root / "split_userdata.json").write_text(json.dumps(split))
    (root / "descriptions.json").write_text(json.dumps(descriptions(CLASSES)))
    return root / "split_userdata.json"


def medmnist_npz(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, lo, hi in (("train", 0, 6), ("val", 6, 8), ("test", 8, 12)):
        arrays[f"{name}_images"] = np.stack([_image(lab, i) for lab in range(len(CLASSES)) for i in range(lo, hi)])
        arrays[f"{name}_labels"] = np.array([[lab] for lab in range(len(CLASSES)) for _ in range(lo, hi)])
    np.savez(root / "userdata.npz", **arrays)
    (root / "descriptions.json").write_text(json.dumps(descriptions([f"class_{i}" for i in range(len(CLASSES))])))
    return root / "userdata.npz"


def all_formats(root: Path) -> dict[str, Path]:
    return {"imagefolder": imagefolder(root / "folder"), "csv": manifest_without_split(root / "csv"),
            "dassl": dassl_split(root / "dassl"), "npz": medmnist_npz(root / "npz")}


if __name__ == "__main__":
    for kind, path in all_formats(Path(sys.argv[1])).items():
        print(kind, path)
