"""Data: the synthetic world, readers for real datasets, label spaces, prompt ensembles.

`load_dataset` is the one entry point notebooks use: a synthetic name
(`synth_implants45`, `synth_ortho12`) or a path to a real dataset (a Dassl
`split_*.json`, a manifest `.csv`, a MedMNIST `.npz`, or an image folder).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .labels import LabelSpace, Sample, Split
from .readers import (DataError, ImageDataset, load_image, read_dassl_split, read_imagefolder,
                      read_manifest_csv, read_medmnist_npz, split_summary)
from .synthetic import DATASETS as SYNTHETIC_DATASETS

__all__ = ["DataError", "Dataset", "ImageDataset", "LabelSpace", "Sample", "Split", "load_dataset",
           "load_descriptions", "load_image", "read_dassl_split", "read_imagefolder", "read_manifest_csv",
           "read_medmnist_npz", "split_summary"]


@dataclass
class Dataset:
    """Splits over one label space, plus the class descriptions when the dataset has them."""

    name: str
    splits: dict[str, Split]
    labels: LabelSpace
    root: Path
    descriptions: dict[str, list[str]] | None = None
    domain: str | None = None
    meta: dict = field(default_factory=dict)

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            raise KeyError(f"dataset {self.name!r} has no split {split!r}; splits: {sorted(self.splits)}")
        return self.splits[split]


def load_dataset(name: str | Path, domain: str = "xray", profile: str = "tiny", data_root: str | Path = "data",
                 progress: bool = True, **world_overrides) -> Dataset:
    """Load a synthetic dataset (built and cached on first use) or a real one from a path."""
    if str(name) in SYNTHETIC_DATASETS:
        return _load_synthetic(str(name), domain, profile, Path(data_root), progress, world_overrides)
    return _load_real(Path(name))


def _load_synthetic(name: str, domain: str, profile: str, data_root: Path, progress: bool, overrides: dict) -> Dataset:
    from .synthetic.world import build, spec_for

    spec = spec_for(name, profile, domain=domain, **overrides)
    folder = build(spec, data_root, progress=progress)
    manifest = folder / "manifest.csv"
    splits = {s: read_manifest_csv(manifest, split_name=s) for s in ("train", "val", "test")}
    labels = splits["train"].labels
    descriptions = load_descriptions(folder / "descriptions.json", labels)
    world = json.loads((folder / "world.json").read_text())
    return Dataset(name, splits, labels, folder, descriptions, domain, meta={"world": world})


def _load_real(path: Path) -> Dataset:
    if not path.exists():
        raise DataError(f"{path}: dataset not found (neither a synthetic name {sorted(SYNTHETIC_DATASETS)} nor an existing path)")
    if path.suffix == ".json":
        splits = read_dassl_split(path, path.parent / "images" if (path.parent / "images").is_dir() else path.parent)
    elif path.suffix == ".csv":
        splits = _manifest_splits(path)
    elif path.suffix == ".npz":
        splits = read_medmnist_npz(path)
    elif path.is_dir():
        split_files = sorted(path.glob("split_*.json"))
        if split_files:
            return _load_real(split_files[0])
        splits = {"all": read_imagefolder(path)}
    else:
        raise DataError(f"{path}: unsupported dataset file (expected split_*.json, .csv, .npz or a folder)")
    labels = next(iter(splits.values())).labels
    desc_file = (path if path.is_dir() else path.parent) / "descriptions.json"
    descriptions = load_descriptions(desc_file, labels) if desc_file.is_file() else None
    return Dataset(path.stem, splits, labels, path if path.is_dir() else path.parent, descriptions)


def _manifest_splits(path: Path) -> dict[str, Split]:
    import pandas as pd

    header = pd.read_csv(path, nrows=0).columns
    if "split" not in header:
        return {"all": read_manifest_csv(path)}
    names = pd.read_csv(path, usecols=["split"])["split"].astype(str).unique()
    return {s: read_manifest_csv(path, split_name=s) for s in names}


def load_descriptions(path: Path, labels: LabelSpace) -> dict[str, list[str]]:
    """Read `{classname: [sentences]}` and check it covers exactly the label space."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: descriptions file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object {{classname: [sentences]}}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(labels.classnames))
    missing = [c for c in labels.classnames if c not in data]
    if unknown or missing:
        raise DataError(f"{path}: classes not in the label space: {unknown[:5]}; classes without sentences: {missing[:5]}")
    for cls, sentences in data.items():
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) and s.strip() for s in sentences):
            raise DataError(f"{path}: class {cls!r}: expected a non-empty list of non-empty strings")
    return {c: list(data[c]) for c in labels.classnames}
