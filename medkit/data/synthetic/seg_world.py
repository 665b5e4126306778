"""The embedded segmentation world: three small binary-segmentation datasets of differing look,
written as MedVLSM writes its datasets, and natural-domain scenes with referring phrases for
pretraining a decoder offline.

- `synth_polyp`: colour endoscopy (pink mucosa, folds, a dark circular field, specular glints);
  the structure a raised, redder polyp.
- `synth_skin`: dermoscopy (skin tone, hairs, a dark circular lens rim); a pigmented lesion.
- `synth_breast_us`: breast ultrasound (Rayleigh speckle in a sector); a hypoechoic mass with
  posterior enhancement.

Each image's attributes (shape, colour, size, count, location) are drawn, and its prompts are
built from them as MedVLSM builds its attribute prompts: p0 empty, p1 the name, p2 shape, p3
colour, p4 size, p5 count, p6 location, p7 a definition, p8 combined, p9 combined with
location. A dataset folder holds `images/`, `masks/` (0/255 PNG) and `anns/{train,val,test}.json`
with `img_name`, `mask_name`, `bbox`, `cat`, `sentences` and `prompts` (a list per key where
MedVLSM keeps several phrasings), so `read_medvlsm` and `read_mask_folders` both read it;
`world.json` is written last (a folder without it is an interrupted build, rebuilt).

`scenes(n, size, seed)`: the pretraining set, natural-domain scenes of two or three objects
whose shapes, colours and sizes come from the implant world's cue vocabulary (`cues.py`), each
with a referring phrase and the mask of what it refers to. It never draws a medical-looking
image: zero-shot segmentation of the datasets above has a real domain gap.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from .cues import CAN_BODIES, SIZES

SEG_WORLD_VERSION = 1
SPLITS = ("train", "val", "test")
SHAPES = ("round", "oval", "irregular")
LOCATIONS = ("upper left", "upper right", "lower left", "lower right", "centre")
SIZE_WORDS = ("small", "medium", "large")
SEG_DATASETS = {
    "synth_polyp": dict(cat="polyp", plural="polyps", colours=("pink", "red", "yellowish"),
                        definition="a polyp is a small growth of tissue that bulges from the lining of the bowel"),
    "synth_skin": dict(cat="skin lesion", plural="skin lesions", colours=("light brown", "dark brown", "black"),
                       definition="a pigmented skin lesion is a patch of skin darker than the skin around it"),
    "synth_breast_us": dict(cat="breast tumour", plural="breast tumours", colours=("dark", "very dark", "grey"),
                            definition="a breast tumour is a mass of abnormal tissue that looks dark on ultrasound"),
}
#: images per split
SIZES_BY_PROFILE = {"smoke": (12, 6, 8), "tiny": (48, 16, 32), "paper": (400, 100, 200)}


@dataclass(frozen=True)
class SegWorldSpec:
    name: str
    n_train: int = 48
    n_val: int = 16
    n_test: int = 32
    image_size: int = 96
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in SEG_DATASETS:
            raise ValueError(f"unknown synthetic segmentation dataset {self.name!r}; choose from {sorted(SEG_DATASETS)}")

    @property
    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": SEG_WORLD_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.image_size}px-v{SEG_WORLD_VERSION}-{self.key}"


def seg_spec_for(name: str, profile: str = "tiny", **overrides) -> SegWorldSpec:
    n_train, n_val, n_test = SIZES_BY_PROFILE.get(profile, SIZES_BY_PROFILE["tiny"])
    return SegWorldSpec(name, **{"n_train": n_train, "n_val": n_val, "n_test": n_test, **overrides})


# --------------------------------------------------------------------------- shapes
def blob_polygon(shape: str, cx: float, cy: float, r: float, rng: np.random.Generator, n: int = 40
                 ) -> list[tuple[float, float]]:
    """An outline around (cx, cy): a circle, an ellipse at a random angle, or a lobulated blob."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    if shape == "round":
        rad = np.full(n, r)
    elif shape == "oval":
        a, b, phi = r * 1.35, r * 0.7, rng.uniform(0, np.pi)
        rad = a * b / np.sqrt((b * np.cos(t - phi)) ** 2 + (a * np.sin(t - phi)) ** 2)
    else:
        k = rng.integers(3, 6)
        rad = r * (1 + 0.3 * np.sin(k * t + rng.uniform(0, 6)) + 0.12 * np.sin((k + 2) * t + rng.uniform(0, 6)))
    return list(zip(cx + rad * np.cos(t), cy + rad * np.sin(t)))


def _location(cx: float, cy: float, size: int) -> str:
    if abs(cx - size / 2) < size * 0.14 and abs(cy - size / 2) < size * 0.14:
        return "centre"
    return f"{'upper' if cy < size / 2 else 'lower'} {'left' if cx < size / 2 else 'right'}"


def _mask(polys: list[list[tuple[float, float]]], size: int) -> np.ndarray:
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    for p in polys:
        d.polygon(p, fill=255)
    return np.asarray(im) > 0


def _noise(size: int, rng: np.random.Generator, blur: float) -> np.ndarray:
    n = Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur))
    a = np.asarray(n, dtype=np.float32) / 255
    return (a - a.mean()) / (a.std() + 1e-6)


def _field(size: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(xx - size / 2, yy - size / 2) / (size / 2)
    return np.clip((radius - d) / 0.12, 0, 1)


# --------------------------------------------------------------------------- the three looks
def _polyp(mask: np.ndarray, colour: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    folds = 0.5 + 0.5 * np.sin((xx * np.cos(a := rng.uniform(0, 3)) + yy * np.sin(a)) / size * rng.uniform(8, 14))
    base = np.array([0.85, 0.45, 0.42]) + 0.04 * rng.standard_normal(3)
    img = base[None, None] * (0.75 + 0.2 * folds[..., None] + 0.06 * _noise(size, rng, 2)[..., None])
    tint = {"pink": [0.95, 0.55, 0.55], "red": [0.8, 0.22, 0.2], "yellowish": [0.9, 0.75, 0.45]}[colour]
    soft = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(size / 40)),
                      np.float32)[..., None] / 255
    # a raised polyp: lit from the upper left, shadowed below right
    ys, xs = np.nonzero(mask)
    shade = 1.0 if len(xs) == 0 else 1 + 0.5 * np.clip(((xs.mean() - xx) + (ys.mean() - yy)) / (size * 0.25), -1, 1)
    lesion = np.array(tint)[None, None] * (0.85 + 0.1 * _noise(size, rng, 1)[..., None]) * np.atleast_2d(shade)[..., None]
    img = img * (1 - soft) + lesion * soft
    glints = (rng.random((size, size)) > 0.9985).astype(np.float32)
    glints = np.asarray(Image.fromarray((glints * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2)),
                        np.float32)[..., None] / 60
    return (img + glints) * _field(size, 0.98)[..., None]


def _skin(mask: np.ndarray, colour: str, size: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array([0.88, 0.7, 0.58]) + 0.05 * rng.standard_normal(3)
    img = base[None, None] * (0.93 + 0.04 * _noise(size, rng, 4)[..., None])
    tint = {"light brown": [0.62, 0.42, 0.3], "dark brown": [0.38, 0.22, 0.14], "black": [0.15, 0.1, 0.09]}[colour]
    soft = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(size / 50)),
                      np.float32)[..., None] / 255
    lesion = np.array(tint)[None, None] * (0.85 + 0.15 * _noise(size, rng, 1.5)[..., None])
    img = img * (1 - soft) + lesion * soft
    hairs = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(hairs)
    for _ in range(rng.integers(2, 7)):
        x0, y0 = rng.uniform(0, size, 2)
        ang, length = rng.uniform(0, 2 * np.pi), rng.uniform(size * 0.3, size * 0.8)
        d.line([(x0, y0), (x0 + length * np.cos(ang), y0 + length * np.sin(ang))], fill=255, width=1)
    h = np.asarray(hairs, np.float32)[..., None] / 255
    img = img * (1 - 0.7 * h)
    return img * _field(size, 1.15)[..., None]


def _ultrasound(mask: np.ndarray, colour: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    speckle = rng.rayleigh(0.35, (size, size))
    tissue = 0.45 + 0.12 * _noise(size, rng, 5)
    level = {"dark": 0.16, "very dark": 0.05, "grey": 0.28}[colour]
    soft = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(size / 60)),
                      np.float32) / 255
    below = np.zeros_like(soft)
    cols = mask.any(0)
    if cols.any():
        bottom = np.where(mask.any(1))[0].max()
        below[bottom:, cols] = np.linspace(0.3, 0, size - bottom)[:, None]
    img = 1.5 * speckle * (tissue * (1 - soft) + level * soft + below)
    angle = np.arctan2(xx - size / 2, yy + size * 0.1)
    sector = (np.abs(angle) < 0.62) & (np.hypot(xx - size / 2, yy + size * 0.1) < size * 1.05)
    return np.repeat((np.clip(img, 0, 1) * sector)[..., None], 3, axis=2)


LOOKS = {"synth_polyp": _polyp, "synth_skin": _skin, "synth_breast_us": _ultrasound}


def draw_case(name: str, size: int, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray, dict]:
    """One image of dataset `name`, its mask and the attributes drawn."""
    info = SEG_DATASETS[name]
    count = 1 if rng.random() < 0.8 else 2
    shape, colour = SHAPES[rng.integers(len(SHAPES))], info["colours"][rng.integers(len(info["colours"]))]
    size_word = SIZE_WORDS[rng.integers(3)]
    r = size * {"small": 0.09, "medium": 0.14, "large": 0.2}[size_word] * (0.75 if count == 2 else 1)
    polys, centres = [], []
    for _ in range(count):
        for _attempt in range(20):
            cx, cy = rng.uniform(size * 0.28, size * 0.72, 2)
            if all(np.hypot(cx - a, cy - b) > 2.4 * r for a, b in centres):
                break
        centres.append((cx, cy))
        polys.append(blob_polygon(shape, cx, cy, r, rng))
    mask = _mask(polys, size)
    img = LOOKS[name](mask, colour, size, rng)
    img = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    location = _location(*centres[0], size) if count == 1 else "both sides" if abs(
        centres[0][0] - centres[1][0]) > size / 4 else _location(*np.mean(centres, 0), size)
    attrs = dict(shape=shape, colour=colour, size=size_word, count=count, location=location)
    return img, mask, attrs


def attribute_prompts(name: str, attrs: dict) -> dict[str, list[str]]:
    """MedVLSM's p0–p9 for one image (a list per key: its phrasings, one drawn per step)."""
    info = SEG_DATASETS[name]
    cat = info["cat"] if attrs["count"] == 1 else info["plural"]
    count = "one" if attrs["count"] == 1 else "two"
    s, c, z, where = attrs["shape"], attrs["colour"], attrs["size"], attrs["location"]
    at = f"in the {where}" if where != "both sides" else "on both sides"
    return {
        "p0": [""],
        "p1": [cat],
        "p2": [f"{s} {cat}"],
        "p3": [f"{c} {cat}"],
        "p4": [f"{z} {cat}"],
        "p5": [f"{count} {cat}"],
        "p6": [f"{cat} {at}"],
        "p7": [info["definition"]],
        "p8": [f"{count} {z} {c} {s} {cat}", f"{count} {s} {c} {cat}, {z}"],
        "p9": [f"{count} {z} {c} {s} {cat} {at}", f"{count} {s} {c} {cat} {at}, {z}"],
    }


def build_seg(spec: SegWorldSpec, root: Path | str = "data", progress: bool = True) -> Path:
    """Write (or reuse) one dataset under `root/synthetic/`; returns its folder."""
    folder = Path(root) / "synthetic" / spec.folder_name
    if (folder / "world.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("images", "masks", "anns"):
        (tmp / sub).mkdir(parents=True)
    counts = dict(zip(SPLITS, (spec.n_train, spec.n_val, spec.n_test)))
    bar = tqdm(total=sum(counts.values()), desc=f"drawing {spec.name}", disable=not progress, mininterval=1)
    for s_i, split in enumerate(SPLITS):
        records = []
        for i in range(counts[split]):
            rng = np.random.default_rng([spec.seed, sorted(SEG_DATASETS).index(spec.name), s_i, i])
            img, mask, attrs = draw_case(spec.name, spec.image_size, rng)
            stem = f"{split}_{i:04d}"
            img.save(tmp / "images" / f"{stem}.png")
            Image.fromarray((mask * 255).astype(np.uint8)).save(tmp / "masks" / f"{stem}.png")
            ys, xs = np.nonzero(mask)
            prompts = attribute_prompts(spec.name, attrs)
            records.append({"img_name": f"{stem}.png", "mask_name": f"{stem}.png",
                            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                            "cat": SEG_DATASETS[spec.name]["cat"], "sentences": [prompts["p9"][0]],
                            "prompts": {k: v[0] if len(v) == 1 else v for k, v in prompts.items()},
                            "attributes": attrs})
            bar.update()
        (tmp / "anns" / f"{split}.json").write_text(json.dumps(records, indent=1))
    bar.close()
    (tmp / "world.json").write_text(json.dumps({"spec": asdict(spec), "version": SEG_WORLD_VERSION}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


# --------------------------------------------------------------------------- pretraining scenes
SCENE_COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (230, 210, 40),
                 "white": (240, 240, 240), "purple": (140, 60, 170), "orange": (240, 140, 30), "black": (25, 25, 25)}
SCENE_SHAPES = tuple(s for s in CAN_BODIES if s in ("round", "oval", "square", "triangular")) + ("irregular",)


def _scene_outline(shape: str, cx: float, cy: float, r: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    if shape == "square":
        a = rng.uniform(0, np.pi / 2)
        return [(cx + r * 1.2 * np.cos(a + k * np.pi / 2), cy + r * 1.2 * np.sin(a + k * np.pi / 2)) for k in range(4)]
    if shape == "triangular":
        a = rng.uniform(0, 2 * np.pi)
        return [(cx + r * 1.3 * np.cos(a + k * 2 * np.pi / 3), cy + r * 1.3 * np.sin(a + k * 2 * np.pi / 3))
                for k in range(3)]
    return blob_polygon(shape, cx, cy, r, rng)


def scenes(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`n` natural-domain scenes `[n, size, size, 3]` uint8, masks `[n, size, size]` bool and
    referring phrases ("the large red oval", "a blue square on the left", "triangle", …).
    A phrase may match more than one object: the mask is every object it describes."""
    rng = np.random.default_rng([seed, 9001])
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), bool)
    phrases = []
    colours = list(SCENE_COLOURS)
    for i in range(n):
        sky, ground = rng.uniform(0.3, 1, 3), rng.uniform(0.1, 0.8, 3)
        t = np.linspace(0, 1, size)[:, None, None]
        bg = (sky * (1 - t) + ground * t) * (0.9 + 0.1 * _noise(size, rng, 3)[..., None])
        im = Image.fromarray((np.clip(bg, 0, 1) * 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        objs = []
        for _ in range(rng.integers(2, 4)):
            shape, colour = SCENE_SHAPES[rng.integers(len(SCENE_SHAPES))], colours[rng.integers(len(colours))]
            big = SIZES[rng.integers(2)]
            r = size * (0.16 if big == "large" else 0.09)
            cx, cy = rng.uniform(r, size - r, 2)
            poly = _scene_outline(shape, cx, cy, r, rng)
            d.polygon(poly, fill=SCENE_COLOURS[colour])
            objs.append(dict(shape=shape, colour=colour, size=big, side="left" if cx < size / 2 else "right",
                             poly=poly))
        target = objs[rng.integers(len(objs))]
        words = rng.choice(4, p=[0.3, 0.3, 0.25, 0.15])
        keys = [("colour", "shape"), ("size", "colour", "shape"), ("colour", "shape", "side"), ("shape",)][words]
        chosen = [o for o in objs if all(o[k] == target[k] for k in keys)]
        # later objects cover earlier ones: the mask is what stays visible of the chosen ones
        visible = np.zeros((size, size), np.int16) - 1
        for j, o in enumerate(objs):
            visible[_mask([o["poly"]], size)] = j
        masks[i] = np.isin(visible, [objs.index(o) for o in chosen])
        noun = "triangle" if target["shape"] == "triangular" else target["shape"] if target["shape"] == "square" else \
            f"{target['shape']} shape"
        phrase = {("colour", "shape"): f"the {target['colour']} {noun}",
                  ("size", "colour", "shape"): f"a {target['size']} {target['colour']} {noun}",
                  ("colour", "shape", "side"): f"the {target['colour']} {noun} on the {target['side']}",
                  ("shape",): f"the {noun}"}[keys]
        phrases.append(phrase)
        images[i] = np.asarray(im.filter(ImageFilter.GaussianBlur(0.4)))
    return images, masks, phrases
