"""Prompt-learning methods on both tower families: equivalences with the frozen model,
batching, gradient routing, parameter shapes, and the linear probe."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.methods import IVLP, CoCoOp, CoOp, LinearProbe, MaPLe, VPTDeep, ZeroShotClassifier
from medkit.methods.base import FrozenBackboneMethod
from medkit.methods.context import PromptContext, placeholder_id
from medkit.train import seed_everything

from conftest import FAMILIES  # noqa: E402  (all three tower families, SigLIP included)
# The random tiny BERT maps all sentences to nearly one feature (they differ by ~1e-3),
# still ~100x the 1e-5 tolerances of the equivalence checks below; training tests use a
# livelier copy (test_train.py).
# Words of the tiny BERT's vocabulary, single tokens for both tokenizers and free of the
# placeholder "X": names outside that vocabulary would all become [UNK], i.e. one prompt.
NAMES = ["round", "oval", "plate"]
PHOTO = "a photo of a"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run fastest on one thread


def images(ad: BackboneAdapter, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, ad.image_size, ad.image_size, generator=g)


def test_class_names_tokenise_without_placeholder(adapters):
    """The premise of every test here: each name is its own token(s), never the placeholder."""
    for ad in adapters.values():
        x_id = placeholder_id(ad)
        ids = ad.trim(ad.tokenize(NAMES))
        assert not (ids == x_id).any()
        assert len({tuple(r.tolist()) for r in ids}) == len(NAMES)  # no [UNK] collapse
    # a name containing the placeholder word breaks the prompt: an error, not silent garbage
    with pytest.raises(ValueError, match="placeholder"):
        PromptContext(adapters["hf"], ["x ray"], n_ctx=2)


# --- text-initialised CoOp is the hand-written prompt -------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("class_specific", [False, True])
def test_text_initialised_coop_equals_hand_written_prompt(adapters, family, class_specific):
    """Untrained CoOp from "a photo of a" must reproduce the model's own encoding of
    "a photo of a {c}.": splicing, positions, trimming and pooling all line up."""
    ad = adapters[family]
    m = CoOp(ad, NAMES, n_ctx=None, ctx_init=PHOTO, class_specific=class_specific)
    assert m.context.n_ctx == 4
    with torch.no_grad():
        ours = m.text_features()
        ref = ad.encode_text([f"{PHOTO} {c}." for c in NAMES], cut=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("position,template,expected", [
    ("end", "a photo of a {}.", [1, 2, 3, 4]),
    ("middle", "a photo {} of a.", [1, 2, 4, 5]),
    ("front", "{} a photo of a.", [2, 3, 4, 5]),
])
def test_class_token_position(adapters, family, position, template, expected):
    """n_ctx placeholders per row, at the positions the class-token layout implies
    (after the start token; the one-token class name sits at the end/middle/front)."""
    ad = adapters[family]
    m = CoOp(ad, NAMES, n_ctx=None, ctx_init=PHOTO, position=position)
    c = m.context
    assert c.positions.shape == (len(NAMES), 4)
    assert (c.ids.gather(1, c.positions) == placeholder_id(ad)).all()
    assert c.positions.tolist() == [expected] * len(NAMES)
    with torch.no_grad():
        ref = ad.encode_text([template.format(n) for n in NAMES], cut=False)
        torch.testing.assert_close(m.text_features(), ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="position"):
        CoOp(ad, NAMES, n_ctx=2, position="back")


# --- trimming ------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_trimmed_ids_give_full_length_features(adapters, family):
    ad = adapters[family]
    texts = ["a photo of a round implant.", "plate", "an x-ray of the device with two leads"]
    ids = ad.tokenize(texts)
    short = ad.trim(ids)
    if family == "siglip":  # unmasked, bidirectional, pooled at the last position: nothing may be cut
        assert torch.equal(short, ids)
        return
    assert short.shape[1] < ids.shape[1]  # otherwise the check below proves nothing
    with torch.no_grad():
        ref = ad.encode_text(ids, cut=False)
        ours = ad.encode_text_from_embeddings(ad.token_embedding(short), short)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
        # and the cut is tight: one position fewer loses the longest prompt's end token
        shorter = short[:, :-1]
        cut = ad.encode_text_from_embeddings(ad.token_embedding(shorter), shorter)
    longest = int(ad.content_lengths(ids).argmax())
    assert (cut[longest] - ref[longest]).abs().max() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("init", [None, "a photo of a"])
def test_shared_context_prefix_runs_once_with_equal_features_and_gradients(adapters, family, init):
    """Shared CoOp context on a causal tower: the common prefix (start token + context) runs
    once; features and the context's gradient equal the ordinary per-class pass."""
    ad = adapters[family]
    torch.manual_seed(0)
    m = CoOp(ad, NAMES, n_ctx=4, ctx_init=init)
    c = m.context
    assert c.shared_prefix == 1 + c.n_ctx  # start token + the context; the class names differ next
    assert CoOp(ad, NAMES, n_ctx=4, class_specific=True).context.shared_prefix == 0
    ours = m.text_features()
    ours.square().sum().backward()
    g_ours, c.ctx.grad = c.ctx.grad.clone(), None
    ref = ad.encode_text_from_embeddings(c.embeddings(), c.ids)
    ref.square().sum().backward()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(g_ours, c.ctx.grad, rtol=1e-4, atol=1e-6)


def test_prefix_sharing_is_taken_on_causal_towers_only(adapters):
    assert adapters["native"]._blocks_support_prefix_sharing()
    calls = []
    ad = adapters["native"]
    original = ad._shared_prefix_transformer
    ad._shared_prefix_transformer = lambda *a: calls.append(1) or original(*a)
    try:
        CoOp(ad, NAMES, n_ctx=2).text_features()
        CoOp(ad, NAMES, n_ctx=2, class_specific=True).text_features()
    finally:
        del ad._shared_prefix_transformer
    assert calls == [1]  # the shared context took it, the class-specific one did not


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_text_cuts_prompts_without_changing_features(adapters, family):
    """Zero-shot and ensemble encoding run cut prompts by default; the model's own
    full-length path is the reference."""
    ad = adapters[family]
    texts = ["a photo of a round implant.", "plate"]
    if family != "siglip":  # SigLIP's tower is never cut (see above)
        assert ad.trim(ad.tokenize(texts)).shape[1] < ad.tokenize(texts).shape[1]
    with torch.no_grad():
        torch.testing.assert_close(ad.encode_text(texts), ad.encode_text(texts, cut=False), rtol=0, atol=1e-5)


# --- CoCoOp --------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_cocoop_with_silent_meta_net_is_coop(adapters, family):
    """A zero meta-net output adds nothing to the context: CoCoOp must then be CoOp."""
    ad = adapters[family]
    seed_everything(0)
    coc = CoCoOp(ad, NAMES, n_ctx=4, ctx_init=PHOTO)
    coop = CoOp(ad, NAMES, n_ctx=4, ctx_init=PHOTO)
    with torch.no_grad():
        coc.context.ctx.add_(0.1 * torch.randn_like(coc.context.ctx))  # off the shared init
        coop.context.ctx.copy_(coc.context.ctx)
        last = coc.meta_net[-1]
        last.weight.zero_()
        last.bias.zero_()
        feats = coc.encode_images(images(ad, 3))
        torch.testing.assert_close(coc(feats), coop(feats), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_cocoop_batches_images_and_chunks(adapters, family):
    """B images × K classes in one call; chunking and batching must not mix up rows."""
    ad = adapters[family]
    seed_everything(0)
    m = CoCoOp(ad, NAMES, text_chunk=2)  # 4·3 = 12 prompt rows → 6 chunks
    with torch.no_grad():
        m.meta_net[0].bias.fill_(1.0)  # the single hidden unit (16 // 16) alive for every image
        feats = m.encode_images(images(ad, 4))
        calls: list[int] = []  # batch sizes seen by the text tower's first block
        hook = ad.text_blocks()[0].register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
        try:
            chunked = m.text_features(feats)
            assert chunked.shape == (4, len(NAMES), ad.embed_dim)
            assert calls == [2] * 6
            m.text_chunk = 10_000
            calls.clear()
            whole = m.text_features(feats)
            assert calls == [12]  # all B·K prompts in one text pass, not a loop over images
        finally:
            hook.remove()
        torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
        for b in range(4):  # row b·K + k belongs to image b
            torch.testing.assert_close(m.text_features(feats[b:b + 1])[0], whole[b], rtol=0, atol=1e-5)
        assert (whole[0] - whole[1]).abs().max() > 1e-5  # conditioned on the image
        assert m(feats).shape == (4, len(NAMES))


# --- deep methods at depth 0 are the zero-shot model ---------------------------------

DEPTH0: dict[str, Callable[[BackboneAdapter], FrozenBackboneMethod]] = {
    "maple": lambda ad: MaPLe(ad, NAMES, depth=0),
    "ivlp": lambda ad: IVLP(ad, NAMES, depth=0),
    "vpt_deep": lambda ad: VPTDeep(ad, NAMES, depth=0),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(DEPTH0))
def test_depth_zero_is_zero_shot(adapters, family, name):
    ad = adapters[family]
    m = DEPTH0[name](ad)
    zs = ZeroShotClassifier.from_templates(ad, "a photo of a {}.", NAMES)
    x = images(ad, 2)
    with torch.no_grad():
        torch.testing.assert_close(m(x), zs.logits_from_images(x), rtol=1e-5, atol=1e-4)
    assert not list(m.trainable_parameters())  # nothing to learn at depth 0


@pytest.mark.parametrize("family", FAMILIES)
def test_depth_limits(adapters, family):
    ad = adapters[family]
    joint = min(ad.text_depth, ad.vision_depth)
    for cls in (MaPLe, IVLP):
        assert cls(ad, NAMES, depth="all").depth == joint
        with pytest.raises(ValueError, match=rf"depth {joint + 1}\b"):
            cls(ad, NAMES, depth=joint + 1)
        with pytest.raises(ValueError, match="non-negative"):
            cls(ad, NAMES, depth=-1)
    # VPT-deep prompts only the image tower: bounded by its depth alone
    assert VPTDeep(ad, NAMES, depth="all").depth == ad.vision_depth
    with pytest.raises(ValueError, match=rf"depth {ad.vision_depth + 1}\b"):
        VPTDeep(ad, NAMES, depth=ad.vision_depth + 1)


# --- gradients reach the method's parameters and nothing else ------------------------

BUILDERS: dict[str, Callable[[BackboneAdapter], FrozenBackboneMethod]] = {
    "coop": lambda ad: CoOp(ad, NAMES, n_ctx=4),
    "cocoop": lambda ad: CoCoOp(ad, NAMES),
    "maple": lambda ad: MaPLe(ad, NAMES, depth="all"),
    "ivlp": lambda ad: IVLP(ad, NAMES),
    "vpt_deep": lambda ad: VPTDeep(ad, NAMES),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_gradients_reach_only_method_parameters(adapters, family, name):
    ad = adapters[family]
    seed_everything(0)
    m = BUILDERS[name](ad)
    if isinstance(m, CoCoOp):
        with torch.no_grad():
            m.meta_net[0].bias.fill_(1.0)  # a dead single ReLU unit would zero its grads by chance
    m.train()
    assert not m.adapter.training  # frozen backbone stays in eval mode (BatchNorm, dropout)
    x = images(ad, 2)
    inputs = m.encode_images(x) if m.uses_cached_features else x
    m.loss(m(inputs), torch.tensor([0, 2])).backward()
    for n, p in m.adapter.named_parameters():
        assert not p.requires_grad and p.grad is None, n
    trainable = {n: p for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("adapter.") for n in trainable)
    for n, p in trainable.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient for {n}"
    assert set(m.trainable_state()) == set(trainable)  # a checkpoint holds exactly these


@pytest.mark.parametrize("family", FAMILIES)
def test_maple_prompts_change_both_towers(adapters, family):
    ad = adapters[family]
    seed_everything(0)
    m = MaPLe(ad, NAMES, depth="all")
    x = images(ad, 2)
    with torch.no_grad():
        prompts = m.vision_prompts()
        assert len(prompts) == m.depth and all(p.shape == (2, ad.vision_width) for p in prompts)
        plain = ad.encode_image(x)
        prompted = ad.encode_image(x, prompts=prompts)
        assert (prompted - plain).abs().max() > 1e-4
        torch.testing.assert_close(ad.encode_image(x), plain)  # hooks removed afterwards
        for layer in (0, m.depth - 1):  # the appended first-layer and a replaced deeper prompt
            before = ad.encode_image(x, prompts=m.vision_prompts())
            m.couplings[layer].weight.add_(torch.randn_like(m.couplings[layer].weight))
            after = ad.encode_image(x, prompts=m.vision_prompts())
            assert (after - before).abs().max() > 1e-4, f"coupling {layer} has no effect"
        text = m.text_features()
        m.deep_text[0].add_(torch.randn_like(m.deep_text[0]))
        assert (m.text_features() - text).abs().max() > 1e-4  # deep text prompts are used


# --- class-specific context ----------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cls", [CoOp, CoCoOp, MaPLe], ids=lambda c: c.__name__)
def test_class_specific_context_shapes(adapters, family, cls):
    ad = adapters[family]
    kw = {"depth": "all"} if cls is MaPLe else {}  # its default depth (9, the reference's) exceeds these towers
    shared = cls(ad, NAMES, n_ctx=2, class_specific=False, **kw)
    assert shared.context.ctx.shape == (2, ad.text_width)
    assert shared.class_indexed_parameters() == set()
    csc = cls(ad, NAMES, n_ctx=2, class_specific=True, **kw)
    assert csc.context.ctx.shape == (len(NAMES), 2, ad.text_width)
    assert csc.class_indexed_parameters() == {"context.ctx"}
    assert "context.ctx" in csc.trainable_state()  # the name is a real parameter name


@pytest.mark.parametrize("family", FAMILIES)
def test_class_specific_context_is_per_class(adapters, family):
    """Moving class 1's context moves class 1's text feature and no other."""
    ad = adapters[family]
    m = CoOp(ad, NAMES, n_ctx=2, class_specific=True)
    with torch.no_grad():
        before = m.text_features()
        m.context.ctx[1].add_(torch.randn_like(m.context.ctx[1]))
        after = m.text_features()
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]])
    assert (after[1] - before[1]).abs().max() > 1e-4


# --- linear probe -------------------------------------------------------------------

def _blobs(n_per: int, n_classes: int, seed: int, spread: float = 1.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised features around fixed class centres, noisy enough that C matters."""
    centres = torch.randn(n_classes, 16, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat_interleave(n_per)
    x = centres[y] + spread * torch.randn(len(y), 16, generator=g)
    return nn.functional.normalize(x, dim=-1), y


def test_linear_probe_picks_c_on_validation_and_matches_sklearn(adapters):
    from sklearn.linear_model import LogisticRegression

    grid = (0.01, 0.1, 1.0, 10.0, 100.0)
    x, y = _blobs(8, 3, seed=1)
    vx, vy = _blobs(30, 3, seed=2)
    fitted = {c: LogisticRegression(C=c, max_iter=1000, random_state=1).fit(x.numpy(), y.numpy()) for c in grid}
    accs = [fitted[c].score(vx.numpy(), vy.numpy()) for c in grid]
    assert len(set(accs)) > 1, "data too easy: every C scores the same, the choice is untested"
    best_c = grid[int(np.argmax(accs))]  # first maximum: ties go to the smaller C
    lp = LinearProbe(adapters["native"], NAMES).fit(x, y, vx, vy, grid=grid)
    assert lp.C == best_c
    ref = fitted[best_c]
    with torch.no_grad():
        logits = lp(vx)
    assert (logits.argmax(1).numpy() == ref.predict(vx.numpy())).all()
    np.testing.assert_allclose(logits.numpy(), ref.decision_function(vx.numpy()), rtol=1e-4, atol=1e-4)
    assert LinearProbe(adapters["native"], NAMES).fit(x, y).C == 1.0  # no validation: the default C
    # well separated: every C scores 1.0 on validation, and the tie goes to the smallest C
    ex, ey = _blobs(8, 3, seed=1, spread=0.1)
    evx, evy = _blobs(30, 3, seed=2, spread=0.1)
    assert LinearProbe(adapters["native"], NAMES).fit(ex, ey, evx, evy, grid=grid).C == grid[0]


def test_linear_probe_binary_matches_sklearn(adapters):
    """Two classes: sklearn keeps one weight row; both logits must still be usable."""
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(10, 2, seed=3)
    lp = LinearProbe(adapters["native"], NAMES[:2]).fit(x, y)
    ref = LogisticRegression(C=1.0, max_iter=1000, random_state=1).fit(x.numpy(), y.numpy())
    with torch.no_grad():
        logits = lp(x)
    assert (logits.argmax(1).numpy() == ref.predict(x.numpy())).all()
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), ref.predict_proba(x.numpy()), rtol=1e-4, atol=1e-5)


def test_linear_probe_names_class_without_images(adapters):
    x, y = _blobs(4, 2, seed=4)  # labels 0 and 1 only: "plate" has no training image
    with pytest.raises(ValueError, match="plate"):
        LinearProbe(adapters["native"], NAMES).fit(x, y)
