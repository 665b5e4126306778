"""Adapter invariants for the three tower families (tiny random configs and folders + MiniCLIP's
real MiniLM): open_clip's native text tower, open_clip with a HuggingFace text tower, and
transformers dual encoders (CLIP and SigLIP flavours)."""
from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES
from medkit.backbones import HFDualAdapter, HFTextAdapter, OpenCLIPNativeAdapter, load_backbone
from medkit.backbones import miniclip

TEXTS = ["a photo of a round implant.", "an x-ray of the device with two leads", "plate"]


@pytest.mark.parametrize("family", FAMILIES)
def test_text_from_embeddings_equals_model_text_encoding(adapters, family):
    ad = adapters[family]
    ids = ad.tokenize(TEXTS)
    with torch.no_grad():
        ref = ad.encode_text(ids, cut=False)
        ours = ad.encode_text_from_embeddings(ad.token_embedding(ids), ids)
        cut = ad.encode_text(ids)  # only the positions that reach the pooled one
    assert ours.shape == ref.shape == (len(TEXTS), ad.embed_dim)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cut, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_changed_embeddings_change_features(adapters, family):
    """The embedding path really is used (a learned context would otherwise do nothing)."""
    ad = adapters[family]
    ids = ad.tokenize(TEXTS)
    with torch.no_grad():
        emb = ad.token_embedding(ids)
        base = ad.encode_text_from_embeddings(emb, ids)
        emb[:, 1] += torch.randn_like(emb[:, 1])  # not a constant: LayerNorm would remove it
        moved = ad.encode_text_from_embeddings(emb, ids)
    assert (base - moved).abs().max() > 1e-3


def test_family_detection_and_widths(adapters):
    assert isinstance(adapters["native"], OpenCLIPNativeAdapter)
    assert isinstance(adapters["hf"], HFTextAdapter)
    assert adapters["native"].text_width == 32 and adapters["hf"].text_width == 32
    assert adapters["native"].embed_dim == 16 and adapters["hf"].embed_dim == 16
    # the pooled token: EOT (highest id) for the causal tower, last unpadded for BERT
    ids = adapters["native"].tokenize(["a photo"])
    assert int(adapters["native"].pooled_index(ids)[0]) == int(ids[0].argmax())
    ids = adapters["hf"].tokenize(["a photo"])
    assert int(adapters["hf"].pooled_index(ids)[0]) == int((ids[0] != 0).sum()) - 1


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_image_shapes_and_normalisation(adapters, family):
    ad = adapters[family]
    x = torch.randn(2, 3, ad.image_size, ad.image_size)
    with torch.no_grad():
        f = ad.encode_image(x, normalize=True)
    assert f.shape == (2, ad.embed_dim)
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(2))
    if family != "siglip":  # SigLIP starts from log-scale 0 and a learned bias
        assert float(ad.logit_scale.detach()) == pytest.approx(1 / 0.07, rel=1e-4)


@pytest.mark.parametrize("family", ["hf_dual", "siglip"])
def test_transformers_dual_encoder_matches_the_library_and_pools_where_it_does(adapters, family):
    """The adapter's features are transformers' own: CLIPModel.get_text_features /
    SiglipModel's pooled head output, on ids from the folder's tokenizer."""
    ad = adapters[family]
    assert isinstance(ad, HFDualAdapter) and ad.family == "hf_dual"
    hf = ad.model.hf
    ids = ad.tokenize(TEXTS)
    x = torch.randn(2, 3, ad.image_size, ad.image_size)
    with torch.no_grad():
        text_out = hf.text_model(input_ids=ids).pooler_output
        img_out = hf.vision_model(pixel_values=x).pooler_output
        if family == "hf_dual":
            text_out, img_out = hf.text_projection(text_out), hf.visual_projection(img_out)
        torch.testing.assert_close(ad.encode_text(ids), text_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ad.encode_image(x), img_out, rtol=1e-5, atol=1e-5)
    if family == "hf_dual":  # causal: pooled at the first EOS, trimmed after it
        assert (ad.pooled_index(ids) == (ids == 49407).int().argmax(-1)).all()
        assert ad.needed_length(ids) < ids.shape[1]
    else:  # bidirectional and unmasked: the last position, the full length
        assert (ad.pooled_index(ids) == ids.shape[1] - 1).all() and ad.needed_length(ids) == ids.shape[1]
        assert ad.model.logit_bias is not None


def test_transformers_clip_tokenizer_gives_open_clip_ids(adapters):
    """The transformers folder's BPE tokenizer and open_clip's agree up to the EOS (the padding
    token differs: EOS there, 0 in open_clip), so prompts mean the same in both families."""
    a, b = adapters["hf_dual"].tokenize(TEXTS), adapters["native"].tokenize(TEXTS)
    for row_a, row_b in zip(a, b):
        end = int((row_b == 49407).int().argmax()) + 1
        assert torch.equal(row_a[:end], row_b[:end])


@pytest.mark.parametrize("family", FAMILIES)
def test_deep_prompts_reach_both_towers(adapters, family):
    """Deep prompts work in both towers of every family: a text prompt replaced at block 1,
    vision prompts appended at the input and replaced at block 1, each moving the features;
    the prompt tokens are dropped before the local tokens come out."""
    ad = adapters[family]
    ids = ad.tokenize(["X X a round implant."])
    pos = torch.tensor([1, 2])
    with torch.no_grad():
        emb = ad.token_embedding(ids)
        base = ad.encode_text_from_embeddings(emb, ids)
        deep = ad.encode_text_from_embeddings(emb, ids, deep_prompts=[None, torch.randn(2, ad.text_width)],
                                              prompt_positions=pos)
        x = torch.randn(2, 3, ad.image_size, ad.image_size)
        shallow = [torch.randn(3, ad.vision_width)]
        img0, img1 = ad.encode_image(x), ad.encode_image(x, prompts=shallow)
        img2 = ad.encode_image(x, prompts=shallow + [torch.randn(3, ad.vision_width)])
        tokens = ad.encode_image_tokens(x, prompts=shallow)
    assert (deep - base).abs().max() > 1e-4
    assert (img1 - img0).abs().max() > 1e-4 and (img2 - img1).abs().max() > 1e-4
    assert tokens.shape == ad.encode_image_tokens(x).shape


def test_miniclip_real_minilm_text_path_matches(tmp_path):
    """MiniCLIP = BiomedCLIP's family with real MiniLM weights: the invariant holds there too."""
    cfg = miniclip.PRESETS["miniclip-smoke"]
    model = miniclip.build_model(cfg)
    from medkit.backbones.adapter import wrap

    train_tf, eval_tf = miniclip.transforms(cfg)
    ad = wrap(model, miniclip.tokenizer(cfg), train_tf, eval_tf, "miniclip-smoke").eval()
    ids = ad.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(ad.encode_text_from_embeddings(ad.token_embedding(ids), ids), ad.encode_text(ids, cut=False),
                                   rtol=1e-5, atol=1e-5)
    assert isinstance(ad, HFTextAdapter) and ad.text_width == 384
    # real pretrained text weights: a paraphrase is closer than an unrelated sentence
    ids = ad.tokenize(["a round device with two leads", "a circular implant with a pair of wires",
                       "the weather is sunny today"])
    mask = ad.attention_mask(ids)
    with torch.no_grad():
        pooled = model.text.pooler(model.text.transformer(input_ids=ids, attention_mask=mask), mask)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    assert float(pooled[0] @ pooled[1]) > float(pooled[0] @ pooled[2]) + 0.2


def test_miniclip_trains_only_image_tower_projection_and_scale():
    model = miniclip.build_model(miniclip.PRESETS["miniclip-smoke"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("visual.", "text.proj", "logit_scale")) for n in trainable)
    assert any(n.startswith("text.proj") for n in trainable)
    assert not any(n.startswith("text.transformer") for n in trainable)


def test_load_backbone_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_backbone(str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match="unknown MiniCLIP preset"):
        miniclip.load_or_train("miniclip-huge", root=tmp_path)


def test_miniclip_pretrains_once_and_reloads_identically(tmp_path):
    tiny = dict(n_images=64, batch_size=32, epochs=2)
    model, cfg, folder = miniclip.load_or_train("miniclip-smoke", root=tmp_path, progress=False, **tiny)
    assert (folder / "weights.pt").is_file() and (folder / "config.json").is_file()
    import pandas as pd

    hist = pd.read_csv(folder / "history.csv")
    assert len(hist) == 4 and hist["loss"].notna().all()
    stamp = (folder / "weights.pt").stat().st_mtime_ns
    again, _, folder2 = miniclip.load_or_train("miniclip-smoke", root=tmp_path, progress=False, **tiny)
    assert folder2 == folder and (folder / "weights.pt").stat().st_mtime_ns == stamp  # loaded, not retrained
    x = torch.randn(3, 3, cfg.image_size, cfg.image_size)
    ids = miniclip.tokenizer(cfg)(["a round device with two leads"])
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(x), model.encode_image(x))
        torch.testing.assert_close(again.encode_text(ids), model.encode_text(ids))
    # a different config is a different cache entry, never a stale hit
    assert miniclip.cache_dir(cfg, tmp_path) != miniclip.cache_dir(miniclip.PRESETS["miniclip-smoke"], tmp_path)


def test_a_killed_miniclip_pretraining_resumes_from_its_last_epoch_bit_identically(tmp_path, monkeypatch, capsys):
    """The one-off build checkpoints every epoch and prints a line per epoch headless: a kill
    during epoch 2 loses only that epoch, and the resumed weights equal an uninterrupted run's."""
    from dataclasses import replace

    cfg = replace(miniclip.PRESETS["miniclip-smoke"], n_images=64, batch_size=32, epochs=2)
    whole, _ = miniclip.pretrain(cfg, progress=False)

    state = tmp_path / "pretrain_state.pt"
    real_say = miniclip.say_epoch

    def killed_in_epoch_2(progress, what, epoch, *rest):
        real_say(progress, what, epoch, *rest)
        if epoch == 1:
            raise KeyboardInterrupt  # killed before epoch 2's checkpoint
    monkeypatch.setattr(miniclip, "say_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        miniclip.pretrain(cfg, progress="lines", state_path=state)
    assert "pretraining MiniCLIP: epoch 1/2 loss" in capsys.readouterr().out
    assert torch.load(state, weights_only=False)["epoch"] == 0
    monkeypatch.setattr(miniclip, "say_epoch", real_say)
    resumed, history = miniclip.pretrain(cfg, progress="lines", state_path=state)
    out = capsys.readouterr().out
    assert "resuming after epoch 1/2" in out and "epoch 2/2" in out and "epoch 1/2 loss" not in out
    assert [h["epoch"] for h in history] == [0, 0, 1, 1]
    torch.testing.assert_close(miniclip.trainable_state(resumed), miniclip.trainable_state(whole), rtol=0, atol=0)
