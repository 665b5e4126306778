"""CILMP as a method on both tower families: prompt layout, shapes, conditioning, what
trains (only the intervention, projection and prompt parameters), moving to new classes."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from medkit.knowledge import LLMRepresentations
from medkit.methods import CILMP
from medkit.methods.cilmp import standardized

NAMES = ["round", "oval", "plate"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run fastest on one thread


def knowledge(names=tuple(NAMES) + ("screw",), layers: int = 6, dim: int = 12) -> LLMRepresentations:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(len(names), layers, dim, generator=g) * 5 + 3
    return LLMRepresentations(list(names), hidden, [f"about {n}" for n in names], "test", "encoder", "q")


def feats(ad, n: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, ad.embed_dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("family", ["native", "hf"])
def test_shapes_and_prompt_layout(adapters, family):
    ad = adapters[family]
    m = CILMP(ad, NAMES, knowledge(), prefix=2, suffix=2, rank=3)
    assert m.uses_cached_features and m.knowledge.n_tokens == 6
    assert m.positions.shape == (3, 4 + 6)                 # ctx×4 then the 6 knowledge slots
    assert (m.positions[:, 1:] - m.positions[:, :-1] == 1).all()  # contiguous, right after the start token
    x = feats(ad, 5)
    assert m.text_features(x).shape == (5, 3, ad.embed_dim)
    assert m(x).shape == (5, 3)
    assert m.precompute_text() is None                     # conditional: prompts depend on the image


def test_context_starts_from_the_phrase_and_representations_are_standardised(adapters):
    ad = adapters["native"]
    k = knowledge()
    m = CILMP(ad, NAMES, k)
    from medkit.methods.context import phrase_embeddings

    assert torch.allclose(m.ctx, phrase_embeddings(ad, "a photo of a"))
    # statistics over all the dataset's classes, then the method's classes picked
    assert torch.allclose(m.knowledge.llm, standardized(k.hidden)[:3], atol=1e-6)
    flat = standardized(k.hidden).reshape(-1, 12)
    assert torch.allclose(flat.mean(0), torch.zeros(12), atol=1e-5)


@pytest.mark.parametrize("family", ["native", "hf"])
def test_gradients_reach_only_intervention_projection_and_prompts(adapters, family):
    ad = adapters[family]
    m = CILMP(ad, NAMES, knowledge(), dropout=0.0).train()
    loss = F.cross_entropy(m(feats(ad, 4)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    trained = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "ctx" in trained and any(n.startswith("deep_text.") for n in trained)
    assert any(".prefix." in n for n in trained) and any(".suffix." in n for n in trained)
    assert any(n.startswith("knowledge.projection.") for n in trained)
    assert all(n == "ctx" or n.startswith(("deep_text.", "knowledge.")) for n in trained)
    assert not any(p.requires_grad for p in m.adapter.parameters())
    assert "knowledge.llm" not in m.trainable_state() and "knowledge.llm" not in dict(m.named_parameters())


def test_conditioning_modes(adapters):
    ad = adapters["hf"]
    x = feats(ad, 2)
    cond = CILMP(ad, NAMES, knowledge()).eval()
    t = cond.text_features(x)
    assert not torch.allclose(t[0], t[1])                 # each image gets its own prompts
    uncond = CILMP(ad, NAMES, knowledge(), mode="unconditional").eval()
    pre = uncond.precompute_text()
    assert pre.shape == (3, ad.embed_dim)
    assert torch.allclose(uncond(x), uncond(x, text_features=pre), atol=1e-5)
    assert torch.allclose(uncond(x[:1]), uncond.cosine_logits(x[:1], pre), atol=1e-5)
    none = CILMP(ad, NAMES, knowledge(), prefix=0, suffix=0).eval()   # w/o intervention: image-free tokens
    tn = none.text_features(x)
    assert torch.allclose(tn[0], tn[1], atol=1e-6)


def test_moves_to_new_classes_and_names_missing_representations(adapters):
    ad = adapters["native"]
    base = CILMP(ad, NAMES[:2], knowledge())
    with torch.no_grad():
        for p in base.parameters():
            if p.requires_grad:
                p.add_(0.01)
    novel = CILMP(ad, ["plate", "screw"], knowledge())
    novel.load_trainable_state(base.trainable_state())
    assert base.class_indexed_parameters() == set()
    assert torch.equal(novel.ctx, base.ctx)
    with pytest.raises(KeyError, match="stent"):
        CILMP(ad, ["round", "stent"], knowledge())


def test_vision_prompts_run_the_image_tower(adapters):
    ad = adapters["native"]
    m = CILMP(ad, NAMES, knowledge(), vision_depth=1, text_depth=1)
    assert not m.uses_cached_features and len(m.vision) == 1
    imgs = torch.randn(2, 3, ad.image_size, ad.image_size)
    out = m(imgs)
    assert out.shape == (2, 3)
    out.sum().backward()
    assert m.vision[0].grad is not None and m.vision[0].grad.abs().sum() > 0


def test_knowledge_tokens_start_at_the_scale_of_word_embeddings(adapters):
    """A default projection of standardised representations is several times larger than
    real token embeddings; CILMP rescales it so the prompt is not drowned before training."""
    from medkit.methods.context import phrase_embeddings

    for ad in adapters.values():
        m = CILMP(ad, NAMES, knowledge(), mode="unconditional", dropout=0.0).eval()
        target = phrase_embeddings(ad, "a photo of a").norm(dim=-1).mean()
        tokens = m.knowledge(None)
        assert tokens.norm(dim=-1).mean().item() == pytest.approx(target.item(), rel=0.25)
