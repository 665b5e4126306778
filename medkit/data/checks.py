"""Problems with input data, collected and reported together, and the image verification pass.

Readers do not stop at the first problem: they note every one in a `Problems` and raise a
single `DataError` at the end listing each (file, row/entry, column, value), so a folder with
four problems takes one run to fix, not four. Suspicious but legal inputs (stray files,
hidden files, tiny or dark images, duplicate rows) are `DataWarning`s that name them.

`verify_images` decodes every image once (tqdm bar) so that corrupt and truncated files are
found at load, not at epoch 3; its verdicts are cached per file fingerprint (path, size,
mtime), so a second load of the same folder costs a stat per file.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

SHOW = 20  # problems listed in full; the rest are counted
TINY_SIDE = 16  # pixels: smaller images are legal but almost surely a mistake


class DataError(ValueError):
    """Bad input data: the message names the file and, where relevant, row, column and value."""


class DataWarning(UserWarning):
    """Suspicious but legal input data; the message names the files or rows."""


@dataclass
class Problems:
    """Every error and warning found while reading one source (a file or a folder)."""

    source: Path | str
    errors: list[str] = field(default_factory=list)
    warned: dict[str, list[str]] = field(default_factory=dict)  # kind → items

    def error(self, where: str, msg: str) -> None:
        # "row 3 (line 4), column 'label': value …" reads as one location, then the problem
        sep = ", " if msg.startswith("column") else ": "
        self.errors.append(f"{where}{sep}{msg}" if where else msg)

    def warn(self, kind: str, item: str) -> None:
        self.warned.setdefault(kind, []).append(item)

    def __bool__(self) -> bool:
        return bool(self.errors)

    def raise_errors(self) -> None:
        """One DataError naming every problem (the first SHOW, then a count)."""
        if not self.errors:
            return
        if len(self.errors) == 1:
            raise DataError(f"{self.source}: {self.errors[0]}")
        shown = "\n".join(f"  - {e}" for e in self.errors[:SHOW])
        more = f"\n  … and {len(self.errors) - SHOW} more" if len(self.errors) > SHOW else ""
        raise DataError(f"{self.source}: {len(self.errors)} problems:\n{shown}{more}")

    def emit_warnings(self) -> list[str]:
        """One DataWarning per kind, naming its items; returns the messages (for `meta`)."""
        messages = []
        for kind, items in self.warned.items():
            shown = "; ".join(items[:SHOW]) + (f"; … and {len(items) - SHOW} more" if len(items) > SHOW else "")
            messages.append(f"{self.source}: {len(items)} {kind}: {shown}")
            warnings.warn(messages[-1], DataWarning, stacklevel=3)
        return messages

    def finish(self) -> list[str]:
        self.raise_errors()
        return self.emit_warnings()


# ----------------------------------------------------------------------------- verification pass

def _fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _inspect(path: Path) -> dict:
    """Decode one file fully; its size and mode, or the error."""
    from PIL import Image, ImageFile

    from medkit.data.images import PIL_ERRORS

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as im:
            im.load()
            out = {"ok": True, "size": list(im.size), "mode": im.mode}
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
                lo, hi = im.getextrema()
                out["max"] = int(hi)
            return out
    except PIL_ERRORS as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def verify_images(paths: Sequence[Path], problems: Problems, cache_dir: Path | None = None,
                  progress: bool = True, intensity: str = "range") -> None:
    """Decode every image once; unreadable ones are errors, tiny or (16-bit) dark ones warnings.

    Verdicts are cached in `cache_dir/verified.json` by file fingerprint.
    """
    from tqdm.auto import tqdm

    cache_file = cache_dir / "verified.json" if cache_dir is not None else None
    cache: dict[str, dict] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (json.JSONDecodeError, OSError):
            cache = {}  # a damaged cache only costs a re-check
    unique = list(dict.fromkeys(Path(p) for p in paths))
    new = 0
    for path in tqdm(unique, desc="verifying images", disable=not progress, mininterval=2):
        key = _fingerprint(path)
        verdict = cache.get(key)
        if verdict is None:
            verdict = cache[key] = _inspect(path)
            new += 1
        if not verdict["ok"]:
            problems.error(str(path), f"cannot read image ({verdict['error']})")
            continue
        w, h = verdict["size"]
        if min(w, h) < TINY_SIDE:
            problems.warn(f"tiny images (a side under {TINY_SIDE} px)", f"{path} ({w}×{h})")
        if intensity == "range" and verdict.get("max") is not None and 0 < verdict["max"] < 4096:
            problems.warn("high-bit-depth images using under 1/16 of their range (they will look dark; "
                          "intensity='stretch' stretches each image)", f"{path} (max {verdict['max']})")
    if cache_file is not None and new:
        from medkit.atomic import atomic_write_text

        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_file, json.dumps(cache))


def decode_text(path: Path, data: bytes) -> str:
    """UTF-8 text (a BOM tolerated); otherwise a DataError naming the file, line and byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}: line {line}, column {col}: byte {data[e.start:e.start + 1]!r} is not UTF-8 "
                        f"(the file is in another encoding, e.g. Latin-1/cp1252: re-save it as UTF-8)") from None


def list_files(root: Path) -> Iterable[Path]:
    """Every file under root (os.walk: fast, follows no symlinked folders)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name
