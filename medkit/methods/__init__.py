"""Methods, one file each, looked up by their snake_case registry name.

Each file registers its class with `@register(name, kind=…, training=…, budgets=…, grid=…)`
(`medkit.methods.registry`): adding a method is its file plus one import line below.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from medkit.config import TrainConfig
from medkit.methods.registry import (CONTEXT_CHOICE, KINDS, KNOWLEDGE_RESOURCES, OPTIMISER_SPACE, Budget, Choice, FloatRange, GridEntry, IntRange,
                                     MethodSpec, Ref, SearchSpace, check_constructor, options_dataclass, options_json,
                                     setting_id)

REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, *, kind: str, training: TrainConfig | Mapping[str, TrainConfig] = TrainConfig(),
             budgets: Mapping[str, Budget | Mapping[str, Budget]] | None = None, grid: tuple[GridEntry, ...] = (),
             example: Mapping[str, Any] | None = None, novel_classes: bool = True,
             defaults_by: str | None = None, search_space: SearchSpace | None = None) -> Callable[[type], type]:
    """Register a method class.

    `kind`: one of KINDS; `training`: the reference's TrainConfig (or one per value of the
    option `defaults_by`); `budgets`: {profile: Budget} (or {profile: {option value:
    Budget}}); `grid`: its few-shot grid entries; `example`: options for a tiny backbone
    (the contract tests); `novel_classes`: whether trained parameters carry to classes
    never seen (base-to-novel), given class-agnostic options; `search_space`: the default
    space of `medkit.search` (the reference's ranges), {name: FloatRange | IntRange | Choice}."""
    if kind not in KINDS:
        raise ValueError(f"method {name!r}: kind {kind!r} is not one of {KINDS}")

    def deco(cls: type) -> type:
        if name in REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        check_constructor(name, cls)
        REGISTRY[name] = MethodSpec(name, cls, options_dataclass(name, cls), kind, training, dict(budgets or {}),
                                    tuple(grid), dict(example or {}), novel_classes, defaults_by,
                                    dict(search_space or {}))
        cls.registry_name = name
        return cls
    return deco


def get_spec(name: str) -> MethodSpec:
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


def get_method(name: str) -> type:
    return get_spec(name).cls


def list_methods(kind: str | None = None) -> list[str]:
    """Registered names in registration order (optionally of one kind)."""
    return [n for n, s in REGISTRY.items() if kind is None or s.kind == kind]


def default_config(method: str, options: Mapping[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """The reference's training settings of `method`, with `overrides`."""
    return get_spec(method).training_defaults(options).with_(**overrides)


# each module registers itself on import; the order is the few-shot grid's order
from .zeroshot import ZeroShotClassifier  # noqa: E402
from .linear_probe import LinearProbe  # noqa: E402
from .lp_pp import LPPlusPlus  # noqa: E402
from .clip_adapter import CLIPAdapter  # noqa: E402
from .tip_adapter import TipAdapter, TipAdapterF  # noqa: E402
from .coop import CoOp  # noqa: E402
from .kgcoop import KgCoOp  # noqa: E402
from .cocoop import CoCoOp  # noqa: E402
from .biomedcoop import BiomedCoOp  # noqa: E402
from .prograd import ProGrad  # noqa: E402
from .cilmp import CILMP  # noqa: E402
from .maple import MaPLe  # noqa: E402
from .vpt_deep import VPTDeep  # noqa: E402
from .ivlp import IVLP  # noqa: E402
from .vit_finetune import ViTClassifier, build_vit  # noqa: E402
# multi-label (log-odds per finding; `medkit.tasks.MultiLabel`)
from .zeroshot_ml import MultiLabelZeroShot  # noqa: E402
from .linear_probe_ml import MultiLabelLinearProbe  # noqa: E402
from .dualcoop import DualCoOp  # noqa: E402
from .pspg import PsPG  # noqa: E402
from .clip_finetune_contrastive import ContrastiveFinetune  # noqa: E402

# the registry's classes are exported by name: a new method needs no edit here beyond its import
__all__ = sorted({"CONTEXT_CHOICE", "OPTIMISER_SPACE", "Budget", "Choice", "FloatRange", "GridEntry", "IntRange", "SearchSpace", "KNOWLEDGE_RESOURCES", "MethodSpec", "REGISTRY", "Ref", "build_vit",
                  "default_config", "get_method", "get_spec", "list_methods", "options_json", "register", "setting_id",
                  *(spec.cls.__name__ for spec in REGISTRY.values())})
