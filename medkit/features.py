"""Frozen image features, computed once and kept on disk (`data/cache/features/`).

Every method whose image tower is frozen and unprompted (zero-shot, linear probe, CoOp,
CoCoOp's image side, a head on a frozen ViT, …) only ever needs the tower's output. The
references recompute it every step; here it is computed once per

    (image encoder weights, encoder kind, transform, split contents, augmented views)

and shared by every epoch, seed, method and notebook. The file name is a content hash of
all of these, so a retrained backbone, an edited image or another transform gives a new
entry and a stale one is never served. Files are written atomically and carry a digest of
their tensors: a truncated or corrupt file is detected, reported and rebuilt.

Training with augmentation caches `views` augmented copies of every image (default 8,
drawn with a fixed seed so the cache is reproducible); `CachedFeatures.view` picks one
view per image for each epoch.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import warnings
import weakref
from dataclasses import dataclass
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medkit import distributed
from medkit.atomic import atomic_torch_save
from medkit.data import ImageDataset, Split

FORMAT = 1  # bump when the file layout or the meaning of a key changes


@dataclass(frozen=True)
class ImageEncoder:
    """What produces a feature: the function, the module whose state determines its output,
    a name for the kind of output (shared by everything that computes the same thing) and
    the transforms."""

    encode: Callable[[torch.Tensor], torch.Tensor]
    module: nn.Module
    kind: str
    eval_transform: Callable
    train_transform: Callable | None = None


def adapter_encoder(adapter) -> ImageEncoder:
    """Normalised CLIP image features of a backbone adapter (what zero-shot and every
    frozen-tower prompt method read: one cache entry serves them all)."""
    return ImageEncoder(lambda x: adapter.encode_image(x, normalize=True).float(), adapter.model.visual,
                        "clip_image_normalized", adapter.preprocess, adapter.preprocess_train)


def adapter_token_encoder(adapter) -> ImageEncoder:
    """The pooled feature and the local tokens of a backbone adapter, projected into the
    joint space (`encode_image_tokens`), flattened to `[N, (1 + T) · E]` so that a cache
    entry stays a matrix (views stack as `[V, N, …]`); methods reshape with
    `tokens_view(features, embed_dim)`. DualCoOp and PsPG share one entry."""
    return ImageEncoder(lambda x: adapter.encode_image_tokens(x).float().flatten(1), adapter.model.visual,
                        "clip_image_tokens", adapter.preprocess, adapter.preprocess_train)


def tokens_view(features: torch.Tensor, embed_dim: int) -> torch.Tensor:
    """`[B, (1 + T) · E]` cached token features as `[B, 1 + T, E]`."""
    return features.reshape(features.shape[0], -1, embed_dim)


def as_encoder(source) -> ImageEncoder:
    """An `ImageEncoder` from a method (`image_encoder()`), an adapter, or itself."""
    if isinstance(source, ImageEncoder):
        return source
    if hasattr(source, "image_encoder"):
        return source.image_encoder()
    if hasattr(source, "encode_image") and hasattr(source, "preprocess"):
        return adapter_encoder(source)
    raise TypeError(f"{type(source).__name__} has no frozen image encoder to cache")


@dataclass
class CachedFeatures:
    """Image features of a split: `[N, E]` (evaluation transform) or `[V, N, E]` (V augmented views)."""

    features: torch.Tensor
    labels: torch.Tensor
    key: str = ""

    @property
    def n_views(self) -> int:
        return 0 if self.features.dim() == 2 else int(self.features.shape[0])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, indices, labels: torch.Tensor | None = None) -> "CachedFeatures":
        """The rows `indices` (every view of them), relabelled with `labels` if given: a
        K-shot or base/novel subset reads the full split's cache instead of re-encoding."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        feats = self.features[idx] if self.n_views == 0 else self.features[:, idx]
        new_labels = self.labels[idx] if labels is None else torch.as_tensor(labels, dtype=torch.long)
        if len(new_labels) != len(idx):
            raise ValueError(f"{len(new_labels)} labels for {len(idx)} rows")
        return CachedFeatures(feats, new_labels, f"{self.key}[{len(idx)} rows]" if self.key else "")

    def view(self, epoch: int = 0, seed: int = 0) -> torch.Tensor:
        """`[N, E]`: the features themselves, or one augmented view per image drawn for this
        (seed, epoch) — another epoch sees other augmentations, a rerun the same ones."""
        if self.n_views == 0:
            return self.features
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        pick = torch.randint(self.n_views, (len(self),), generator=gen)
        return self.features[pick, torch.arange(len(self))]


# --------------------------------------------------------------------------- fingerprints

_module_digests: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()
_file_digests: dict[tuple[str, int, int], str] = {}


def module_digest(module: nn.Module) -> str:
    """Hash of every parameter and buffer (BatchNorm statistics change features too).

    Memoised on the tensors' storage and version counters: any in-place change (an
    optimizer step, `load_state_dict`) bumps a version and forces a rehash."""
    state = module.state_dict(keep_vars=True)
    signature = tuple((k, v.data_ptr(), v._version) for k, v in state.items())
    memo = _module_digests.get(module)
    if memo is not None and memo[0] == signature:
        return memo[1]
    h = hashlib.blake2b(digest_size=16)
    for name, t in state.items():
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(_tensor_bytes(t))
    digest = h.hexdigest()
    _module_digests[module] = (signature, digest)
    return digest


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit words
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def file_digest(path: Path) -> str:
    """Content hash of a file, memoised on (path, size, mtime) within the process."""
    st = path.stat()
    memo_key = (str(path), st.st_size, st.st_mtime_ns)
    if memo_key not in _file_digests:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _file_digests[memo_key] = h.hexdigest()
    return _file_digests[memo_key]


def split_digest(split: Split) -> str:
    """Hash of the images of a split (file contents, array rows) in order. Labels are not
    part of it: relabelled splits (groups, base/novel) share their images' features."""
    h = hashlib.blake2b(digest_size=16)
    if any(s.array_index is not None for s in split.samples):
        h.update(str(split.meta.get("npz_key", f"{split.name}_images")).encode())
    if split.meta.get("intensity", "range") != "range":  # other decoding, other pixels
        h.update(f"intensity {split.meta['intensity']}\n".encode())
    for s in split.samples:
        h.update(f"{file_digest(Path(s.path))}|{s.array_index}\n".encode())
    return h.hexdigest()


def describe_transform(transform: Callable | None) -> str:
    """A stable text of a transform: its repr without memory addresses, with the names of
    the functions inside `Lambda`s (whose repr says nothing)."""
    if transform is None:
        return "none"
    parts = [repr(transform)]
    for t in getattr(transform, "transforms", [transform]):
        fn = getattr(t, "lambd", None)
        if fn is not None:
            parts.append(f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}")
    return re.sub(r" at 0x[0-9a-fA-F]+", "", "\n".join(parts))


# --------------------------------------------------------------------------- the cache

class FeatureCache:
    """Frozen image features on disk under `root/features/` (memory only when `root` is None),
    with an in-process layer so a notebook loads each entry once."""

    def __init__(self, root: str | Path | None, batch_size: int = 64, view_seed: int = 0,
                 progress: bool = False) -> None:
        self.root = Path(root) / "features" if root is not None else None
        self.batch_size, self.view_seed, self.progress = batch_size, view_seed, progress
        self._memory: dict[str, CachedFeatures] = {}
        self.hits = self.builds = 0  # entries served from disk or memory / computed

    @classmethod
    def at(cls, root: str | Path) -> "FeatureCache":
        """The shared cache of `root` (one per folder and process, so its memory layer is shared)."""
        root = Path(root).resolve()
        if root not in _shared:
            _shared[root] = cls(root)
        return _shared[root]

    @classmethod
    def default(cls) -> "FeatureCache":
        """The project's cache: `$MEDKIT_CACHE`, else `data/cache` of the checkout."""
        from medkit.paths import project_path

        return cls.at(os.environ.get("MEDKIT_CACHE") or project_path("data") / "cache")

    def key(self, source, split: Split, views: int = 0) -> str:
        enc = as_encoder(source)
        tf = enc.train_transform if views else enc.eval_transform
        if views and tf is None:
            raise ValueError(f"{enc.kind}: augmented views need a training transform")
        dtype = next(iter(enc.module.parameters())).dtype
        blob = "\n".join([f"format {FORMAT}", enc.kind, str(dtype), module_digest(enc.module), describe_transform(tf),
                          split_digest(split), f"views {views} seed {self.view_seed if views else '-'}"])
        return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()

    def path(self, key: str) -> Path | None:
        return self.root / f"{key}.pt" if self.root is not None else None

    def get(self, source, split: Split, views: int = 0) -> CachedFeatures:
        """Features of `split` (`views` = 0: the evaluation transform; else that many
        augmented views), from memory, disk, or computed and stored; labels from `split`."""
        key = self.key(source, split, views)
        feats = self._memory.get(key)
        if feats is None:
            # several processes (torchrun): rank 0 builds and stores the entry, the others then load it
            with distributed.main_first() if self.root is not None else nullcontext():
                feats = self._load(key, len(split))
                if feats is None:
                    feats = self._build(as_encoder(source), split, views)
                    self._store(key, feats)
                    self.builds += 1
                else:
                    self.hits += 1
            self._memory[key] = feats
        else:
            self.hits += 1
        return CachedFeatures(feats, torch.as_tensor(split.targets, dtype=torch.long), key)

    def _build(self, enc: ImageEncoder, split: Split, views: int) -> torch.Tensor:
        if views == 0:
            return encode_split(enc, split, enc.eval_transform, self.batch_size, self.progress)
        return torch.stack([encode_split(enc, split, enc.train_transform, self.batch_size, self.progress,
                                         seed=self.view_seed * 7919 + v, desc=f"view {v + 1}/{views}")
                            for v in range(views)])

    def _store(self, key: str, features: torch.Tensor) -> None:
        path = self.path(key)
        if path is None:
            return
        atomic_torch_save({"format": FORMAT, "key": key, "features": features, "digest": _digest(features)}, path)

    def _load(self, key: str, n_images: int) -> torch.Tensor | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        problem = None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or blob.get("format") != FORMAT or blob.get("key") != key:
                problem = "written by another format or for another key"
            elif blob["features"].dim() not in (2, 3) or blob["features"].shape[-2] != n_images:
                problem = f"holds features of shape {tuple(blob['features'].shape)} for a split of {n_images} images"
            elif blob.get("digest") != _digest(blob["features"]):
                problem = "its tensor does not match its digest"
        except Exception as e:  # a truncated zip, bad pickle, … — all mean: rebuild
            problem = f"unreadable ({type(e).__name__}: {e})"
        if problem:
            warnings.warn(f"feature cache {path}: {problem}; rebuilding it", stacklevel=3)
            path.unlink(missing_ok=True)
            return None
        return blob["features"]


_shared: dict[Path, FeatureCache] = {}


def _digest(features: torch.Tensor) -> str:
    return hashlib.blake2b(_tensor_bytes(features), digest_size=16).hexdigest()


@torch.no_grad()
def encode_split(source, split: Split, transform: Callable | None = None, batch_size: int = 256,
                 progress: bool = False, seed: int | None = None, desc: str = "") -> torch.Tensor:
    """Features `[N, E]` of every image of `split` (no cache). Runs under a forked RNG, seeded
    when `seed` is given (random augmentations), so encoding never moves the caller's RNG."""
    enc = as_encoder(source)
    transform = transform or enc.eval_transform
    was = enc.module.training
    enc.module.eval()
    device = next(iter(enc.module.parameters())).device
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed)
            loader = DataLoader(ImageDataset(split, transform), batch_size=batch_size)
            out = [enc.encode(x.to(device)).float().cpu()
                   for x, _ in tqdm(loader, desc=f"encoding {split.name} {desc}".strip(), disable=not progress,
                                    mininterval=2)]
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        enc.module.train(was)
    return torch.cat(out) if out else torch.empty(0)
