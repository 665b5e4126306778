"""Encoding images of a split with a frozen image tower.

(The on-disk feature cache keyed by backbone, split and preprocessing builds on this.)
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medkit.backbones import BackboneAdapter
from medkit.data import ImageDataset, Split


@torch.no_grad()
def encode_split(adapter: BackboneAdapter, split: Split, batch_size: int = 128, normalize: bool = True,
                 progress: bool = True, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, E], labels [N]) of every image in `split`, evaluation transform."""
    adapter.eval()
    loader = DataLoader(ImageDataset(split, adapter.preprocess), batch_size=batch_size, num_workers=num_workers)
    feats, labels = [], []
    for x, y in tqdm(loader, desc=f"encoding {split.name} images", disable=not progress, mininterval=2):
        feats.append(adapter.encode_image(x, normalize=normalize).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)
