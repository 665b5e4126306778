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


# --------------------------------------------------------------------------- multi-label chest files

CHEXPERT = ("No Finding", "Cardiomegaly", "Edema", "Pleural Effusion", "Pneumothorax", "Support Devices")
NIH = ("Cardiomegaly", "Effusion", "Emphysema", "Hernia")


def _chest(findings: dict[str, int], seed: int) -> np.ndarray:
    """A grey 32-px film whose bright patches say the findings (one place per finding name)."""
    rng = np.random.default_rng(seed)
    px = rng.normal(60, 12, (SIZE, SIZE))
    for name, on in findings.items():
        if on == 1:
            k = sum(map(ord, name)) % 8
            px[(k // 4) * 16:(k // 4) * 16 + 8, (k % 4) * 8:(k % 4) * 8 + 8] += 140
    return np.clip(px, 0, 255).astype(np.uint8)


def chexpert_folder(root: Path, patients: int = 24) -> Path:
    """CheXpert-v1.0-small as it ships: train.csv (1.0 / 0.0 / -1.0 / blank, frontal and lateral
    views) and valid.csv, images under CheXpert-v1.0-small/{train,valid}/patientNNNNN/…; and a
    PsPG JSONL of reports for the train images. Returns the CheXpert-v1.0-small folder."""
    rng = np.random.default_rng(7)
    base = root / "CheXpert-v1.0-small"
    reports = []
    for split, n, first in (("train", patients, 1), ("valid", max(4, patients // 3), 60001)):
        rows = []
        for p in range(first, first + n):
            for view in ("frontal", "lateral") if p % 4 == 0 else ("frontal",):
                labels = {f: int(rng.random() < 0.35) for f in CHEXPERT[1:]}
                rel = f"CheXpert-v1.0-small/{split}/patient{p:05d}/study1/view{1 if view == 'frontal' else 2}_{view}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_chest(labels, p)).save(root / rel)
                cells = {f: ("1.0" if v else ("" if rng.random() < 0.5 else "0.0")) for f, v in labels.items()}
                if split == "train" and p % 5 == 0:
                    cells["Edema"] = "-1.0"  # uncertain
                cells = {"No Finding": "" if any(labels.values()) else "1.0", **cells}
                rows.append({"Path": rel, "Sex": "Female", "Age": 60, "Frontal/Lateral": view.capitalize(),
                             "AP/PA": "AP" if view == "frontal" else "", **cells})
                if split == "train":
                    present = [f for f, v in labels.items() if v]
                    reports.append({"filepath": rel, "text": "Findings: " + (", ".join(present) or "no acute disease") + ".",
                                    "labels": present or ["No Finding"]})
        with open(base / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT])
            writer.writeheader()
            writer.writerows(rows)
    (root / "reports.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reports))
    return base


def nih_folder(root: Path, patients: int = 16) -> Path:
    """ChestX-ray14's layout: Data_Entry_2017.csv (A|B or No Finding), images/, train_val_list.txt
    and test_list.txt. Returns the CSV."""
    rng = np.random.default_rng(11)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows, lists = [], {"train_val_list.txt": [], "test_list.txt": []}
    for p in range(1, patients + 1):
        for k in range(2):
            name = f"{p:08d}_{k:03d}.png"
            labels = {f: int(rng.random() < 0.3) for f in NIH}
            Image.fromarray(_chest({"Pleural Effusion" if f == "Effusion" else f: v for f, v in labels.items()}, 500 + p)
                            ).save(root / "images" / name)
            present = "|".join(f for f, v in labels.items() if v) or "No Finding"
            rows.append([name, present, k, p, 50, "M", "PA", 32, 32, 0.14, 0.14])
            lists["test_list.txt" if p % 2 else "train_val_list.txt"].append(name)
    with open(root / "Data_Entry_2017.csv", "w", newline="") as f:
        f.write("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")
        csv.writer(f).writerows(rows)
    for name, images in lists.items():
        (root / name).write_text("\n".join(images) + "\n")
    return root / "Data_Entry_2017.csv"


def all_formats(root: Path) -> dict[str, Path]:
    return {"imagefolder": imagefolder(root / "folder"), "csv": manifest_without_split(root / "csv"),
            "dassl": dassl_split(root / "dassl"), "npz": medmnist_npz(root / "npz")}


if __name__ == "__main__":
    for kind, path in all_formats(Path(sys.argv[1])).items():
        print(kind, path)


def medvlsm_folder(root: Path, counts=(8, 4, 4)) -> Path:
    """A MedVLSM-layout dataset as users have one: JPG images of several non-square sizes,
    0/255 PNG masks, `anns/{train,val,test}.json` with prompts p0-p9 (p3 a list of phrasings)."""
    import json

    from PIL import Image

    rng = np.random.default_rng(7)
    for sub in ("images", "masks", "anns"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "val", "test"), counts):
        records = []
        for i in range(n):
            h, w = (40, 60) if i % 2 else (52, 44)
            img = (rng.random((h, w, 3)) * 80 + 60).astype(np.uint8)
            mask = np.zeros((h, w), np.uint8)
            y, x, r = rng.integers(12, h - 12), rng.integers(12, w - 12), rng.integers(5, 10)
            yy, xx = np.mgrid[:h, :w]
            mask[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = 255
            img[mask > 0] = [200, 90, 80]
            name = f"{split}_{i}"
            Image.fromarray(img).save(root / "images" / f"{name}.jpg", quality=95)
            Image.fromarray(mask).save(root / "masks" / f"{name}.png")
            side = "left" if x < w / 2 else "right"
            prompts = {"p0": "", "p1": "polyp", "p2": "round polyp", "p3": ["red polyp", "reddish polyp"],
                       "p4": "small polyp", "p5": "one polyp", "p6": f"polyp on the {side}",
                       "p7": "a polyp is a growth of tissue", "p8": "one small red round polyp",
                       "p9": f"one small red round polyp on the {side}"}
            records.append({"img_name": f"{name}.jpg", "mask_name": f"{name}.png", "bbox": [int(x - r), int(y - r), 2 * int(r), 2 * int(r)],
                            "cat": "polyp", "sentences": [prompts["p9"]], "prompts": prompts})
        (root / "anns" / f"{split}.json").write_text(json.dumps(records))
    return root
