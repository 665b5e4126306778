"""Mixed precision as the references should have had it: bf16 (or fp16 with loss scaling)
autocast on CUDA, fp32 on CPU; LayerNorm, softmax and the cosine logits in float32; and a
check that stops a run at its first non-finite loss with what to do instead of training on
NaN (CLIP's logit scale of 100 times fp16 cosines is a known overflow of the references,
which cast the whole model to `.half()`).

torch's autocast already runs `layer_norm`, `softmax`, `log_softmax` and the losses in
float32; `float32` keeps the last matrix product out of it (methods' `cosine_logits`).
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLoss(FloatingPointError):
    """A training step produced a NaN or infinite loss (or logits)."""


def resolve(precision: str, device: torch.device | str, amp: bool = True) -> str:
    """The precision a run uses: "auto" is bf16 on CUDA (fp16 where the GPU lacks bf16) and
    fp32 elsewhere; an explicit "bf16"/"fp16" also autocasts on CPU (slow; for tests)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {PRECISIONS}")
    device = torch.device(device)
    if not amp or precision == "fp32":
        return "fp32"
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def autocast(precision: str, device: torch.device | str, amp: bool = True):
    """The autocast context of a resolved precision (a no-op for fp32)."""
    device = torch.device(device)
    chosen = resolve(precision, device, amp)
    if chosen == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[chosen])


def grad_scaler(precision: str, device: torch.device | str, amp: bool = True) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling (gradients underflow otherwise); bf16 and fp32 do not."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type) if resolve(precision, device, amp) == "fp16" else None


def float32(device: torch.device | str):
    """Autocast off, for the final logits: scale · cosine in float32 (bf16 keeps 8 bits of
    mantissa: 100 · cos then moves by ~0.4, enough to swap close classes)."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def check_finite(loss: float, logits: torch.Tensor | None, step: int, epoch: int, precision: str,
                 terms: dict[str, float] | None = None) -> None:
    """Raise `NonFiniteLoss` naming the step, the precision and the way out."""
    bad_logits = logits is not None and not bool(torch.isfinite(logits).all())
    if math.isfinite(loss) and not bad_logits:
        return
    what = f"the loss is {loss}" + (" and the logits are not finite" if bad_logits else "")
    hint = {"fp16": "fp16 overflows at 65504 (a logit scale of 100 leaves little room): use precision='bf16' on a GPU "
                    "that has it, or 'fp32'",
            "bf16": "rerun with precision='fp32' to tell a precision problem from a diverging run",
            "fp32": "the run diverged in fp32: lower the learning rate, or set grad_clip"}[precision]
    shown = "" if not terms else " (terms: " + ", ".join(f"{k}={v:.4g}" for k, v in terms.items()) + ")"
    raise NonFiniteLoss(f"epoch {epoch}, step {step}: {what} under {precision}{shown}; stopped before training on "
                        f"it. {hint}")
