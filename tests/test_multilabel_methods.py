"""Multi-label methods on both tiny tower families: local tokens, the pos/neg pair, batch
(in)dependence of PsPG's conditioning, where gradients go, and the runner's multi-label rows."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medkit.data import Dataset, MultiLabelSpace, Sample, Split
from medkit.experiment import Experiment, Setting
from medkit.features import FeatureCache, adapter_token_encoder
from medkit.methods import get_spec
from medkit.tasks import MULTI_LABEL

FINDINGS = ["Cardiomegaly", "Pleural Effusion", "Edema"]
from conftest import FAMILIES  # noqa: E402  (all three tower families, SigLIP included)


def images(adapter, n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    tf = adapter.preprocess
    return torch.stack([tf(Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))) for _ in range(n)])


def tokens(adapter, n: int = 6, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return adapter_token_encoder(adapter).encode(images(adapter, n, seed))


def pspg(adapter, **options):
    torch.manual_seed(0)
    return get_spec("pspg").cls(adapter, FINDINGS, n_tokens=2, hidden=16, heads=2, dropout=0.0, **options)


@pytest.mark.parametrize("family", FAMILIES)
def test_local_tokens_start_with_the_pooled_feature_and_keep_working_with_vision_prompts(adapters, family, one_thread):
    adapter = adapters[family]
    x = images(adapter, 3)
    with torch.no_grad():
        t = adapter.encode_image_tokens(x)
        torch.testing.assert_close(t[:, 0], adapter.encode_image(x), rtol=0, atol=1e-5)
        assert t.shape[-1] == adapter.embed_dim and t.shape[1] > 1
        prompts = [torch.randn(2, adapter.vision_width)]
        prompted = adapter.encode_image_tokens(x, prompts=prompts)
        assert prompted.shape == t.shape  # prompt tokens are dropped before the projection
        torch.testing.assert_close(prompted[:, 0], adapter.encode_image(x, prompts=prompts), rtol=0, atol=1e-5)
        assert not torch.allclose(prompted, t)


@pytest.mark.parametrize("family", FAMILIES)
def test_fixed_prompts_give_the_softmax_over_the_positive_negative_pair(adapters, family, one_thread):
    adapter = adapters[family]
    method = get_spec("zeroshot_ml").cls(adapter, FINDINGS)
    feats = tokens(adapter, 4)
    with torch.no_grad():
        img = F.normalize(adapter.encode_image(images(adapter, 4)), dim=-1)
        pos = F.normalize(adapter.encode_text([f"Findings suggesting {c}." for c in FINDINGS]), dim=-1)
        neg = F.normalize(adapter.encode_text([f"No evidence of {c}." for c in FINDINGS]), dim=-1)
        scale = adapter.logit_scale
        pair = torch.stack([scale * img @ pos.T, scale * img @ neg.T], dim=-1).softmax(-1)[..., 0]
        torch.testing.assert_close(torch.sigmoid(method(feats)), pair, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_pspg_per_image_conditioning_is_batch_independent_and_the_reference_is_not(adapters, family, one_thread):
    adapter = adapters[family]
    feats = tokens(adapter, 6)
    per_image, per_batch = pspg(adapter).eval(), pspg(adapter, conditioning="batch").eval()
    with torch.no_grad():
        together = per_image(feats)
        alone = torch.cat([per_image(feats[i:i + 1]) for i in range(len(feats))])
        torch.testing.assert_close(alone, together, rtol=0, atol=1e-5)  # float rounding of batched matmuls only
        ref_together = per_batch(feats)
        ref_alone = torch.cat([per_batch(feats[i:i + 1]) for i in range(len(feats))])
        moved, rounding = (ref_alone - ref_together).abs().max(), (alone - together).abs().max()
        assert moved > 10 * max(float(rounding), 1e-6)  # a prediction moves with its batch-mates


@pytest.mark.parametrize("loss", ["released", "asl+spcl"])
@pytest.mark.parametrize("family", FAMILIES)
def test_pspg_gradients_reach_only_the_decoders_fusion_and_temperature(adapters, family, loss, one_thread):
    adapter = adapters[family]
    method = pspg(adapter, loss=loss, pair_images=4).train()
    feats = tokens(adapter, 6)
    y = torch.tensor([[1, 0, 1], [0, 1, -1], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]])
    terms = method.loss_terms(method(feats), y)
    assert set(terms) == ({"asl", "ranking"} if loss == "released" else {"asl", "spcl"})
    method.zero_grad(set_to_none=True)
    method.backward_step(terms)
    grads = {n: p.grad for n, p in method.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith(("decoders.", "fusion.", "logit_scale")) for n in grads), sorted(grads)[:5]
    for part in ("decoders.0.", "decoders.1.", "fusion.", "logit_scale"):
        assert any(n.startswith(part) and float(g.abs().sum()) > 0 for n, g in grads.items()), part
    assert not any(p.requires_grad for p in method.adapter.parameters())


@pytest.mark.parametrize("options", [{"decoder": "transformer"}, {"decoder": "nar"}, {"prompts": "positive"},
                                     {"prompts": "one_decoder"}, {"features": "g"}, {"features": "gl"},
                                     {"prefix": True}, {"token_reduce": "sum"}])
def test_pspg_ablation_switches_build_and_score(adapters, options, one_thread):
    adapter = adapters["hf"]
    method = pspg(adapter, **options).eval()
    with torch.no_grad():
        scores = method(tokens(adapter, 3))
    assert scores.shape == (3, len(FINDINGS)) and torch.isfinite(scores).all()
    if options.get("prompts") == "positive":
        assert len(method.decoders) == 1 and hasattr(method, "threshold")
    if options.get("features") in ("g", "gl"):
        assert method.fusion is None


def test_pspg_rejects_an_unknown_switch_naming_the_choices(adapters):
    with pytest.raises(ValueError, match="conditioning='batches'.*image"):
        pspg(adapters["hf"], conditioning="batches")


@pytest.mark.parametrize("family", FAMILIES)
def test_dualcoop_aggregates_regions_by_the_positive_softmax_with_its_scales(adapters, family, one_thread):
    adapter = adapters[family]
    torch.manual_seed(0)
    method = get_spec("dualcoop").cls(adapter, FINDINGS, n_ctx=2, region_scale=7.0, output_scale=3.0).eval()
    feats = tokens(adapter, 4)
    with torch.no_grad():
        pos, neg = method.text_features()
        local = F.normalize(feats.reshape(4, -1, adapter.embed_dim)[:, 1:], dim=-1)
        p = 7.0 * local @ F.normalize(pos, dim=-1).T
        n = 7.0 * local @ F.normalize(neg, dim=-1).T
        w = torch.exp(p) / torch.exp(p).sum(1, keepdim=True)
        expected = 3.0 * (w * p).sum(1) - 3.0 * (w * n).sum(1)
        torch.testing.assert_close(method(feats), expected, rtol=1e-5, atol=1e-5)
    grads = {n for n, p in method.named_parameters() if p.requires_grad}
    assert grads == {"positive.ctx", "negative.ctx"}


# --------------------------------------------------------------------------- the runner's multi-label rows

def _dataset(root, name: str, findings: list[str], per_split: dict[str, int], seed: int) -> Dataset:
    """Images whose brightness in a quadrant says whether finding k is present."""
    rng = np.random.default_rng(seed)
    space = MultiLabelSpace(tuple(findings))
    splits = {}
    for split, n in per_split.items():
        samples = []
        for i in range(n):
            y = rng.integers(0, 2, len(findings))
            px = rng.normal(40, 10, (32, 32)).clip(0, 255)
            for k, on in enumerate(y):
                if on:
                    px[(k // 2) * 16:(k // 2) * 16 + 16, (k % 2) * 16:(k % 2) * 16 + 16] += 150
            path = root / f"{name}_{split}_{i}.png"
            Image.fromarray(px.clip(0, 255).astype(np.uint8)).convert("RGB").save(path)
            targets = tuple(int(v) for v in y)
            if split == "train" and i % 5 == 0:
                targets = (-1, *targets[1:])  # uncertain, masked
            samples.append(Sample(path, -1, "|".join(f for f, v in zip(findings, y) if v), targets=targets))
        splits[split] = Split(split, samples, space)
    return Dataset(name, splits, space, root)


@pytest.fixture(scope="module")
def chest_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml_runner")
    train = _dataset(root, "train_ds", ["Cardiomegaly", "Pleural Effusion", "Edema"], {"train": 24, "val": 8, "test": 12}, 0)
    other = _dataset(root, "eval_ds", ["Effusion", "Cardiomegaly", "Emphysema", "Hernia"], {"val": 8, "test": 12}, 1)
    return train, other


def test_the_runner_gives_seen_unseen_and_all_rows_per_evaluation_dataset(adapters, chest_pair, tmp_path, one_thread):
    from medkit.runs import read_results, start_run

    train, other = chest_pair
    run = start_run("09_test", "smoke", {}, tmp_path / "outputs")
    exp = Experiment(run, train, adapters["hf"], "smoke", FeatureCache(tmp_path / "cache"), task=MULTI_LABEL, views=0,
                     log=lambda s: None)
    settings = [Setting("zeroshot_ml", "fixed"), Setting("linear_probe_ml", "probe"),
                Setting("dualcoop", "dualcoop", {"n_ctx": 2})]
    outcomes = exp.multilabel(settings[:1], [None], [other]) + exp.multilabel(settings[1:], [1], [other])
    rows = pd.DataFrame([r for o in outcomes for r in o.rows])
    fixed = rows[rows.variant == "fixed"]
    assert set(zip(fixed.dataset, fixed.classes)) == {("train_ds", "all"), ("eval_ds", "all"), ("eval_ds", "seen"),
                                                      ("eval_ds", "unseen")}
    assert (fixed.n_labels[(fixed.dataset == "eval_ds")].tolist() == [4, 2, 2])  # Effusion and Cardiomegaly are seen
    probe = rows[rows.variant == "probe"]
    assert set(zip(probe.dataset, probe.classes)) == {("train_ds", "all"), ("eval_ds", "seen")}  # no score for unseen ones
    assert (rows.train_dataset[rows.dataset == "eval_ds"] == "train_ds").all()
    assert rows.f1_macro.notna().all() and rows.macro_auc.between(0, 1).all()  # thresholds from each validation split
    scores, targets = outcomes[1].output("eval_ds")
    assert torch.isnan(scores[:, 2:]).all() and torch.isfinite(scores[:, :2]).all()
    # the probe's seen columns are its training findings' scores, matched by synonym (Effusion = Pleural Effusion)
    with torch.no_grad():
        own = outcomes[1].method(exp.cache.get(outcomes[1].method, other.splits["test"]).features)
    torch.testing.assert_close(scores[:, 0], own[:, 1])
    torch.testing.assert_close(scores[:, 1], own[:, 0])
    table = read_results(tmp_path / "outputs", complete_only=False, say=False)
    assert {"train_dataset", "macro_auc", "map_pr_trapezoid", "acc"} <= set(table.columns)
    assert len(table) == len(rows)


def test_a_contrastive_backbone_is_kept_and_loaded_by_name(adapters, chest_pair, tmp_path, one_thread):
    from dataclasses import replace

    from medkit.backbones import load_backbone

    train, _ = chest_pair
    split = train.splits["train"]
    pairs = Split("train", [replace(s, text=f"report: {s.classname or 'normal'}") for s in split.samples], split.labels)
    adapter = adapters["native"]
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    method = get_spec("clip_finetune_contrastive").cls(adapter, FINDINGS, pairs=pairs, epochs=2, batch_size=8, lr=1e-3,
                                                       seed=1, save_to="tuned-{seed}", data_root=str(tmp_path))
    method.prepare(None)
    assert all(torch.equal(v, adapter.model.state_dict()[k]) for k, v in before.items())  # the shared backbone is untouched
    loaded = load_backbone("tuned-1", data_root=tmp_path)
    x = images(adapter, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), method.adapter.encode_image(x), rtol=0, atol=1e-6)
        assert not torch.allclose(adapter.encode_image(x), method.adapter.encode_image(x))
    assert loaded.name == "tuned-1"
