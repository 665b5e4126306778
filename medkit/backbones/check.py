"""A known-answer check for a checkpoint: a fixed zero-shot probe whose result on the real
weights is recorded in the zoo entry, so a broken layout shows as a number that moved.

The probe is four drawn images (no data to download: a radiograph-like pair of lung fields,
stripes, a checkerboard, a bright disc) and five prompts; its answer is the cosine matrix
`[4, 5]` between them, through the adapter's own preprocessing and tokenizer. A wrong
tokenizer, normalisation, activation (GELU vs QuickGELU), pooling or projection moves those
cosines by far more than the tolerance; numerical noise (CPU vs GPU, BLAS) does not.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

PROMPTS = ("a chest x-ray", "a histopathology slide of stained tissue", "a photo of a cat", "a brain MRI scan",
           "a black and white geometric pattern")
TOLERANCE = 5e-3  # on cosines: TF32 convolutions on a GPU differ from a CPU by ~1e-3
_SIZE = 256


def probe_images() -> list[Image.Image]:
    """Four fixed images, drawn (identical on every machine and library version)."""
    lungs = Image.new("L", (_SIZE, _SIZE), 20)
    d = ImageDraw.Draw(lungs)
    d.ellipse((40, 40, 120, 220), fill=150)
    d.ellipse((136, 40, 216, 220), fill=150)
    d.rectangle((118, 30, 138, 230), fill=230)  # spine
    stripes = Image.new("L", (_SIZE, _SIZE), 0)
    d = ImageDraw.Draw(stripes)
    for x in range(0, _SIZE, 32):
        d.rectangle((x, 0, x + 15, _SIZE), fill=255)
    checker = Image.fromarray((((np.indices((_SIZE, _SIZE)) // 32).sum(0) % 2) * 255).astype(np.uint8))
    disc = Image.new("L", (_SIZE, _SIZE), 0)
    ImageDraw.Draw(disc).ellipse((48, 48, 208, 208), fill=255)
    return [im.convert("RGB") for im in (lungs, stripes, checker, disc)]


@torch.no_grad()
def probe(adapter) -> np.ndarray:
    """The cosine matrix `[images, prompts]` of the probe, float64, in evaluation mode."""
    was = adapter.training
    adapter.eval()
    try:
        images = torch.stack([adapter.preprocess(im) for im in probe_images()])
        img = adapter.encode_image(images, normalize=True).float()
        txt = adapter.encode_text(list(PROMPTS), normalize=True).float()
        return (img @ txt.T).double().cpu().numpy()
    finally:
        adapter.train(was)


@dataclass(frozen=True)
class CheckResult:
    measured: np.ndarray
    recorded: np.ndarray | None
    tolerance: float = TOLERANCE

    @property
    def max_difference(self) -> float | None:
        return None if self.recorded is None else float(np.abs(self.measured - self.recorded).max())

    @property
    def passed(self) -> bool | None:
        """True / False against the record; None when nothing is recorded."""
        diff = self.max_difference
        return None if diff is None else diff <= self.tolerance

    def as_record(self) -> tuple[tuple[float, ...], ...]:
        """The measured matrix as a `known_answer=` literal (4 decimals)."""
        return tuple(tuple(round(float(v), 4) for v in row) for row in self.measured)

    def report(self, name: str) -> str:
        rows = "\n".join(f"  image {i}: " + "  ".join(f"{v:+.4f}" for v in row) for i, row in enumerate(self.measured))
        head = f"{name}: probe cosines (images × prompts {list(PROMPTS)}):\n{rows}"
        if self.recorded is None:
            return (head + f"\n? no known answer recorded for {name}; to record it, set known_answer= in its zoo "
                    f"entry to:\n  {self.as_record()}")
        verdict = "✓ matches" if self.passed else "✗ differs from"
        return head + f"\n{verdict} the recorded answer (max |difference| {self.max_difference:.2e}, tolerance {self.tolerance:.0e})"


def check(adapter, recorded=None, tolerance: float = TOLERANCE) -> CheckResult:
    """Run the probe on `adapter` and compare with `recorded` (a `[4, 5]` nested sequence)."""
    measured = probe(adapter)
    known = None if recorded is None else np.asarray(recorded, dtype=np.float64)
    if known is not None and known.shape != measured.shape:
        raise ValueError(f"recorded answer has shape {known.shape}, the probe gives {measured.shape}")
    return CheckResult(measured, known, tolerance)
