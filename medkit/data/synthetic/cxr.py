"""The embedded multi-label chest-radiograph world, written to disk in real dataset formats.

One patient/study generator over a universe of 24 finding types (`FINDINGS`; the tables
live in `cxr_world.py`), each a visual cue at its anatomical place (`cxr_render.py`) and
a phrase in a report (`cxr_report.py`). Findings co-occur through latent processes (`PROCESSES`: heart
failure → cardiomegaly + edema + effusion, infection → pneumonia + consolidation +
opacity, ICU → devices + effusion + atelectasis, COPD → emphysema, …); each finding also
has a base rate, solved so that its marginal prevalence matches the dataset's target
(CheXpert-like long tail for the training set). Chronic processes belong to the patient,
acute ones to the study, so a patient's studies resemble each other.

Three datasets (`CXR_DATASETS`) sample this world with their own prevalences and
acquisition (a domain shift) and name the findings as the real datasets do (`LABEL_MAPS`;
the mapping is internal: readers and the synonym matcher work from the names alone):
- `synth_cxr`, CheXpert-v1.0-small layout (train/valid/test CSVs, frontal + lateral views,
  uncertain -1.0 and blank cells in train.csv only) plus `reports.jsonl` (PsPG's layout, the
  stand-in for MIMIC-CXR) with a report per train image naming every finding, unseen ones too;
- `synth_cxr14`, ChestX-ray14 layout (Data_Entry_2017.csv, images/, train_val_list.txt, test_list.txt);
- `synth_vindr`, VinDr-CXR names in a generic `labels.csv` (path,split,<finding columns>).
Ten universe findings (emphysema, fibrosis, ILD, calcification, aortic enlargement, lung
cavity, hernia, infiltration, clavicle fracture, mediastinal shift) have no CheXpert label:
they are the unseen findings of the evaluation sets.

"No Finding" follows the CheXpert labeler: 1 when none of the dataset's own pathology
labels is positive; support devices do not count as a pathology, and findings the dataset
has no label for do not cancel it (an emphysema-only CheXpert image is "No Finding").
In train.csv, No Finding is 1.0 when no pathology is positive or uncertain, else blank.

A build is deterministic given its `CXRSpec` and cached under
`data_root/synthetic/<name>-<size>px-v<CXR_VERSION>-<key>/`; `world.json` is written last,
so a folder without it is an interrupted build and is rebuilt.
"""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .cxr_render import DEVICES, render_cxr
from .cxr_report import write_report
from .cxr_world import (CHRONIC, CXR_DATASETS, DATASET_DEFS, FINDINGS, LABEL_MAPS, NO_FINDING, NOT_PATHOLOGY,
                        PROCESSES, PROFILE_SIZES, Finding)

__all__ = ["CXR_DATASETS", "CXR_VERSION", "FINDINGS", "LABEL_MAPS", "PROCESSES", "PROFILE_SIZES", "CXRImage", "CXRSpec",
           "Study", "base_rates", "build_cxr", "chexpert_cells", "cxr_spec", "expected_prevalence", "image_path",
           "labels_of", "plan", "render_cxr", "sample_study", "write_cxr", "write_report"]

CXR_VERSION = 1  # bump when sampling, rendering or texts change: old folders are then not reused
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CXRSpec:
    """Everything that determines the files of one synthetic chest-radiograph dataset."""

    name: str
    n_train: int = 1400  # images per split
    n_val: int = 300
    n_test: int = 500
    image_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in DATASET_DEFS:
            raise ValueError(f"unknown synthetic CXR dataset {self.name!r}; choose from {sorted(DATASET_DEFS)}")
        if min(self.n_train, self.n_val, self.n_test) < 1 or self.image_size < 32:
            raise ValueError(f"split sizes must be >= 1 and image_size >= 32 (got {self})")

    @property
    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": CXR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.image_size}px-v{CXR_VERSION}-{self.key}"


def cxr_spec(name: str, profile: str = "tiny", **overrides: Any) -> CXRSpec:
    sizes = PROFILE_SIZES.get(name, {}).get(profile)
    if sizes is None:
        raise ValueError(f"no synthetic CXR sizes for dataset {name!r} and profile {profile!r}")
    return replace(CXRSpec(name, *sizes), **overrides)


def base_rates(name: str) -> dict[str, float]:
    """Per-finding base rates that make each marginal equal its target, given the processes.

    P(f) = 1 - (1 - base_f) * prod_k (1 - pi_k q_kf) for independent processes; where the
    processes alone exceed the target the base rate is 0 and the marginal a little higher.
    """
    ds = DATASET_DEFS[name]
    rates = {}
    for f in FINDINGS:
        keep = np.prod([1 - pi * PROCESSES[k].get(f.id, 0.0) for k, pi in ds.processes.items()])
        target = ds.prevalence.get(f.id, f.prevalence)
        rates[f.id] = float(np.clip(1 - (1 - target) / keep, 0, 1))
    return rates


def expected_prevalence(name: str) -> dict[str, float]:
    ds, base = DATASET_DEFS[name], base_rates(name)
    return {f.id: round(1 - (1 - base[f.id]) * float(np.prod([1 - pi * PROCESSES[k].get(f.id, 0.0)
                                                            for k, pi in ds.processes.items()])), 4) for f in FINDINGS}


@dataclass(frozen=True)
class Study:
    """One examination: its findings (id -> attrs) and how its report mentions them."""

    findings: dict[str, dict[str, Any]]
    uncertain: frozenset[str]  # present, hedged
    unsure: frozenset[str]  # absent, hedged
    negated: frozenset[str]  # absent, negated


@dataclass(frozen=True)
class CXRImage:
    split: str
    patient: int  # global patient number (1-based, unique over splits)
    local: int  # patient index within the split (seeds)
    study: int  # 1-based
    view_index: int  # 1-based within the study
    view: str  # frontal / lateral
    ap: bool
    age: int
    sex: str  # Male / Female
    exam: Study


def _attrs(f: Finding, rng: np.random.Generator, shared: dict[str, Any]) -> dict[str, Any]:
    a: dict[str, Any] = {"severity": str(rng.choice(["mild", "moderate", "severe"], p=[.4, .4, .2]))}
    if f.laterality == "lr":
        a["side"] = str(rng.choice(["right", "left", "bilateral"], p=[.42, .38, .2]))
    elif f.laterality == "uni":
        a["side"] = str(rng.choice(["right", "left"]))
    # where the renderer draws it; atelectasis and infiltration are basal cues
    zone_p = {"lung_cavity": [.6, .3, .1], "consolidation": [.15, .3, .55], "pneumonia": [.15, .3, .55],
              "atelectasis": [0, 0, 1], "infiltration": [0, 0, 1]}.get(f.id, [1 / 3] * 3)
    a["zone"] = str(rng.choice(["upper", "mid", "lower"], p=zone_p))
    if f.id in ("lung_opacity", "consolidation", "pneumonia"):  # one infectious focus: same place
        a.update(shared.setdefault("airspace", {k: a[k] for k in ("side", "zone")}))
    if f.id == "support_devices":
        p = np.array([.5, .55, .45, .2, .3])
        a["devices"] = [d for d, q in zip(DEVICES, p) if rng.random() < q] or [str(rng.choice(DEVICES, p=p / p.sum()))]
    return a


def sample_study(name: str, rng: np.random.Generator, chronic: set[str], base: dict[str, float]) -> tuple[Study, set[str]]:
    ds = DATASET_DEFS[name]
    active = chronic | {k for k, pi in ds.processes.items() if k not in CHRONIC and rng.random() < pi}
    findings: dict[str, dict[str, Any]] = {}
    shared: dict[str, Any] = {}
    for f in FINDINGS:
        p = 1 - (1 - base[f.id]) * np.prod([1 - PROCESSES[k].get(f.id, 0.0) for k in active])
        if rng.random() < p:
            findings[f.id] = _attrs(f, rng, shared)
    draws = rng.random((3, len(FINDINGS)))
    unc = frozenset(f.id for f, r in zip(FINDINGS, draws[0]) if f.id in findings and r < f.uncertain)
    unsure = frozenset(f.id for f, r in zip(FINDINGS, draws[1]) if f.id not in findings and r < f.unsure)
    neg = frozenset(f.id for f, r in zip(FINDINGS, draws[2]) if f.id not in findings and f.id not in unsure and r < f.negated)
    return Study(findings, unc, unsure, neg), active


def _seed(spec: CXRSpec, *parts: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, zlib.crc32(spec.name.encode()), *parts])


def plan(spec: CXRSpec) -> list[CXRImage]:
    """Every image of the dataset with its study, in file order; patients never cross splits."""
    ds, base = DATASET_DEFS[spec.name], base_rates(spec.name)
    images: list[CXRImage] = []
    patient = 0
    for si, split in enumerate(SPLITS):
        budget, local = (spec.n_train, spec.n_val, spec.n_test)[si], 0
        while budget > 0:
            rng = _seed(spec, si, local, 1)
            chronic = {k for k in CHRONIC if rng.random() < ds.processes[k]}
            age0 = int(np.clip(rng.normal(60 + 8 * ("vascular" in chronic) + 5 * ("heart_failure" in chronic), 16), 18, 90))
            sex = "Male" if rng.random() < 0.55 else "Female"
            patient += 1
            study = 0
            while budget > 0 and (study == 0 or (study < 4 and rng.random() < ds.follow_up)):
                study += 1
                exam, active = sample_study(spec.name, rng, chronic, base)
                age = int(np.clip(age0 + (study - 1) * rng.integers(0, 2) - 12 * ("trauma" in active), 18, 90))
                ap = bool(rng.random() < ds.ap["icu" in active])
                views = ["frontal"] + (["lateral"] if rng.random() < ds.lateral and budget > 1 else [])
                for vi, view in enumerate(views, 1):
                    images.append(CXRImage(split, patient, local, study, vi, view, ap and view == "frontal", age, sex, exam))
                budget -= len(views)
            local += 1
    return images


def labels_of(name: str, exam: Study) -> dict[str, int]:
    """Certain 0/1 labels of one study in the dataset's names."""
    out = {lab: int(any(f in exam.findings for f in ids)) for lab, ids in LABEL_MAPS[name].items() if lab not in NO_FINDING}
    none = int(not any(v for lab, v in out.items() if lab not in NOT_PATHOLOGY))
    return {lab: none if lab in NO_FINDING else out[lab] for lab in LABEL_MAPS[name]}


def chexpert_cells(exam: Study, certain: bool) -> dict[str, str]:
    """CheXpert CSV cells: '1.0'/'0.0' when certain, else also '-1.0' (hedged) and '' (not mentioned)."""
    truth = labels_of("synth_cxr", exam)
    if certain:
        return {lab: f"{float(v):.1f}" for lab, v in truth.items()}
    cells = {}
    for lab, ids in LABEL_MAPS["synth_cxr"].items():
        if lab == "No Finding":
            continue
        present = [f for f in ids if f in exam.findings]
        if present:
            cells[lab] = "-1.0" if all(f in exam.uncertain for f in present) else "1.0"
        else:
            cells[lab] = "-1.0" if any(f in exam.unsure for f in ids) else ("0.0" if any(f in exam.negated for f in ids) else "")
    pathology = any(cells[lab] in ("1.0", "-1.0") for lab in cells if lab not in NOT_PATHOLOGY)
    return {"No Finding": "" if pathology else "1.0", **cells}


def _vindr_id(spec: CXRSpec, img: CXRImage) -> str:
    return hashlib.md5(f"{spec.seed}:{spec.name}:{img.split}:{img.local}".encode()).hexdigest()


def image_path(spec: CXRSpec, img: CXRImage) -> str:
    """Path of the image file relative to the dataset folder, in the dataset's own layout."""
    if spec.name == "synth_cxr":
        split = {"val": "valid"}.get(img.split, img.split)
        return f"CheXpert-v1.0-small/{split}/patient{img.patient:05d}/study{img.study}/view{img.view_index}_{img.view}.png"
    if spec.name == "synth_cxr14":
        return f"images/{img.patient:08d}_{img.study - 1:03d}.png"
    return f"images/{'test' if img.split == 'test' else 'train'}/{_vindr_id(spec, img)}.png"


def _write_chexpert(folder: Path, spec: CXRSpec, images: list[CXRImage]) -> None:
    root = folder / "CheXpert-v1.0-small"
    labels = list(LABEL_MAPS["synth_cxr"])
    for split, fname in (("train", "train.csv"), ("val", "valid.csv"), ("test", "test.csv")):
        with open(root / fname, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *labels])
            for img in (i for i in images if i.split == split):
                cells = chexpert_cells(img.exam, certain=split != "train")
                appa = ("AP" if img.ap else "PA") if img.view == "frontal" else ""
                w.writerow([image_path(spec, img), img.sex, img.age, img.view.capitalize(), appa,
                            *(cells[lab] for lab in labels)])
    with open(folder / "reports.jsonl", "w") as fh:
        for img in (i for i in images if i.split == "train"):
            rng = _seed(spec, 0, img.local, img.study, 13)  # one report per study, shared by its views
            exam = img.exam
            text = write_report(exam.findings, exam.uncertain, exam.unsure, exam.negated, rng)
            pos = [lab for lab, v in labels_of("synth_cxr", exam).items() if v]
            fh.write(json.dumps({"filepath": image_path(spec, img), "text": text, "labels": pos}) + "\n")


def _write_cxr14(folder: Path, spec: CXRSpec, images: list[CXRImage]) -> None:
    names = sorted(lab for lab in LABEL_MAPS["synth_cxr14"] if lab != "No Finding")
    with open(folder / "Data_Entry_2017.csv", "w", newline="") as fh:
        # NIH's header, verbatim: its bracketed names contain commas, so it is not csv-quoted
        fh.write("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                 "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")
        w = csv.writer(fh, lineterminator="\n")
        for img in images:
            lab = labels_of("synth_cxr14", img.exam)
            found = "|".join(n for n in names if lab[n]) or "No Finding"
            rng = _seed(spec, 5, img.patient, img.study)
            spacing = 0.143 if rng.random() < 0.8 else 0.168
            w.writerow([Path(image_path(spec, img)).name, found, img.study - 1, img.patient, img.age, img.sex[0],
                        "AP" if img.ap else "PA", int(rng.integers(2500, 3057)), int(rng.integers(2048, 3057)), spacing, spacing])
    for fname, splits in (("train_val_list.txt", ("train", "val")), ("test_list.txt", ("test",))):
        (folder / fname).write_text("".join(Path(image_path(spec, i)).name + "\n" for i in images if i.split in splits))


def _write_vindr(folder: Path, spec: CXRSpec, images: list[CXRImage]) -> None:
    labels = list(LABEL_MAPS["synth_vindr"])
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "split", *labels])
        for img in images:
            lab = labels_of("synth_vindr", img.exam)
            w.writerow([image_path(spec, img), "test" if img.split == "test" else "train", *(lab[n] for n in labels)])


_WRITERS = {"synth_cxr": _write_chexpert, "synth_cxr14": _write_cxr14, "synth_vindr": _write_vindr}


def _world(spec: CXRSpec, images: list[CXRImage]) -> dict[str, Any]:
    seen = {f for ids in LABEL_MAPS["synth_cxr"].values() for f in ids}
    expected, ds = expected_prevalence(spec.name), DATASET_DEFS[spec.name]
    measured = {}
    for split in SPLITS:
        rows = [labels_of(spec.name, i.exam) for i in images if i.split == split]
        measured[split] = {lab: round(sum(r[lab] for r in rows) / max(1, len(rows)), 4) for lab in LABEL_MAPS[spec.name]}
    return {
        "spec": asdict(spec), "version": CXR_VERSION, "dataset": spec.name, "description": ds.description,
        "labels": list(LABEL_MAPS[spec.name]),
        "label_map": {k: list(v) for k, v in LABEL_MAPS[spec.name].items()},
        "label_maps": {d: {k: list(v) for k, v in m.items()} for d, m in LABEL_MAPS.items()},
        "universe": [{"id": f.id, "name": f.name, "cue": f.cue, "prevalence": expected[f.id],
                      "seen_in_training": f.id in seen, "laterality": f.laterality} for f in FINDINGS],
        "processes": {k: {"p": ds.processes[k], "chronic": k in CHRONIC, "effects": v} for k, v in PROCESSES.items()},
        "acquisition": asdict(ds.acquisition),
        "counts": {s: sum(i.split == s for i in images) for s in SPLITS},
        "label_prevalence": measured,
        "no_finding": "1 when none of the dataset's pathology labels is positive; "
                      "support devices and findings without a label of this dataset do not count",
    }


def write_cxr(spec: CXRSpec, data_root: str | Path = "data", progress: bool = True) -> Path:
    """Write the dataset folder if it is missing or incomplete; return its path."""
    folder = Path(data_root) / "synthetic" / spec.folder_name
    if (folder / "world.json").is_file():
        return folder
    for stale in (folder, folder.with_name(folder.name + ".partial")):
        if stale.exists():  # an interrupted build
            shutil.rmtree(stale)
    tmp = folder.with_name(folder.name + ".partial")
    images = plan(spec)
    acq, made = DATASET_DEFS[spec.name].acquisition, set()
    for img in tqdm(images, desc=f"rendering {spec.name}", disable=not progress, mininterval=2):
        out = tmp / image_path(spec, img)
        if out.parent not in made:
            out.parent.mkdir(parents=True, exist_ok=True)
            made.add(out.parent)
        rng = _seed(spec, SPLITS.index(img.split), img.local, img.study, img.view_index, 17)
        render_cxr(img.exam.findings, img.view, spec.image_size, rng, acq, ap=img.ap).save(out, optimize=False)
    if spec.name == "synth_cxr":
        (tmp / "CheXpert-v1.0-small").mkdir(parents=True, exist_ok=True)
    _WRITERS[spec.name](tmp, spec, images)
    (tmp / "world.json").write_text(json.dumps(_world(spec, images), indent=1))  # last: marks the build complete
    tmp.rename(folder)
    return folder


def build_cxr(name: str, profile: str = "tiny", data_root: str | Path = "data", progress: bool = True, **overrides: Any) -> Path:
    """Build (once) and return the folder of synthetic CXR dataset `name` at `profile` sizes."""
    return write_cxr(cxr_spec(name, profile, **overrides), data_root, progress)
