"""Hand-crafted prompt templates (the implant study's and CLIP's) and template ensembles."""
from __future__ import annotations

from typing import Sequence

# The implant study's best hand-crafted prompts (§2.2 OrthoNet, §3.2 pacemakers).
IMPLANT_STUDY_TEMPLATES: dict[str, str] = {
    "ortho": "A grayscale X-ray showing orthopedic implant of {}",
    "cardiac": "Cardiac implant X-ray by {} implant",
}
CLIP_DEFAULT_TEMPLATE = "a photo of a {}."

# A small ensemble in the same spirit: averaged normalised features over templates.
TEMPLATE_ENSEMBLE: tuple[str, ...] = (
    "a photo of a {}.",
    "an x-ray of a {}.",
    "a radiograph of a {} implant.",
    "a grayscale X-ray showing the implant {}.",
    "an X-ray image of a {} device.",
    "Cardiac implant X-ray by {} implant",
    "A grayscale X-ray showing orthopedic implant of {}",
)


def prompt_name(name: str, keep_underscores: bool = False) -> str:
    """A class name as it enters a prompt: every `_` becomes a space, as in the CoOp-family
    references (`name.replace("_", " ")`), because Dassl split files spell names
    `hip_prosthesis` and a text tower has never read such tokens. `keep_underscores=True`
    feeds the name unchanged. The one place a class name becomes prompt text: rows, labels
    and ensemble keys keep the original name."""
    return name if keep_underscores else name.replace("_", " ")


def fill(template: str, classnames: Sequence[str], keep_underscores: bool = False) -> list[str]:
    """`template` filled with each class name (underscores → spaces unless `keep_underscores`)."""
    if "{}" not in template:
        raise ValueError(f"template {template!r} has no '{{}}' placeholder for the class name")
    return [template.format(prompt_name(c, keep_underscores)) for c in classnames]


def ensemble_from_templates(templates: Sequence[str], classnames: Sequence[str],
                            keep_underscores: bool = False) -> dict[str, list[str]]:
    """{classname: [template filled with that class]} — the same shape as description ensembles.
    Keyed by the original name; the sentences use `prompt_name` (see `keep_underscores`)."""
    for t in templates:
        fill(t, ["x"])
    return {c: [t.format(prompt_name(c, keep_underscores)) for t in templates] for c in classnames}


def study_template_for(dataset_has_groups: bool) -> str:
    """The study used the cardiac template for the grouped pacemaker dataset."""
    return IMPLANT_STUDY_TEMPLATES["cardiac" if dataset_has_groups else "ortho"]

