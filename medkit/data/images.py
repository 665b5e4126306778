"""Decoding one image to RGB, the same way for every file and every bit depth.

Intensity policy (`intensity=`):
- `"range"` (default): a pixel keeps its place in its *type's* range. 8-bit images are left
  as they are; 16-bit images map 0..65535 → 0..255 (v / 257); 32-bit integer images
  ("I" mode, how Pillow opens many 16-bit PNGs) are read as 16-bit values (clipped to
  0..65535); float images map 0..1 → 0..255 (clipped). So one pixel value gives one
  tensor value whatever file it came from. A 12-bit radiograph stored in 16 bits looks
  dark under this rule (its maximum is 4095 → 16): the verification pass warns about it.
- `"stretch"`: every non-8-bit image is stretched by its own min/max to 0..255 (what
  12-bit exports want; the same pixel value then differs between images).
Alpha is composited onto black (the X-ray background); palettes, CMYK, YCbCr → RGB.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch.utils.data
from PIL import Image, ImageFile

from medkit.data.checks import DataError
from medkit.data.labels import Split, as_path

Intensity = Literal["range", "stretch"]
INTENSITIES: tuple[str, ...] = ("range", "stretch")
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def check_intensity(intensity: str) -> str:
    if intensity not in INTENSITIES:
        raise ValueError(f"intensity={intensity!r}: use one of {list(INTENSITIES)}")
    return intensity


def stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Stretch an array to 0..255 by its own min/max (NaN/inf → the background)."""
    a = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(a)
    lo, hi = (a[finite].min(), a[finite].max()) if finite.any() else (0.0, 0.0)
    a = np.where(finite, a, lo)
    # A constant image has no contrast to stretch; keep its value where it fits in 8 bits.
    a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.full(a.shape, np.clip(lo, 0.0, 255.0))
    return np.rint(a).astype(np.uint8)


def range_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map an array to 0..255 by its dtype's range (see the module docstring)."""
    a = np.asarray(arr)
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        f = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        return np.rint(np.clip(f, 0.0, 1.0) * 255.0).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        if a.dtype.itemsize == 1:  # int8: shift to unsigned
            return (a.astype(np.int16) + 128).astype(np.uint8)
        return np.rint(np.clip(a.astype(np.float64), 0, 65535) / 257.0).astype(np.uint8)
    raise DataError(f"cannot map an array of dtype {a.dtype} to 8-bit intensities")


def to_uint8(arr: np.ndarray, intensity: str = "range") -> np.ndarray:
    return stretch_to_uint8(arr) if check_intensity(intensity) == "stretch" and np.asarray(arr).dtype != np.uint8 \
        else range_to_uint8(arr)


def to_rgb(im: Image.Image, intensity: str = "range") -> Image.Image:
    """Convert any PIL mode to RGB under the intensity policy."""
    if im.mode == "RGB":
        return im
    if im.mode in _HIGH_DEPTH_MODES:
        # "I;16*" modes: numpy gets the right width and byte order from Pillow's array interface
        return Image.fromarray(to_uint8(np.asarray(im), intensity)).convert("RGB")
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


def load_image(path: Path | str, intensity: str = "range") -> Image.Image:
    """Open an image file fully decoded, as mode "RGB" (any format Pillow reads).

    Raises DataError naming `path` when it is missing, unreadable, or truncated.
    """
    path = as_path(path)
    check_intensity(intensity)
    if not path.is_file():
        raise DataError(f"{path}: image file not found" + (" (it is a folder)" if path.is_dir() else ""))
    # Some libraries flip this global on; a truncated radiograph padded with grey would be
    # silent training-data corruption, so we force strict decoding for our own loads.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as im:
            im.load()  # decode now so truncation fails here, not inside a DataLoader worker
            return to_rgb(im, intensity)
    except PIL_ERRORS as e:
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def array_to_rgb(arr: np.ndarray, intensity: str = "range") -> Image.Image:
    """(H,W), (H,W,1) or (H,W,3) array → RGB image under the intensity policy."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(np.ascontiguousarray(to_uint8(arr, intensity))).convert("RGB")


def image_extensions() -> tuple[str, ...]:
    """Every file extension Pillow can open here (.png, .jpg, .webp, .gif, .tif, …)."""
    exts = Image.registered_extensions()  # also loads every plugin
    return tuple(sorted(e for e, fmt in exts.items() if fmt in Image.OPEN))


class ImageDataset(torch.utils.data.Dataset):
    """Torch dataset over a Split: item i is `(transform(rgb_image), label)`.

    Images are decoded under `split.meta["intensity"]` (default "range", see `images.py`).
    Array-backed samples (MedMNIST) read `split.meta["npz_key"]` (default "<split name>_images")
    from their .npz, loaded lazily once per dataset instance (and per DataLoader worker).
    """

    def __init__(self, split: Split, transform: Callable | None = None) -> None:
        self.split = split
        self.transform = transform
        self._npz_key = str(split.meta.get("npz_key", f"{split.name}_images"))
        self.intensity = str(split.meta.get("intensity", "range"))  # see medkit.data.images
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
            return load_image(s.path, self.intensity)
        return array_to_rgb(self._array(s.path)[s.array_index], self.intensity)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """(image, label) — for a multi-label sample the target vector `[C]` (1 / 0 / -1)."""
        img = self.image(index)
        sample = self.split.samples[index]
        target = sample.label if sample.targets is None else torch.as_tensor(sample.targets, dtype=torch.long)
        return (self.transform(img) if self.transform is not None else img), target
