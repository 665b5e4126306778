"""Chest-radiograph-like images of the embedded multi-label world (see `cxr.py`).

An image is composed in density space (bright = dense): a torso of soft tissue, two dark
lung fields cut by diaphragm domes, mediastinum, heart, aortic knob, trachea, spine,
ribs and clavicles, faint vessel markings, then one cue per present finding at its
anatomical place, then blur, contrast/gamma jitter and noise from the dataset's
`Acquisition` (its domain). Patient right is image left, as on a real film.

Cue sizes are chosen so that every finding stays visible after a resize to 64 px (the
offline model's input): the smallest cues (nodule, calcification, rib callus) are ~2 px
there. A lateral view is a side silhouette; it shows only the findings a lateral film
shows (heart size, fluid, parenchyma, lesions, devices); pneumothorax, fractures, pleural
thickening, mediastinal shift/widening leave no trace there.

Findings arrive as `{finding id: attrs}` with attrs `side` (right/left/bilateral),
`severity` (mild/moderate/severe), `zone` (upper/mid/lower) and, for devices, `devices`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Findings = Mapping[str, Mapping[str, Any]]
Box = tuple[float, float, float, float]  # x0, x1, y0, y1
_SS = 2  # stroke layers are drawn at twice the size and box-downsampled: antialiased lines
_SEV = {"mild": 0.8, "moderate": 1.0, "severe": 1.25}
_ZONE_Y = {"upper": 0.27, "mid": 0.42, "lower": 0.56}
DEVICES = ("et_tube", "central_line", "ng_tube", "pacemaker", "ecg_leads")


@dataclass(frozen=True)
class Acquisition:
    """How one dataset's machines and post-processing make its images look."""

    noise: tuple[float, float] = (0.015, 0.035)
    blur: tuple[float, float] = (0.5, 0.9)  # Gaussian radius in px at 128 px
    contrast: tuple[float, float] = (0.9, 1.1)
    gamma: tuple[float, float] = (0.85, 1.15)
    offset: tuple[float, float] = (-0.04, 0.04)
    marker: bool = False  # a burnt-in "L" side marker
    border: float = 0.0  # black collimation margin (fraction of the side)


class _Canvas:
    def __init__(self, size: int) -> None:
        self.size = size
        g = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.x, self.y = g[None, :], g[:, None]  # broadcast to (size, size) when combined

    def ellipse_f(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, soft: float = 0.15) -> np.ndarray:
        return np.clip((1 - self.ellipse_f(cx, cy, rx, ry)) / soft, 0, 1)

    def gauss(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return np.exp(-self.ellipse_f(cx, cy, rx, ry))

    def strokes(self, lines: list[list[tuple[float, float]]], width: float,
                dots: list[tuple[float, float, float]] = ()) -> np.ndarray:
        s = self.size * _SS
        im = Image.new("L", (s, s))
        d = ImageDraw.Draw(im)
        w = max(1, round(width * s))
        for pts in lines:
            d.line([(x * s, y * s) for x, y in pts], fill=255, width=w, joint="curve")
        for x, y, r in dots:
            d.ellipse(((x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s), fill=255)
        return np.asarray(im.resize((self.size, self.size), Image.BOX), np.float32) / 255.0


@dataclass
class _Geometry:
    """Where things are in one view: the parenchymal cues are placed through it."""

    lungs: np.ndarray  # union of lung fields, soft mask
    spot: Callable[[int, str], tuple[float, float]]  # (side sign, zone) -> a point in that lung
    box: Callable[[int], Box]  # side sign -> bounding box of that lung
    hilum: Callable[[int], tuple[float, float]]


def _sides(attrs: Mapping[str, Any]) -> tuple[int, ...]:
    """-1 = patient right (image left), +1 = patient left."""
    side = attrs.get("side", "bilateral")
    return {"right": (-1,), "left": (1,), "bilateral": (-1, 1)}[side]


def _sev(attrs: Mapping[str, Any]) -> float:
    return _SEV[attrs.get("severity", "moderate")]


def _polyline(rng: np.random.Generator, start: tuple[float, float], angle: float, length: float,
              n: int = 4, wiggle: float = 0.25) -> list[tuple[float, float]]:
    pts, (x, y) = [start], start
    for _ in range(n):
        angle += rng.uniform(-wiggle, wiggle)
        x, y = x + math.cos(angle) * length / n, y + math.sin(angle) * length / n
        pts.append((x, y))
    return pts


def _scatter(rng: np.random.Generator, box: Box, n: int, length: float) -> list[list[tuple[float, float]]]:
    x0, x1, y0, y1 = box
    return [_polyline(rng, (rng.uniform(x0, x1), rng.uniform(y0, y1)), rng.uniform(0, math.pi), length, 2, 0.5)
            for _ in range(n)]


def _parenchyma(c: _Canvas, f: Findings, g: _Geometry, rng: np.random.Generator) -> np.ndarray:
    """Density added inside the lungs by parenchymal findings (later masked to the lungs)."""
    u = rng.uniform
    dens = np.zeros((c.size, c.size), np.float32)
    if "lung_opacity" in f:  # hazy, ill-defined zone
        for s in _sides(f["lung_opacity"]):
            x, y = g.spot(s, f["lung_opacity"].get("zone", "mid"))
            dens += 0.32 * _sev(f["lung_opacity"]) * c.gauss(x, y, u(0.09, 0.12), u(0.08, 0.11))
    if "consolidation" in f:  # dense, sharp-edged lobar opacity with dark air bronchograms
        a = f["consolidation"]
        for s in _sides(a):
            x, y = g.spot(s, a.get("zone", "lower"))
            rx, ry = u(0.09, 0.12) * _sev(a), u(0.08, 0.1)
            blob = c.ellipse(x, y, rx, ry, 0.5)
            air = c.strokes([_polyline(rng, (x, y - ry * 0.6), math.pi / 2 + u(-0.6, 0.6), ry * 1.3, 3) for _ in range(3)], 0.008)
            dens += blob * (0.4 - 0.22 * air)
    if "pneumonia" in f:  # patchy: clustered small blobs
        a = f["pneumonia"]
        for s in _sides(a):
            x, y = g.spot(s, a.get("zone", "lower"))
            for _ in range(int(rng.integers(7, 12))):
                r = u(0.02, 0.04)
                dens += 0.2 * c.gauss(x + u(-0.07, 0.07), y + u(-0.06, 0.06), r, r)
    if "edema" in f:  # bilateral perihilar (bat-wing) haze plus Kerley-B lines at the bases
        k = _sev(f["edema"])
        kerley = []
        for s in (-1, 1):
            hx, hy = g.hilum(s)
            dens += 0.24 * k * c.gauss(hx + s * 0.03, hy, 0.11, 0.14)
            x0, x1, _, y1 = g.box(s)
            edge = x0 + 0.01 if s < 0 else x1 - 0.01
            kerley += [[(edge, yy), (edge - s * 0.045, yy)] for yy in np.arange(y1 - 0.2, y1 - 0.07, 0.024)]
        dens += 0.22 * c.strokes(kerley, 0.007)
    if "atelectasis" in f:  # plate-like dense band in the lower zone
        for s in _sides(f["atelectasis"]):
            x, y = g.spot(s, "lower")
            tilt = u(-0.04, 0.04)
            dens += 0.38 * c.strokes([[(x - 0.1, y - tilt), (x + 0.1, y + tilt)]], u(0.02, 0.028))
    if "infiltration" in f:  # diffuse streaks over mid and lower zones
        lines = []
        for s in _sides(f["infiltration"]):
            x0, x1, y0, y1 = g.box(s)
            lines += _scatter(rng, (x0, x1, y0 + 0.3 * (y1 - y0), y1), 22, 0.07)
        dens += 0.16 * _sev(f["infiltration"]) * c.strokes(lines, 0.011)
    if "fibrosis" in f:  # reticular net at both bases
        lines = []
        for s in (-1, 1):
            x0, x1, y0, y1 = g.box(s)
            top = y1 - 0.3 * (y1 - y0)
            lines += [[(x0, yy + u(-0.01, 0.01)), (x1, yy + u(-0.01, 0.01))] for yy in np.arange(top, y1, 0.03)]
            lines += [[(xx + u(-0.01, 0.01), top), (xx + u(-0.01, 0.01), y1)] for xx in np.arange(x0, x1, 0.035)]
        dens += 0.2 * _sev(f["fibrosis"]) * c.strokes(lines, 0.008)
    if "ild" in f:  # fine reticulonodular texture over both lungs
        dots, lines = [], []
        for s in (-1, 1):
            x0, x1, y0, y1 = g.box(s)
            dots += [(u(x0, x1), u(y0, y1), 0.011) for _ in range(70)]
            lines += _scatter(rng, (x0, x1, y0, y1), 25, 0.04)
        dens += 0.15 * _sev(f["ild"]) * c.strokes(lines, 0.006, dots)
    for key, radius in (("nodule", (0.024, 0.032)), ("mass", (0.065, 0.09))):
        if key in f:  # round, sharp; a mass is lobulated
            x, y = g.spot(_sides(f[key])[0], f[key].get("zone", "mid"))
            r = u(*radius) * (1 if key == "nodule" else _sev(f[key]))
            dens += 0.4 * c.ellipse(x, y, r, r, 0.4)
            if key == "mass":
                dens += 0.4 * c.ellipse(x + r * 0.6, y - r * 0.4, r * 0.55, r * 0.55, 0.4)
    if "lung_cavity" in f:  # thick bright ring, dark centre, air-fluid level
        x, y = g.spot(_sides(f["lung_cavity"])[0], f["lung_cavity"].get("zone", "upper"))
        r = u(0.05, 0.065)
        outer, inner = c.ellipse(x, y, r, r, 0.3), c.ellipse(x, y, r * 0.62, r * 0.62, 0.3)
        dens += 0.4 * np.clip(outer - inner, 0, 1) - 0.14 * inner + 0.3 * inner * (c.y > y + 0.25 * r)
    return dens


def _calcifications(c: _Canvas, f: Findings, g: _Geometry, rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(2, 6))
    pts = [g.spot(int(rng.choice([-1, 1])), str(rng.choice(list(_ZONE_Y)))) for _ in range(n)]
    return c.strokes([], 0, [(x + rng.uniform(-0.04, 0.04), y, rng.uniform(0.012, 0.017)) for x, y in pts])


def _devices(c: _Canvas, names: list[str], cx: float, mx: float, rng: np.random.Generator, lateral: bool) -> np.ndarray:
    """Radio-opaque lines, tubes and boxes; lateral views see them from the side."""
    thick, thin, dots = [], [], []
    for d in names:
        if d == "et_tube":
            thick.append([(0.5, -0.02), (0.53, 0.25)] if lateral else [(mx, -0.02), (mx, rng.uniform(0.23, 0.28))])
        elif d == "central_line":
            thin.append([(0.45, 0.0), (0.42, 0.2), (0.4, 0.42)] if lateral else
                        [(cx - 0.11, 0.0), (cx - 0.07, 0.12), (cx - 0.035, 0.3), (mx - 0.02, 0.42)])
        elif d == "ng_tube":
            thin.append([(0.55, -0.02), (0.6, 0.4), (0.58, 0.8)] if lateral else
                        [(mx + 0.01, -0.02), (mx + 0.012, 0.4), (cx + 0.05, 0.7), (cx + 0.15, 0.8), (cx + 0.2, 0.76)])
        elif d == "pacemaker":
            bx, by = (0.26, 0.2) if lateral else (cx + 0.24, 0.19)
            dots += [(bx - 0.02, by, 0.035), (bx + 0.02, by, 0.035)]  # a box of two overlapping discs
            thin.append([(bx, by), (0.35, 0.35), (0.33, 0.62)] if lateral else
                        [(bx, by), (cx + 0.12, 0.22), (mx + 0.03, 0.45), (mx + 0.06, 0.66)])
        elif d == "ecg_leads":
            for _ in range(3):
                x, y = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.45)
                dots.append((x, y, 0.016))
                thin.append([(x, y), (x + rng.uniform(-0.2, 0.2), -0.02)])
    return np.maximum(c.strokes(thick, 0.016, dots), c.strokes(thin, 0.008))


def _side_marker(c: _Canvas) -> np.ndarray:
    return c.strokes([[(0.9, 0.05), (0.9, 0.12), (0.95, 0.12)]], 0.014)


def _lung_field(c: _Canvas, xl: float, cy: float, rx: float, ry_top: float) -> np.ndarray:
    """Ellipse test value of a lung: round apex, nearly straight chest wall below."""
    dy = c.y - cy
    ry = np.where(dy < 0, ry_top, 0.9)
    return ((c.x - xl) / rx) ** 2 + (dy / ry) ** 2


def _frontal(c: _Canvas, f: Findings, rng: np.random.Generator, ap: bool) -> np.ndarray:
    u = rng.uniform
    cx = 0.5 + u(-0.015, 0.015)
    shift = 0.0
    if "mediastinal_shift" in f:
        shift = _sides(f["mediastinal_shift"])[0] * u(0.06, 0.08)
    mx = cx + shift
    emph = "emphysema" in f
    body = np.maximum(c.ellipse(cx, 0.6, 0.47, 0.62, 0.08), c.ellipse(cx, 0.0, 0.1, 0.2, 0.2))
    img = 0.04 + 0.5 * body
    rx, cy, ry_top = u(0.145, 0.165), u(0.4, 0.44), u(0.3, 0.34)  # patient habitus
    lung_f, lung, nodome, dome = {}, {}, {}, {}
    for s in (-1, 1):
        xl = cx + s * 0.2
        d = (0.655 if s < 0 else 0.685) + (0.07 if emph else 0.0) + u(-0.01, 0.01)
        d -= 0.04 if "atelectasis" in f and s in _sides(f["atelectasis"]) else 0.0  # volume loss
        d -= 0.02 if "fibrosis" in f else 0.0
        dome[s] = d
        depth = 0.04 if emph else 0.12  # emphysema flattens the domes
        diaphragm = d + depth * ((c.x - (xl - s * 0.02)) / rx) ** 2
        lung_f[s] = _lung_field(c, xl, cy, rx, ry_top)
        nodome[s] = np.clip((1 - lung_f[s]) / 0.12, 0, 1)
        lung[s] = nodome[s] * np.clip((diaphragm - c.y) / 0.015, 0, 1)
    lungs = np.maximum(lung[-1], lung[1])
    g = _Geometry(
        lungs,
        spot=lambda s, z: (cx + s * 0.2 + u(-0.05, 0.05), min(_ZONE_Y[z] + u(-0.03, 0.03), dome[s] - 0.08)),
        box=lambda s: (cx + s * 0.2 - 0.13, cx + s * 0.2 + 0.13, 0.15, dome[s]),
        hilum=lambda s: (cx + s * 0.09, 0.45),
    )
    ptx = np.zeros_like(lungs)
    pleural_line = np.zeros_like(lungs)
    if "pneumothorax" in f:  # collapsed lung edge; no markings beyond it, towards the apex
        s = _sides(f["pneumothorax"])[0]
        k = {"mild": 0.86, "moderate": 0.76, "severe": 0.64}[f["pneumothorax"].get("severity", "moderate")]
        fc = _lung_field(c, cx + s * 0.2 - s * rx * (1 - k) * 0.6, cy + 0.1 * (1 - k), rx * k, ry_top * k)
        upper = np.clip((0.62 - c.y) / 0.05, 0, 1)
        ptx = lung[s] * (fc > 1) * upper
        pleural_line = lung[s] * ((fc > 1) & (fc < 1.15)) * upper
    img = img - lungs * 0.36 * (1.25 if emph else 1.0) - 0.14 * ptx
    vessels = []
    for s in (-1, 1):
        hx, hy = g.hilum(s)
        for _ in range(7):
            ang = math.pi / 2 - s * (math.pi / 2) + s * u(-1.2, 1.3)
            vessels.append(_polyline(rng, (hx, hy), ang, u(0.12, 0.22), 4, 0.3))
    img += (0.04 if emph else 0.09) * c.strokes(vessels, 0.007) * lungs * (1 - ptx) + 0.25 * pleural_line
    img += _parenchyma(c, f, g, rng) * lungs
    hw = 0.115 if "enlarged_cardiomediastinum" in f else 0.062
    med = np.clip((hw - np.abs(c.x - mx)) / 0.012, 0, 1) * np.clip((0.64 - c.y) / 0.03, 0, 1)
    img = np.maximum(img, 0.58 * med)
    knob = c.ellipse(mx + 0.085, 0.28, 0.058, 0.052) if "aortic_enlargement" in f else c.ellipse(mx + 0.055, 0.29, 0.035, 0.03)
    img = np.maximum(img, 0.6 * knob)
    ctr = u(0.4, 0.48)
    if "cardiomegaly" in f:
        ctr = {"mild": 0.56, "moderate": 0.61, "severe": 0.66}[f["cardiomegaly"].get("severity", "moderate")] + u(-0.01, 0.01)
    ctr += (0.03 if ap else 0.0) - (0.05 if emph else 0.0)  # AP magnifies the heart; emphysema narrows it
    heart = c.ellipse(mx + 0.04, 0.61, ctr * 0.72 / 2, 0.14 + (0.03 if "cardiomegaly" in f else 0.0), 0.1)
    img = np.maximum(img, 0.6 * heart)
    img -= 0.18 * np.clip((0.018 - np.abs(c.x - mx)) / 0.006, 0, 1) * (c.y < 0.34)  # tracheal air
    img -= 0.3 * c.ellipse(cx + 0.17, dome[1] + 0.08, 0.05, 0.03) * body  # gastric bubble
    if "pleural_effusion" in f:  # fluid with a meniscus rising at the chest wall; blunted angle
        a = f["pleural_effusion"]
        h = {"mild": 0.13, "moderate": 0.2, "severe": 0.3}[a.get("severity", "moderate")]
        for s in _sides(a):
            t = np.clip((s * (c.x - (cx + s * 0.2)) / rx + 1) / 2, 0, 1)
            top = dome[s] + 0.12 - h - 0.07 * t ** 2
            img = np.maximum(img, 0.56 * nodome[s] * np.clip((c.y - top) / 0.02, 0, 1))
    if "pleural_thickening" in f:  # band along the lateral chest wall
        for s in _sides(f["pleural_thickening"]):
            band = ((lung_f[s] > 0.5) & (lung_f[s] < 1.0)) * (s * (c.x - (cx + s * 0.2)) > 0) * (c.y > 0.18) * (c.y < 0.6)
            img += 0.4 * band * lung[s]
    if "hernia" in f:  # retrocardiac gas bubble with an air-fluid level
        r = u(0.045, 0.06)
        hy = 0.66 + u(-0.02, 0.02)
        img -= 0.34 * c.ellipse(mx + 0.02, hy, r * 1.2, r, 0.3) * (c.y < hy + 0.01)
    img += _bones_frontal(c, f, rng, cx, ap) * body
    return _overlays(c, f, rng, img, g, cx, mx, lateral=False)


def _bones_frontal(c: _Canvas, f: Findings, rng: np.random.Generator, cx: float, ap: bool) -> np.ndarray:
    ribs, callus, clav = [], [], []
    frac = f.get("fracture")
    frac_side, frac_rib = (_sides(frac)[0], int(rng.integers(3, 8))) if frac else (0, -1)
    t = np.linspace(0, 1, 9)
    for s in (-1, 1):
        for k in range(9):
            y0 = 0.12 + 0.062 * k + rng.uniform(-0.005, 0.005)
            pts = [(cx + s * (0.05 + 0.33 * ti), y0 + 0.05 * ti - 0.045 * math.sin(math.pi * ti)) for ti in t]
            if s == frac_side and k == frac_rib:  # discontinuity with a step-off and callus
                ribs += [pts[:5], [(x, y + 0.035) for x, y in pts[6:]]]
                callus.append((*pts[5], 0.03))
            else:
                ribs.append(pts)
        cf = f.get("clavicle_fracture")
        top = 0.15 if ap else 0.17
        pts = [(cx + s * (0.035 + 0.265 * ti), top - 0.07 * ti + 0.015 * math.sin(2 * math.pi * ti)) for ti in t]
        if cf and s == _sides(cf)[0]:
            clav += [pts[:4], [(x, y + 0.05) for x, y in pts[5:]]]
        else:
            clav.append(pts)
    spine = np.clip((0.03 - np.abs(c.x - cx)) / 0.008, 0, 1) * (0.05 + 0.05 * (np.cos(2 * math.pi * c.y / 0.055) > -0.6))
    return 0.11 * c.strokes(ribs, 0.016) + 0.26 * c.strokes([], 0, callus) + 0.3 * c.strokes(clav, 0.026) + spine


def _lateral(c: _Canvas, f: Findings, rng: np.random.Generator) -> np.ndarray:
    """Side silhouette: anterior on the image left, spine on the right."""
    u = rng.uniform
    emph = "emphysema" in f
    body = c.ellipse(0.5, 0.56, 0.44, 0.62, 0.08)
    img = 0.04 + 0.52 * body + 0.08 * c.gauss(0.5, 0.05, 0.25, 0.1) * body  # raised arms overlap the top
    d = 0.72 + (0.07 if emph else 0.0) + u(-0.01, 0.01)
    diaphragm = d + (0.05 if emph else 0.14) * (np.clip(c.x - 0.35, 0, None) / 0.45) ** 2  # deep posterior sulcus
    nodome = np.clip((1 - _lung_field(c, 0.5, 0.46, 0.3, 0.36)) / 0.12, 0, 1)
    lungs = nodome * np.clip((diaphragm - c.y) / 0.015, 0, 1)
    g = _Geometry(lungs, spot=lambda s, z: (0.48 + s * 0.06 + u(-0.05, 0.05), _ZONE_Y[z] + u(-0.03, 0.03)),
                  box=lambda s: (0.25, 0.75, 0.18, d), hilum=lambda s: (0.52 + s * 0.04, 0.45))
    img = img - lungs * 0.34 * (1.25 if emph else 1.0)
    img += _parenchyma(c, f, g, rng) * lungs
    vert = sum(c.ellipse(0.82, 0.04 + 0.068 * k, 0.045, 0.027, 0.3) for k in range(14))
    img = np.maximum(img, 0.7 * np.clip(vert, 0, 1) * body)
    img += 0.2 * c.strokes([[(0.2, 0.15), (0.17, 0.56)]], 0.02)  # sternum
    card = "cardiomegaly" in f
    img = np.maximum(img, 0.6 * c.ellipse(0.37 + (0.03 if card else 0.0), 0.62, 0.2 if card else 0.15, 0.15, 0.1))
    arch = (0.09, 0.06) if "aortic_enlargement" in f else (0.06, 0.04)
    img = np.maximum(img, 0.5 * c.ellipse(0.52, 0.27, *arch))
    img -= 0.15 * c.strokes([[(0.5, 0.0), (0.55, 0.35)]], 0.035)  # trachea
    if "pleural_effusion" in f:  # fluid in the posterior costophrenic sulcus
        h = {"mild": 0.08, "moderate": 0.15, "severe": 0.25}[f["pleural_effusion"].get("severity", "moderate")]
        top = d + 0.14 - h - 0.1 * (np.clip(c.x - 0.35, 0, None) / 0.45) ** 2
        img = np.maximum(img, 0.56 * nodome * (c.x > 0.45) * np.clip((c.y - top) / 0.02, 0, 1))
    if "hernia" in f:
        img -= 0.34 * c.ellipse(0.58, 0.66, 0.06, 0.05, 0.3) * (c.y < 0.67)
    return _overlays(c, f, rng, img, g, 0.5, 0.5, lateral=True)


def _overlays(c: _Canvas, f: Findings, rng: np.random.Generator, img: np.ndarray, g: _Geometry,
              cx: float, mx: float, lateral: bool) -> np.ndarray:
    """Very dense things drawn last: calcified dots and metal."""
    if "calcification" in f:
        img = np.maximum(img, 0.93 * _calcifications(c, f, g, rng))
    if "support_devices" in f:
        img = np.maximum(img, 0.9 * _devices(c, list(f["support_devices"].get("devices", ["et_tube"])), cx, mx, rng, lateral))
    return img


def _positioning(pil: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Small rotation, zoom and offset of the whole patient in the field, as positioning varies."""
    n = pil.size[0]
    t, z = math.radians(rng.uniform(-4, 4)), rng.uniform(0.94, 1.06)
    tx, ty = rng.uniform(-0.03, 0.03, 2) * n
    a, b, d, e = math.cos(t) / z, math.sin(t) / z, -math.sin(t) / z, math.cos(t) / z
    c0 = n / 2
    coeffs = (a, b, c0 - a * (c0 + tx) - b * (c0 + ty), d, e, c0 - d * (c0 + tx) - e * (c0 + ty))
    return pil.transform(pil.size, Image.AFFINE, coeffs, Image.BILINEAR, fillcolor=10)


def render_cxr(findings: Findings, view: str, size: int, rng: np.random.Generator,
               acq: Acquisition = Acquisition(), ap: bool = False) -> Image.Image:
    """One grayscale radiograph (mode 'L') of `findings` in `view` ('frontal'/'lateral')."""
    if view not in ("frontal", "lateral"):
        raise ValueError(f"view must be 'frontal' or 'lateral', got {view!r}")
    c = _Canvas(size)
    img = _frontal(c, findings, rng, ap) if view == "frontal" else _lateral(c, findings, rng)
    if acq.marker:
        img = np.maximum(img, 0.95 * _side_marker(c))
    u = rng.uniform
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    pil = _positioning(pil, rng)
    arr = np.asarray(pil.filter(ImageFilter.GaussianBlur(u(*acq.blur) * size / 128)), np.float32) / 255.0
    arr = np.clip((arr - 0.5) * u(*acq.contrast) + 0.5 + u(*acq.offset), 0, 1) ** u(*acq.gamma)
    arr = arr + rng.normal(0, u(*acq.noise), arr.shape)
    if acq.border > 0:
        b = int(round(acq.border * size))
        arr[:b], arr[-b:], arr[:, :b], arr[:, -b:] = 0, 0, 0, 0
    return Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8), mode="L")
