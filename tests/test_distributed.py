"""Data-parallel training (torchrun, gloo on CPU): each rank trains on its share of the same
global batch and the summed gradients give one process's step; rank 0 alone writes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler

from medkit import distributed

TOLERANCE = 1e-5  # float32 sums in another order (two half-batches, then an all-reduce)


@pytest.mark.parametrize("n, batch, world", [(10, 4, 2), (7, 3, 2), (5, 4, 3)])
def test_the_shards_of_every_rank_make_up_one_processs_batches(monkeypatch, n, batch, world):
    expected = list(BatchSampler(RandomSampler(range(n), generator=torch.Generator().manual_seed(3)), batch, False))
    shards = []
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shards.append(list(distributed.ShardedBatches(n, batch, torch.Generator().manual_seed(3))))
    for i, whole in enumerate(expected):
        parts = [shards[r][i] for r in range(world)]
        assert sum(parts, []) == whole  # contiguous shares, in order; a small last batch leaves a rank empty
    assert len(distributed.ShardedBatches(n, batch, None)) == len(expected)


def _checkpoint(outputs: Path) -> dict:
    found = list(outputs.glob("runs/*/checkpoints/*/*.pt"))
    assert len(found) == 1, found
    return torch.load(found[0], map_location="cpu", weights_only=False)["state"]


@pytest.mark.skipif(not (Path(sys.executable).parent / "torchrun").is_file(), reason="no torchrun in this venv")
def test_two_processes_train_the_same_context_as_one_with_the_same_global_batch(tmp_path, smoke_data):
    # 12 SGD steps of a global batch of 15 over 24 images (2 shots x 12 classes): every epoch
    # ends on a batch of 9, split 5 / 4 between the ranks
    args = ["-m", "medkit", "run", "--method", "coop", "--dataset", "synth_ortho12", "--profile", "smoke", "--shots",
            "2", "--seeds", "1", "--steps", "12", "--train", "batch_size=15", "max_steps_per_epoch=none",
            "optimizer=sgd", "lr=0.02", "--data-root", str(smoke_data)]
    one, two = tmp_path / "one", tmp_path / "two"
    from medkit.__main__ import main  # one process: this one (no interpreter start to pay)

    assert main([*args[2:], "--outputs", str(one)]) == 0
    ddp = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", *args,
                          "--outputs", str(two)], capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = _checkpoint(one), _checkpoint(two)
    assert a.keys() == b.keys() == {"context.ctx"}
    history = pd.read_csv(next(one.glob("runs/*/histories/*/*_steps.csv")))
    assert len(history) == 12 and len(pd.read_csv(next(two.glob("runs/*/histories/*/*_steps.csv")))) == 12
    assert (a["context.ctx"] - b["context.ctx"]).abs().max() < TOLERANCE
    assert (history["loss"] - pd.read_csv(next(two.glob("runs/*/histories/*/*_steps.csv")))["loss"]).abs().max() < 1e-4
    rows = pd.read_csv(two / "results.csv")
    assert len(rows) == 1 and rows["split"].tolist() == ["test"]  # rank 0 alone wrote the row
    assert rows["acc"].iloc[0] == pd.read_csv(one / "results.csv")["acc"].iloc[0]
