"""CLIPSeg's decoder on the adapter: the own forward equals transformers' stock forward until
prompts are added, gradients reach prompts (the stock forward's encoders run without), and a
fresh decoder fits any tower family."""
from __future__ import annotations

import pytest
import torch

from conftest import write_clipseg
from medkit.seg import SegmentationModel, build_decoder, load_clipseg


@pytest.fixture(scope="module")
def clipseg(model_configs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clipseg") / "tiny-clipseg"
    stock = write_clipseg(folder, model_configs["hf_dual"])
    return folder, stock


def test_own_forward_equals_the_stock_forward_without_prompts(clipseg, one_thread):
    folder, stock = clipseg
    model = load_clipseg(folder)
    assert model.adapter.image_size == 48 and model.extract_layers == [1, 2]
    texts = ["a round implant", "a plate"]
    ids = model.adapter.tokenize(texts)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = stock(input_ids=ids, pixel_values=x).logits
        ours = model(x, model.adapter.encode_text(texts))
    assert ours.shape == ref.shape == (2, 48, 48)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_gradients_reach_the_prompts_and_only_them(clipseg, one_thread):
    folder, _ = clipseg
    model = load_clipseg(folder)
    for p in model.parameters():
        p.requires_grad_(False)
    ad = model.adapter
    vision = [torch.zeros(2, ad.vision_width, requires_grad=True), torch.randn(2, ad.vision_width, requires_grad=True)]
    ids = ad.tokenize(["X X a round implant"])
    context = torch.randn(2, ad.text_width, requires_grad=True)
    emb = ad.token_embedding(ids).detach()
    emb = torch.cat([emb[:, :1], context[None], emb[:, 3:]], dim=1)  # two learned tokens after the start
    x = torch.randn(2, 3, 48, 48)
    logits = model(x, ad.encode_text_from_embeddings(emb, ids), prompts=vision)
    assert logits.shape == (2, 48, 48)
    logits.sigmoid().mean().backward()
    assert all(float(t.grad.abs().sum()) > 0 for t in (*vision, context))
    assert not [n for n, p in model.named_parameters() if p.grad is not None]
    with torch.no_grad():  # and the prompts change the masks
        assert (model(x, ad.encode_text(["a round implant"])) - logits).abs().max() > 1e-5


def test_layer_activations_drop_prompt_tokens_and_check_the_range(adapters):
    ad = adapters["hf_dual"]
    x = torch.randn(2, 3, ad.image_size, ad.image_size)
    with torch.no_grad():
        plain = ad.encode_image_layers(x, [0, 1])
        prompted = ad.encode_image_layers(x, [0, 1], prompts=[torch.randn(3, ad.vision_width)])
    assert [a.shape for a in plain] == [a.shape for a in prompted] == [(2, 1 + (32 // 8) ** 2, 32)] * 2
    assert not torch.allclose(plain[1], prompted[1])
    with pytest.raises(ValueError, match="outside"):
        ad.encode_image_layers(x, [5])


@pytest.mark.parametrize("family", ["native", "hf", "hf_dual"])
def test_a_fresh_decoder_fits_every_tower_family(adapters, family, one_thread):
    """BiomedCLIPSeg's shape (and the offline MiniCLIP default): any adapter's towers + a new
    CLIPSeg decoder, masks at the input resolution, gradients into the decoder only."""
    ad = adapters[family]
    torch.manual_seed(0)
    decoder = build_decoder(ad, extract_layers=[0, 1], reduce_dim=8, heads=2, intermediate=16)
    model = SegmentationModel(ad, decoder, [0, 1])
    flags = {n: p.requires_grad for n, p in ad.named_parameters()}  # the adapter is shared by other tests
    try:
        for p in ad.parameters():
            p.requires_grad_(False)
        x = torch.randn(2, 3, ad.image_size, ad.image_size)
        with torch.no_grad():
            cond = ad.encode_text(["a round implant", "a plate"])
        logits = model(x, cond)
        assert logits.shape == (2, ad.image_size, ad.image_size)
        logits.mean().backward()
        assert all(p.grad is not None for p in decoder.parameters() if p.requires_grad)
        assert not [n for n, p in ad.named_parameters() if p.grad is not None]
    finally:
        for n, p in ad.named_parameters():
            p.requires_grad_(flags[n])
    with pytest.raises(ValueError, match="outside"):
        build_decoder(ad, extract_layers=[0, 40])
