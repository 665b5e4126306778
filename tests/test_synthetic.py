"""The embedded world: determinism, class cues, texts, dataset files and cue separability."""
from __future__ import annotations

import json

import numpy as np
import pytest

from medkit.data import load_dataset
from medkit.data.synthetic import (WorldSpec, build, description_ensemble, implants45_classes, ortho12_classes,
                                   render, spec_for)
from medkit.data.synthetic.world import image_rng


def _img(cues, domain="xray", seed=(0, 1, 2)):
    return np.asarray(render(cues, domain, 64, np.random.default_rng(list(seed))))


def test_rendering_is_deterministic_by_seed():
    cues = implants45_classes()[7].cues
    assert np.array_equal(_img(cues), _img(cues))
    assert not np.array_equal(_img(cues, seed=(0, 1, 2)), _img(cues, seed=(0, 1, 3)))


def test_domains_differ_in_appearance_not_geometry():
    cues = implants45_classes()[0].cues
    xray, natural = _img(cues, "xray"), _img(cues, "natural")
    assert xray.ndim == 2 and natural.shape == (64, 64, 3)
    # same seed → same pose: the device occupies the same pixels in both domains
    dev_x = xray > np.percentile(xray, 70)
    dev_n = np.abs(natural.astype(float) - np.median(natural.reshape(-1, 3), 0)).sum(-1) > 60
    overlap = (dev_x & dev_n).sum() / max(1, min(dev_x.sum(), dev_n.sum()))
    assert overlap > 0.6


def test_class_lists_are_unique_and_grouped():
    imp = implants45_classes()
    assert len(imp) == 45 and len({c.name for c in imp}) == 45
    assert len({c.group for c in imp}) == 5
    assert len({c.cues for c in imp}) == 45  # every class is a distinct cue combination
    for g in {c.group for c in imp}:  # groups are told apart by the outline alone
        assert len({c.cues.body for c in imp if c.group == g}) == 1
    ortho = ortho12_classes()
    assert len(ortho) == 12 and len({c.cues for c in ortho}) == 12 and all(c.group is None for c in ortho)
    assert implants45_classes(seed=0) == implants45_classes(seed=0)
    assert [c.name for c in implants45_classes(seed=1)] != [c.name for c in imp]


def test_class_names_are_opaque():
    words = {"round", "oval", "square", "lead", "stripe", "dot", "grid", "plate", "screw", "nail", "stem"}
    for c in implants45_classes() + ortho12_classes():
        assert not any(w in c.name.lower() for w in words), c.name


def test_description_ensembles_have_twenty_true_sentences_and_outliers():
    cues = implants45_classes()[10].cues
    sentences = description_ensemble(cues, seed=3)
    assert len(sentences) == 23 and len(set(sentences[:20])) == 20
    assert description_ensemble(cues, seed=3) == sentences
    pattern_words = {"striped": "stripe", "dotted": "dot", "grid": "grid"}
    # true sentences never name another lead count; outliers contradict the class's cues
    wrong_leads = {1: ("two", "three"), 2: ("one ", "single", "three"), 3: ("one ", "single", "two")}[cues.leads]
    assert not any(w in s for s in sentences[:20] for w in wrong_leads)
    assert any(w in s for s in sentences[20:22] for w in wrong_leads) or \
        all(pattern_words[cues.pattern] not in s for s in sentences[20:22])


def test_world_build_writes_dataset_files_once(tmp_path):
    spec = spec_for("synth_ortho12", "smoke")
    folder = build(spec, tmp_path, progress=False)
    manifest = (folder / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "path,label,classname,split"
    assert len(manifest) - 1 == 12 * (spec.n_train + spec.n_val + spec.n_test)
    split = json.loads((folder / "split_synth_ortho12.json").read_text())
    assert set(split) == {"train", "val", "test"} and len(split["test"]) == 12 * spec.n_test
    world = json.loads((folder / "world.json").read_text())
    assert world["version"] >= 1 and len(world["classes"]) == 12
    stamp = (folder / "world.json").stat().st_mtime_ns
    assert build(spec, tmp_path, progress=False) == folder
    assert (folder / "world.json").stat().st_mtime_ns == stamp  # cached, not regenerated


def test_interrupted_build_is_rebuilt(tmp_path):
    spec = spec_for("synth_ortho12", "smoke")
    folder = build(spec, tmp_path, progress=False)
    (folder / "world.json").unlink()  # as if the build died before finishing
    (folder / "images" / "00" / "train_0000.png").write_bytes(b"garbage")
    build(spec, tmp_path, progress=False)
    assert (folder / "world.json").is_file()
    from medkit.data import load_image

    load_image(folder / "images" / "00" / "train_0000.png")


def test_load_dataset_reads_the_files_like_a_real_dataset(tmp_path):
    ds = load_dataset("synth_implants45", "natural", "smoke", tmp_path, progress=False, imbalance=3.0)
    assert ds.labels.n_classes == 45 and ds.labels.has_groups and len(ds.labels.groups) == 5
    counts = np.bincount(ds["train"].targets, minlength=45)
    assert counts[0] == 6 and counts[-1] == 2  # imbalance 3: the rarest class has a third
    assert set(ds.descriptions) == set(ds.labels.classnames)
    assert ds["test"].samples[0].group == ds.labels.group_of[ds["test"].samples[0].classname]


def test_world_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown synthetic dataset"):
        WorldSpec("synth_nothing")
    with pytest.raises(ValueError, match="unknown domain"):
        WorldSpec("synth_ortho12", domain="ct")
    with pytest.raises(ValueError, match="imbalance"):
        WorldSpec("synth_ortho12", imbalance=0.5)


def test_cues_are_separable_in_the_xray_domain():
    """A linear classifier on raw pixels finds the coarse cue (group outline) and a fine one
    (lead count) well above chance: the world is learnable, not noise."""
    from sklearn.linear_model import LogisticRegression

    spec = WorldSpec("synth_implants45")
    classes = implants45_classes()
    X, group, leads = [], [], []
    for label, c in enumerate(classes):
        for i in range(12):
            img = np.asarray(render(c.cues, "xray", 32, image_rng(spec, label, "train", i)), np.float32) / 255
            X.append(np.abs(np.fft.fft2(img)).ravel()[:400])  # rotation-robust-ish spectrum features
            group.append(label // 9)
            leads.append(c.cues.leads)
    X = np.array(X)
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    idx = np.arange(len(X))
    train, test = idx % 4 != 0, idx % 4 == 0
    for y, chance in ((np.array(group), 0.2), (np.array(leads), 1 / 3)):
        clf = LogisticRegression(max_iter=2000, C=0.1).fit(X[train], y[train])
        assert clf.score(X[test], y[test]) > 1.5 * chance
