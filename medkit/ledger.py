"""What a run folder keeps of each run, for both runners (classification and multi-label in
`medkit.experiment`, segmentation in `medkit.seg.experiment`):

- `RowLedger`: the rows already appended to results.csv (`recorded.txt`), so a notebook run
  again in the same folder (`--resume`) appends none twice;
- `keep_trained` / `restore_trained`: a trained run's parameters (`checkpoints/<tag>.pt`, with
  the fingerprint of what it belongs to) and history (`histories/<tag>.csv`); restoring a
  checkpoint of another configuration under the same name is a `ResumeError` naming what differs;
- `SharedRuns`: trained runs shared between run folders (`data/trained/`), found by a digest
  of everything a run depends on.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from medkit import distributed
from medkit.atomic import atomic_torch_save
from medkit.runs import Run, result_columns


class ResumeError(RuntimeError):
    """A checkpoint found for resuming belongs to another run."""


class RowLedger:
    def __init__(self, run: Run | None) -> None:
        self.run = run
        self.recorded: set[str] = set()
        if run is not None and (run.path / "recorded.txt").is_file():
            self.recorded = set((run.path / "recorded.txt").read_text().splitlines())

    def add(self, key: str, row: Mapping[str, Any]) -> None:
        """Append `row`'s result columns to results.csv unless `key` was written already (under
        several processes, rank 0 alone writes)."""
        if self.run is None or key in self.recorded or not distributed.is_main():
            return
        columns = set(result_columns())
        self.run.add_result(**{k: v for k, v in row.items() if k in columns})
        self.recorded.add(key)
        with open(self.run.path / "recorded.txt", "a") as f:
            f.write(key + "\n")


def keep_trained(run: Run | None, tag: str, history: pd.DataFrame | None, state: Mapping[str, torch.Tensor] | None,
                 fingerprint: Mapping[str, Any] | None, labels: Mapping[str, Any], **meta: Any) -> None:
    """histories/<tag>.csv (with `labels` as columns, and `<tag>_steps.csv` from
    `history.attrs["steps"]`) and checkpoints/<tag>.pt (`state`, `fingerprint`, `meta`); rank 0
    alone writes under several processes."""
    if run is None or not distributed.is_main():
        return
    if history is not None and len(history):
        path = run.path / "histories" / f"{tag}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        history.assign(**labels).to_csv(path, index=False)
        steps = history.attrs.get("steps")
        if steps is not None and len(steps):
            steps.to_csv(path.with_name(f"{path.stem}_steps.csv"), index=False)
    if state:
        atomic_torch_save({**meta, "state": dict(state), "fingerprint": fingerprint}, run.checkpoints_dir / f"{tag}.pt")


def restore_trained(run: Run | None, tag: str, fingerprint: Mapping[str, Any], drop: tuple[str, ...] = ()
                    ) -> tuple[dict, pd.DataFrame] | None:
    """(checkpoint, history without the `drop` label columns) of a run this folder finished,
    or None; `ResumeError` if the checkpoint belongs to another configuration."""
    if run is None:
        return None
    ckpt, hist = run.checkpoints_dir / f"{tag}.pt", run.path / "histories" / f"{tag}.csv"
    if not (ckpt.is_file() and hist.is_file()):
        return None
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    found = saved.get("fingerprint") or {}
    if found != fingerprint:
        diff = sorted(k for k in set(fingerprint) | set(found) if found.get(k) != fingerprint.get(k))
        raise ResumeError(f"{ckpt}: a finished run of another configuration sits under this run's name "
                          f"(differs in {diff}); move the run folder aside to start over")
    history = pd.read_csv(hist).drop(columns=list(drop), errors="ignore")
    steps = hist.with_name(f"{hist.stem}_steps.csv")
    history.attrs["steps"] = pd.read_csv(steps) if steps.is_file() else pd.DataFrame()
    return saved, history


class SharedRuns:
    """Trained runs shared between run folders — notebooks that train the same setting on
    the same draw (07's and 08's K=16 prompt learners, 12's default configuration) train it
    once. An entry is found by the digest of everything the run depends on (what
    `Experiment._shared_identity` gathers):
    a run differing in any of it is a different entry, never a stale one."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def canonical(identity: Mapping[str, Any]) -> str:
        return json.dumps(identity, sort_keys=True, default=str)

    def digest(self, identity: Mapping[str, Any]) -> str:
        return hashlib.blake2b(self.canonical(identity).encode(), digest_size=16).hexdigest()

    def path(self, identity: Mapping[str, Any]) -> Path:
        return self.root / f"{self.digest(identity)}.pt"

    def get(self, identity: Mapping[str, Any]) -> tuple[dict, pd.DataFrame] | None:
        """(trainable state, history with its steps in attrs) of an entry, or None."""
        path = self.path(identity)
        if not path.is_file():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("identity") != self.canonical(identity):
            return None  # a digest collision or a hand-edited file: train instead
        history = pd.DataFrame(saved["history"])
        history.attrs["steps"] = pd.DataFrame(saved["steps"])
        return saved["state"], history

    def put(self, identity: Mapping[str, Any], state: Mapping[str, torch.Tensor], history: pd.DataFrame) -> None:
        if not distributed.is_main():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        steps = history.attrs.get("steps")
        atomic_torch_save({"identity": self.canonical(identity),
                           "state": dict(state), "history": history.to_dict("list"),
                           "steps": steps.to_dict("list") if steps is not None else {}}, self.path(identity))


def resource_digest(value: Any) -> str | None:
    """Digest of a resource a method is built with (descriptions, LLM representations), or
    None where it does not pickle (then the run is not shared)."""
    import io
    import pickle

    try:
        buf = io.BytesIO()
        torch.save(value, buf, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 — anything unpicklable: no digest, no sharing
        return None
    return hashlib.blake2b(buf.getvalue(), digest_size=16).hexdigest()
