"""Methods, one file each, looked up by their snake_case registry name."""
from __future__ import annotations

from typing import Callable

REGISTRY: dict[str, Callable] = {}


def register(name: str) -> Callable:
    def deco(obj: Callable) -> Callable:
        if name in REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        REGISTRY[name] = obj
        return obj
    return deco


def get_method(name: str) -> Callable:
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


from .zeroshot import ZeroShotClassifier  # noqa: E402  (registers itself)

__all__ = ["REGISTRY", "ZeroShotClassifier", "get_method", "register"]
