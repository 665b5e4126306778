"""Procedural rendering of a device in one of two domains.

`xray`: dark soft-tissue background, bright radio-opaque metal, blur, contrast and
gamma jitter, noise — the evaluation domain. `natural`: clean pastel background,
coloured device, no noise — the domain MiniCLIP is pretrained on. The two share
geometry and cues, so the gap between them is one of appearance only.

Drawing happens at twice the output size and is downsampled, which antialiases the thin
leads and patterns that carry the fine cues.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .cues import CAN_BODIES, Cues

DOMAINS = ("xray", "natural")
_SUPERSAMPLE = 2


def _body_polygon(body: str, w: float, h: float) -> list[tuple[float, float]]:
    """Outline in local coordinates (centre at origin, 'up' is -y), width w, height h."""
    if body in ("round", "oval"):
        return [(w / 2 * math.cos(t), h / 2 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    if body == "square":
        r = 0.18 * min(w, h)  # rounded corners
        pts = []
        for cx, cy, a0 in ((w / 2 - r, -h / 2 + r, -90), (w / 2 - r, h / 2 - r, 0), (-w / 2 + r, h / 2 - r, 90), (-w / 2 + r, -h / 2 + r, 180)):
            pts += [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in np.linspace(a0, a0 + 90, 6)]
        return pts
    if body == "shield":  # a half disc: flat top, round bottom
        top = -h / 4
        return [(-w / 2, top)] + [(w / 2 * math.cos(t), top + w / 2 * math.sin(t)) for t in np.linspace(0, math.pi, 24)]
    if body == "triangular":
        r = 0.62  # circumradius factor: a triangle as heavy as the other cans
        return [(w * r * math.cos(t), h * r * math.sin(t) + h * 0.12) for t in np.linspace(0, 2 * math.pi, 3, endpoint=False) - math.pi / 2]
    if body == "plate":
        return [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    if body == "screw":  # head on top, threaded shaft, pointed tip
        hw = w / 2
        return [(-hw, -h / 2), (hw, -h / 2), (hw, -h / 2 + h * 0.12), (hw * 0.55, -h / 2 + h * 0.12),
                (hw * 0.55, h / 2 - h * 0.15), (0, h / 2), (-hw * 0.55, h / 2 - h * 0.15),
                (-hw * 0.55, -h / 2 + h * 0.12), (-hw, -h / 2 + h * 0.12)]
    if body == "nail":
        return [(-w / 2, -h / 2 + w / 2), (0, -h / 2), (w / 2, -h / 2 + w / 2), (w / 2, h / 2 - w / 2), (0, h / 2), (-w / 2, h / 2 - w / 2)]
    if body == "stem":  # tapered stem with a neck and ball on top
        return [(-w / 2, -h / 4), (w / 2, -h / 4), (w * 0.2, h / 2), (-w * 0.2, h / 2)]
    raise ValueError(f"unknown body {body!r}")


def _body_size(cues: Cues, s: float) -> tuple[float, float]:
    scale = 1.0 if cues.size == "large" else 0.74
    if cues.body in CAN_BODIES:
        aspect = {"oval": (1.0, 0.7), "square": (0.95, 0.85), "shield": (1.0, 0.85)}.get(cues.body, (1.0, 1.0))
        return 0.5 * s * scale * aspect[0], 0.5 * s * scale * aspect[1]
    dims = {"plate": (0.22, 0.8), "screw": (0.18, 0.72), "nail": (0.12, 0.88), "stem": (0.3, 0.78)}[cues.body]
    return dims[0] * s * (0.9 + 0.1 * scale), dims[1] * s * scale


class _Pose:
    """Rotation + translation from local device coordinates to canvas pixels."""

    def __init__(self, angle: float, cx: float, cy: float) -> None:
        self.c, self.s, self.cx, self.cy = math.cos(angle), math.sin(angle), cx, cy

    def __call__(self, pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(self.cx + x * self.c - y * self.s, self.cy + x * self.s + y * self.c) for x, y in pts]


def _layers(cues: Cues, size: int, rng: np.random.Generator) -> dict[str, Image.Image]:
    """Binary masks (mode L) for body, pattern, leads, header and marker."""
    s = size * _SUPERSAMPLE
    pose = _Pose(rng.uniform(0, 2 * math.pi), s / 2 + rng.uniform(-0.06, 0.06) * s, s / 2 + rng.uniform(-0.06, 0.06) * s)
    w, h = _body_size(cues, s)
    jitter = rng.uniform(0.93, 1.07)
    w, h = w * jitter, h * jitter
    masks = {k: Image.new("L", (s, s), 0) for k in ("body", "pattern", "leads", "header", "marker")}
    d = {k: ImageDraw.Draw(m) for k, m in masks.items()}
    d["body"].polygon(pose(_body_polygon(cues.body, w, h)), fill=255)
    if cues.body == "stem":  # femoral head
        r = w * 0.32
        d["body"].ellipse(_bbox(pose([(0, -h / 2 + r)])[0], r), fill=255)
    line = max(2, round(s * 0.018))
    _draw_pattern(d["pattern"], cues.pattern, pose, w, h, s, line)
    # keep the pattern strictly inside the body (an eroded body mask)
    inner = masks["body"].filter(ImageFilter.MinFilter(2 * line + 1))
    masks["pattern"] = Image.fromarray((np.asarray(masks["pattern"]) & np.asarray(inner)).astype(np.uint8))
    top = -h / 2
    if cues.header != "none":
        hw, hh = w * 0.45, h * 0.2
        if cues.header == "flat":
            d["header"].polygon(pose([(-hw / 2, top - hh), (hw / 2, top - hh), (hw / 2, top + 2), (-hw / 2, top + 2)]), fill=255)
        else:
            d["header"].polygon(pose([(hw / 2 * math.cos(t), top - hh * math.sin(t)) for t in np.linspace(0, math.pi, 20)]), fill=255)
        top -= hh
    for i in range(cues.leads):
        spread = (i - (cues.leads - 1) / 2) * 0.5
        pts = [(spread * w * 0.3 + t * math.sin(spread) * s * 0.5 + 0.08 * s * math.sin(3 * t + i), top - t * s * 0.6) for t in np.linspace(0, 1, 16)]
        d["leads"].line(pose(pts), fill=255, width=line + line // 2, joint="curve")
    if cues.marker != "none":
        mx, my = pose([(w * 0.12, h * 0.1)])[0]
        r = 0.075 * s
        if cues.marker == "ring":
            d["marker"].ellipse(_bbox((mx, my), r), outline=255, width=line + 1)
        else:
            d["marker"].line([(mx - r, my - r), (mx + r, my + r)], fill=255, width=line + 1)
            d["marker"].line([(mx - r, my + r), (mx + r, my - r)], fill=255, width=line + 1)
    return masks


def _bbox(c: tuple[float, float], r: float) -> tuple[float, float, float, float]:
    return (c[0] - r, c[1] - r, c[0] + r, c[1] + r)


def _draw_pattern(draw: ImageDraw.ImageDraw, pattern: str, pose: _Pose, w: float, h: float, s: float, line: int) -> None:
    step = 0.085 * s
    ext = max(w, h) / 2 + step
    ticks = np.arange(-ext, ext + 1e-6, step)
    if pattern in ("striped", "grid"):
        for t in ticks:
            draw.line(pose([(-ext, t), (ext, t)]), fill=255, width=line)
    if pattern == "grid":
        for t in ticks:
            draw.line(pose([(t, -ext), (t, ext)]), fill=255, width=line)
    if pattern == "dotted":
        r = 0.022 * s
        for x in ticks:
            for y in ticks:
                draw.ellipse(_bbox(pose([(x, y)])[0], r), fill=255)


def _arr(m: Image.Image, size: int) -> np.ndarray:
    return np.asarray(m.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def render(cues: Cues, domain: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Render one device. Returns mode 'L' for xray and 'RGB' for natural."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    m = {k: _arr(v, size) for k, v in _layers(cues, size, rng).items()}
    body = np.clip(m["body"] + m["header"], 0, 1)
    if domain == "xray":
        return _xray(m, body, size, rng)
    return _natural(m, body, size, rng)


def _xray(m: dict[str, np.ndarray], body: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size] / size
    tissue = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(2, 5))):  # soft-tissue and rib-like blobs
        cx, cy, rx, ry = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.15, 0.6), rng.uniform(0.05, 0.3)
        tissue += rng.uniform(0.05, 0.2) * np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2))
    img = 0.08 + tissue
    img = img * (1 - body) + body * rng.uniform(0.5, 0.65)
    img = img + 0.25 * m["pattern"] * m["body"]
    img = np.maximum(img, m["leads"] * rng.uniform(0.75, 0.9))
    img = np.maximum(img, m["marker"] * 1.0)
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    arr = np.asarray(pil, np.float32) / 255.0
    arr = np.clip(arr * rng.uniform(0.8, 1.15) + rng.uniform(-0.05, 0.05), 0, 1) ** rng.uniform(0.8, 1.25)
    arr = arr + rng.normal(0, rng.uniform(0.02, 0.06), arr.shape)
    return Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8), mode="L")


def _natural(m: dict[str, np.ndarray], body: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """Clean, coloured, noise-free; lighting varies from dark to light backgrounds.

    Contrast polarity is random (dark ink on a light device or light on dark), as in
    photographs: a model pretrained here learns cue shapes rather than one polarity, so
    part of its knowledge transfers to radiographs — not all of it (no noise, no tissue,
    colour instead of grey).
    """
    def colour(lightness: float) -> np.ndarray:
        hue = rng.uniform(0.2, 1.0, 3).astype(np.float32)
        return np.clip(hue / hue.max() * lightness, 0, 1)

    def contrasting(base: float) -> float:
        return rng.uniform(0.55, 0.95) if base < 0.5 else rng.uniform(0.05, 0.4)

    bg_light = rng.uniform(0.05, 0.95)
    fill_light = contrasting(bg_light)
    yy = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    bg = colour(bg_light) * (1 - 0.15 * yy) + colour(bg_light) * 0.15 * yy  # gentle gradient
    img = np.broadcast_to(bg, (size, size, 3)).copy()
    fill, ink = colour(fill_light), colour(contrasting(fill_light))
    img = img * (1 - body[..., None]) + fill * body[..., None]
    pattern = (m["pattern"] * m["body"])[..., None]
    img = img * (1 - pattern) + ink * pattern
    for key, c in (("leads", colour(contrasting(bg_light))), ("marker", colour(contrasting(fill_light)))):
        a = m[key][..., None]
        img = img * (1 - a) + c * a
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), mode="RGB")
