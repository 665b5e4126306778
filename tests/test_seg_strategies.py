"""Segmentation strategies: shapes on two tower families, gradients reaching only what each
strategy trains, the invariants of an untrained context, the cached path equal to the uncached
one, the learnable upsampler, the training loop's determinism, the runner's rows and resume,
the embedded world's files, the decoder pretraining and the benchmark row."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_clipseg
from medkit.features import FeatureCache
from medkit.seg.model import LearnableUpsampler, SegmentationModel, build_decoder, load_clipseg
from medkit.seg.strategies import SEG_STRATEGIES, build_strategy

PROMPTS = ["polyp", "round polyp", ""]
TRAINS = {  # what each strategy may train (name prefixes); everything else stays frozen
    "seg_zeroshot": (), "seg_decoder": ("model.decoder.",), "seg_finetune": ("model.",),
    "seg_coop": ("context.ctx", "deep_text."), "seg_cocoop": ("context.ctx", "meta_net."), "seg_vpt_deep": ("vision.",),
    "seg_maple": ("context.ctx", "deep_text.", "couplings."), "seg_shared_attn": ("shared", "mixer."),
    "seg_shared_separate": ("shared", "to_text.", "to_vision."),
}
OPTIONS = {"seg_shared_attn": {"heads": 2, "ff": 32}, "seg_coop": {"depth": 2}}


@pytest.fixture(scope="module")
def clipseg(model_configs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clipseg") / "tiny-clipseg"
    stock = write_clipseg(folder, model_configs["hf_dual"])
    return folder, stock


@pytest.fixture(scope="module")
def models(clipseg, adapters):
    torch.manual_seed(0)
    native = adapters["native"]
    return {"clipseg": load_clipseg(clipseg[0]),
            "native": SegmentationModel(native, build_decoder(native, [0, 1], 8, 2, 16), [0, 1])}


def _images(model, n=3):
    s = model.adapter.image_size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(5))


def test_every_strategy_is_registered_with_its_kind():
    assert set(SEG_STRATEGIES) == set(TRAINS)
    assert {s.kind for s in SEG_STRATEGIES.values()} == {"zeroshot", "decoder", "finetune", "text", "visual",
                                                          "multimodal"}
    with pytest.raises(ValueError, match="unknown options"):
        SEG_STRATEGIES["seg_coop"].check({"n_context": 4})


@pytest.mark.parametrize("family", ["clipseg", "native"])
@pytest.mark.parametrize("name", sorted(TRAINS))
def test_shapes_and_gradients_reach_only_what_the_strategy_trains(models, family, name, one_thread):
    model = models[family]
    torch.manual_seed(1)
    s = build_strategy(name, model, PROMPTS, **OPTIONS.get(name, {}))
    x, index = _images(model), torch.tensor([0, 1, 2])
    logits = s(index, images=x)
    side = model.adapter.image_size
    assert logits.shape == (3, side, side)
    trainable = {n for n, p in s.named_parameters() if p.requires_grad}
    assert all(n.startswith(TRAINS[name]) for n in trainable), sorted(trainable)[:5]
    if not TRAINS[name]:
        assert not trainable
        return
    assert trainable
    logits.sigmoid().mean().backward()
    reached = {n for n, p in s.named_parameters() if p.grad is not None and float(p.grad.abs().sum()) > 0}
    assert reached and reached <= trainable
    assert not [n for n, p in model.named_parameters() if p.grad is not None]  # the shared model is untouched
    if s.trains_model:
        assert s.model is not model  # a strategy that trains the model trains its own copy


def test_an_untrained_context_from_a_phrase_equals_writing_the_phrase(models):
    """CoOp initialised from "a photo of a" gives the text features of "a photo of a {prompt}."."""
    model = models["clipseg"]
    s = build_strategy("seg_coop", model, PROMPTS)
    with torch.no_grad():
        ours = s.text_features(torch.arange(3), None)
        ref = model.adapter.encode_text([f"a photo of a {p}." for p in PROMPTS])
    torch.testing.assert_close(ours, ref.float(), rtol=0, atol=1e-5)


def test_zero_shot_strategy_equals_the_stock_clipseg_forward(clipseg, models):
    folder, stock = clipseg
    model = models["clipseg"]
    s = build_strategy("seg_zeroshot", model, PROMPTS)
    x = _images(model, 3)
    with torch.no_grad():
        ref = stock(input_ids=model.adapter.tokenize(PROMPTS), pixel_values=x).logits
        ours = s(torch.arange(3), images=x)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_maple_and_vpt_change_the_masks_only_through_their_prompts(models):
    """With its vision prompts at zero VPT still appends tokens, so masks move; MaPLe's vision
    prompts come from its text context: both differ from zero-shot, both are deterministic."""
    model = models["clipseg"]
    x, index = _images(model), torch.tensor([0, 1, 2])
    with torch.no_grad():
        zs = build_strategy("seg_zeroshot", model, PROMPTS)(index, images=x)
        torch.manual_seed(2)
        a = build_strategy("seg_vpt_deep", model, PROMPTS)(index, images=x)
        torch.manual_seed(2)
        b = build_strategy("seg_vpt_deep", model, PROMPTS)(index, images=x)
        torch.manual_seed(2)
        maple = build_strategy("seg_maple", model, PROMPTS)
        m = maple(index, images=x)
        no_vision = maple.model.decode(maple.model.activations(x), maple.text_features(index, None))
    torch.testing.assert_close(a, b)
    assert (a - zs).abs().max() > 1e-6 and (m - zs).abs().max() > 1e-6
    assert (m - no_vision).abs().max() > 1e-6  # its coupled vision prompts move the masks, beyond its text


@pytest.mark.parametrize("name", ["seg_zeroshot", "seg_decoder", "seg_coop", "seg_cocoop"])
def test_cached_activations_equal_the_uncached_path(models, name, tmp_path, seg_folder):
    from medkit.seg.data import cached_activations, load_seg_dataset

    model = models["clipseg"]
    data = load_seg_dataset(seg_folder, model)["train"]
    cache = FeatureCache(tmp_path / "cache")
    torch.manual_seed(3)
    s = build_strategy(name, model, data.prompt_texts("p1"))
    assert s.cached
    index = torch.zeros(len(data), dtype=torch.long)
    acts, pooled = cached_activations(model, data, cache)
    assert cache.builds == 1 and list(cache.root.glob("*.pt"))  # on disk, content-hashed
    again = cached_activations(model, data, FeatureCache(tmp_path / "cache"))  # a new process reads the file
    torch.testing.assert_close(again[0][0], acts[0])
    with torch.no_grad():
        cached = s(index, activations=acts, pooled=pooled)
        fresh = s(index, images=data.images)
    torch.testing.assert_close(cached, fresh, rtol=0, atol=1e-5)
    vpt = build_strategy("seg_vpt_deep", model, ["polyp"])
    with pytest.raises(ValueError, match="needs images"):
        vpt(index, activations=acts, pooled=pooled)


def test_learnable_upsampler_starts_halfway_and_trains(models):
    model = models["clipseg"]
    torch.manual_seed(4)
    s = build_strategy("seg_coop", model, PROMPTS, upsampler=True)
    plain = build_strategy("seg_coop", model, PROMPTS)
    plain.load_state_dict(s.state_dict(), strict=False)
    assert s.upsampler.ratio.item() == 0.5
    x, index = _images(model), torch.tensor([0, 1, 2])
    logits = s(index, images=x)
    logits.mean().backward()
    assert s.upsampler.ratio.grad is not None and s.upsampler.conv.weight.grad is not None
    with torch.no_grad():
        s.upsampler.ratio.fill_(1.0)  # all transposed convolution: the plain decoder
        torch.testing.assert_close(s(index, images=x), plain(index, images=x), rtol=0, atol=1e-5)
    assert isinstance(s.upsampler, LearnableUpsampler) and plain.upsampler is None
    with torch.no_grad():  # and the shared decoder carries no hook afterwards
        assert not model.decoder.transposed_convolution._forward_hooks


# --------------------------------------------------------------------------- data, loop and runner
@pytest.fixture(scope="module")
def seg_folder(tmp_path_factory):
    """A small MedVLSM-layout dataset drawn by the embedded world (16 px per side is enough)."""
    from medkit.data.synthetic.seg_world import SegWorldSpec, build_seg

    return build_seg(SegWorldSpec("synth_skin", n_train=6, n_val=3, n_test=4, image_size=48),
                     tmp_path_factory.mktemp("segdata"), progress=False)


def test_the_embedded_world_is_medvlsm_and_mask_folders(seg_folder):
    from medkit.data.segmentation import PROMPT_KEYS, read_mask, read_mask_folders, read_medvlsm
    from medkit.data.synthetic.seg_world import SegWorldSpec, build_seg

    samples = read_medvlsm(seg_folder, "train", prompt_keys=PROMPT_KEYS)
    assert len(samples) == 6 and samples[0].category == "skin lesion"
    ann = json.loads((seg_folder / "anns" / "train.json").read_text())
    assert {"img_name", "mask_name", "bbox", "cat", "sentences", "prompts"} <= set(ann[0])
    for rec, s in zip(ann, samples):
        a = rec["attributes"]
        assert s.prompt("p0") == "" and s.prompt("p2").startswith(a["shape"]) and a["colour"] in s.prompt("p3")
        assert a["size"] in s.prompt("p8") and isinstance(rec["prompts"]["p9"], list)
        m = read_mask(s.mask)
        ys, xs = np.nonzero(m)
        assert rec["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    folders = read_mask_folders(seg_folder / "images", seg_folder / "masks", prompt="skin lesion")
    assert len(folders) == 6 + 3 + 4
    again = build_seg(SegWorldSpec("synth_skin", n_train=6, n_val=3, n_test=4, image_size=48),
                      seg_folder.parent.parent / "again", progress=False)
    assert (again / "images" / "test_0003.png").read_bytes() == (seg_folder / "images" / "test_0003.png").read_bytes()


def test_fit_is_deterministic_and_the_runner_keeps_rows_and_resumes(models, seg_folder, tmp_path):
    from medkit.runs import start_run
    from medkit.seg.data import load_seg_dataset
    from medkit.seg.experiment import SegExperiment, SegSetting
    from medkit.seg.train import SegTrainConfig

    model = models["clipseg"]
    data = {"skin": load_seg_dataset(seg_folder, model)}
    cfg = SegTrainConfig(epochs=2, batch_size=4, lr=1e-2, prompt="p3")
    setting = SegSetting("seg_coop", "CoOp")
    free = SegExperiment(None, model, data, cfg, FeatureCache(tmp_path / "cache"), log=lambda s: None)
    a, b = free.run_one(setting, "skin", 1), free.run_one(setting, "skin", 1)  # both trained: same seed, same run
    assert a.row["dice"] == b.row["dice"] and list(a.history["train_loss"]) == list(b.history["train_loss"])
    assert 0 <= a.row["dice"] <= 1 and 0 <= a.row["iou"] <= a.row["dice"] + 1e-9
    assert free.run_one(setting, "skin", 2).history["train_loss"].tolist() != a.history["train_loss"].tolist()
    run = start_run("10_segmentation", "test", {}, root=tmp_path / "outputs")
    ex = SegExperiment(run, model, data, cfg, FeatureCache(tmp_path / "cache"), log=lambda s: None)
    kept, restored = ex.run_one(setting, "skin", 1), ex.run_one(setting, "skin", 1)
    assert kept.row["dice"] == restored.row["dice"] == a.row["dice"] and restored.row["train_s"] < kept.row["train_s"]
    zs = ex.run_one(SegSetting("seg_zeroshot", "zero-shot p3", prompt="p3"), "skin")
    assert zs.history is None and zs.row["train_s"] == 0
    df = pd.read_csv(tmp_path / "outputs" / "results.csv")
    assert len(df) == 2  # the restored repeat adds no row
    assert set(df.task) == {"segmentation"} and set(df.prompt) == {"p3"} and df.acc.isna().all()
    assert df[["dice", "iou", "iou_dataset"]].notna().all().all()
    assert (run.path / "checkpoints" / "skin").is_dir() and list((run.path / "histories" / "skin").glob("*.csv"))
    ex2 = SegExperiment(run, model, data, cfg.with_(epochs=3), FeatureCache(tmp_path / "cache"), log=lambda s: None)
    from medkit.train import ResumeError

    with pytest.raises(ResumeError, match="another configuration"):
        ex2.run_one(setting, "skin", 1)


def test_prompt_key_missing_and_unknown_names_fail_clearly(models, seg_folder, tmp_path):
    from medkit.seg.data import SegData, load_seg_dataset
    from medkit.seg.load import load_seg_model

    data = load_seg_dataset(seg_folder, models["clipseg"])["train"]
    with pytest.raises(KeyError, match="no prompt 'p10'"):
        data.prompt_texts("p10")
    with pytest.raises(FileNotFoundError, match="not a preset"):
        load_seg_model("no-such-model")
    with pytest.raises(FileNotFoundError, match="MedVLSM folder"):
        load_seg_dataset(tmp_path, models["clipseg"])
    assert isinstance(data, SegData) and data.masks.shape[1:] == (48, 48) and set(data.masks.unique().tolist()) <= {0, 1}


def test_decoder_pretraining_is_cached_and_learns(tmp_path):
    from medkit.seg.load import DecoderPretraining, miniclip_seg, pretrain_decoder

    from medkit.backbones import load_backbone

    adapter = load_backbone("miniclip-smoke", data_root=tmp_path, progress=False)
    model, history = pretrain_decoder(adapter, DecoderPretraining(n_scenes=96, epochs=3, batch_size=32), False)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert not any(p.requires_grad for p in adapter.parameters())
    first = miniclip_seg("miniclip-smoke", tmp_path, progress=False)
    again = miniclip_seg("miniclip-smoke", tmp_path, progress=False)  # loaded, not retrained
    for p, q in zip(first.decoder.parameters(), again.decoder.parameters()):
        torch.testing.assert_close(p, q)
    assert (first.pretraining / "history.csv").is_file() and first.source == "miniclip-smoke"


def test_bench_row_matches_the_stock_forward(tmp_path, monkeypatch):
    import transformers

    from medkit import bench

    outputs, steps = [], bench._steps
    monkeypatch.setattr(bench, "_steps", lambda fn, n, device: outputs.append(steps(fn, n, device)) or outputs[-1])
    tower = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}
    cfg = transformers.CLIPSegConfig(text_config=tower, vision_config={**tower, "image_size": 32, "patch_size": 8},
                                     projection_dim=16, reduce_dim=8, extract_layers=[1, 2],
                                     decoder_num_attention_heads=2, decoder_intermediate_size=16)
    sizes = bench.Sizes(naive_steps=2, medkit_steps=2, seg_batch=2, seg_image_size=48)
    row = bench.bench_seg_coop_step(tmp_path / "c", sizes, torch.device("cpu"), False, cfg)
    assert row.agrees and row.name == "seg_coop_step" and row.naive_s > 0 and row.medkit_s > 0
    (_, stock), (_, cached) = outputs
    assert (stock[0] - stock[1]).abs().max() > 1e-3  # the steps move the prompt: the masks compared differ
    torch.testing.assert_close(stock[1], cached[1], rtol=0, atol=1e-4)


def test_a_csv_of_image_mask_prompt_and_split_loads_as_a_dataset(models, seg_folder, tmp_path):
    from medkit.seg.data import load_seg_dataset

    lines = ["image,mask,prompt,split"]
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        lines += [f"{seg_folder}/images/{split}_{i:04d}.png,{seg_folder}/masks/{split}_{i:04d}.png,skin lesion,{split}"
                  for i in range(n)]
    (tmp_path / "lesions.csv").write_text("\n".join(lines) + "\n")
    data = load_seg_dataset(tmp_path / "lesions.csv", models["clipseg"])
    assert {k: len(v) for k, v in data.items()} == {"train": 3, "val": 2, "test": 2}
    assert data["train"].prompt_texts("p1") == ["skin lesion"] * 3 and data["test"].meta["dataset"] == "lesions"
    (tmp_path / "lesions.csv").write_text("\n".join(lines[:4]) + "\n")  # no val or test rows
    with pytest.raises(ValueError, match="no val samples"):
        load_seg_dataset(tmp_path / "lesions.csv", models["clipseg"])


def test_fresh_decoder_on_a_biomedclip_layout_backbone_trains_with_seg_decoder(model_configs, seg_folder, tmp_path):
    """`fresh:BACKBONE` (MedVLSM's BiomedCLIPSeg: BiomedCLIP's towers, a decoder trained here) on
    the timm + BERT layout: a new decoder sized for its widths, and only it trains."""
    from medkit.seg.data import load_seg_dataset
    from medkit.seg.load import load_seg_model
    from medkit.seg.train import SegTrainConfig, fit_seg

    model = load_seg_model(f"fresh:{model_configs['hf']}", data_root=tmp_path, progress=False)
    assert model.source.startswith("fresh:") and model.extract_layers == [2, 3, 4]  # of timm test_vit's 6 blocks
    data = load_seg_dataset(seg_folder, model)
    s = build_strategy("seg_decoder", model, data["train"].prompt_texts("p1"))
    before = {n: p.detach().clone() for n, p in s.named_parameters()}
    history = fit_seg(s, data["train"], data["val"], SegTrainConfig(epochs=1, batch_size=3, lr=1e-3),
                      FeatureCache(tmp_path / "cache"))
    changed = {n for n, p in s.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("model.decoder.") for n in changed) and len(history) == 1
