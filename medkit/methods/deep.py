"""Shared pieces of the deep-prompt methods (MaPLe, IVLP, VPT-deep): depth checks and
per-layer prompt stacks."""
from __future__ import annotations

import torch
from torch import nn

from medkit.backbones import BackboneAdapter


def resolve_depth(adapter: BackboneAdapter, depth: int | str, towers: tuple[str, ...] = ("text", "vision")) -> int:
    """`depth` as a number of layers: "all" means every layer of the shallower tower."""
    limits = {"text": adapter.text_depth, "vision": adapter.vision_depth}
    limit = min(limits[t] for t in towers)
    if depth == "all":
        return limit
    if not isinstance(depth, int) or depth < 0:
        raise ValueError(f"prompt depth must be a non-negative int or 'all', got {depth!r}")
    if depth > limit:
        detail = ", ".join(f"{t} tower has {limits[t]} layers" for t in towers)
        raise ValueError(f"prompt depth {depth} exceeds the backbone {adapter.name!r} ({detail}); use ≤ {limit} or 'all'")
    return depth


def prompt_stack(n_layers: int, n_tokens: int, width: int, std: float = 0.02) -> nn.ParameterList:
    return nn.ParameterList([nn.Parameter(torch.randn(n_tokens, width) * std) for _ in range(n_layers)])
