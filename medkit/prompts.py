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


def fill(template: str, classnames: Sequence[str]) -> list[str]:
    if "{}" not in template:
        raise ValueError(f"template {template!r} has no '{{}}' placeholder for the class name")
    return [template.format(c) for c in classnames]


def ensemble_from_templates(templates: Sequence[str], classnames: Sequence[str]) -> dict[str, list[str]]:
    """{classname: [template filled with that class]} — the same shape as description ensembles."""
    for t in templates:
        fill(t, ["x"])
    return {c: [t.format(c) for t in templates] for c in classnames}


def study_template_for(dataset_has_groups: bool) -> str:
    """The study used the cardiac template for the grouped pacemaker dataset."""
    return IMPLANT_STUDY_TEMPLATES["cardiac" if dataset_has_groups else "ortho"]

