"""The on-disk feature cache: served only when everything that shapes the features is the
same, rebuilt when damaged, reproducible augmented views, and used by training."""
from __future__ import annotations

import copy
import dataclasses
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from medkit.data import Split
from medkit.data.readers import read_imagefolder
from medkit.features import FeatureCache, encode_split
from medkit.methods import CoOp
from medkit.train import TrainConfig, fit

NAMES = ["oval", "plate", "round"]


@pytest.fixture()
def split(tmp_path) -> Split:
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for k, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return read_imagefolder(root)


@pytest.fixture()
def native(adapters):
    return copy.deepcopy(adapters["native"])  # tests below change weights in place


def test_second_get_is_served_and_equals_a_fresh_encoding(tmp_path, native, split):
    cache = FeatureCache(tmp_path / "c")
    a = cache.get(native, split)
    assert (cache.builds, cache.hits) == (1, 0)
    torch.testing.assert_close(a.features, encode_split(native, split), rtol=0, atol=0)
    assert a.labels.tolist() == split.targets
    assert len(list((tmp_path / "c" / "features").glob("*.pt"))) == 1
    other = FeatureCache(tmp_path / "c")  # a new process: from disk, not memory
    b = other.get(native, split)
    assert (other.builds, other.hits) == (0, 1)
    torch.testing.assert_close(b.features, a.features, rtol=0, atol=0)


def test_stale_entries_are_never_served(tmp_path, native, split):
    cache = FeatureCache(tmp_path / "c")
    key = cache.key(native, split)
    # relabelling (groups, base/novel) keeps the images: same features, same entry
    relabelled = Split(split.name, [dataclasses.replace(s, label=0) for s in split.samples], split.labels)
    assert cache.key(native, relabelled) == key
    # the weights change in place (a retrained or fine-tuned tower)
    with torch.no_grad():
        next(native.model.visual.parameters()).add_(0.01)
    assert cache.key(native, split) != key
    key = cache.key(native, split)
    # one image's pixels change, its path does not
    path = split.samples[4].path
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path)
    assert cache.key(native, split) != key
    # another preprocessing, or augmented views instead of the evaluation transform
    key = cache.key(native, split)
    assert cache.key(native, split, views=2) != key
    from torchvision import transforms as T

    other_tf = copy.copy(native)
    other_tf.preprocess = T.Compose([T.Resize((32, 32)), T.ToTensor()])
    assert cache.key(other_tf, split) != key


@pytest.mark.parametrize("damage", ["truncate", "garbage", "tamper"])
def test_damaged_cache_file_is_rebuilt_not_trusted(tmp_path, native, split, damage):
    cache = FeatureCache(tmp_path / "c")
    good = cache.get(native, split).features.clone()
    path = cache.path(cache.key(native, split))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file")
    else:  # well-formed file whose tensor no longer matches its digest
        blob = torch.load(path, weights_only=True)
        blob["features"][0, 0] += 1.0
        torch.save(blob, path)
    fresh = FeatureCache(tmp_path / "c")
    with pytest.warns(UserWarning, match="rebuilding"):
        again = fresh.get(native, split)
    assert fresh.builds == 1
    torch.testing.assert_close(again.features, good, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FeatureCache(tmp_path / "c").get(native, split)  # the rebuilt file is sound


def test_augmented_views_are_reproducible_and_drawn_per_epoch(tmp_path, native, split):
    a = FeatureCache(tmp_path / "a").get(native, split, views=4)
    b = FeatureCache(tmp_path / "b").get(native, split, views=4)
    assert a.features.shape == (4, len(split), native.embed_dim) and a.n_views == 4
    torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)  # same view seed → same cache
    assert not torch.allclose(a.features[0], a.features[1])  # the views are augmented differently
    v0, v0_again, v1 = a.view(0, seed=1), a.view(0, seed=1), a.view(1, seed=1)
    torch.testing.assert_close(v0, v0_again, rtol=0, atol=0)
    assert not torch.equal(v0, v1)
    for row in range(len(split)):  # every row is one of that image's views
        assert any(torch.equal(v1[row], a.features[v, row]) for v in range(4))


def test_encoding_never_moves_the_global_rng(tmp_path, native, split):
    torch.manual_seed(0)
    FeatureCache(tmp_path / "c").get(native, split, views=2)  # builds (random augmentations)
    after_build = torch.rand(3)
    torch.manual_seed(0)
    FeatureCache(tmp_path / "c").get(native, split, views=2)  # served from disk
    torch.testing.assert_close(torch.rand(3), after_build, rtol=0, atol=0)


def test_fit_reads_augmented_views_from_the_cache_and_is_reproducible(tmp_path, native, split):
    cfg = TrainConfig(epochs=2, batch_size=4, optimizer="adamw", lr=1e-2, warmup_epochs=0, feature_views=3)
    cache = FeatureCache(tmp_path / "c")
    torch.manual_seed(0)
    h1 = fit(CoOp(native, NAMES, n_ctx=2), split, split, cfg, progress=False, cache=cache)
    assert cache.builds == 2  # training views + the evaluation features of val, once
    torch.manual_seed(0)
    h2 = fit(CoOp(native, NAMES, n_ctx=2), split, split, cfg, progress=False, cache=cache)
    assert cache.builds == 2
    cols = ["train_loss", "train_acc", "val_loss", "val_acc"]
    np.testing.assert_array_equal(h1[cols].to_numpy(), h2[cols].to_numpy())
    views = cache.get(native, split, views=3)
    assert views.n_views == 3
