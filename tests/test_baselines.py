"""Few-shot baselines on cached frozen features: KgCoOp, CLIP-Adapter, Tip-Adapter(-F), LP++.

Each is checked where it could silently go wrong: the reduction to the zero-shot (or
hand-crafted) classifier at its neutral setting, gradient routing, the cache arithmetic,
the validation search, parameters created in `prepare`, and LP++'s initialisation and fit.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from medkit.methods import ZeroShotClassifier, get_method
from medkit.methods.clip_adapter import CLIPAdapter, zero_shot_weights
from medkit.methods.kgcoop import KgCoOp
from medkit.methods.lp_pp import LPPlusPlus
from medkit.methods.tip_adapter import TipAdapter, TipAdapterF, search_grid
from medkit.train import TrainConfig, fit

FAMILIES = ["native", "hf"]
NAMES = ["round", "oval", "plate"]  # single tokens of both tiny vocabularies (see test_prompt_methods)
PHOTO_T = "a photo of a {}."


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run fastest on one thread


def unit(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g), dim=-1)


def clusters(dim: int, per_class: int, n_classes: int = 3, noise: float = 0.1,
             seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-separated unit-norm clusters: orthonormal centres plus small noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.linalg.qr(torch.randn(dim, dim, generator=g))[0][:n_classes]
    y = torch.arange(n_classes).repeat_interleave(per_class)
    x = centres[y] + noise * torch.randn(len(y), dim, generator=g)
    return F.normalize(x, dim=-1), y


def test_registry_names_and_training_kinds():
    expected = {"kgcoop": (KgCoOp, True), "clip_adapter": (CLIPAdapter, True), "tip_adapter": (TipAdapter, False),
                "tip_adapter_f": (TipAdapterF, True), "lp_pp": (LPPlusPlus, False)}
    for name, (cls, by_gradient) in expected.items():
        assert get_method(name) is cls
        assert cls.uses_cached_features and cls.trains_by_gradient is by_gradient


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_shot_weights_templates_and_ensembles(adapters, family):
    ad = adapters[family]
    ref = ZeroShotClassifier.from_templates(ad, PHOTO_T, NAMES).class_features
    w = zero_shot_weights(ad, NAMES, PHOTO_T)
    assert w.shape == (len(NAMES), ad.embed_dim) and not w.requires_grad
    torch.testing.assert_close(w, ref, rtol=0, atol=0)
    ens = {c: [f"an x-ray of a {c}.", f"a {c} implant."] for c in NAMES}
    # ensembles win over the templates
    torch.testing.assert_close(zero_shot_weights(ad, NAMES, "nonsense {}", ens),
                               ZeroShotClassifier.from_ensembles(ad, ens, NAMES).class_features, rtol=0, atol=0)


# --- KgCoOp --------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_kgcoop_starts_on_the_hand_crafted_prompt(adapters, family):
    """Context "a photo of a" = the template "a photo of a {}.": the regulariser is ~0, the
    loss is the cross-entropy, and only the context gets gradients."""
    ad = adapters[family]
    m = KgCoOp(ad, NAMES, templates=PHOTO_T).train()
    assert m.context.n_ctx == 4 and m.weight == 8.0
    assert set(m.trainable_state()) == {"context.ctx"} and "hand_crafted" not in m.state_dict()
    x, y = unit(5, ad.embed_dim), torch.tensor([0, 1, 2, 0, 1])
    logits = m(x)
    assert float(m.regulariser(m.text_features().detach())) == pytest.approx(0.0, abs=1e-5)
    loss = m.loss(logits, y)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y), rtol=0, atol=1e-4)
    loss.backward()
    assert m.context.ctx.grad is not None and m.context.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in m.named_parameters() if n != "context.ctx")


def test_kgcoop_regulariser_grows_off_the_prompt_and_weight_zero_is_ce(adapters):
    ad = adapters["native"]  # the random tiny BERT maps all sentences to nearly one feature
    torch.manual_seed(0)
    m = KgCoOp(ad, NAMES, templates=PHOTO_T).train()
    with torch.no_grad():
        m.context.ctx.add_(0.5 * torch.randn_like(m.context.ctx))
    x, y = unit(4, ad.embed_dim), torch.tensor([0, 1, 2, 2])
    logits = m(x)
    reg = m.regulariser(m._step_text)
    assert float(reg.detach()) > 1e-3
    torch.testing.assert_close(m.loss(logits, y), F.cross_entropy(logits, y) + 8.0 * reg)
    m.weight = 0.0
    assert torch.equal(m.loss(logits, y), F.cross_entropy(logits, y))
    m.weight = 8.0
    m.eval()  # evaluation: no stored features, the plain cross-entropy
    logits = m(x)
    assert m._step_text is None and torch.equal(m.loss(logits, y), F.cross_entropy(logits, y))


def test_kgcoop_encodes_the_prompts_once_per_step(adapters):
    """The loss must regularise the features the logits used, not a second text pass."""
    m = KgCoOp(adapters["native"], NAMES).train()
    calls = []
    original = m.text_features
    m.text_features = lambda: calls.append(1) or original()
    x, y = unit(3, m.adapter.embed_dim), torch.tensor([0, 1, 2])
    m.loss(m(x), y).backward()
    assert calls == [1]
    fresh = KgCoOp(adapters["native"], NAMES).train()
    with pytest.raises(RuntimeError, match="forward"):
        fresh.loss(torch.zeros(3, 3), y)


# --- CLIP-Adapter --------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_clip_adapter_ratio_zero_is_zero_shot(adapters, family):
    ad = adapters[family]
    x = unit(6, ad.embed_dim)
    zs = ZeroShotClassifier.from_templates(ad, PHOTO_T, NAMES)
    m = CLIPAdapter(ad, NAMES, ratio=0.0)
    with torch.no_grad():
        torch.testing.assert_close(m(x), zs.logits_from_features(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_clip_adapter_trains_only_the_adapter(adapters, family):
    ad = adapters[family]
    torch.manual_seed(0)
    m = CLIPAdapter(ad, NAMES).train()
    e = ad.embed_dim
    assert {n: tuple(v.shape) for n, v in m.trainable_state().items()} == {"mlp.0.weight": (e // 4, e),
                                                                          "mlp.2.weight": (e, e // 4)}
    x, y = unit(5, e), torch.tensor([0, 1, 2, 0, 1])
    logits = m(x)
    assert logits.shape == (5, len(NAMES))
    m.loss(logits, y).backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if n.startswith("mlp."))
    assert all(p.grad is None for n, p in m.named_parameters() if not n.startswith("mlp."))


def test_clip_adapter_is_scale_invariant(adapters):
    """No biases, ReLU: A(s·x) = s·A(x), so normalised cached features give the reference's
    logits on unnormalised ones."""
    torch.manual_seed(0)
    m = CLIPAdapter(adapters["native"], NAMES)
    x = unit(4, m.adapter.embed_dim)
    with torch.no_grad():
        torch.testing.assert_close(m(3.7 * x), m(x), rtol=0, atol=1e-5)


# --- Tip-Adapter ---------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_tip_adapter_alpha_zero_is_zero_shot(adapters, family):
    ad = adapters[family]
    m = TipAdapter(ad, NAMES, alpha=0.0)
    assert not list(m.trainable_parameters()) and set(m.trainable_state()) == {"alpha", "beta"}  # no cache yet
    with pytest.raises(RuntimeError, match="prepare"):
        m(unit(2, ad.embed_dim))
    m.prepare((unit(6, ad.embed_dim, seed=1), torch.tensor([0, 1, 2, 0, 1, 2])))
    assert m.cache_keys.shape == (6, ad.embed_dim) and m.cache_values.shape == (6, len(NAMES))
    x = unit(4, ad.embed_dim, seed=2)
    zs = ZeroShotClassifier.from_templates(ad, PHOTO_T, NAMES)
    with torch.no_grad():
        torch.testing.assert_close(m(x), zs.logits_from_features(x), rtol=0, atol=1e-5)


def test_tip_adapter_cache_term_recalls_the_label_of_a_training_image(adapters):
    """With a sharp β the query that is a training image matches only itself: the cache term
    is α · onehot(its label)."""
    ad = adapters["native"]
    e = ad.embed_dim
    keys = torch.eye(e)[:6]  # orthonormal: affinity 1 with itself, 0 with the others
    labels = torch.tensor([2, 0, 1, 1, 0, 2])
    m = TipAdapter(ad, NAMES, alpha=1.7, beta=200.0)
    m.prepare((3.0 * keys, labels))  # keys are normalised by the cache
    with torch.no_grad():
        cache = m(keys) - m.cosine_logits(keys, m.text_weights)
    torch.testing.assert_close(cache, 1.7 * F.one_hot(labels, 3).float(), rtol=0, atol=1e-5)
    # a smooth β also spreads over the other keys: exp(−β) each
    m.beta = 1.0
    with torch.no_grad():
        cache = m(keys[:1]) - m.cosine_logits(keys[:1], m.text_weights)
    counts = torch.bincount(labels[1:], minlength=3).float()
    spread = F.one_hot(labels[0], 3).float() + counts * torch.exp(torch.tensor(-1.0))
    torch.testing.assert_close(cache[0], 1.7 * spread)


def test_tip_adapter_search_improves_validation_and_keeps_defaults_without_it(adapters):
    ad = adapters["native"]
    e = ad.embed_dim
    x, y = clusters(e, per_class=4, seed=3)
    vx, vy = clusters(e, per_class=5, seed=3, noise=0.15)  # same centres (same seed), other noise
    m = TipAdapter(ad, NAMES, alpha=0.0)  # defaults that ignore the cache: near-chance zero-shot
    m.prepare((x, y))

    def acc(mm: TipAdapter) -> float:
        with torch.no_grad():
            return float((mm(vx).argmax(1) == vy).float().mean())

    before = acc(m)
    m.finish(None)
    assert (m.alpha, m.beta) == (0.0, 5.5)
    m.finish((vx, vy))
    assert acc(m) >= before and acc(m) == 1.0
    grid_b, grid_a = search_grid(10.0, 10), search_grid(5.0, 10)
    assert m.beta in grid_b and m.alpha in grid_a
    assert grid_b[0] == pytest.approx(0.1) and len(grid_a) == 10 and max(grid_b) < 10
    # ties keep the current values: already perfect → nothing changes
    m2 = TipAdapter(ad, NAMES, alpha=4.0, beta=5.5)
    m2.prepare((x, y))
    assert acc(m2) == 1.0
    m2.finish((vx, vy))
    assert (m2.alpha, m2.beta) == (4.0, 5.5)


def test_tip_adapter_f_trains_only_the_keys(adapters, tmp_path):
    ad = adapters["native"]
    e = ad.embed_dim
    x, y = clusters(e, per_class=4, noise=0.6, seed=4)
    m = TipAdapterF(ad, NAMES)
    assert list(m.trainable_parameters()) == []  # no cache before prepare
    with pytest.raises(RuntimeError, match="prepare"):
        m(x)
    m.prepare((x, y))
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["cache_keys"]
    assert not m.cache_values.requires_grad
    start = m.cache_keys.detach().clone()
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-2, eps=1e-4)
    m.train()
    losses = []
    for _ in range(5):
        loss = m.loss(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert not torch.equal(m.cache_keys.detach(), start)
    # the trained keys (with the cache's values and α, β) round-trip into a fresh instance,
    # prepared or not, and into a prepared one in place (an optimizer holding the keys keeps them)
    state = m.trainable_state()
    assert set(state) == {"cache_keys", "cache_values", "alpha", "beta"}
    other = TipAdapterF(ad, NAMES)
    other.load_trainable_state(state)
    prepared = TipAdapterF(ad, NAMES)
    prepared.prepare((x, y))
    keys = prepared.cache_keys
    prepared.load_trainable_state(state)
    assert prepared.cache_keys is keys and torch.equal(prepared.cache_keys, m.cache_keys)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(x), m(x), rtol=0, atol=0)


def test_tip_adapter_f_keys_reach_the_generic_loop(adapters):
    """`fit` builds its optimizer after `prepare` created the keys' Parameter."""
    ad = adapters["native"]
    x, y = clusters(ad.embed_dim, per_class=4, noise=0.6, seed=5)
    m = TipAdapterF(ad, NAMES)
    m.prepare((x, y))
    start = m.cache_keys.detach().clone()
    cfg = TrainConfig(epochs=2, batch_size=4, optimizer="adamw", lr=1e-2, warmup_epochs=0, amp=False,
                      validate=False, augment=False)
    fit(m, (x, y), None, cfg, progress=False)
    assert not torch.equal(m.cache_keys.detach(), start)


# --- LP++ ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_lp_pp_initialisation(adapters, family):
    """epochs=0: W = normalised class means, b = 0, α_c = mean text logit of class c's images."""
    ad = adapters[family]
    e = ad.embed_dim
    x = unit(5, e, seed=6)
    y = torch.tensor([0, 2, 0, 1, 2])
    m = LPPlusPlus(ad, NAMES, epochs=0)
    assert set(m.trainable_state()) == {"weight", "bias", "alpha"}
    m.prepare((2.0 * x, y))  # features are normalised first
    t = zero_shot_weights(ad, NAMES)
    torch.testing.assert_close(m.weight.detach(), F.normalize(torch.stack([x[0] + x[2], x[3], x[1] + x[4]]), dim=-1))
    assert torch.equal(m.bias.detach(), torch.zeros(3))
    expected_alpha = torch.stack([(x[0] @ t[0] + x[2] @ t[0]) / 2, x[3] @ t[1], (x[1] @ t[2] + x[4] @ t[2]) / 2])
    torch.testing.assert_close(m.alpha.detach(), expected_alpha)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x @ m.weight.T + expected_alpha * (x @ t.T))
    with pytest.raises(ValueError, match="no training images"):
        LPPlusPlus(ad, NAMES, epochs=0).prepare((x[:2], torch.tensor([0, 1])))


def test_lp_pp_fits_separable_clusters_deterministically(adapters):
    ad = adapters["native"]
    x, y = clusters(ad.embed_dim, per_class=6, noise=0.3, seed=7)

    def trained(epochs: int, val=None, **kw) -> LPPlusPlus:
        torch.manual_seed(0)
        m = LPPlusPlus(ad, NAMES, epochs=epochs, **kw)
        m.prepare((x, y), val)
        return m

    m = trained(300)
    with torch.no_grad():
        logits = m(x)
        init_loss = float(F.cross_entropy(trained(0)(x), y))
    assert float((logits.argmax(1) == y).float().mean()) == 1.0
    assert float(F.cross_entropy(logits, y)) < init_loss
    again = trained(300)
    for (n, a), b in zip(m.trainable_state().items(), again.trainable_state().values()):
        assert torch.equal(a, b), n
    # validation selection keeps an epoch at least as good on validation as the last one
    vx, vy = clusters(ad.embed_dim, per_class=4, noise=0.9, seed=7)
    sel, last = trained(60, (vx, vy)), trained(60, (vx, vy), select_on_val=False)
    with torch.no_grad():
        assert (sel(vx).argmax(1) == vy).float().mean() >= (last(vx).argmax(1) == vy).float().mean()
