"""Dataset readers: image folders, CSV manifests, CoOp/Dassl split JSONs, MedMNIST .npz.

Every reader returns `Split`s (see `labels.py`) and raises `DataError` on bad input with a
message naming the file and, where it applies, the row/entry, column and offending value.
Nothing is silently dropped: a half-valid dataset is worse than a loud failure.
"""
from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch.utils.data
from PIL import Image, ImageFile

from medkit.data.labels import LabelSpace, Sample, Split, as_path

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class DataError(ValueError):
    """Bad input data: the message names the file and, where relevant, row, column and value."""


# ----------------------------------------------------------------------------- images

def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Stretch a high-bit-depth array to 0..255 by its own min/max (12-bit X-rays would be black otherwise)."""
    a = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(a)
    lo, hi = (a[finite].min(), a[finite].max()) if finite.any() else (0.0, 0.0)
    a = np.where(finite, a, lo)  # NaN/inf pixels carry no intensity: map them to the background
    # A constant image has no contrast to stretch; keep its value where it fits in 8 bits.
    a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.full(a.shape, np.clip(lo, 0.0, 255.0))
    return np.rint(a).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; alpha is composited onto black (X-ray background convention)."""
    if im.mode == "RGB":
        return im
    if im.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_scale_to_uint8(np.asarray(im))).convert("RGB")
    if im.mode == "P":
        # A palette with a transparent index behaves like RGBA; without one it is plain colour.
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        if im.mode == "RGB":
            return im
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (0, 0, 0))
        out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, RGBX, ...


def load_image(path: Path) -> Image.Image:
    """Open an image file fully decoded, as mode "RGB".

    Raises DataError naming `path` when it is missing, unreadable, or truncated.
    """
    path = as_path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found" + (" (it is a folder)" if path.is_dir() else ""))
    # Some libraries flip this global on; a truncated radiograph padded with grey would be
    # silent training-data corruption, so we force strict decoding for our own loads.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as im:
            im.load()  # decode now so truncation fails here, not inside a DataLoader worker
            return _to_rgb(im)
    except _PIL_ERRORS as e:
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def _array_to_rgb(arr: np.ndarray) -> Image.Image:
    """(H,W), (H,W,1) or (H,W,3) array → RGB image (non-uint8 arrays are min/max scaled)."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = _scale_to_uint8(arr)
    return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")


# ----------------------------------------------------------------------------- shared validation

def _fail(source: Path, where: str, msg: str) -> DataError:
    # "file: row 3 (line 4), column 'label': value ..." reads as one location, then the problem.
    sep = ", " if msg.startswith("column") else ": "
    return DataError(f"{source}: {where}{sep}{msg}")


def _build_label_space(source: Path, entries: Iterable[tuple[str, int, str, str | None]],
                       label_space: LabelSpace | None) -> LabelSpace:
    """Check (where, label, classname, group) entries agree with each other and return their label space.

    With `label_space` given, entries must match it; otherwise one is built from the labels,
    which must be contiguous 0..n-1 so that label == index into classnames.
    """
    first: dict[tuple[str, object], tuple[object, str]] = {}  # (what, key) -> (value, where first seen)

    def agree(where: str, column: str, value: object, what: str, key: object, subject: str) -> None:
        seen, at = first.setdefault((what, key), (value, where))
        if seen != value:
            raise _fail(source, where, f"column {column!r}: value {value!r} but {subject} is {seen!r} at {at}")

    for where, label, name, group in entries:
        agree(where, "classname", name, "name", label, f"label {label}")
        agree(where, "label", label, "label", name, f"the label of class {name!r}")
        agree(where, "group", group, "group", name, f"the group of class {name!r}")
        if label_space is not None:
            if name not in label_space.classnames:
                raise _fail(source, where, f"column 'classname': value {name!r} is not in the given "
                                           f"label space {list(label_space.classnames)[:10]}")
            if label != label_space.index(name):
                raise _fail(source, where, f"column 'label': value {label} but the given label space "
                                           f"has {name!r} at index {label_space.index(name)}")
            if group is not None and label_space.group_of is not None and label_space.group_of[name] != group:
                raise _fail(source, where, f"column 'group': value {group!r} but the given label space "
                                           f"puts {name!r} in {label_space.group_of[name]!r}")
    if label_space is not None:
        return label_space
    name_of = {key: value for (what, key), (value, _) in first.items() if what == "name"}
    if not name_of:
        raise DataError(f"{source}: no samples")
    n = max(name_of) + 1  # type: ignore[type-var]
    gaps = [i for i in range(n) if i not in name_of]
    if gaps:
        raise DataError(f"{source}: labels must be contiguous 0..{n - 1}; missing label(s) {gaps[:20]}")
    names = tuple(str(name_of[i]) for i in range(n))
    group_of = {c: first[("group", c)][0] for c in names}
    has_groups = any(g is not None for g in group_of.values())
    return LabelSpace(names, {c: str(g) for c, g in group_of.items()} if has_groups else None)


def _resolve_image(source: Path, where: str, root: Path, rel: str) -> Path:
    path = root / rel
    if not path.is_file():
        raise _fail(source, where, f"column 'path': value {rel!r}: image file not found at {path}")
    return path


# ----------------------------------------------------------------------------- readers

def read_imagefolder(root: Path | str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Split:
    """Read `root/<classname>/**/<image>`; class names sorted, label = index in that order.

    Hidden entries are skipped; other non-image files are listed in `split.meta["ignored_files"]`.
    """
    root = as_path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder root not found")
    exts = {e.lower() for e in extensions}
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders found")
    labels = LabelSpace(tuple(d.name for d in class_dirs))
    samples: list[Sample] = []
    ignored: list[str] = []
    for label, d in enumerate(class_dirs):
        files = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in exts]
        ignored += [str(p) for p in files if p.suffix.lower() not in exts]
        if not images:
            raise DataError(f"{d}: class folder {d.name!r} has no images with extensions {sorted(exts)}")
        samples += [Sample(path=p, label=label, classname=d.name) for p in images]
    return Split(root.name, samples, labels, meta={"source": str(root), "ignored_files": ignored})


def _parse_int(source: Path, where: str, column: str, value: Any) -> int:
    try:
        out = int(str(value).strip())
    except ValueError:
        raise _fail(source, where, f"column {column!r}: value {value!r} is not an integer") from None
    if out < 0:
        raise _fail(source, where, f"column {column!r}: value {value!r} is negative")
    return out


def read_manifest_csv(csv_path: Path | str, root: Path | str | None = None, split_name: str | None = None,
                      label_space: LabelSpace | None = None) -> Split:
    """Read a CSV with columns `path,label,classname` (+ optional `group`, `split`).

    Paths are relative to `root` (default: the CSV's folder). Labels are checked over the
    whole file so every split of one manifest gets the same label space; image files are
    checked only for the rows kept by `split_name`. Rows are named "row N (line M)", N the
    1-based data row, M the line in the file.
    """
    csv_path = as_path(csv_path)
    root = csv_path.parent if root is None else as_path(root)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: manifest file not found")
    with csv_path.open(newline="", encoding="utf-8-sig") as f:  # -sig: tolerate Excel's BOM
        reader = csv.DictReader(f)
        present = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = present
        missing = [c for c in ("path", "label", "classname") if c not in present]
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {missing}; present: {present}")
        if split_name is not None and "split" not in present:
            raise DataError(f"{csv_path}: split_name={split_name!r} given but no 'split' column; present: {present}")
        rows = []
        for n, row in enumerate(reader, start=1):
            where = f"row {n} (line {reader.line_num})"
            if None in row or any(v is None for v in row.values()):
                n_fields = len(present) - sum(v is None for v in row.values()) + len(row.get(None) or [])
                raise _fail(csv_path, where, f"{n_fields} fields but the header has {len(present)}: {present}")
            rows.append((where, {k: v.strip() for k, v in row.items()}))

    parsed = []
    for where, row in rows:
        for column in ("path", "classname") + (("group",) if "group" in present else ()):
            if not row[column]:
                raise _fail(csv_path, where, f"column {column!r}: empty value")
        label = _parse_int(csv_path, where, "label", row["label"])
        parsed.append((where, row, label, row.get("group")))
    labels = _build_label_space(
        csv_path, ((w, lab, r["classname"], g) for w, r, lab, g in parsed), label_space)

    kept = [p for p in parsed if split_name is None or p[1]["split"] == split_name]
    if not kept:
        values = sorted({r["split"] for _, r, _, _ in parsed}) if "split" in present else []
        raise DataError(f"{csv_path}: no rows" + (f" with split == {split_name!r}; split values: {values}"
                                                  if split_name is not None else ""))
    samples = [Sample(path=_resolve_image(csv_path, w, root, r["path"]), label=lab,
                      classname=r["classname"], group=g) for w, r, lab, g in kept]
    return Split(split_name or csv_path.stem, samples, labels, meta={"source": str(csv_path)})


def read_dassl_split(json_path: Path | str, image_root: Path | str,
                     label_space: LabelSpace | None = None) -> dict[str, Split]:
    """Read a CoOp/Dassl `split_<name>.json`: {"train"|"val"|"test": [[relpath, label, classname], ...]}.

    Entries are named like "train[12]" (0-based, as indexed in the JSON list). Labels are
    checked across all splits, which share one label space.
    """
    json_path, image_root = as_path(json_path), as_path(image_root)
    if not json_path.is_file():
        raise DataError(f"{json_path}: split file not found")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{json_path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise DataError(f"{json_path}: top level must be an object with train/val/test, got {type(data).__name__}")
    missing = [k for k in ("train", "val", "test") if k not in data]
    if missing:
        raise DataError(f"{json_path}: missing key(s) {missing}; present: {sorted(data)}")

    parsed: dict[str, list[tuple[str, str, int, str]]] = {}
    for split, entries in data.items():
        if not isinstance(entries, list):
            raise DataError(f"{json_path}: {split!r} must be a list, got {type(entries).__name__}")
        if not entries:
            raise DataError(f"{json_path}: split {split!r} is empty")
        parsed[split] = []
        for i, e in enumerate(entries):
            where = f"{split}[{i}]"
            if not (isinstance(e, list) and len(e) == 3):
                raise _fail(json_path, where, f"expected [relpath, label, classname], got {e!r}")
            rel, label, name = e
            if not isinstance(rel, str) or not rel:
                raise _fail(json_path, where, f"column 'path': value {rel!r} is not a non-empty string")
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                raise _fail(json_path, where, f"column 'label': value {label!r} is not a non-negative integer")
            if not isinstance(name, str) or not name:
                raise _fail(json_path, where, f"column 'classname': value {name!r} is not a non-empty string")
            parsed[split].append((where, rel, label, name))

    labels = _build_label_space(
        json_path, ((w, lab, n, None) for es in parsed.values() for w, _, lab, n in es), label_space)
    return {split: Split(split, [Sample(_resolve_image(json_path, w, image_root, rel), lab, n)
                                 for w, rel, lab, n in es], labels, meta={"source": str(json_path)})
            for split, es in parsed.items()}


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


# ----------------------------------------------------------------------------- torch / summaries

class ImageDataset(torch.utils.data.Dataset):
    """Torch dataset over a Split: item i is `(transform(rgb_image), label)`.

    Array-backed samples (MedMNIST) read `split.meta["npz_key"]` (default "<split name>_images")
    from their .npz, loaded lazily once per dataset instance (and per DataLoader worker).
    """

    def __init__(self, split: Split, transform: Callable | None = None) -> None:
        self.split = split
        self.transform = transform
        self._npz_key = str(split.meta.get("npz_key", f"{split.name}_images"))
        self._arrays: dict[Path, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.split.samples)

    def __getstate__(self) -> dict:
        # Don't ship decoded arrays to spawned workers; each reloads on first use.
        return {**self.__dict__, "_arrays": {}}

    def _array(self, path: Path) -> np.ndarray:
        if path not in self._arrays:
            try:
                with np.load(path, allow_pickle=False) as npz:
                    self._arrays[path] = npz[self._npz_key]
            except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
                raise DataError(f"{path}: cannot read array {self._npz_key!r} ({e})") from e
        return self._arrays[path]

    def image(self, index: int) -> Image.Image:
        """The RGB image of sample `index`, before the transform."""
        s = self.split.samples[index]
        if s.array_index is None:
            return load_image(s.path)
        return _array_to_rgb(self._array(s.path)[s.array_index])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.image(index)
        return (self.transform(img) if self.transform is not None else img), self.split.samples[index].label


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
