"""Binary-segmentation datasets as users have them: MedVLSM's annotation JSON, image/mask folder
pairs, and a CSV of image, mask and prompt.

- **MedVLSM** (`<root>/anns/{train,val,test}.json`, images in `<root>/images`, masks in
  `<root>/masks`): a list of records with `img_name`, `mask_name`, `bbox`, `cat`, `sentences`
  and `prompts`, a dict `p0`…`p9` whose values are a string or a list to sample from (MedVLSM's
  attribute prompts: p0 empty, p1 the name, p2 shape, p3 colour, p4 size, p5 count, p6
  location, p7 a definition, p8 combined, p9 combined with location).
- **Folders**: `images/` and `masks/` whose files pair by name stem (masks 0/255, PNG or JPG).
- **CSV**: columns `image`, `mask`, optional `prompt` and `split`, paths relative to the CSV.

Every problem of a source is reported in one `DataError` naming the file, the record or row,
the key and the value (a missing mask, an unknown prompt key, an image and a mask of different
sizes, a mask that is not binary). Masks are read as booleans: PNG masks must hold two values
(0 and one foreground value); JPG masks are thresholded at half their range, since JPEG's
compression puts grey values on every edge.
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .checks import Problems

PROMPT_KEYS = tuple(f"p{i}" for i in range(10))
MEDVLSM_KEYS = ("img_name", "mask_name", "prompts")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class SegSample:
    image: Path
    mask: Path
    prompts: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    category: str | None = None

    def prompt(self, key: str, rng: random.Random | None = None) -> str:
        """The prompt `key` (a string, or one of its list drawn with `rng`; the first without)."""
        if key not in self.prompts:
            raise KeyError(f"{self.image.name}: no prompt {key!r}; it has {sorted(self.prompts)}")
        value = self.prompts[key]
        if isinstance(value, str):
            return value
        return value[rng.randrange(len(value))] if rng is not None else value[0]


def read_mask(path: Path) -> np.ndarray:
    """A binary mask as booleans `[H, W]`; `ValueError` naming the values if a PNG is not binary."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("L"))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return a >= 128
    values = np.unique(a)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        raise ValueError(f"not a binary mask: values {values[:6].tolist()}{' …' if len(values) > 6 else ''}")
    return a > 0


def _check_pair(sample: SegSample, where: str, problems: Problems) -> bool:
    ok = True
    for kind, path in (("image", sample.image), ("mask", sample.mask)):
        if not path.is_file():
            problems.error(where, f"{kind} {path} not found")
            ok = False
    if not ok:
        return False
    try:
        mask = read_mask(sample.mask)
    except (ValueError, OSError) as e:
        problems.error(where, f"mask {sample.mask.name}: {e}")
        return False
    with Image.open(sample.image) as im:
        size = im.size[::-1]
    if mask.shape != size:
        problems.error(where, f"image {sample.image.name} is {size[1]}×{size[0]} but mask {sample.mask.name} is "
                              f"{mask.shape[1]}×{mask.shape[0]}")
        return False
    return True


def read_medvlsm(root: str | Path, split: str, prompt_keys: Sequence[str] = (), check: bool = True) -> list[SegSample]:
    """`<root>/anns/<split>.json` in MedVLSM's layout. `prompt_keys`: keys every record must
    have (e.g. the ones a notebook evaluates); `check`: open every mask (binary, same size)."""
    root = Path(root)
    path = root / "anns" / f"{split}.json"
    problems = Problems(path)
    if not path.is_file():
        found = sorted(p.name for p in (root / "anns").glob("*.json")) if (root / "anns").is_dir() else []
        problems.error("", f"not found (annotation files there: {found or 'none'})")
        problems.raise_errors()
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        problems.error("", f"not valid JSON (line {e.lineno}: {e.msg})")
        problems.raise_errors()
    if not isinstance(records, list):
        problems.error("", f"expected a list of records, found {type(records).__name__}")
        problems.raise_errors()
    bad_keys = [k for k in prompt_keys if k not in PROMPT_KEYS]
    if bad_keys:
        problems.error("", f"unknown prompt keys {bad_keys}: MedVLSM's are {list(PROMPT_KEYS)}")
    samples = []
    for i, rec in enumerate(records):
        where = f"record {i}" + (f" ({rec.get('img_name')})" if isinstance(rec, dict) and rec.get("img_name") else "")
        missing = [k for k in MEDVLSM_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            problems.error(where, f"missing keys {missing}")
            continue
        prompts = rec["prompts"]
        if not isinstance(prompts, dict):
            problems.error(where, f"'prompts' is {type(prompts).__name__}, expected a dict of p0…p9")
            continue
        unknown = sorted(set(prompts) - set(PROMPT_KEYS))
        if unknown:
            problems.error(where, f"unknown prompt keys {unknown} (MedVLSM's are p0…p9)")
        absent = [k for k in prompt_keys if k not in prompts]
        if absent:
            problems.error(where, f"no prompt {absent}")
        values = {}
        for k, v in prompts.items():
            if isinstance(v, str):
                values[k] = v
            elif isinstance(v, list) and v and all(isinstance(x, str) for x in v):
                values[k] = tuple(v)
            else:
                problems.error(where, f"prompt {k!r} is {v!r}: expected a string or a non-empty list of strings")
        sample = SegSample(root / "images" / rec["img_name"], root / "masks" / rec["mask_name"], values, rec.get("cat"))
        if not check or _check_pair(sample, where, problems):
            samples.append(sample)
    problems.finish()
    return samples


def read_mask_folders(images: str | Path, masks: str | Path, prompt: str = "", check: bool = True) -> list[SegSample]:
    """Image and mask folders whose files pair by name stem (`case1.jpg` ↔ `case1.png`); every
    sample gets `prompt` as p1 (p0 is empty)."""
    images, masks = Path(images), Path(masks)
    problems = Problems(images.parent)
    by_stem = {}
    for folder in (images, masks):
        if not folder.is_dir():
            problems.error("", f"folder {folder} not found")
    problems.raise_errors()
    for p in sorted(masks.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(p.stem.removesuffix("_mask"), p)
    samples = []
    for img in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        mask = by_stem.get(img.stem)
        if mask is None:
            problems.error(img.name, f"no mask named {img.stem}.* in {masks}")
            continue
        sample = SegSample(img, mask, {"p0": "", "p1": prompt})
        if not check or _check_pair(sample, img.name, problems):
            samples.append(sample)
    if not samples and not problems:
        problems.error("", f"no images in {images}")
    problems.finish()
    return samples


def read_seg_csv(path: str | Path, split: str | None = None, check: bool = True) -> list[SegSample]:
    """A CSV with `image`, `mask`, optional `prompt` (p1) and `split` columns, paths relative to it."""
    path = Path(path)
    problems = Problems(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("image", "mask") if c not in (reader.fieldnames or [])]
        if missing:
            problems.error("", f"missing columns {missing} (found {reader.fieldnames})")
            problems.raise_errors()
        rows = list(reader)
    samples = []
    for i, row in enumerate(rows):
        if split is not None and row.get("split", split) != split:
            continue
        where = f"row {i + 1} (line {i + 2})"
        sample = SegSample(path.parent / row["image"], path.parent / row["mask"],
                           {"p0": "", "p1": row.get("prompt") or ""})
        if not check or _check_pair(sample, where, problems):
            samples.append(sample)
    problems.finish()
    return samples
