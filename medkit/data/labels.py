"""Label spaces and samples: what every reader returns and every method consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True)
class LabelSpace:
    """Ordered class names (index = label) with an optional class → group map.

    Groups model hierarchies such as manufacturer → implant model. `group_of` maps every
    class name to its group name; group indices follow the order of first appearance.
    """

    classnames: tuple[str, ...]
    group_of: Mapping[str, str] | None = None

    multilabel = False  # MultiLabelSpace: any number of findings per image

    def __post_init__(self) -> None:
        object.__setattr__(self, "classnames", tuple(self.classnames))
        if len(set(self.classnames)) != len(self.classnames):
            dupes = sorted({c for c in self.classnames if self.classnames.count(c) > 1})
            raise ValueError(f"duplicate class names in label space: {dupes}")
        if self.group_of is not None:
            missing = [c for c in self.classnames if c not in self.group_of]
            if missing:
                raise ValueError(f"classes without a group: {missing[:5]}")
            object.__setattr__(self, "group_of", dict(self.group_of))

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    @property
    def has_groups(self) -> bool:
        return self.group_of is not None

    @property
    def groups(self) -> tuple[str, ...]:
        """Group names in order of first appearance over the classes."""
        if self.group_of is None:
            return ()
        seen: dict[str, None] = {}
        for c in self.classnames:
            seen.setdefault(self.group_of[c], None)
        return tuple(seen)

    def index(self, classname: str) -> int:
        try:
            return self.classnames.index(classname)
        except ValueError:
            raise KeyError(f"unknown class {classname!r}; known: {list(self.classnames)[:10]}…") from None

    def class_to_group_index(self) -> list[int]:
        """For each class label, the index of its group (requires groups)."""
        if self.group_of is None:
            raise ValueError("this label space has no groups")
        g = {name: i for i, name in enumerate(self.groups)}
        return [g[self.group_of[c]] for c in self.classnames]


@dataclass(frozen=True)
class MultiLabelSpace(LabelSpace):
    """Findings of a multi-label dataset (any number per image, "No Finding" when none).

    `synonyms`: alternative names per finding (matched case- and punctuation-blind, as
    CheXzero keeps them); `seen`: the findings a training label space also has, after
    matching (`medkit.data.findings.match_label_spaces`); None until matched. `train_name`
    maps each seen finding to the training dataset's name for it.
    """

    synonyms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    seen: tuple[str, ...] | None = None
    train_name: Mapping[str, str] = field(default_factory=dict)

    multilabel = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "synonyms", {k: tuple(v) for k, v in dict(self.synonyms).items()})
        object.__setattr__(self, "train_name", dict(self.train_name))
        if self.seen is not None:
            unknown = [c for c in self.seen if c not in self.classnames]
            if unknown:
                raise ValueError(f"seen findings not in the label space: {unknown[:5]}")
            object.__setattr__(self, "seen", tuple(self.seen))

    def subset_index(self, which: str) -> list[int]:
        """Column indices of `seen`, `unseen` or `all` findings."""
        if which == "all":
            return list(range(self.n_classes))
        if self.seen is None:
            raise ValueError("this label space has not been matched to a training label space (seen is None)")
        seen = set(self.seen)
        if which == "seen":
            return [i for i, c in enumerate(self.classnames) if c in seen]
        if which == "unseen":
            return [i for i, c in enumerate(self.classnames) if c not in seen]
        raise ValueError(f"subset {which!r}: use 'seen', 'unseen' or 'all'")


@dataclass(frozen=True)
class Sample:
    """One labelled image on disk (or inside an array file, see `array_index`)."""

    path: Path
    label: int
    classname: str
    group: str | None = None
    array_index: int | None = None  # row inside a MedMNIST-style .npz, else None
    #: multi-label images: one entry per class of the label space, 1 (present), 0 (absent) or
    #: -1 (unknown: uncertain under the `mask` policy, or not annotated), which every loss and
    #: metric masks. Single-label samples leave it None. A multi-label sample's `label` is -1
    #: and its `classname` the positive findings joined by "|" ("" when none).
    targets: tuple[int, ...] | None = None
    view: str | None = None  # "frontal" / "lateral" where the dataset says
    text: str | None = None  # a report or caption paired with the image (contrastive training)


@dataclass
class Split:
    """Samples of one split plus the label space they are indexed in."""

    name: str
    samples: list[Sample]
    labels: LabelSpace
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def multilabel(self) -> bool:
        return bool(self.samples) and self.samples[0].targets is not None

    @property
    def targets(self) -> list[int] | list[tuple[int, ...]]:
        """Labels (single-label) or per-class target vectors `[N][C]` (multi-label)."""
        if self.multilabel:
            return [s.targets for s in self.samples]
        return [s.label for s in self.samples]


def as_path(p: str | Path) -> Path:
    return p if isinstance(p, Path) else Path(p)
