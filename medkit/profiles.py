"""Profiles: one declarative table per profile, the object that travels through a run.

- `smoke`: seconds per notebook; exercises every code path (CI, tests).
- `tiny`: the embedded default on a laptop CPU; minutes; meaningful numbers.
- `full`: the embedded world at the references' own training budgets (their epochs, batch
  sizes and SGD; CoOp's 50–200 epochs by K; every test image, CoCoOp and CILMP included):
  minutes per notebook on a GPU, hours on a CPU — a job for `python -m medkit sweep`.
- `paper`: real checkpoints on a GPU; the seeds' settings. Point `datasets` at real data.

A profile holds what is the same for every method (backbone, world, seeds and shots it
keeps, the few-shot step budget, evaluation sizes, the training overrides of methods that
declare no budget of their own); what differs per method is the method's own budget
(`medkit.methods.Budget`, declared in its file). Nothing else branches on a profile's name.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class Profile:
    name: str
    backbone: str
    world: str  # size preset of the synthetic datasets
    device: str = "cpu"
    cell_timeout_s: int | None = 1800  # papermill's per-cell execution timeout
    tsne_points: int = 600
    bootstrap: int = 1000
    max_seeds: int | None = None  # keep the first n of a notebook's seeds (None: all)
    max_shots: int | None = None  # keep the n smallest K of a few-shot grid (None: all)
    # optimizer steps per few-shot run: one number, or a number per K (the value at the largest
    # K not above the run's); None: the references' epochs
    few_shot_steps: int | Mapping[int, int] | None = None
    default_train: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig overrides for every method
    vit_weights: tuple[str, ...] = ("in21k", "clip", "dinov2")  # notebook 01's weight families
    max_trials: int | None = None  # notebook 12: cap on its search's trials (None: as asked)
    max_workers: int | None = None  # notebook 12: cap on its search's worker processes (None: as asked)
    max_budget_steps: int | None = None  # notebook 12: cap on the step budgets whose loss curves it compares

    def as_dict(self) -> dict:
        return asdict(self)

    def steps_at(self, shots: int) -> int | None:
        """The few-shot step budget of a K-shot run (None: the references' epochs). The
        references scale training with K (CoOp: 50 epochs at K=1, 200 at K=16, so 400x the
        steps); a budget per K lets the larger draws train until their loss flattens."""
        if self.few_shot_steps is None or isinstance(self.few_shot_steps, int):
            return self.few_shot_steps
        ks = sorted(int(k) for k in self.few_shot_steps)
        key = max((k for k in ks if k <= shots), default=ks[0])
        return int({int(k): v for k, v in self.few_shot_steps.items()}[key])

    def seeds(self, seeds: Sequence[int]) -> list[int]:
        return list(seeds[: self.max_seeds]) if self.max_seeds else list(seeds)

    def shots(self, shots: Sequence[int]) -> list[int]:
        return sorted(shots)[: self.max_shots] if self.max_shots else sorted(shots)


PROFILES: dict[str, Profile] = {
    # checks code paths, not spreads or curves: one seed, two K, two steps of everything
    "smoke": Profile("smoke", backbone="miniclip-smoke", world="smoke", cell_timeout_s=600, tsne_points=150,
                     bootstrap=100, max_seeds=1, max_shots=2, few_shot_steps=2,
                     default_train=dict(epochs=1, batch_size=32, warmup_epochs=0, max_steps_per_epoch=2),
                     vit_weights=("scratch", "supervised-smoke", "miniclip-smoke"), max_trials=3, max_workers=1,
                     max_budget_steps=8),
    # few-shot sets span 12 to 720 images: a step budget, not an epoch count. At K=16 the prompt
    # learners' loss flattens by ~200 steps (CoOp on synth_ortho12: 100 → 200 steps lowers the
    # last loss 1.64 → 1.37, 200 → 400 not at all; synth_implants45: 2.89 at 120, 2.86 at 200);
    # below K=16 the budget stays small, since a step costs the same at every K (a text pass over
    # the class prompts: ~0.12 s at 45 classes) and notebook 07 runs the whole K grid
    "tiny": Profile("tiny", backbone="miniclip", world="tiny", tsne_points=400,
                    few_shot_steps={1: 10, 4: 20, 8: 50, 16: 200},
                    vit_weights=("scratch", "supervised", "miniclip")),  # no hub: no DINOv2 stand-in
    # no method declares a "full" budget but CoOp's epochs by K: the reference defaults rule
    "full": Profile("full", backbone="miniclip", world="tiny", cell_timeout_s=None, tsne_points=1000,
                    vit_weights=("scratch", "supervised", "miniclip")),
    "paper": Profile("paper", backbone="ViT-B-16/openai", world="paper", device="cuda", cell_timeout_s=None),
}


def get_profile(name: str | Profile, **overrides) -> Profile:
    """The named profile with non-empty overrides applied (notebook parameters use '' for 'default')."""
    if isinstance(name, Profile):
        return replace(name, **{k: v for k, v in overrides.items() if v not in ("", None)})
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {sorted(PROFILES)}")
    return replace(PROFILES[name], **{k: v for k, v in overrides.items() if v not in ("", None)})
