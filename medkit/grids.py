"""The notebooks' grids of settings: the implant study's tables (01–06), the few-shot grid
(07, 08, built from the method registry) and the ablations of BiomedCoOp and CILMP.

A setting's options are data: a sweep or an ablation is found again by its options
(`medkit.reporting.select`), never by parsing its label.
"""
from __future__ import annotations

import json
from typing import Sequence

from medkit.data import Dataset
from medkit.experiment import Setting
from medkit.methods import KNOWLEDGE_RESOURCES, REGISTRY, Ref
from medkit.methods.cilmp import DEFAULT_RANK, default_length
from medkit.profiles import Profile
from medkit.prompts import TEMPLATE_ENSEMBLE, study_template_for

TEXT_INIT = "a photo of a"

# --------------------------------------------------------------------------- the implant study (01–06)

STUDY_SETTINGS: dict[str, list[Setting]] = {
    # Table 1 (CoOp): shared/class-specific × random/text init; 4 context tokens in all four
    # so that only the initialisation differs.
    "coop": [
        Setting("coop", "shared, random init", dict(n_ctx=4)),
        Setting("coop", "shared, text init", dict(n_ctx=None, ctx_init=TEXT_INIT)),
        Setting("coop", "class-specific, random init", dict(n_ctx=4, class_specific=True)),
        Setting("coop", "class-specific, text init", dict(n_ctx=None, ctx_init=TEXT_INIT, class_specific=True)),
    ],
    # Table 2 (CoCoOp): both randomly initialised, as in the study.
    "cocoop": [
        Setting("cocoop", "shared, random init", dict(n_ctx=4, ctx_init=None)),
        Setting("cocoop", "class-specific, random init", dict(n_ctx=4, ctx_init=None, class_specific=True)),
    ],
    # Table 3 (MaPLe) + the MaPLe paper's baselines.
    "maple": [
        Setting("maple", "shared, first layer", dict(depth=1)),
        Setting("maple", "shared, all layers", dict(depth="all")),
        Setting("maple", "class-specific, all layers", dict(depth="all", class_specific=True)),
        Setting("vpt_deep", "vision only, all layers", dict(depth="all")),
        Setting("ivlp", "independent, all layers", dict(depth="all")),
    ],
}

# Tables 7–9: flat vs hierarchical, shared and class-specific, per method (the flat rows
# are the same settings as the method's own notebook).
HIERARCHY_SETTINGS: dict[str, dict[str, Setting]] = {
    "coop": {"shared": STUDY_SETTINGS["coop"][1], "class-specific": STUDY_SETTINGS["coop"][3]},
    "cocoop": {"shared": STUDY_SETTINGS["cocoop"][0], "class-specific": STUDY_SETTINGS["cocoop"][1]},
    "maple": {"shared": STUDY_SETTINGS["maple"][1], "class-specific": STUDY_SETTINGS["maple"][2]},
}


def vit_settings(families: Sequence[str]) -> list[Setting]:
    """Notebook 01: every weight family, fine-tuned fully and head only."""
    return [Setting("vit_finetune", f"{w}, {mode}", dict(weights=w, mode=mode)) for w in families
            for mode in ("full", "head")]


def zero_shot_settings(dataset: Dataset, templates: Sequence[str] = ()) -> list[Setting]:
    """The prompt kinds of the zero-shot notebooks (00, 02), labelled as they always were:
    the implant study's best hand-crafted template with the class name (or the user's
    `templates`, `{}` standing for the class name), a template ensemble, and the class's
    description ensemble where the dataset has one."""
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"template {t!r} has no {{}} for the class name")
    first = (Setting("zeroshot", "name_own_templates", {"templates": list(templates)}) if templates else
             Setting("zeroshot", "name_study_template", {"templates": [study_template_for(dataset.labels.has_groups)]}))
    out = [first, Setting("zeroshot", "name_template_ensemble", {"templates": list(TEMPLATE_ENSEMBLE)})]
    if dataset.descriptions:
        out.append(Setting("zeroshot", "descriptions", {"ensembles": Ref("descriptions")}))
    return out


def study_zero_shot(dataset: Dataset, templates: Sequence[str] = ()) -> Setting:
    """The study's hand-crafted zero-shot baseline of the tables of 03–06 (or the user's templates)."""
    return zero_shot_settings(dataset, templates)[0]


# --------------------------------------------------------------------------- few-shot (07, 08)

def few_shot_grid(profile: Profile | None = None) -> list[Setting]:
    """Every registered method's few-shot grid entries (registration order), each narrowed to
    the K its budget in `profile` allows (no profile: every K). A method registered with a
    grid entry is in the grid: nothing here names one."""
    return [Setting(name, e.variant, dict(e.options), shots=spec.budget(profile.name).shots if profile else None)
            for name, spec in REGISTRY.items() for e in spec.grid]


def base_to_novel_grid() -> list[Setting]:
    """The grid's methods whose trained parameters carry to classes never seen."""
    return [s for s in few_shot_grid() if REGISTRY[s.method].novel_classes]


def prompt_grid() -> list[Setting]:
    """Zero-shot and the prompt learners of the grid (CILMP's comparison table)."""
    return [s for s in few_shot_grid() if REGISTRY[s.method].kind in ("zeroshot", "prompt")]


def knowledge_guided(options: str | float | None) -> bool:
    """Whether options (a setting's or a row's JSON) name a knowledge resource — descriptions,
    LLM representations — beyond the class name."""
    if not isinstance(options, str) or not options:
        return False
    return any(isinstance(v, dict) and v.get("$ref") in KNOWLEDGE_RESOURCES for v in json.loads(options).values())


def uses_knowledge(setting: Setting) -> bool:
    return knowledge_guided(setting.options_json)


def biomedcoop_ablations(taus: Sequence[float] = (1.0, 2.5)) -> list[Setting]:
    """No SCCM / no KDSP / no pruning; the reference code's z-score rule; a τ sweep of the MAD rule."""
    ens = {"ensembles": Ref("descriptions")}
    out = [Setting("biomedcoop", "full (MAD, τ=1.5)", ens),
           Setting("biomedcoop", "no SCCM", {**ens, "lambda_sccm": 0.0}),
           Setting("biomedcoop", "no KDSP", {**ens, "lambda_kdsp": 0.0}),
           Setting("biomedcoop", "no pruning", {**ens, "pruning": "none"}),
           Setting("biomedcoop", "z-score rule (reference code), τ=1.5", {**ens, "pruning": "zscore"})]
    out += [Setting("biomedcoop", f"MAD, τ={t:g}", {**ens, "tau": t}) for t in taus]
    return out


def cilmp_defaults(n_layers: int) -> dict[str, int]:
    """The full CILMP's place in the length and rank sweeps."""
    return {"length": default_length(n_layers), "rank": DEFAULT_RANK}


def cilmp_ablations(lengths: Sequence[int] = (1, 2, 3), ranks: Sequence[int] = (2, 4, 16),
                    n_layers: int | None = None) -> list[Setting]:
    """The CILMP paper's ablations (w/o RD, w/o conditional, w/o intervention) and its
    intervention-length (prefix = suffix) and rank sweeps. The full model uses the defaults
    (`default_length(n_layers)` each side, `DEFAULT_RANK`); given `n_layers`, sweep points equal
    to a default are left out, since the full model's runs are exactly those runs."""
    k = {"knowledge": Ref("knowledge")}
    skip = cilmp_defaults(n_layers) if n_layers is not None else {}
    out = [Setting("cilmp", "CILMP", k),
           Setting("cilmp", "w/o RD", {**k, "mode": "no_rd"}),
           Setting("cilmp", "w/o conditional", {**k, "mode": "unconditional"}),
           Setting("cilmp", "w/o intervention", {**k, "prefix": 0, "suffix": 0})]
    out += [Setting("cilmp", f"length {n}", {**k, "prefix": n, "suffix": n}) for n in lengths if n != skip.get("length")]
    out += [Setting("cilmp", f"rank {r}", {**k, "rank": r}) for r in ranks if r != skip.get("rank")]
    return out
