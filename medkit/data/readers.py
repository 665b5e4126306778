"""Dataset readers: image folders, CSV manifests, CoOp/Dassl split JSONs, MedMNIST .npz.

Every reader returns `Split`s (see `labels.py`) and raises one `DataError` listing every
problem of its input, each naming the file and, where it applies, the row/entry, column and
offending value (see `checks.py`). Nothing is silently dropped: what is skipped (stray or
hidden files) is named in a `DataWarning`; a half-valid dataset is worse than a loud failure.
"""
from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from medkit.data.checks import DataError, DataWarning, Problems, decode_text, list_files
from medkit.data.images import ImageDataset, image_extensions, load_image
from medkit.data.labels import LabelSpace, Sample, Split, as_path

__all__ = ["DataError", "DataWarning", "Entry", "ImageDataset", "load_image", "read_dassl_split", "read_imagefolder",
           "read_manifest", "read_manifest_csv", "read_medmnist_npz", "split_summary"]


# ----------------------------------------------------------------------------- shared assembly

@dataclass(frozen=True)
class Entry:
    """One row of a manifest or split file, parsed but not yet checked against the others."""

    where: str  # "row 3 (line 4)" or "train[12]"
    split: str
    rel: str
    label: int
    classname: str
    group: str | None = None


def _label_space(problems: Problems, entries: Sequence[Entry], label_space: LabelSpace | None) -> LabelSpace | None:
    """The label space the entries agree on (or the given one); disagreements go to `problems`.

    Without `label_space`, labels must be contiguous 0..n-1 so that label == index into classnames.
    """
    first: dict[tuple[str, object], tuple[object, str]] = {}  # (what, key) -> (value, where first seen)

    def agree(e: Entry, column: str, value: object, what: str, key: object, subject: str) -> bool:
        seen, at = first.setdefault((what, key), (value, e.where))
        if seen != value:
            problems.error(e.where, f"column {column!r}: value {value!r} but {subject} is {seen!r} at {at}")
            return False
        return True

    for e in entries:
        _ = (agree(e, "classname", e.classname, "name", e.label, f"label {e.label}")
             and agree(e, "label", e.label, "label", e.classname, f"the label of class {e.classname!r}")
             and agree(e, "group", e.group, "group", e.classname, f"the group of class {e.classname!r}"))
        if label_space is None:
            continue
        if e.classname not in label_space.classnames:
            problems.error(e.where, f"column 'classname': value {e.classname!r} is not in the given "
                                    f"label space {list(label_space.classnames)[:10]}")
        elif e.label != label_space.index(e.classname):
            problems.error(e.where, f"column 'label': value {e.label} but the given label space "
                                    f"has {e.classname!r} at index {label_space.index(e.classname)}")
        elif e.group is not None and label_space.group_of is not None and label_space.group_of[e.classname] != e.group:
            problems.error(e.where, f"column 'group': value {e.group!r} but the given label space "
                                    f"puts {e.classname!r} in {label_space.group_of[e.classname]!r}")
    if label_space is not None:
        return label_space
    if problems:
        return None  # entries disagree: there is no one label space to build
    name_of = {key: value for (what, key), (value, _) in first.items() if what == "name"}
    if not name_of:
        return None
    n = max(name_of) + 1  # type: ignore[type-var]
    gaps = [i for i in range(n) if i not in name_of]
    if gaps:
        # the rows whose label lies beyond the gap are the likely typos: name them
        stray = [e for e in entries if e.label >= len(name_of)]
        named = "; ".join(f"label {e.label} ({e.classname!r}) at {e.where}" for e in stray[:5])
        problems.error("", f"labels must be contiguous 0..{n - 1}; missing label(s) {gaps[:20]}"
                           + (f" — {named}" + (f" and {len(stray) - 5} more rows" if len(stray) > 5 else "")
                              if stray else ""))
        return None
    names = tuple(str(name_of[i]) for i in range(n))
    group_of = {c: first[("group", c)][0] for c in names}
    has_groups = any(g is not None for g in group_of.values())
    return LabelSpace(names, {c: str(g) for c, g in group_of.items()} if has_groups else None)


def _resolve(problems: Problems, e: Entry, root: Path, root_real: Path) -> Path | None:
    path = Path(e.rel) if Path(e.rel).is_absolute() else root / e.rel
    real = Path(os.path.realpath(path))
    if real != root_real and root_real not in real.parents:
        problems.error(e.where, f"column 'path': value {e.rel!r} points outside the dataset root {root}")
        return None
    if not path.is_file():
        problems.error(e.where, f"column 'path': value {e.rel!r}: image file not found at {path}")
        return None
    return path


def _assemble(source: Path, problems: Problems, entries: Sequence[Entry], root: Path,
              label_space: LabelSpace | None, meta: dict) -> dict[str, Split]:
    """Check entries against each other (labels, paths, duplicates, splits) and build Splits.
    Every problem found is reported together (DataError), then the warnings."""
    labels = _label_space(problems, entries, label_space)
    root_real = Path(os.path.realpath(root))
    seen: dict[Path, Entry] = {}
    by_split: dict[str, list[Sample]] = {}
    for e in entries:
        path = _resolve(problems, e, root, root_real)
        if path is None:
            continue
        key = Path(os.path.realpath(path))
        other = seen.setdefault(key, e)
        if other is not e:
            if other.label != e.label:
                problems.error(e.where, f"column 'path': value {e.rel!r} is also at {other.where} with another label "
                                        f"({other.label} {other.classname!r} vs {e.label} {e.classname!r})")
            elif other.split != e.split:
                problems.error(e.where, f"column 'path': value {e.rel!r} is in split {e.split!r} and also in split "
                                        f"{other.split!r} at {other.where}: the same image in two splits")
            else:
                problems.warn("duplicate rows (same image, same label, kept twice)", f"{e.where} = {other.where}: {e.rel}")
        by_split.setdefault(e.split, []).append(Sample(path=path, label=e.label, classname=e.classname, group=e.group))
    if labels is not None and labels.n_classes < 2:
        problems.error("", f"only one class ({labels.classnames[0]!r}): classification needs at least two")
    if not entries and not problems:
        problems.error("", "no samples")
    warned = problems.finish()
    assert labels is not None  # every way to get None above noted an error, and finish raised it
    return {name: Split(name, samples, labels, meta={**meta, "warnings": warned}) for name, samples in by_split.items()}


# ----------------------------------------------------------------------------- readers

def read_imagefolder(root: Path | str, extensions: Sequence[str] | None = None, progress: bool = False) -> Split:
    """Read `root/<classname>/**/<image>`; class names sorted, label = index in that order.

    Any format Pillow opens is an image (`extensions` narrows that). Hidden files and other
    files are skipped and named in a DataWarning (and `split.meta["ignored_files"]`).
    """
    root = as_path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder root not found")
    exts = {e.lower() for e in (extensions or image_extensions())}
    problems = Problems(root)
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    hidden = sorted(str(d) for d in root.iterdir() if d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders found")
    labels = LabelSpace(tuple(d.name for d in class_dirs))
    samples: list[Sample] = []
    ignored: list[str] = []
    for label, d in enumerate(class_dirs):
        files = list(list_files(d))
        hide = [p for p in files if any(part.startswith(".") for part in p.relative_to(d).parts)]
        hidden += [str(p) for p in hide]
        hide_set = set(hide)
        files = [p for p in files if p not in hide_set]
        images = [p for p in files if p.suffix.lower() in exts]
        stray = [str(p) for p in files if p.suffix.lower() not in exts]
        ignored += stray
        for p in stray:
            problems.warn("files that are not images (skipped)", p)
        if not images:
            common = [e for e in (".png", ".jpg", ".jpeg", ".tif", ".bmp", ".webp", ".gif") if e in exts]
            problems.error(str(d), f"class folder {d.name!r} has no images (any format Pillow reads: "
                                   f"{', '.join(common)}, …)")
        samples += [Sample(path=p, label=label, classname=d.name) for p in images]
    for p in hidden:
        problems.warn("hidden files or folders (skipped)", p)
    ignored += hidden
    if labels.n_classes < 2:
        problems.error("", f"only one class folder ({labels.classnames[0]!r}): classification needs at least two")
    warned = problems.finish()
    return Split(root.name, samples, labels, meta={"source": str(root), "ignored_files": ignored, "warnings": warned})


def _parse_int(problems: Problems, where: str, column: str, value: Any) -> int | None:
    try:
        out = int(str(value).strip())
    except ValueError:
        problems.error(where, f"column {column!r}: value {value!r} is not an integer")
        return None
    if out < 0:
        problems.error(where, f"column {column!r}: value {value!r} is negative")
        return None
    return out


def read_manifest(csv_path: Path | str, root: Path | str | None = None,
                  label_space: LabelSpace | None = None) -> dict[str, Split]:
    """Read a CSV with columns `path,label,classname` (+ optional `group`, `split`) into
    one Split per value of `split` (all rows as split "all" without that column).

    Paths are relative to `root` (default: the CSV's folder) and must stay inside it. Rows
    are named "row N (line M)", N the 1-based data row, M the line in the file. Every
    problem of the file is reported in one DataError.
    """
    csv_path = as_path(csv_path)
    root = csv_path.parent if root is None else as_path(root)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: manifest file not found")
    text = decode_text(csv_path, csv_path.read_bytes())
    reader = csv.DictReader(io.StringIO(text, newline=""))
    present = [c.strip() for c in (reader.fieldnames or [])]
    reader.fieldnames = present
    missing = [c for c in ("path", "label", "classname") if c not in present]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}; present: {present}")
    problems = Problems(csv_path)
    optional = tuple(c for c in ("group", "split") if c in present)
    entries: list[Entry] = []
    for n, row in enumerate(reader, start=1):
        where = f"row {n} (line {reader.line_num})"
        if None in row or any(v is None for v in row.values()):
            n_fields = len(present) - sum(v is None for v in row.values()) + len(row.get(None) or [])
            problems.error(where, f"{n_fields} fields but the header has {len(present)}: {present}")
            continue
        row = {k: v.strip() for k, v in row.items()}
        empty = [c for c in ("path", "classname") + optional if not row[c]]
        for column in empty:
            problems.error(where, f"column {column!r}: empty value")
        label = _parse_int(problems, where, "label", row["label"])
        if label is None or empty:
            continue
        entries.append(Entry(where, row.get("split", "all"), row["path"], label, row["classname"], row.get("group")))
    if not entries and not problems:
        raise DataError(f"{csv_path}: no samples")
    return _assemble(csv_path, problems, entries, root, label_space, {"source": str(csv_path)})


def read_manifest_csv(csv_path: Path | str, root: Path | str | None = None, split_name: str | None = None,
                      label_space: LabelSpace | None = None) -> Split:
    """One split of a manifest (`split_name`), or all its rows as one Split named after the file.
    The label space comes from the whole file, so every split of one manifest shares it."""
    csv_path = as_path(csv_path)
    splits = read_manifest(csv_path, root, label_space)
    if split_name is None:
        first = next(iter(splits.values()))
        return Split(csv_path.stem, [s for sp in splits.values() for s in sp.samples], first.labels, dict(first.meta))
    if list(splits) == ["all"] and split_name != "all":
        raise DataError(f"{csv_path}: split_name={split_name!r} given but no 'split' column")
    if split_name not in splits:
        raise DataError(f"{csv_path}: no rows with split == {split_name!r}; split values: {sorted(splits)}")
    return splits[split_name]


def read_dassl_split(json_path: Path | str, image_root: Path | str,
                     label_space: LabelSpace | None = None) -> dict[str, Split]:
    """Read a CoOp/Dassl `split_<name>.json`: {"train"|"val"|"test": [[relpath, label, classname], ...]}.

    Entries are named like "train[12]" (0-based, as indexed in the JSON list). Labels are
    checked across all splits, which share one label space; paths must stay inside
    `image_root`. Splits other than train/val/test are kept under their own name (see
    `medkit.data.splits` for the names recognised and the fallback for missing ones).
    """
    json_path, image_root = as_path(json_path), as_path(image_root)
    if not json_path.is_file():
        raise DataError(f"{json_path}: split file not found")
    try:
        data = json.loads(decode_text(json_path, json_path.read_bytes()))
    except json.JSONDecodeError as e:
        raise DataError(f"{json_path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not data:
        raise DataError(f"{json_path}: top level must be an object with train/val/test, got "
                        f"{type(data).__name__ if not isinstance(data, dict) else 'an empty object'}")
    problems = Problems(json_path)
    entries: list[Entry] = []
    for split, items in data.items():
        if not isinstance(items, list):
            problems.error("", f"{split!r} must be a list, got {type(items).__name__}")
            continue
        if not items:
            problems.error("", f"split {split!r} is empty")
        for i, e in enumerate(items):
            where = f"{split}[{i}]"
            if not (isinstance(e, list) and len(e) == 3):
                problems.error(where, f"expected [relpath, label, classname], got {e!r}")
                continue
            rel, label, name = e
            ok = True
            if not isinstance(rel, str) or not rel:
                problems.error(where, f"column 'path': value {rel!r} is not a non-empty string")
                ok = False
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                problems.error(where, f"column 'label': value {label!r} is not a non-negative integer")
                ok = False
            if not isinstance(name, str) or not name:
                problems.error(where, f"column 'classname': value {name!r} is not a non-empty string")
                ok = False
            if ok:
                entries.append(Entry(where, split, rel, label, name))
    return _assemble(json_path, problems, entries, image_root, label_space, {"source": str(json_path)})


def _npz_shape(zf: zipfile.ZipFile, key: str) -> tuple[int, ...]:
    """Shape of one array in an .npz from its header, without decompressing the data."""
    with zf.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)[0]
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f)[0]
    with np.load(zf.filename, allow_pickle=False) as npz:  # rare header version: pay for a full read
        return npz[key].shape


def read_medmnist_npz(npz_path: Path | str, classnames: Sequence[str] | None = None) -> dict[str, Split]:
    """Read a MedMNIST `.npz` (train/val/test `_images` and `_labels`) into array-backed Splits.

    Samples have `path=npz_path` and `array_index=i`; `split.meta["npz_key"]` names the image
    array that `ImageDataset` reads. Class names default to "class_0", "class_1", ...
    """
    npz_path = as_path(npz_path)
    if not npz_path.is_file():
        raise DataError(f"{npz_path}: npz file not found")
    splits = ("train", "val", "test")
    try:
        with zipfile.ZipFile(npz_path) as zf, np.load(npz_path, allow_pickle=False) as npz:
            present = sorted(npz.files)
            missing = [f"{s}_{k}" for s in splits for k in ("images", "labels") if f"{s}_{k}" not in present]
            if missing:
                raise DataError(f"{npz_path}: missing array(s) {missing}; present: {present}")
            shapes = {s: _npz_shape(zf, f"{s}_images") for s in splits}
            targets = {s: np.asarray(npz[f"{s}_labels"]) for s in splits}
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        raise DataError(f"{npz_path}: cannot read npz ({type(e).__name__}: {e})") from e

    flat: dict[str, np.ndarray] = {}
    for s in splits:
        shape, y = shapes[s], targets[s]
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
            raise DataError(f"{npz_path}: {s}_images has shape {shape}; expected (N,H,W) or (N,H,W,3)")
        if y.ndim == 2 and y.shape[1] > 1:
            raise DataError(f"{npz_path}: {s}_labels has shape {y.shape}: multi-label targets are not "
                            f"supported by this reader (expected (N,) or (N,1))")
        if y.ndim not in (1, 2) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{npz_path}: {s}_labels has shape {y.shape} dtype {y.dtype}; expected integer (N,) or (N,1)")
        if len(y) != shape[0]:
            raise DataError(f"{npz_path}: length mismatch: {s}_images has {shape[0]} rows, {s}_labels has {len(y)}")
        if len(y) == 0:
            raise DataError(f"{npz_path}: split {s!r} is empty")
        flat[s] = y.reshape(-1).astype(np.int64)

    n = max(int(y.max()) for y in flat.values()) + 1
    names = tuple(classnames) if classnames is not None else tuple(f"class_{i}" for i in range(n))
    for s, y in flat.items():
        bad = np.flatnonzero((y < 0) | (y >= len(names)))
        if bad.size:
            raise DataError(f"{npz_path}: {s}_labels[{bad[0]}]: value {y[bad[0]]} out of range "
                            f"for {len(names)} class names")
    labels = LabelSpace(names)
    return {s: Split(s, [Sample(path=npz_path, label=int(lab), classname=names[lab], array_index=i)
                         for i, lab in enumerate(y)], labels,
                     meta={"source": str(npz_path), "npz_key": f"{s}_images"})
            for s, y in flat.items()}


# ----------------------------------------------------------------------------- summaries

def split_summary(split: Split) -> pd.DataFrame:
    """One row per class of the label space (zero counts included): label, classname, [group], count.

    Per-group totals: `split_summary(s).groupby("group")["count"].sum()`.
    """
    counts = np.bincount(np.asarray(split.targets, dtype=np.int64), minlength=split.labels.n_classes)
    df = pd.DataFrame({"label": range(split.labels.n_classes),
                       "classname": list(split.labels.classnames),
                       "count": counts[: split.labels.n_classes]})
    if split.labels.group_of is not None:
        df.insert(2, "group", [split.labels.group_of[c] for c in split.labels.classnames])
    return df
