"""The method registry: one entry per method, holding everything about it.

A method file registers its class with `@register(name, ...)`: the class, its options
(a dataclass derived from the constructor's keyword arguments, so the signature is the one
place an option is declared; validated and serialisable, as PEFT's per-method configs
are), the reference's training defaults, per-profile budgets (as timm models declare
their default configs) and the entries it adds to the few-shot grid. Nothing outside the
file names the method: the runner, the grids and the contract tests read the registry.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from medkit.config import TrainConfig
from medkit.runs import json_safe

#: what a method is for, so that tables and findings group methods without naming them
KINDS = ("zeroshot", "probe", "adapter", "prompt", "deep_prompt", "finetune")


@dataclass(frozen=True)
class Ref:
    """An option value that is a per-run resource, resolved by the runner: a dataset's
    `descriptions` or `knowledge`, the `data_root`, the run's `seed`."""

    name: str


#: resources that carry class knowledge beyond the class name (findings group by them)
KNOWLEDGE_RESOURCES = ("descriptions", "knowledge")


@dataclass(frozen=True)
class Budget:
    """A method's training budget in one profile.

    `train`: TrainConfig overrides on the reference defaults; `steps`: optimizer steps per
    few-shot run (None: the profile's default); `eval_images`: images evaluated per split
    by protocol family (`"full"`: spread over classes, `"few_shot"`: spread over the split)
    for methods whose evaluation costs a text pass per image; `shots`: the K of the
    few-shot grid this method runs at (None: every K); `epochs_by_shots`: few-shot epochs per
    K where the reference varies them (CoOp: 50 at K=1, 100 at 2–4, 200 at 8–16)."""

    train: Mapping[str, Any] = field(default_factory=dict)
    steps: int | None = None
    eval_images: Mapping[str, int] = field(default_factory=dict)
    shots: tuple[int, ...] | None = None
    epochs_by_shots: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class GridEntry:
    """A setting this method contributes to the few-shot grid: a curve label and options."""

    variant: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FloatRange:
    """A real hyperparameter in [low, high] (log-uniform with `log`)."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    """An integer hyperparameter in [low, high]; `high="layers"`: the backbone's prompt depth
    (the shallower of its two towers), so one space serves ViT-B/16 and MiniCLIP."""

    low: int
    high: int | str
    log: bool = False


@dataclass(frozen=True)
class Choice:
    """One of `values`. A mapping {label: {name: value, …}} chooses a bundle of options by
    its label (CoOp's context: the init phrase, or random vectors of a length), since some
    options only make sense together."""

    values: tuple | Mapping[str, Mapping[str, Any]]


#: a search space: hyperparameter → range; a name that is a TrainConfig field is a training
#: override, any other an option of the method (a bundle `Choice` may hold either)
SearchSpace = Mapping[str, "FloatRange | IntRange | Choice"]

#: the optimiser's part of every trained method's space: lr spans the references' SGD rates
#: (0.002–0.0035) and the CPU profiles' AdamW ones (0.01–0.02); weight decay as the VLSM poster's
OPTIMISER_SPACE: SearchSpace = {"lr": FloatRange(1e-4, 1e-1, log=True), "weight_decay": FloatRange(1e-6, 1e-2, log=True)}
#: context bundles for CoOp-style learners: the init phrase (its 4 words), or random vectors of
#: CoOp's ablated lengths (4, 8, 16)
CONTEXT_CHOICE = Choice({"text init": {"n_ctx": None, "ctx_init": "a photo of a"},
                         **{f"random {n}": {"n_ctx": n, "ctx_init": None} for n in (4, 8, 16)}})


@dataclass(frozen=True)
class MethodSpec:
    name: str
    cls: type
    options: type  # the options dataclass
    kind: str
    training: TrainConfig | Mapping[str, TrainConfig]
    budgets: Mapping[str, Budget | Mapping[str, Budget]]
    grid: tuple[GridEntry, ...]
    example: Mapping[str, Any]
    novel_classes: bool
    defaults_by: str | None
    search_space: SearchSpace = field(default_factory=dict)

    # ------------------------------------------------------------------ options
    def make_options(self, **values: Any) -> Any:
        """The options dataclass with `values`; unknown names and values of the wrong basic
        type are errors naming the method, the option and what it accepts."""
        names = [f.name for f in dataclasses.fields(self.options)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise TypeError(f"{self.name}: unknown option(s) {unknown}; options: {names}")
        hints = _hints(self.cls)
        for key, value in values.items():
            if not isinstance(value, Ref) and key in hints and not _accepts(hints[key], value):
                raise TypeError(f"{self.name}: option {key}={value!r} is not a {_type_name(hints[key])}")
        missing = [f.name for f in dataclasses.fields(self.options) if f.name not in values
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise TypeError(f"{self.name}: option(s) {missing} have no default and must be given "
                            f"(a value, or Ref('descriptions') / Ref('knowledge') for a dataset resource)")
        return self.options(**values)

    def full_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every option with its value: the given ones, the rest at their defaults (live
        objects and Refs as they are, not copied)."""
        made = self.make_options(**options)
        return {f.name: getattr(made, f.name) for f in dataclasses.fields(made)}

    # ------------------------------------------------------------------ training
    def _keyed(self, table: Any, options: Mapping[str, Any]) -> Any:
        if self.defaults_by is None or not isinstance(table, Mapping):
            return table
        key = self.full_options(options).get(self.defaults_by)
        return table.get(key, next(iter(table.values())) if table else None)

    def training_defaults(self, options: Mapping[str, Any] | None = None) -> TrainConfig:
        """The reference's training settings (by `defaults_by` option where they differ)."""
        cfg = self._keyed(self.training, options or {})
        return cfg if isinstance(cfg, TrainConfig) else TrainConfig()

    def budget(self, profile: str, options: Mapping[str, Any] | None = None) -> Budget:
        b = self._keyed(self.budgets.get(profile, Budget()), options or {})
        return b if isinstance(b, Budget) else Budget()


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not evaluate: no type check, the constructor still validates
        return {}


_BASIC = (int, float, str, bool, type(None))


def _accepts(hint: Any, value: Any) -> bool:
    """A loose check of basic types (int, float, str, bool, None and their unions); anything
    richer is left to the constructor."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if hint in _BASIC:
        if hint is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if hint is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, hint)
    return True


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def options_dataclass(name: str, cls: type) -> type:
    """A dataclass of the constructor's keyword arguments after (adapter, classnames)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]
    hints = _hints(cls)
    fields = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{name}: options must be named arguments, not *{p.name}")
        default = p.default if p.default is not p.empty else dataclasses.MISSING
        hint = hints.get(p.name, Any)  # the constructor's annotation: the options are typed as it is
        if isinstance(default, (list, dict, set)):
            fields.append((p.name, hint, field(default_factory=lambda d=default: type(d)(d))))
        else:
            fields.append((p.name, hint, field(default=default)))
    fields.sort(key=lambda f: f[2].default is not dataclasses.MISSING or f[2].default_factory is not dataclasses.MISSING)
    return dataclasses.make_dataclass(f"{cls.__name__}Options", fields, frozen=True)


def check_constructor(name: str, cls: type) -> None:
    """One constructor shape for every method: `(adapter, classnames, **options)`."""
    params = list(inspect.signature(cls.__init__).parameters)
    if params[:3] != ["self", "adapter", "classnames"]:
        raise TypeError(f"method {name!r}: the constructor must start (self, adapter, classnames, …), got {params[:3]}")


def options_json(options: Mapping[str, Any]) -> str:
    """Options as stable JSON: Refs as {"$ref": name}, tuples as lists, keys sorted; a live
    object given in place of a Ref (a knowledge bundle) by its type name, never its repr."""
    def plain(v: Any) -> Any:
        if isinstance(v, Ref):
            return {"$ref": v.name}
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        return f"<{type(v).__name__}>"

    return json.dumps(json_safe(plain(dict(options))), sort_keys=True, ensure_ascii=False)


def setting_id(method: str, options: Mapping[str, Any], train: Mapping[str, Any] | None = None) -> str:
    """`<method>-<8 hex>`: the same method, options and training overrides give the same id."""
    blob = json.dumps([method, options_json(options), options_json(train or {})])
    return f"{method}-{hashlib.blake2b(blob.encode(), digest_size=4).hexdigest()}"

