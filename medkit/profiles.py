"""Profiles: one name that sets sizes and backbones for a whole workbook run.

- `smoke`: seconds per notebook; exercises every code path (CI, tests).
- `tiny`: the embedded default on a laptop CPU; minutes; meaningful numbers.
- `paper`: real checkpoints on a GPU; the seeds' settings. Point `datasets` at real data.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Profile:
    name: str
    backbone: str
    world: str  # size preset of the synthetic datasets
    device: str = "cpu"
    cell_timeout_s: int | None = 1800  # papermill's per-cell execution timeout
    tsne_points: int = 600
    bootstrap: int = 1000

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", backbone="miniclip-smoke", world="smoke", cell_timeout_s=600, tsne_points=150, bootstrap=100),
    "tiny": Profile("tiny", backbone="miniclip", world="tiny", tsne_points=400),
    "paper": Profile("paper", backbone="ViT-B-16/openai", world="paper", device="cuda", cell_timeout_s=None),
}


def get_profile(name: str, **overrides) -> Profile:
    """The named profile with non-empty overrides applied (notebook parameters use '' for 'default')."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {sorted(PROFILES)}")
    return replace(PROFILES[name], **{k: v for k, v in overrides.items() if v not in ("", None)})
