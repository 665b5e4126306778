"""Multi-label chest X-ray readers: CheXpert CSVs, ChestX-ray14 (NIH), PsPG JSONL, a generic CSV.

Every reader returns `{split: Split}` (train/val/test where the data names them, else one
pool "all"), each over one `MultiLabelSpace` (the findings in file order, with their
synonyms from `findings.SYNONYMS`). A sample has `label=-1`, `classname` = its positive
findings joined by "|" ("" for none), `targets` = 1/0/-1 per finding (-1: unknown, masked in
losses and metrics), and `view` ("frontal"/"lateral") and `text` where the data has them.
`split.meta["patient"]` maps each image path to its patient, so that derived splits keep a
patient's images together (`splits.grouped_split`); `split.meta["root"]` is where the paths
start. Every problem is collected and raised in one `DataError` naming file, row, column and
value (see `checks.py`).

Why one module: the four formats differ only in how a row is parsed; resolving image paths,
building a sample from a row's findings, collecting problems, the patient map and the split
names are one shared pipeline that each reader calls (split per format, each file would
re-import and re-state it).
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from medkit.data.checks import DataError, Problems, decode_text
from medkit.data.findings import normalise_finding, synonyms_for
from medkit.data.labels import MultiLabelSpace, Sample, Split, as_path
from medkit.data.splits import ALIASES, POOL, patient_folder, patient_of

__all__ = ["UNCERTAINTY", "check_uncertainty", "multilabel_space", "multilabel_summary", "read_chestxray14",
           "read_chexpert_csv", "read_multilabel", "read_multilabel_csv", "read_pspg_jsonl", "sniff_multilabel",
           "write_multilabel_csv"]

UNCERTAINTY = ("mask", "ones", "zeros")  # CheXpert's policies for -1: keep masked, U-Ones, U-Zeros
CHEXPERT_META = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
CHEXPERT_FILES = ("train.csv", "valid.csv", "test.csv")
CHEXPERT_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
NIH_CSV = "Data_Entry_2017.csv"
NIH_LISTS = {"train_val_list.txt": "train", "test_list.txt": "test"}  # val is carved from train_val later
#: ChestX-ray14's 14 findings in the order of its README (and of CheXNet's tables); "No Finding" last,
#: so that indices 0–13 are the diseases every ChestX-ray14 paper tabulates
NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
NO_FINDING = "No Finding"
JSONL_STEMS = ("train", "val", "valid", "validation", "test")
NAMES_FILES = ("labels.json", "labels_names.json")  # PsPG's csv2jsonl writes {"labels_name": [...]}
PATH_COLUMNS = ("path", "image", "filepath", "Path")
GENERIC_META = {"split": "split", "view": "view", "text": "text", "report": "text", "patient": "patient",
                "patient_id": "patient", "patient id": "patient"}
VALUES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1}
VIEWS = {"frontal": "frontal", "pa": "frontal", "ap": "frontal", "lateral": "lateral", "ll": "lateral",
         "l": "lateral", "lat": "lateral"}


# ----------------------------------------------------------------------------- shared pieces

def check_uncertainty(policy: str) -> str:
    if policy not in UNCERTAINTY:
        raise ValueError(f"uncertainty={policy!r}: use one of {list(UNCERTAINTY)} (mask keeps -1 masked, "
                         f"ones/zeros map uncertain labels to 1/0: CheXpert's U-Ones/U-Zeros)")
    return policy


def multilabel_space(names: Sequence[str]) -> MultiLabelSpace:
    """The findings `names`, with their other names from `findings.SYNONYMS`."""
    return MultiLabelSpace(tuple(names), synonyms=synonyms_for(names))


def _csv_rows(path: Path, problems: Problems) -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
    """Header and ("row N (line M)", {column: stripped value}) of a CSV; rows with the wrong
    number of fields go to `problems` (missing or extra fields under unnamed trailing columns,
    as ChestX-ray14's file has, are fine)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    reader = csv.DictReader(io.StringIO(decode_text(path, path.read_bytes()), newline=""))
    header = [c.strip() for c in reader.fieldnames or []]
    dupes = sorted({c for c in header if c and header.count(c) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column(s) {dupes}")
    reader.fieldnames = header
    rows = []
    for n, row in enumerate(reader, start=1):
        where = f"row {n} (line {reader.line_num})"
        extra = [v for v in row.pop(None, None) or [] if v.strip()]
        if extra or any(v is None for k, v in row.items() if k):
            n_fields = sum(v is not None for v in row.values()) + len(extra)
            problems.error(where, f"{n_fields} fields but the header has {len(header)}: {header}")
            continue
        rows.append((where, {k: (v or "").strip() for k, v in row.items() if k}))
    return header, rows


def _value(problems: Problems, where: str, column: str, raw: str, blank: int) -> int | None:
    if raw == "":
        return blank
    if raw not in VALUES:
        problems.error(where, f"column {column!r}: value {raw!r} is not 1, 0, -1 or blank")
    return VALUES.get(raw)


def _image(problems: Problems, where: str, column: str, rel: str, bases: list[Path]) -> Path | None:
    """The image `rel` under the first of `bases` that has it (that base is tried first next time)."""
    if not rel:
        problems.error(where, f"column {column!r}: empty value")
        return None
    for i, base in enumerate(bases):
        path = base / rel
        if path.is_file():
            bases.insert(0, bases.pop(i))
            return Path(os.path.abspath(path))
    tried = " or ".join(str(b / rel) for b in bases)
    problems.error(where, f"column {column!r}: value {rel!r}: image file not found at {tried}")
    return None


def _view(raw: str | None, path: str = "") -> str | None:
    """"frontal"/"lateral" from a view value (Frontal, PA, AP, Lateral, LL), else from a file
    name such as CheXpert's view1_frontal.jpg; None when neither says."""
    if raw:
        return VIEWS.get(raw.strip().lower(), raw.strip().lower())
    name = Path(path).name.lower()
    return "frontal" if "frontal" in name else "lateral" if "lateral" in name else None


def _split_of(stem: str) -> str:
    return ALIASES.get(stem.strip().lower(), POOL)


def _sample(path: Path, names: Sequence[str], targets: Sequence[int], view: str | None = None,
            text: str | None = None) -> Sample:
    positive = "|".join(n for n, t in zip(names, targets) if t == 1)
    return Sample(path=path, label=-1, classname=positive, targets=tuple(targets), view=view, text=text or None)


class _Collect:
    """Samples per split, checked for an image listed twice, then built into Splits."""

    def __init__(self, problems: Problems):
        self.problems = problems
        self.by_split: dict[str, list[Sample]] = {}
        self.first: dict[Path, tuple[str, str, Sample]] = {}
        self.patient: dict[str, str] = {}

    def add(self, where: str, split: str, sample: Sample, patient: str | None = None) -> None:
        where0, split0, other = self.first.setdefault(sample.path, (where, split, sample))
        if other is not sample:
            if split0 != split:
                self.problems.error(where, f"image {sample.path} is in split {split!r} and also in split {split0!r} "
                                           f"at {where0}: the same image in two splits")
            elif other.targets != sample.targets:
                self.problems.error(where, f"image {sample.path} is also at {where0} with other findings "
                                           f"({other.classname!r} vs {sample.classname!r})")
            else:
                self.problems.warn("duplicate rows (same image, same findings, kept twice)", f"{where} = {where0}")
        self.by_split.setdefault(split, []).append(sample)
        if patient:
            self.patient[str(sample.path)] = patient

    def splits(self, space: MultiLabelSpace | None, root: Path, meta: dict) -> dict[str, Split]:
        if not self.by_split and not self.problems:
            self.problems.error("", "no samples")
        warned = self.problems.finish()
        assert space is not None  # every way to have no label space noted an error, and finish raised it
        meta = {**meta, "root": str(root), "patient": self.patient, "warnings": warned}
        return {name: Split(name, samples, space, dict(meta)) for name, samples in self.by_split.items()}


# ----------------------------------------------------------------------------- CheXpert

def _chexpert_files(path: Path) -> list[tuple[Path, str]]:
    if path.is_file():
        return [(path, _split_of(path.stem))]
    if not path.is_dir():
        raise DataError(f"{path}: CheXpert CSV or folder not found")
    if not any((path / f).is_file() for f in CHEXPERT_FILES):  # given the folder above CheXpert-v1.0-small
        path = next((path / d for d in CHEXPERT_FOLDERS if (path / d).is_dir()), path)
    files = [(path / f, _split_of(Path(f).stem)) for f in CHEXPERT_FILES if (path / f).is_file()]
    if not files:
        raise DataError(f"{path}: none of {list(CHEXPERT_FILES)} found")
    return files


def read_chexpert_csv(path: Path | str, root: Path | str | None = None, frontal_only: bool = True,
                      uncertainty: str = "mask") -> dict[str, Split]:
    """Read CheXpert's `train.csv` / `valid.csv` / `test.csv` (one file, or a folder with them).

    Columns `Path,Sex,Age,Frontal/Lateral,AP/PA`, then one column per finding (any names:
    every column that is not one of those five); values 1/0/-1 (or 1.0/0.0/-1.0) or blank.
    Blank means "not mentioned in the report" and reads as 0, the common convention (CheXpert's
    own baselines, PsPG's conversion). -1 (uncertain) follows `uncertainty`: "mask" keeps -1
    (masked in losses and metrics), "ones" reads 1 (U-Ones), "zeros" reads 0 (U-Zeros).
    `frontal_only` drops the rows whose Frontal/Lateral is Lateral (counted in
    `meta["lateral_dropped"]`); without that column the view comes from the file name.
    `Path` starts at the folder that holds `CheXpert-v1.0-small/`: `root` when given, else the
    CSV's parent's parent, else the CSV's folder. Splits from the file names: train.csv ->
    train, valid.csv -> val, test.csv -> test.
    """
    check_uncertainty(uncertainty)
    path = as_path(path)
    files = _chexpert_files(path)
    problems = Problems(path)
    collect = _Collect(problems)
    names: list[str] | None = None
    bases: list[Path] = []
    dropped = 0
    for csv_path, split in files:
        header, rows = _csv_rows(csv_path, problems)
        label = f"{csv_path.name} " if path.is_dir() else ""
        if "Path" not in header:
            problems.error(label.strip(), f"no 'Path' column; columns: {header}")
            continue
        findings = [c for c in header if c and c not in CHEXPERT_META]
        if names is None:
            names = findings
        elif findings != names:
            problems.error(label.strip(), f"finding columns {findings} differ from {files[0][0].name}'s {names}")
            continue
        bases = [as_path(root)] if root is not None else [csv_path.parent.parent, csv_path.parent]
        for where, row in rows:
            where = label + where
            view = _view(row.get("Frontal/Lateral"), row["Path"])
            if row.get("Frontal/Lateral") and view not in ("frontal", "lateral"):
                problems.error(where, f"column 'Frontal/Lateral': value {row['Frontal/Lateral']!r} is not Frontal or Lateral")
            if frontal_only and view == "lateral":
                dropped += 1
                continue
            targets = [_value(problems, where, c, row[c], blank=0) for c in findings]
            if uncertainty != "mask":
                targets = [(1 if uncertainty == "ones" else 0) if t == -1 else t for t in targets]
            image = _image(problems, where, "Path", row["Path"], bases)
            if image is not None and None not in targets:
                collect.add(where, split, _sample(image, findings, targets, view),  # type: ignore[arg-type]
                            patient_folder(row["Path"]))
    if names is not None and not names:
        problems.error("", f"no finding columns after {list(CHEXPERT_META)}")
    space = multilabel_space(names) if names else None
    return collect.splits(space, bases[0] if bases else path, {
        "source": str(path), "format": "chexpert", "uncertainty": uncertainty, "frontal_only": frontal_only,
        "lateral_dropped": dropped})


# ----------------------------------------------------------------------------- ChestX-ray14

def _image_index(base: Path) -> dict[str, Path]:
    """Image file name -> path, over base/images/, base/images_*/images/ (the NIH release's
    archives unpacked), base/images_*/ and base itself; the first of a name wins."""
    folders = [base / "images", *sorted(base.glob("images_*/images")), *sorted(base.glob("images_*")), base]
    out: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            with os.scandir(folder) as entries:
                for e in entries:
                    if e.is_file():
                        out.setdefault(e.name, Path(os.path.abspath(e.path)))
    return out


def _nih_lists(folder: Path, problems: Problems) -> dict[str, str] | None:
    """Image index -> split from train_val_list.txt / test_list.txt, or None without them."""
    found = {name: s for name, s in NIH_LISTS.items() if (folder / name).is_file()}
    if not found:
        return None
    split_of: dict[str, str] = {}
    for name, split in found.items():
        text = decode_text(folder / name, (folder / name).read_bytes())
        for n, line in enumerate(text.splitlines(), start=1):
            image = line.strip()
            if image and split_of.setdefault(image, split) != split:
                problems.error(f"{name} line {n}", f"image {image!r} is in both {list(found)}")
    return split_of


def read_chestxray14(path: Path | str, root: Path | str | None = None) -> dict[str, Split]:
    """Read NIH ChestX-ray14's `Data_Entry_2017.csv` (the file, or the folder holding it).

    Columns used: `Image Index`, `Finding Labels` ("A|B|C" or "No Finding", names matched
    case- and punctuation-blind), `Patient ID` (grouping) and `View Position` (PA/AP frontal).
    Label space: the 14 findings in NIH's order, then "No Finding" (`NIH_FINDINGS`); every
    target is 0 or 1 (the labels carry no uncertainty). Images are found by name under
    `root` (default: the CSV's folder) in `images/`, `images_*/images/`, `images_*/` or the
    folder itself. Splits: `train_val_list.txt` (train; val is carved from it, by patient) and
    `test_list.txt` beside the CSV; without them one pool.
    """
    path = as_path(path)
    csv_path = path / NIH_CSV if path.is_dir() else path
    problems = Problems(csv_path)
    header, rows = _csv_rows(csv_path, problems)
    missing = [c for c in ("Image Index", "Finding Labels") if c not in header]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}; present: {header}")
    names = (*NIH_FINDINGS, NO_FINDING)
    lookup = {normalise_finding(n): n for n in names}
    base = as_path(root) if root is not None else csv_path.parent
    images = _image_index(base)
    split_of = _nih_lists(csv_path.parent, problems)
    collect, unlisted = _Collect(problems), []
    for where, row in rows:
        index, labels = row["Image Index"], row["Finding Labels"]
        found = [lookup.get(normalise_finding(raw)) for raw in labels.split("|")]
        for raw, name in zip(labels.split("|"), found):
            if name is None:
                problems.error(where, f"column 'Finding Labels': value {raw.strip()!r} (in {labels!r}) is not a "
                                      f"ChestX-ray14 finding; known: {list(names)}")
        if NO_FINDING in found and len(found) > 1:
            problems.error(where, f"column 'Finding Labels': value {labels!r} has 'No Finding' and findings")
        if index not in images:
            problems.error(where, f"column 'Image Index': value {index!r}: image file not found under {base} "
                                  f"(images/, images_*/images/ or the folder itself)")
        if None in found or index not in images:
            continue
        if split_of is not None and index not in split_of:
            unlisted.append(index)
            continue
        targets = [int(n in found) for n in names]
        collect.add(where, split_of[index] if split_of else POOL,
                    _sample(images[index], names, targets, _view(row.get("View Position"))),
                    row.get("Patient ID") or index.split("_")[0])  # NIH names images <patient>_<follow-up>.png
    for index in unlisted:
        problems.warn(f"images in neither {' nor '.join(NIH_LISTS)} (skipped)", index)
    return collect.splits(multilabel_space(names), base, {"source": str(csv_path), "format": "chestxray14"})


# ----------------------------------------------------------------------------- PsPG JSONL

def _jsonl_files(path: Path) -> list[tuple[Path, str]]:
    if path.is_file():
        return [(path, _split_of(path.stem))]
    files = [(path / f"{s}.jsonl", _split_of(s)) for s in JSONL_STEMS if (path / f"{s}.jsonl").is_file()]
    if not files:
        raise DataError(f"{path}: no {', '.join(f'{s}.jsonl' for s in JSONL_STEMS)} found")
    return files


def _names_file(folder: Path) -> list[str] | None:
    """Finding names from PsPG's labels.json ({"labels_name": [...]}, or a bare list) beside the data."""
    for name in NAMES_FILES:
        file = folder / name
        if file.is_file():
            try:
                data = json.loads(decode_text(file, file.read_bytes()))
            except json.JSONDecodeError as e:
                raise DataError(f"{file}: not valid JSON ({e})") from None
            names = data.get("labels_name", data.get("labels")) if isinstance(data, dict) else data
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise DataError(f"{file}: expected a list of finding names (or {{\"labels_name\": [...]}})")
            return names
    return None


def read_pspg_jsonl(path: Path | str, root: Path | str | None = None,
                    labels: Sequence[str] | None = None) -> dict[str, Split]:
    """Read PsPG's JSONL: one object per line, `{"filepath", "text", "labels"}` (+ optional
    `split`, `view`, and `id`/`patient` for grouping); a file, or a folder of train/val/test.jsonl.

    `labels` is either a 0/1(/-1) vector, as PsPG's own files hold it (its converter writes
    CheXpert's floats, blank as 0.0), indexed by `labels=` or by the names in a `labels.json`
    beside the data; or a list of positive finding names, over `labels=` or, without it, the
    sorted names seen. `filepath` is relative to `root` (default: the JSONL's folder). Split:
    the `split` key, else the file name (train, val/valid, test), else one pool.
    """
    path = as_path(path)
    files = _jsonl_files(path)
    problems = Problems(path)
    records: list[tuple[str, str, Path, dict[str, Any]]] = []
    for file, split in files:
        label = f"{file.name} " if path.is_dir() else ""
        for n, line in enumerate(decode_text(file, file.read_bytes()).splitlines(), start=1):
            where = f"{label}line {n}"
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.error(where, f"column {e.colno}: not valid JSON ({e.msg})")
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("filepath"), str) or not isinstance(obj.get("labels"), list):
                problems.error(where, f"expected an object with \"filepath\" (a string) and \"labels\" (a list), got "
                                      f"{line.strip()[:80]!r}")
                continue
            records.append((where, obj.get("split") or split, file.parent, obj))
    vectors = any(not all(isinstance(v, str) for v in r[3]["labels"]) for r in records)
    names = list(labels) if labels is not None else _names_file(files[0][0].parent) if vectors else \
        sorted({v for r in records for v in r[3]["labels"]})
    if names is None:
        problems.error("", "\"labels\" holds 0/1 vectors: pass labels=[finding names] (or put PsPG's labels.json "
                           "beside the data)")
        problems.raise_errors()
    assert names is not None
    collect = _Collect(problems)
    for where, split, folder, obj in records:
        targets = _targets(problems, where, obj["labels"], names, vectors)
        image = _image(problems, where, "filepath", obj["filepath"], [as_path(root) if root is not None else folder])
        if image is None or targets is None:
            continue
        patient = obj.get("patient", obj.get("id"))
        text = obj.get("text") if isinstance(obj.get("text"), str) else None
        collect.add(where, ALIASES.get(str(split).strip().lower(), str(split)),
                    _sample(image, names, targets, _view(obj.get("view"), obj["filepath"]), text),
                    None if patient is None else str(patient))
    root_path = as_path(root) if root is not None else files[0][0].parent
    return collect.splits(multilabel_space(names) if names else None, root_path,
                          {"source": str(path), "format": "pspg_jsonl"})


def _targets(problems: Problems, where: str, values: list, names: Sequence[str], vectors: bool) -> list[int] | None:
    """1/0/-1 per finding from a vector, or from the list of positive names (empty: none, unless
    the data holds vectors)."""
    if all(isinstance(v, str) for v in values) and (values or not vectors):
        unknown = [v for v in values if v not in names]
        for v in unknown:
            problems.error(where, f"column 'labels': value {v!r} is not a finding of the label space {list(names)[:10]}")
        return None if unknown else [int(n in values) for n in names]
    if len(values) != len(names):
        problems.error(where, f"column 'labels': {len(values)} values for {len(names)} findings {list(names)[:10]}")
        return None
    bad = [(i, v) for i, v in enumerate(values) if isinstance(v, bool) or v not in (1, 0, -1)]
    for i, v in bad:
        problems.error(where, f"column 'labels[{i}]' ({names[i]!r}): value {v!r} is not 1, 0 or -1")
    return None if bad else [int(v) for v in values]


# ----------------------------------------------------------------------------- generic CSV

def read_multilabel_csv(path: Path | str, root: Path | str | None = None) -> dict[str, Split]:
    """Read a generic multi-label CSV: an image column (`path`, `image`, `filepath` or `Path`),
    optional `split`, `view`, `text` (or `report`) and `patient` (or `patient_id`) columns, and
    every other column a finding with 1, 0, -1 or blank. Blank is -1 (unknown, masked): a
    generic file that leaves a cell empty has not said the finding is absent. Paths are
    relative to `root` (default: the CSV's folder); split names as in `splits.ALIASES`.
    """
    path = as_path(path)
    problems = Problems(path)
    header, rows = _csv_rows(path, problems)
    path_col = next((c for c in PATH_COLUMNS if c in header), None)
    if path_col is None:
        raise DataError(f"{path}: no image column (one of {list(PATH_COLUMNS)}); columns: {header}")
    meta = {c: GENERIC_META[c.lower()] for c in header if c.lower() in GENERIC_META}
    findings = [c for c in header if c and c != path_col and c not in meta]
    if not findings:
        raise DataError(f"{path}: no finding columns besides {[path_col, *meta]}")
    column = {role: c for c, role in meta.items()}
    base = as_path(root) if root is not None else path.parent
    bases, collect = [base], _Collect(problems)
    for where, row in rows:
        targets = [_value(problems, where, c, row[c], blank=-1) for c in findings]
        split = row[column["split"]] if "split" in column else POOL
        if not split:
            problems.error(where, f"column {column['split']!r}: empty value")
        image = _image(problems, where, path_col, row[path_col], bases)
        if image is None or None in targets or not split:
            continue
        collect.add(where, ALIASES.get(split.lower(), split),
                    _sample(image, findings, targets, _view(row.get(column.get("view", ""))),  # type: ignore[arg-type]
                            row.get(column.get("text", ""))),
                    row.get(column.get("patient", "")) or None)
    return collect.splits(multilabel_space(findings), base, {"source": str(path), "format": "multilabel_csv"})


def write_multilabel_csv(splits: Mapping[str, Split], root: Path | str, path: Path | str) -> Path:
    """Write splits as a generic multi-label CSV (`read_multilabel_csv` reads them back): columns
    path (relative to `root`), split, patient, view, text, then the findings as 1/0/-1."""
    from medkit.atomic import atomic_write_text

    first = next(iter(splits.values()))
    names = list(first.labels.classnames)
    buf = io.StringIO(newline="")
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["path", "split", "patient", "view", "text", *names])
    for name, split in splits.items():
        for sample, patient in zip(split.samples, patient_of(split)):
            out.writerow([os.path.relpath(sample.path, root), name, patient, sample.view or "", sample.text or "",
                          *sample.targets])
    return atomic_write_text(Path(path), buf.getvalue())


# ----------------------------------------------------------------------------- sniffing, dispatch

def _sniff_csv(path: Path) -> str | None:
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        rows = list(itertools.islice(csv.reader(f), 201))
    if not rows:
        return None
    header = [c.strip() for c in rows[0]]
    if "Path" in header and "Frontal/Lateral" in header:
        return "chexpert"
    if "Image Index" in header and "Finding Labels" in header:
        return "chestxray14"
    path_col = next((c for c in PATH_COLUMNS if c in header), None)
    if path_col is None or {"label", "classname"} & set(header):
        return None
    others = [i for i, c in enumerate(header) if c and c != path_col and c.lower() not in GENERIC_META]
    valid = [i for i in others if all(i >= len(r) or r[i].strip() in VALUES or not r[i].strip() for r in rows[1:])]
    return "multilabel_csv" if len(valid) >= 2 else None


def sniff_multilabel(path: Path | str) -> str | None:
    """Which multi-label reader `path` needs: "chexpert" (a CSV with `Path` and `Frontal/Lateral`,
    or a folder of CheXpert's train/valid/test.csv, or the folder above CheXpert-v1.0-small),
    "chestxray14" (`Image Index` + `Finding Labels`, or a folder with Data_Entry_2017.csv),
    "pspg_jsonl" (a .jsonl, or a folder of train/val/test.jsonl), "multilabel_csv" (an image
    column, no `label`/`classname`, and at least two other columns whose first 200 values are all
    1/0/-1/blank); None otherwise (a single-label dataset)."""
    path = as_path(path)
    if path.is_dir():
        for folder in (path, *(path / d for d in CHEXPERT_FOLDERS)):
            if any((folder / f).is_file() and _sniff_csv(folder / f) == "chexpert" for f in CHEXPERT_FILES):
                return "chexpert"
        if (path / NIH_CSV).is_file():
            return "chestxray14"
        return "pspg_jsonl" if any((path / f"{s}.jsonl").is_file() for s in JSONL_STEMS) else None
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "pspg_jsonl"
    return _sniff_csv(path) if suffix == ".csv" and path.is_file() else None


def read_multilabel(path: Path | str, kind: str | None = None, root: Path | str | None = None, *,
                    uncertainty: str = "mask", frontal_only: bool = True,
                    labels: Sequence[str] | None = None) -> dict[str, Split]:
    """Read `path` with the reader `kind` names (default: `sniff_multilabel`). `uncertainty`
    and `frontal_only` apply to CheXpert, `labels` to PsPG JSONL; the others ignore them."""
    kind = kind or sniff_multilabel(path)
    if kind == "chexpert":
        return read_chexpert_csv(path, root, frontal_only=frontal_only, uncertainty=uncertainty)
    if kind == "chestxray14":
        return read_chestxray14(path, root)
    if kind == "pspg_jsonl":
        return read_pspg_jsonl(path, root, labels)
    if kind == "multilabel_csv":
        return read_multilabel_csv(path, root)
    raise DataError(f"{path}: not a multi-label dataset this package reads (CheXpert, ChestX-ray14, PsPG JSONL "
                    f"or a generic multi-label CSV)")


def multilabel_summary(split: Split) -> pd.DataFrame:
    """One row per finding: positive, negative and unknown (-1) counts."""
    rows = []
    for j, name in enumerate(split.labels.classnames):
        column = [t[j] for t in split.targets]  # type: ignore[index]
        rows.append({"finding": name, "positive": column.count(1), "negative": column.count(0),
                     "unknown": column.count(-1)})
    return pd.DataFrame(rows, columns=["finding", "positive", "negative", "unknown"])
