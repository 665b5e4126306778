"""Data: the synthetic world, readers for real datasets, label spaces, prompt ensembles.

`load_dataset` is the one entry point notebooks use: a synthetic name
(`synth_implants45`, `synth_ortho12`) or a path to a real dataset (a Dassl
`split_*.json`, a manifest `.csv`, a MedMNIST `.npz`, or an image folder; or a multi-label
one: CheXpert's CSVs, ChestX-ray14's Data_Entry_2017.csv, PsPG's JSONL or a generic
multi-label CSV, see `multilabel.py`, whose label space is a `MultiLabelSpace`). A real dataset
always comes back with train/val/test (derived when missing, see `splits.py`), every image
verified once (`verify`, cached), and an identity `Dataset.id` = name + content fingerprint
that rows, figures and checkpoints are keyed by.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .checks import DataError, DataWarning, Problems, decode_text, verify_images
from .images import check_intensity, load_image
from .findings import (SYNONYMS, canonical_finding, match_label_spaces, normalise_finding, seen_unseen_table,
                       synonyms_for)
from .labels import LabelSpace, MultiLabelSpace, Sample, Split
from .multilabel import (NIH_CSV, check_uncertainty, multilabel_summary, read_chestxray14, read_chexpert_csv,
                         read_multilabel, read_multilabel_csv, read_pspg_jsonl, sniff_multilabel, write_multilabel_csv)
from .readers import (ImageDataset, read_dassl_split, read_imagefolder, read_manifest, read_manifest_csv,
                      read_medmnist_npz, split_summary)
from .splits import ALIASES, DEFAULT_RATIOS, DEFAULT_VAL_FRACTION, as_split_json, complete_splits, fingerprint
from .synthetic import DATASETS as SYNTHETIC_DATASETS
from .synthetic.cxr import CXR_DATASETS

__all__ = ["DataError", "DataWarning", "Dataset", "load_reports", "ImageDataset", "LabelSpace", "MultiLabelSpace", "SYNONYMS", "Sample",
           "Split", "canonical_finding", "load_dataset", "load_descriptions", "load_image", "match_label_spaces",
           "multilabel_summary", "normalise_finding", "read_chestxray14", "read_chexpert_csv", "read_dassl_split",
           "read_imagefolder", "read_manifest", "read_manifest_csv", "read_medmnist_npz", "read_multilabel",
           "read_multilabel_csv", "read_pspg_jsonl", "seen_unseen_table", "sniff_multilabel", "split_summary",
           "synonyms_for", "write_multilabel_csv"]


GENERIC_STEMS = ("manifest", "metadata", "labels", "annotations", "data", "dataset", "split", "splits")


@dataclass
class Dataset:
    """Splits over one label space, plus the class descriptions when the dataset has them.

    `name` is what a person calls it; `id` is what rows, figures and checkpoints use: the
    name for a synthetic dataset (its spec fixes its contents), name + the first 8 hex of
    the content fingerprint for a real one (two folders called `data` do not collide).
    `meta["derived_split"]` holds the recipe and the Dassl JSON of splits made by the fallback
    (for multi-label data that JSON has label -1 and the positive findings "A|B" per image:
    an overview; `save_split` writes the full targets).
    """

    name: str
    splits: dict[str, Split]
    labels: LabelSpace
    root: Path
    descriptions: dict[str, list[str]] | None = None
    domain: str | None = None
    meta: dict = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def id(self) -> str:
        return f"{self.name}-{self.fingerprint[:8]}" if self.fingerprint else self.name

    @property
    def key(self) -> str:
        """The identity of these images: `id`, and the domain a synthetic dataset renders in
        (its X-ray and natural renderings share an id, as rows keep the domain in a column of
        its own, but not their files: histories, checkpoints and indices are keyed by this)."""
        return f"{self.id}-{self.domain}" if self.domain else self.id

    @property
    def multilabel(self) -> bool:
        return self.labels.multilabel

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            raise KeyError(f"dataset {self.name!r} has no split {split!r}; splits: {sorted(self.splits)}")
        return self.splits[split]

    def split_json(self) -> dict[str, list[list]]:
        """The dataset's splits as a Dassl split file (paths relative to `root`)."""
        return as_split_json(self.splits, self.root)

    def save_split(self, path: str | Path) -> Path:
        """Write the splits as a Dassl split JSON (paths relative to `root`) and, beside it,
        `<name>.recipe.json` (the root, the identity, how the split was made): `load_dataset`
        of the JSON reads the same splits back wherever it lies (cite it, reuse it).

        Multi-label data: a Dassl JSON holds one label per image, so the splits go to
        `<name>.csv` instead, a generic multi-label CSV (path, split, patient, view, text, then
        1/0/-1 per finding); that CSV is returned and `load_dataset` of it reads them back."""
        from medkit.atomic import atomic_write_text

        path = Path(path)
        recipe = {k: v for k, v in self.meta.get("derived_split", {}).items() if k != "split_json"}
        policy = next((s.meta["uncertainty"] for s in self.splits.values() if s.meta.get("uncertainty")), None)
        atomic_write_text(path.with_suffix(".recipe.json"), json.dumps(
            {"root": str(Path(self.root).resolve()), "dataset": self.id, "source": self.meta.get("source"), **recipe,
             **({"uncertainty": policy} if policy else {})}))
        if self.multilabel:
            return write_multilabel_csv(self.splits, self.root, path.with_suffix(".csv"))
        return atomic_write_text(path, json.dumps(self.split_json()))


def load_dataset(name: str | Path, domain: str = "xray", profile: str = "tiny", data_root: str | Path = "data",
                 progress: bool = True, *, split_ratios: Sequence[float] = DEFAULT_RATIOS,
                 val_fraction: float = DEFAULT_VAL_FRACTION, split_seed: int = 1, image_root: str | Path | None = None,
                 verify: bool = True, intensity: str = "range", uncertainty: str = "mask", frontal_only: bool = True,
                 **world_overrides) -> Dataset:
    """Load a synthetic dataset (built and cached on first use) or a real one from a path.

    Real datasets: missing splits are derived (`split_ratios`, `val_fraction`, `split_seed`;
    see `medkit.data.splits`); `image_root` is where a split JSON's paths start (default:
    an `images/` folder next to it, else its folder); `verify` decodes every image once
    (cached under `data_root/cache`); `intensity` is the bit-depth policy (`images.py`).
    Multi-label data: `uncertainty` ("mask", "ones", "zeros") is CheXpert's policy for its -1
    labels and `frontal_only` keeps its frontal views (other formats ignore both); missing
    splits are derived by patient.
    """
    if str(name) in SYNTHETIC_DATASETS:
        return _load_synthetic(str(name), domain, profile, Path(data_root), progress, world_overrides)
    check_intensity(intensity)
    check_uncertainty(uncertainty)  # a typo fails here whatever the format, not silently elsewhere
    synthetic_cxr = str(name) in CXR_DATASETS
    path = _build_cxr(str(name), profile, Path(data_root), progress, world_overrides) if synthetic_cxr else Path(name)
    ds = _load_real(path, Path(image_root) if image_root else None, split_ratios, val_fraction, split_seed,
                    {"uncertainty": uncertainty, "frontal_only": frontal_only})
    if synthetic_cxr:  # its spec fixes its contents: named as it is (policies that change its labels say so)
        policy = [p for p, default in ((uncertainty, "mask"), ("lateral" if not frontal_only else "", "")) if p != default]
        ds.name, ds.fingerprint, ds.domain = str(name) + "".join(f"[{p}]" for p in policy), "", "xray"
        folder = path if path.is_dir() and path.name != "CheXpert-v1.0-small" else path.parent
        world = folder / "world.json"
        ds.meta.update(world=json.loads(world.read_text()) if world.is_file() else {},
                       reports=str(folder / "reports.jsonl") if (folder / "reports.jsonl").is_file() else None)
    for split in ds.splits.values():
        split.meta["intensity"] = intensity
    if verify:
        problems = Problems(ds.root)
        paths = [s.path for split in ds.splits.values() for s in split.samples if s.array_index is None]
        verify_images(paths, problems, Path(data_root) / "cache" / "verify", progress, intensity)
        ds.meta["warnings"] = ds.meta.get("warnings", []) + problems.finish()
    return ds


def _build_cxr(name: str, profile: str, data_root: Path, progress: bool, overrides: dict) -> Path:
    """Build (or find) an embedded chest-radiograph dataset; the file its reader starts from."""
    from .synthetic.cxr import build_cxr

    folder = build_cxr(name, profile, data_root, progress, **overrides)
    for entry in ("CheXpert-v1.0-small", "Data_Entry_2017.csv", "labels.csv"):
        if (folder / entry).exists():
            return folder / entry
    raise DataError(f"{folder}: a synthetic chest dataset without a CheXpert, NIH or multi-label file")


def load_reports(dataset: "Dataset | str | Path", split: str = "train") -> Split:
    """Image-report pairs (PsPG's JSONL: filepath, text, labels) for contrastive fine-tuning:
    the embedded chest world's `reports.jsonl`, or a JSONL file given by path."""
    source = dataset.meta.get("reports") if isinstance(dataset, Dataset) else dataset
    if not source:
        raise DataError(f"{getattr(dataset, 'name', dataset)}: no reports file (give a PsPG JSONL path)")
    splits = read_pspg_jsonl(Path(source))
    return splits.get(split) or next(iter(splits.values()))


def _load_synthetic(name: str, domain: str, profile: str, data_root: Path, progress: bool, overrides: dict) -> Dataset:
    from .synthetic.world import build, spec_for

    spec = spec_for(name, profile, domain=domain, **overrides)
    folder = build(spec, data_root, progress=progress)
    read = read_manifest(folder / "manifest.csv")
    splits = {s: read[s] for s in ("train", "val", "test")}
    labels = splits["train"].labels
    descriptions = load_descriptions(folder / "descriptions.json", labels)
    world = json.loads((folder / "world.json").read_text())
    return Dataset(name, splits, labels, folder, descriptions, domain, meta={"world": world})


def _display_name(path: Path) -> str:
    if path.is_dir():
        return path.resolve().name
    stem = path.stem
    if stem.lower() in GENERIC_STEMS:
        return path.resolve().parent.name  # data/implants/manifest.csv is "implants"
    if path.suffix == ".json" and stem.startswith("split_") and len(stem) > 6:
        return stem[6:]  # Dassl: split_<dataset>.json
    return stem


def _recipe(path: Path) -> dict:
    """The `<name>.recipe.json` beside a split medkit saved, or {}."""
    recipe = path.with_suffix(".recipe.json")
    return json.loads(recipe.read_text()) if recipe.is_file() else {}


def _split_json_root(path: Path) -> Path:
    """Where a split JSON's paths start: the root its recipe names (a split medkit saved),
    else an `images/` folder beside it holding its first entry, else its own folder."""
    root = _recipe(path).get("root")
    if root:
        return Path(root)
    images = path.parent / "images"
    if images.is_dir():
        try:
            first = next(e for entries in json.loads(path.read_bytes()).values() for e in entries)
            if not (images / first[0]).exists() and (path.parent / first[0]).exists():
                return path.parent
        except (ValueError, StopIteration, TypeError, AttributeError, IndexError, KeyError):
            pass  # a malformed file: the reader names its problem
        return images
    return path.parent


def _read_multilabel(path: Path, kind: str, image_root: Path | None, options: dict) -> tuple[Path, dict[str, Split]]:
    """(root, splits) of a multi-label dataset; a split medkit saved (a CSV with a recipe) reads
    from the root its recipe names, with the uncertainty policy it was made with."""
    recipe = _recipe(path) if path.is_file() else {}
    root = image_root or (Path(recipe["root"]) if recipe.get("root") else None)
    raw = read_multilabel(path, kind, root, **options)
    if recipe.get("uncertainty"):
        for split in raw.values():
            split.meta["uncertainty"] = recipe["uncertainty"]
    return root or Path(next(iter(raw.values())).meta["root"]), raw


def _load_real(path: Path, image_root: Path | None, ratios: Sequence[float], val_fraction: float,
               seed: int, options: dict | None = None) -> Dataset:
    options = options or {}
    if not path.exists():
        raise DataError(f"{path}: dataset not found (neither a synthetic name {sorted(SYNTHETIC_DATASETS)} nor an existing path)")
    if path.is_dir():
        split_files = sorted(path.glob("split_*.json"))
        if len(split_files) > 1:
            raise DataError(f"{path}: {len(split_files)} split files ({[p.name for p in split_files]}): "
                            f"give the one to use as the dataset path")
        if split_files:
            return _load_real(split_files[0], image_root, ratios, val_fraction, seed, options)
        if (path / "manifest.csv").is_file():
            return _load_real(path / "manifest.csv", image_root, ratios, val_fraction, seed, options)
    folder = path if path.is_dir() else path.parent
    kind = sniff_multilabel(path)
    if kind is not None:
        root, raw = _read_multilabel(path, kind, image_root, options)
    elif path.suffix == ".json":
        root = image_root or _split_json_root(path)
        raw = read_dassl_split(path, root)
    elif path.suffix == ".csv":
        root = image_root or folder
        raw = read_manifest(path, root)
    elif path.suffix == ".npz":
        root, raw = folder, read_medmnist_npz(path)
    elif path.is_dir():
        root, raw = path, {"all": read_imagefolder(path)}
    else:
        raise DataError(f"{path}: unsupported dataset file (expected split_*.json, .csv, .jsonl, .npz or a folder)")
    splits, recipe = complete_splits(path, raw, ratios, val_fraction, seed)
    labels = splits["train"].labels
    desc_file = folder / "descriptions.json"
    descriptions = load_descriptions(desc_file, labels) if desc_file.is_file() else None
    warned = [w for split in raw.values() for w in split.meta.get("warnings", [])]
    name = _display_name(path)
    if kind is not None and path.is_file() and (path.stem.lower() in ALIASES or path.name == NIH_CSV):
        name = path.resolve().parent.name  # CheXpert-v1.0-small/train.csv is "CheXpert-v1.0-small"
    ds = Dataset(name, splits, labels, root, descriptions, None,
                 meta={"source": str(path), "warnings": list(dict.fromkeys(warned)),
                       "ignored_files": [f for split in raw.values() for f in split.meta.get("ignored_files", [])]},
                 fingerprint=fingerprint(splits, root))
    if recipe is not None:
        ds.meta["derived_split"] = {**recipe, "split_json": ds.split_json()}
    return ds


def load_descriptions(path: Path, labels: LabelSpace) -> dict[str, list[str]]:
    """Read `{classname: [sentences]}` and check it covers exactly the label space."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: descriptions file not found")
    try:
        data = json.loads(decode_text(path, path.read_bytes()))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object {{classname: [sentences]}}, got {type(data).__name__}")
    problems = Problems(path)
    unknown = sorted(set(data) - set(labels.classnames))
    missing = [c for c in labels.classnames if c not in data]
    if unknown:
        problems.error("", f"classes not in the label space: {unknown[:10]}")
    if missing:
        problems.error("", f"classes without sentences: {missing[:10]}")
    for cls, sentences in data.items():
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) and s.strip() for s in sentences):
            problems.error(f"class {cls!r}", "expected a non-empty list of non-empty strings")
    problems.raise_errors()
    return {c: list(data[c]) for c in labels.classnames}
