"""Segmentation samples as tensors at the model's resolution, the frozen tower's activations
cached once per image, and the datasets a notebook names.

Images are resized to the tower's square input without cropping (as CLIPSeg's processor does;
a crop would cut the mask differently from the image) and normalised with the tower's own
mean and std; masks are resized to the same grid (nearest), and metrics are taken there, as
TuneVLSeg evaluates at 352 px.

The activation cache is `medkit.features.FeatureCache` with an encoder whose output is the
pooled image feature and the chosen blocks' activations, flattened: the same content hashing
(tower weights, transform, image bytes) and integrity check as every other cached feature.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from medkit.data import LabelSpace, Sample, Split
from medkit.data.images import load_image
from medkit.data.segmentation import PROMPT_KEYS, SegSample, read_mask, read_medvlsm
from medkit.features import FeatureCache, ImageEncoder

from .model import SegmentationModel


def seg_transform(adapter) -> T.Compose:
    """Resize to the tower's square input (no crop), to tensor, the tower's normalisation."""
    norm = next((t for t in getattr(adapter.preprocess, "transforms", []) if isinstance(t, T.Normalize)), None)
    if norm is None:
        raise ValueError(f"{adapter.name}: its preprocessing has no Normalize to take the mean and std from")
    size = adapter.image_size
    return T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(norm.mean, norm.std)])


@dataclass
class SegData:
    """One split at the model's resolution: images `[N, 3, S, S]`, masks `[N, S, S]` (0/1),
    each sample's prompts (p0–p9, a tuple where there are phrasings to draw from)."""

    name: str
    samples: list[SegSample]
    images: torch.Tensor
    masks: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def prompt_texts(self, key: str) -> list[str]:
        """Every phrasing of prompt `key` in this split (what a strategy must be able to encode)."""
        out = []
        for s in self.samples:
            v = s.prompts.get(key)
            if v is None:
                raise KeyError(f"{s.image.name}: no prompt {key!r}; it has {sorted(s.prompts)}")
            out += [v] if isinstance(v, str) else list(v)
        return out

    def prompts_for(self, key: str, rng: random.Random | None = None) -> list[str]:
        """Each sample's prompt `key` (one phrasing drawn with `rng`; the first without)."""
        return [s.prompt(key, rng) for s in self.samples]

    def image_split(self) -> Split:
        """The images as a label-free `Split` (what the feature cache keys on)."""
        space = LabelSpace(("structure",))
        return Split(self.name, [Sample(s.image, 0, "structure") for s in self.samples], space)


def to_tensors(name: str, samples: Sequence[SegSample], model: SegmentationModel) -> SegData:
    tf = seg_transform(model.adapter)
    size = model.adapter.image_size
    images = torch.stack([tf(load_image(s.image)) for s in samples]) if samples else torch.empty(0, 3, size, size)
    masks = [np.asarray(Image.fromarray(read_mask(s.mask).astype(np.uint8) * 255).resize((size, size), Image.NEAREST))
             > 127 for s in samples]
    masks = torch.as_tensor(np.stack(masks)).float() if masks else torch.empty(0, size, size)
    return SegData(name, list(samples), images, masks)


def activation_encoder(model: SegmentationModel) -> ImageEncoder:
    """The pooled image feature `[E]` and the decoder's activations `[L, 1 + T, W]`, flattened
    into one row per image (a cache entry stays a matrix)."""
    layers = list(model.extract_layers)

    def encode(x: torch.Tensor) -> torch.Tensor:
        acts, pooled = model.adapter.encode_image_layers(x, layers, with_pooled=True)
        return torch.cat([pooled.float(), torch.stack(acts, 1).float().flatten(1)], 1)

    return ImageEncoder(encode, model.adapter.model.visual, f"seg_layers_{'_'.join(map(str, layers))}_pooled",
                        seg_transform(model.adapter))


def split_activations(rows: torch.Tensor, model: SegmentationModel) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Cached rows back to (activations per layer `[N, 1 + T, W]`, pooled `[N, E]`)."""
    e, n_layers, w = model.adapter.embed_dim, len(model.extract_layers), model.adapter.vision_width
    pooled, rest = rows[:, :e], rows[:, e:].reshape(rows.shape[0], n_layers, -1, w)
    return list(rest.unbind(1)), pooled


def cached_activations(model: SegmentationModel, data: SegData, cache: FeatureCache
                       ) -> tuple[list[torch.Tensor], torch.Tensor]:
    return split_activations(cache.get(activation_encoder(model), data.image_split()).features, model)


# --------------------------------------------------------------------------- datasets by name
def load_seg_dataset(source: str | Path, model: SegmentationModel, profile: str = "tiny",
                     data_root: str | Path = "data", prompt_keys: Sequence[str] = (), progress: bool = False
                     ) -> dict[str, SegData]:
    """A synthetic name (`synth_polyp`, `synth_skin`, `synth_breast_us`), a MedVLSM folder
    (`<root>/anns/{train,val,test}.json`, images in `images/`, masks in `masks/`) or a CSV of
    `image`, `mask`, `prompt` and `split` (train / val / test) as tensors per split."""
    from medkit.data.segmentation import read_seg_csv
    from medkit.data.synthetic.seg_world import SEG_DATASETS, build_seg, seg_spec_for

    source = str(source)
    path = Path(source).expanduser()
    if source in SEG_DATASETS:
        root, name = build_seg(seg_spec_for(source, profile), data_root, progress=progress), source
        read = lambda split: read_medvlsm(root, split, prompt_keys)  # noqa: E731
    elif path.suffix.lower() == ".csv" and path.is_file():
        root, name = path.parent, path.stem
        read = lambda split: read_seg_csv(path, split)  # noqa: E731
    elif (path / "anns").is_dir():
        root, name = path, path.name
        read = lambda split: read_medvlsm(root, split, prompt_keys)  # noqa: E731
    else:
        raise FileNotFoundError(f"{source}: not a synthetic segmentation dataset ({sorted(SEG_DATASETS)}), a MedVLSM "
                                "folder (anns/train.json, anns/val.json, anns/test.json) nor a CSV of image, mask, "
                                "prompt and split")
    out = {}
    for split in ("train", "val", "test"):
        samples = read(split)
        if not samples:
            raise ValueError(f"{source}: no {split} samples (segmentation needs train, val and test)")
        out[split] = to_tensors(f"{name}:{split}", samples, model)
        out[split].meta.update(dataset=name, root=str(root))
    return out


def available_keys(data: SegData) -> list[str]:
    """The prompt keys every sample of a split has, in MedVLSM's order."""
    keys = [k for k in PROMPT_KEYS if all(k in s.prompts for s in data.samples)]
    return keys
