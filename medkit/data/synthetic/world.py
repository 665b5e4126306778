"""Writing the embedded world to disk as a real dataset would look.

Each dataset × domain × size becomes a folder under `data/synthetic/` with image files,
`manifest.csv` (path,label,classname,group,split), a Dassl-style `split_<name>.json`,
`descriptions.json` ({classname: [sentences]}) and `world.json` (the spec, the version
and every class's cues). `world.json` is written last, so a folder without it is an
interrupted build and is rebuilt rather than trusted.
"""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .cues import ClassSpec, description_ensemble, implants45_classes, ortho12_classes
from .render import DOMAINS, render

WORLD_VERSION = 1  # bump when rendering or texts change: old folders are then not reused
DATASETS = {"synth_implants45": implants45_classes, "synth_ortho12": ortho12_classes}
SPLITS = ("train", "val", "test")
_DOMAIN_IDS = {d: i for i, d in enumerate(DOMAINS)}


@dataclass(frozen=True)
class WorldSpec:
    """Everything that determines the files of one synthetic dataset."""

    name: str
    domain: str = "xray"
    n_train: int = 24  # images per class (before imbalance)
    n_val: int = 6
    n_test: int = 10
    image_size: int = 64
    seed: int = 0
    imbalance: float = 1.0  # train count of the rarest class = n_train / imbalance

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"unknown synthetic dataset {self.name!r}; choose from {sorted(DATASETS)}")
        if self.domain not in DOMAINS:
            raise ValueError(f"unknown domain {self.domain!r}; choose from {DOMAINS}")
        if self.imbalance < 1:
            raise ValueError(f"imbalance must be >= 1 (got {self.imbalance})")

    @property
    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": WORLD_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.domain}-{self.image_size}px-v{WORLD_VERSION}-{self.key}"


# Per-class split sizes of each profile: tiny gives 450 test images on 45 classes and
# enough train images for 16-shot sampling with a separate validation set.
PROFILE_SIZES = {
    "synth_implants45": {"smoke": (6, 2, 3), "tiny": (24, 6, 10), "paper": (48, 12, 20)},
    "synth_ortho12": {"smoke": (6, 2, 4), "tiny": (40, 10, 25), "paper": (80, 20, 50)},
}


def spec_for(name: str, profile: str = "tiny", **overrides) -> WorldSpec:
    sizes = PROFILE_SIZES[name].get(profile) if name in PROFILE_SIZES else None
    if sizes is None:
        raise ValueError(f"no synthetic sizes for dataset {name!r} and profile {profile!r}")
    return replace(WorldSpec(name, n_train=sizes[0], n_val=sizes[1], n_test=sizes[2]), **overrides)


def class_specs(spec: WorldSpec) -> list[ClassSpec]:
    return DATASETS[spec.name](spec.seed)


def split_counts(spec: WorldSpec, n_classes: int) -> dict[str, list[int]]:
    """Images per class and split; train counts decay geometrically under imbalance."""
    decay = np.geomspace(1.0, 1.0 / spec.imbalance, n_classes) if n_classes > 1 else np.ones(1)
    train = [max(1, int(round(spec.n_train * f))) for f in decay]
    return {"train": train, "val": [spec.n_val] * n_classes, "test": [spec.n_test] * n_classes}


def image_rng(spec: WorldSpec, label: int, split: str, index: int) -> np.random.Generator:
    # The domain is not part of the seed: the same index has the same pose and geometry
    # in both domains, so natural/X-ray comparisons differ in appearance only.
    return np.random.default_rng([spec.seed, label, SPLITS.index(split), index, 7919])


def build(spec: WorldSpec, root: Path | str = "data", progress: bool = True) -> Path:
    """Write the dataset folder if it is missing or incomplete; return its path."""
    folder = Path(root) / "synthetic" / spec.folder_name
    if (folder / "world.json").is_file():
        return folder
    if folder.exists():  # partial build from an interrupted run
        shutil.rmtree(folder)
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    classes = class_specs(spec)
    counts = split_counts(spec, len(classes))
    rows: list[tuple[str, int, str, str, str]] = []
    total = sum(sum(c) for c in counts.values())
    with tqdm(total=total, desc=f"rendering {spec.name} ({spec.domain})", disable=not progress, mininterval=2) as bar:
        for label, cls in enumerate(classes):
            sub = f"{label:02d}"
            (tmp / "images" / sub).mkdir(parents=True, exist_ok=True)
            for split in SPLITS:
                for i in range(counts[split][label]):
                    rel = f"{sub}/{split}_{i:04d}.png"
                    render(cls.cues, spec.domain, spec.image_size, image_rng(spec, label, split, i)).save(tmp / "images" / rel)
                    rows.append((rel, label, cls.name, cls.group or "", split))
                    bar.update()
    _write_tables(tmp, spec, classes, rows)
    tmp.rename(folder)
    return folder


def _write_tables(folder: Path, spec: WorldSpec, classes: list[ClassSpec], rows: list[tuple]) -> None:
    grouped = any(c.group for c in classes)  # no group column for flat datasets
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "classname"] + (["group"] if grouped else []) + ["split"])
        w.writerows(("images/" + r[0], r[1], r[2]) + ((r[3],) if grouped else ()) + (r[4],) for r in rows)
    dassl = {s: [[r[0], r[1], r[2]] for r in rows if r[4] == s] for s in SPLITS}
    (folder / f"split_{spec.name}.json").write_text(json.dumps(dassl))
    descriptions = {c.name: description_ensemble(c.cues, seed=spec.seed * 1000 + i) for i, c in enumerate(classes)}
    (folder / "descriptions.json").write_text(json.dumps(descriptions, indent=1))
    world = {
        "spec": asdict(spec),
        "version": WORLD_VERSION,
        "classes": [{"name": c.name, "group": c.group, "cues": c.cues.as_dict()} for c in classes],
        "n_outlier_sentences": 3,
    }
    (folder / "world.json").write_text(json.dumps(world, indent=1))
