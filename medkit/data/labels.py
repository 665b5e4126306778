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
class Sample:
    """One labelled image on disk (or inside an array file, see `array_index`)."""

    path: Path
    label: int
    classname: str
    group: str | None = None
    array_index: int | None = None  # row inside a MedMNIST-style .npz, else None


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
    def targets(self) -> list[int]:
        return [s.label for s in self.samples]


def as_path(p: str | Path) -> Path:
    return p if isinstance(p, Path) else Path(p)
