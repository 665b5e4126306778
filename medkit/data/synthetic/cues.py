"""The cue vocabulary of the embedded world, its class specifications and its texts.

Every image of the world is a device described by a handful of visual cues (outline,
lead count, internal pattern, marker, header, size). Classes are fixed cue combinations;
MiniCLIP is pretrained on *random* combinations with captions built from the same
vocabulary, so it learns the cues, not the classes. Class names are opaque model codes:
as with real implant names, the name alone tells a text encoder almost nothing, while the
descriptions (the stand-in for LLM knowledge) name the cues.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CAN_BODIES = ("round", "oval", "square", "shield", "triangular")  # pacemaker-like cans
ORTHO_BODIES = ("plate", "screw", "nail", "stem")  # orthopaedic hardware
BODIES = CAN_BODIES + ORTHO_BODIES
LEADS = (0, 1, 2, 3)
PATTERNS = ("plain", "striped", "dotted", "grid")
MARKERS = ("none", "ring", "cross")
HEADERS = ("none", "flat", "domed")
SIZES = ("small", "large")
CUE_VALUES = {"body": BODIES, "leads": LEADS, "pattern": PATTERNS, "marker": MARKERS, "header": HEADERS, "size": SIZES}


@dataclass(frozen=True)
class Cues:
    """One cue combination: everything the renderer needs to draw a device."""

    body: str
    leads: int
    pattern: str
    marker: str
    header: str
    size: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClassSpec:
    name: str
    group: str | None
    cues: Cues


# --- the two datasets' class lists -------------------------------------------------------

_MANUFACTURERS = ("Corvane", "Halden", "Myrex", "Quellon", "Tessivo")
_CAN_PATTERNS = ("striped", "dotted", "grid")


def _codes(rng: np.random.Generator, prefix: str, n: int) -> list[str]:
    """n distinct fictional model codes such as 'CRV-417'."""
    numbers = rng.choice(np.arange(100, 1000), size=n, replace=False)
    return [f"{prefix}-{k}" for k in numbers]


def implants45_classes(seed: int = 0) -> list[ClassSpec]:
    """5 manufacturers (groups, told apart by the can outline) × 9 models.

    Within a group, models differ by lead count × internal pattern (the fine cues), and
    carry a marker, header and size that vary between models but are not unique on their
    own — as real models of one maker share most parts.
    """
    rng = np.random.default_rng(seed)
    specs: list[ClassSpec] = []
    for g, (maker, body) in enumerate(zip(_MANUFACTURERS, CAN_BODIES)):
        codes = _codes(rng, maker[:3].upper(), 9)
        for k in range(9):
            cues = Cues(
                body=body,
                leads=k // 3 + 1,
                pattern=_CAN_PATTERNS[k % 3],
                marker=MARKERS[(k + g) % 3],
                header=HEADERS[1 + (k + g) % 2],
                size=SIZES[(k // 3 + g) % 2],
            )
            specs.append(ClassSpec(codes[k], maker, cues))
    return specs


_ORTHO_NAMES = ("Zentra", "Osmira", "Kalvex", "Druvan", "Pelora", "Ostrik",
                "Varnel", "Ilmont", "Sorvex", "Tandro", "Quorin", "Bexal")


def ortho12_classes(seed: int = 0) -> list[ClassSpec]:
    """12 orthopaedic classes: 4 hardware outlines × 3 internal patterns, no groups."""
    rng = np.random.default_rng(seed + 1)
    names = list(rng.permutation(_ORTHO_NAMES))
    specs = []
    for b, body in enumerate(ORTHO_BODIES):
        for p, pattern in enumerate(("plain", "striped", "dotted")):
            cues = Cues(body=body, leads=0, pattern=pattern, marker=MARKERS[(b + p) % 3],
                        header="none", size=SIZES[(b + p) % 2])
            i = b * 3 + p
            specs.append(ClassSpec(f"{names[i]} {chr(65 + b)}{p + 2}", None, cues))
    return specs


def random_cues(rng: np.random.Generator, p_can: float = 0.7) -> Cues:
    """A random combination for pretraining: any outline with any attribute.

    Cans are drawn more often than hardware (they carry five attributes, hardware two),
    and a can has at least one lead in 90% of draws, so the thin-line cue is seen often.
    """
    is_can = rng.random() < p_can
    body = CAN_BODIES[rng.integers(len(CAN_BODIES))] if is_can else ORTHO_BODIES[rng.integers(len(ORTHO_BODIES))]
    return Cues(
        body=body,
        leads=(int(rng.integers(1, 4)) if rng.random() < 0.9 else 0) if is_can else 0,
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        marker=MARKERS[rng.integers(len(MARKERS))],
        header=HEADERS[rng.integers(1, 3)] if is_can else "none",
        size=SIZES[rng.integers(2)],
    )


# --- texts -------------------------------------------------------------------------------

_BODY_WORDS = {
    "round": ["round", "circular", "disc-shaped"],
    "oval": ["oval", "elliptical", "egg-shaped"],
    "square": ["square", "boxy", "rectangular"],
    "shield": ["shield-shaped", "D-shaped", "half-round"],
    "triangular": ["triangular", "three-cornered", "triangle-shaped"],
}
_ORTHO_NOUNS = {
    "plate": ["bone plate", "flat plate", "fixation plate"],
    "screw": ["screw", "bone screw", "threaded screw"],
    "nail": ["nail", "long rod", "intramedullary nail"],
    "stem": ["hip stem", "tapered stem", "femoral stem"],
}
_CAN_NOUNS = ["device", "implant", "pulse generator", "metal can"]
_LEADS = {
    0: ["no leads", "no wires"],
    1: ["one lead", "a single lead", "one wire"],
    2: ["two leads", "a pair of leads", "two wires"],
    3: ["three leads", "three wires", "triple leads"],
}
_PATTERNS = {
    "plain": ["a plain interior", "no internal pattern", "a solid uniform body"],
    "striped": ["a striped interior", "parallel stripes inside", "internal stripes"],
    "dotted": ["a dotted interior", "a pattern of dots inside", "spots inside"],
    "grid": ["a grid pattern inside", "a checkered interior", "cross-hatched lines inside"],
}
_MARKERS = {
    "none": ["no marker", "no radio-opaque marker"],
    "ring": ["a small ring marker", "a ring-shaped marker", "a circular marker"],
    "cross": ["a small cross marker", "a cross-shaped marker", "an X-shaped marker"],
}
_HEADERS = {
    "none": [""],
    "flat": ["a flat header", "a square connector block", "a flat-topped header"],
    "domed": ["a domed header", "a rounded connector block", "a dome-shaped header"],
}
_SIZES = {"small": ["small", "compact"], "large": ["large", "big"]}

_OPENINGS = ["", "an x-ray of ", "a radiograph showing ", "an image of ", "a picture of "]


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _subject(cues: Cues, rng: np.random.Generator, with_size: bool) -> str:
    size = _pick(rng, _SIZES[cues.size]) + " " if with_size else ""
    if cues.body in _ORTHO_NOUNS:
        return f"{size}{_pick(rng, _ORTHO_NOUNS[cues.body])}"
    return f"{size}{_pick(rng, _BODY_WORDS[cues.body])} {_pick(rng, _CAN_NOUNS)}"


def _attribute_phrases(cues: Cues, rng: np.random.Generator) -> list[str]:
    phrases = [_pick(rng, _PATTERNS[cues.pattern]), _pick(rng, _MARKERS[cues.marker])]
    if cues.body in CAN_BODIES:
        phrases.insert(0, _pick(rng, _LEADS[cues.leads]))
        phrases.append(_pick(rng, _HEADERS[cues.header]))
    return phrases


def _article(words: str) -> str:
    return ("an " if words[:1] in "aeiou" else "a ") + words


def describe(cues: Cues, rng: np.random.Generator, n_attributes: int | None = None) -> str:
    """One sentence naming the outline (and size) plus `n_attributes` other cues.

    With n_attributes=None every cue is named (pretraining captions); descriptions use
    random subsets so that an ensemble, not one sentence, carries the full picture.
    """
    attrs = _attribute_phrases(cues, rng)
    if n_attributes is not None:
        keep = rng.permutation(len(attrs))[: max(1, min(n_attributes, len(attrs)))]
        attrs = [attrs[i] for i in sorted(keep)]
    else:
        attrs = [attrs[i] for i in rng.permutation(len(attrs))]
    opening = _pick(rng, _OPENINGS)
    subject = _article(_subject(cues, rng, with_size=n_attributes is None or rng.random() < 0.6))
    body = ", ".join(attrs[:-1]) + (" and " if len(attrs) > 1 else "") + attrs[-1]
    return f"{opening}{subject} with {body}".strip()


_IRRELEVANT = [
    "this model is mostly implanted in older patients",
    "the manufacturer recommends follow-up every six months",
    "it is a widely used model in many hospitals",
    "the device is sterilised before implantation",
]


def _off_cues(cues: Cues, rng: np.random.Generator) -> Cues:
    """Cues with the fine attributes changed: a confidently wrong description."""
    pattern = [p for p in PATTERNS if p != cues.pattern][int(rng.integers(3))]
    leads = cues.leads if cues.body not in CAN_BODIES else [n for n in (1, 2, 3) if n != cues.leads][int(rng.integers(2))]
    body = BODIES[int(rng.integers(len(CAN_BODIES if cues.body in CAN_BODIES else ORTHO_BODIES)))
                  + (0 if cues.body in CAN_BODIES else len(CAN_BODIES))]
    return Cues(body, leads, pattern, cues.marker, cues.header, cues.size)


def description_ensemble(cues: Cues, seed: int, n_good: int = 20, n_off: int = 3) -> list[str]:
    """≥ n_good distinct true sentences followed by n_off deliberate outliers.

    Outliers (wrong cues or irrelevant text) mimic the unreliable sentences of LLM
    ensembles that BiomedCoOp's pruning is meant to remove. Their positions are the last
    n_off entries so tests and notebooks can tell them apart; the JSON keeps that order.
    """
    rng = np.random.default_rng(seed)
    good: list[str] = []
    tries = 0
    while len(good) < n_good and tries < 2000:
        tries += 1
        s = describe(cues, rng, n_attributes=int(rng.integers(2, 5)))
        if s not in good:
            good.append(s)
    off = [describe(_off_cues(cues, rng), rng, n_attributes=3) for _ in range(n_off - 1)]
    off.append(_pick(rng, _IRRELEVANT))
    return good + off
