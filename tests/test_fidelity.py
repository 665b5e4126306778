"""Fidelity to the CoOp / MaPLe references where medkit's defaults used to differ:

- class names: `_` becomes a space before a name enters a prompt (CoOp `trainers/coop.py`:
  `name.replace("_", " ")`), `keep_underscores=True` keeps it;
- class-specific random context: one N(0, 0.02) draw per class, a `(n_cls, n_ctx, dim)`
  tensor; `shared_class_init=True` copies one draw to every class;
- MaPLe couplings: layer 0's projection is its own Linear, the deeper ones deep copies of
  one Linear (`_get_clones`); `independent_couplings=True` draws each on its own.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.methods import (IVLP, REGISTRY, CoCoOp, CoOp, MaPLe, VPTDeep, ZeroShotClassifier, get_spec)
from medkit.methods.clip_adapter import CLIPAdapter
from medkit.methods.kgcoop import KgCoOp
from medkit.methods.maple import coupling_layers
from medkit.methods.prograd import ProGrad
from medkit.prompts import ensemble_from_templates, fill, prompt_name

FAMILIES = ["native", "hf"]
# single tokens of both tiny tokenizers (see test_prompt_methods.py); "_" is a token of its
# own for CLIP's BPE and [UNK] for the tiny BERT, so an underscore changes the prompt on both
UNDERSCORED = ["oval_plate", "round"]
SPACED = ["oval plate", "round"]
NAMES = ["round", "oval", "plate"]
PHOTO = "a photo of a"

pytestmark = pytest.mark.usefixtures("one_thread")


def _differs(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-6) -> bool:
    return bool((a - b).abs().max() > tol)


# --- class names: underscores → spaces -----------------------------------------------

def test_prompt_name_is_the_reference_replace():
    assert prompt_name("hip_prosthesis") == "hip prosthesis" == "hip_prosthesis".replace("_", " ")
    assert prompt_name("hip_prosthesis", keep_underscores=True) == "hip_prosthesis"
    assert fill("a photo of a {}.", ["hip_prosthesis"]) == ["a photo of a hip prosthesis."]
    # ensembles stay keyed by the original name: rows and labels never see the prompt text
    assert ensemble_from_templates(["a {}."], ["hip_prosthesis"]) == {"hip_prosthesis": ["a hip prosthesis."]}
    assert ensemble_from_templates(["a {}."], ["hip_prosthesis"], keep_underscores=True) == {
        "hip_prosthesis": ["a hip_prosthesis."]}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("class_specific", [False, True])
def test_coop_with_underscores_is_the_reference_prompt_with_spaces(adapters, family, class_specific):
    ad = adapters[family]
    m = CoOp(ad, UNDERSCORED, n_ctx=None, ctx_init=PHOTO, class_specific=class_specific)
    kept = CoOp(ad, UNDERSCORED, n_ctx=None, ctx_init=PHOTO, class_specific=class_specific, keep_underscores=True)
    assert m.classnames == kept.classnames == UNDERSCORED  # only the text changes, not the labels
    with torch.no_grad():
        ours, ours_kept = m.text_features(), kept.text_features()
        ref = ad.encode_text([f"{PHOTO} {c}." for c in SPACED], cut=False)
        raw = ad.encode_text([f"{PHOTO} {c}." for c in UNDERSCORED], cut=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours_kept, raw, rtol=0, atol=1e-5)
    assert _differs(ref[0], raw[0])  # the two prompts really differ on this tower
    torch.testing.assert_close(ours[1], ours_kept[1], rtol=0, atol=1e-5)  # a name without "_" is untouched


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cls,kw", [(CoCoOp, {}), (MaPLe, {"depth": "all"}), (IVLP, {}), (KgCoOp, {}), (ProGrad, {})],
                         ids=["cocoop", "maple", "ivlp", "kgcoop", "prograd"])
def test_every_learned_prompt_reads_spaces(adapters, family, cls, kw):
    """The prompt every context method tokenises is the one built from the spaced names."""
    ad = adapters[family]
    under = cls(ad, UNDERSCORED, **kw).context.ids
    spaced = cls(ad, SPACED, **kw).context.ids
    kept = cls(ad, UNDERSCORED, keep_underscores=True, **kw).context.ids
    assert torch.equal(under, spaced)
    assert under.shape != kept.shape or not torch.equal(under, kept)


@pytest.mark.parametrize("family", FAMILIES)
def test_maple_depth_zero_with_underscores_is_zero_shot_with_spaces(adapters, family):
    ad = adapters[family]
    with torch.no_grad():
        ours = MaPLe(ad, UNDERSCORED, depth=0).text_features()
        ref = ad.encode_text([f"{PHOTO} {c}." for c in SPACED], cut=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_text_baselines_read_spaces(adapters, family):
    """Zero-shot (CoOp's ZeroShotCLIP: `temp.format(c.replace("_", " "))`) and every method
    built on its template path: the class features are those of the spaced names."""
    ad = adapters[family]
    ref = F.normalize(ad.encode_text(fill("a photo of a {}.", SPACED)).float(), dim=-1)
    raw = F.normalize(ad.encode_text([f"a photo of a {c}." for c in UNDERSCORED]).float(), dim=-1)
    assert _differs(ref, raw)
    built = {
        "zeroshot": lambda **k: ZeroShotClassifier(ad, UNDERSCORED, **k).class_features,
        "clip_adapter": lambda **k: CLIPAdapter(ad, UNDERSCORED, **k).text_weights,
        "kgcoop": lambda **k: KgCoOp(ad, UNDERSCORED, **k).hand_crafted,
        "prograd": lambda **k: ProGrad(ad, UNDERSCORED, **k).zero_shot_text,
        "vpt_deep": lambda **k: VPTDeep(ad, UNDERSCORED, depth=0, **k).class_features,
    }
    for name, make in built.items():
        torch.testing.assert_close(make(), ref, rtol=0, atol=1e-5, msg=name)
        torch.testing.assert_close(make(keep_underscores=True), raw, rtol=0, atol=1e-5, msg=name)


def test_ensembles_are_used_as_given(adapters):
    """Description sentences are the user's text: never rewritten, even with underscores."""
    ad = adapters["native"]
    ens = {"oval_plate": ["an oval_plate device"], "round": ["a round device"]}
    zs = ZeroShotClassifier(ad, UNDERSCORED, ensembles=ens)
    direct = F.normalize(ad.encode_texts(["an oval_plate device"], normalize=True).float().mean(0), dim=-1)
    torch.testing.assert_close(zs.class_features[0], direct, rtol=0, atol=1e-6)


def test_underscore_option_is_registered_with_the_reference_default():
    text_methods = {"zeroshot", "coop", "cocoop", "maple", "ivlp", "vpt_deep", "kgcoop", "prograd", "biomedcoop",
                    "cilmp", "clip_adapter", "tip_adapter", "tip_adapter_f", "lp_pp"}
    assert text_methods <= set(REGISTRY)
    for name in text_methods:
        field = get_spec(name).options.__dataclass_fields__["keep_underscores"]
        assert field.default is False and field.type is bool, name


# --- class-specific random context: independent draws per class ------------------------

CONTEXT_METHODS = [(CoOp, {}), (CoCoOp, {"ctx_init": None}), (MaPLe, {"ctx_init": None, "depth": "all"}),
                   (IVLP, {"ctx_init": None}), (KgCoOp, {"ctx_init": None}), (ProGrad, {"ctx_init": None})]
CONTEXT_IDS = ["coop", "cocoop", "maple", "ivlp", "kgcoop", "prograd"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cls,kw", CONTEXT_METHODS, ids=CONTEXT_IDS)
def test_class_specific_random_contexts_are_independent_draws(adapters, family, cls, kw):
    ad = adapters[family]
    torch.manual_seed(0)
    ctx = cls(ad, NAMES, n_ctx=4, class_specific=True, **kw).context.ctx.detach()
    assert ctx.shape == (len(NAMES), 4, ad.text_width)
    for i in range(1, len(NAMES)):
        assert _differs(ctx[0], ctx[i], 1e-3), f"class {i} starts from class 0's context"
    torch.manual_seed(0)
    shared = cls(ad, NAMES, n_ctx=4, class_specific=True, shared_class_init=True, **kw).context.ctx.detach()
    assert shared.shape == ctx.shape
    assert all(torch.equal(shared[0], shared[i]) for i in range(len(NAMES)))


@pytest.mark.parametrize("family", FAMILIES)
def test_class_specific_draws_are_the_reference_tensor(adapters, family):
    """Default: N(0, 0.02) of shape (n_cls, n_ctx, dim), as CoOp's `torch.empty(n_cls, n_ctx,
    ctx_dim)` + `normal_(std=0.02)`; the option reproduces medkit's former draw bit for bit."""
    ad = adapters[family]
    torch.manual_seed(3)
    ctx = CoOp(ad, NAMES, n_ctx=4, class_specific=True).context.ctx.detach()
    torch.manual_seed(3)
    torch.testing.assert_close(ctx, torch.randn(len(NAMES), 4, ad.text_width) * 0.02, rtol=0, atol=0)
    assert 0.015 < float(ctx.std()) < 0.025 and abs(float(ctx.mean())) < 0.005
    torch.manual_seed(3)
    shared = CoOp(ad, NAMES, n_ctx=4, class_specific=True, shared_class_init=True).context.ctx.detach()
    torch.manual_seed(3)
    former = (torch.randn(4, ad.text_width) * 0.02).unsqueeze(0).repeat(len(NAMES), 1, 1)
    torch.testing.assert_close(shared, former, rtol=0, atol=0)
    # a generic context is untouched by the change: one (n_ctx, dim) draw
    torch.manual_seed(3)
    generic = CoOp(ad, NAMES, n_ctx=4).context.ctx.detach()
    torch.manual_seed(3)
    torch.testing.assert_close(generic, torch.randn(4, ad.text_width) * 0.02, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shared_class_init", [False, True])
def test_class_specific_text_init_is_copied_to_every_class(adapters, family, shared_class_init):
    """A phrase starts every class at its embeddings (the phrase is the reference's context
    for every class), whatever `shared_class_init` says."""
    ad = adapters[family]
    m = CoOp(ad, NAMES, n_ctx=None, ctx_init=PHOTO, class_specific=True, shared_class_init=shared_class_init)
    ctx = m.context.ctx.detach()
    assert ctx.shape == (len(NAMES), 4, ad.text_width)
    generic = CoOp(ad, NAMES, n_ctx=None, ctx_init=PHOTO).context.ctx.detach()
    for i in range(len(NAMES)):
        torch.testing.assert_close(ctx[i], generic, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_class_specific_init_is_seeded(adapters, family):
    ad = adapters[family]

    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return CoOp(ad, NAMES, n_ctx=4, class_specific=True).context.ctx.detach()

    assert torch.equal(draw(7), draw(7))
    assert _differs(draw(7), draw(8), 1e-3)


# --- MaPLe couplings: deeper layers are clones of one Linear ---------------------------

@pytest.fixture(scope="module")
def deep_adapter(tmp_path_factory) -> BackboneAdapter:
    """A tiny native CLIP with 4 layers per tower: depth 4 has three deeper couplings (the
    shared tiny towers have 2 layers, i.e. one deeper coupling: nothing to compare)."""
    from medkit.backbones import load_backbone

    path = tmp_path_factory.mktemp("deep_config") / "tiny-native-clip-4.json"
    path.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 4, "width": 32,
                                                                "patch_size": 8, "head_width": 16},
                                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 24,
                                             "heads": 2, "layers": 4}}))
    torch.manual_seed(0)
    return load_backbone(str(path)).eval()


def _weights(layer: nn.Linear) -> torch.Tensor:
    return torch.cat([layer.weight.detach().flatten(), layer.bias.detach()])


def test_maple_deeper_couplings_start_as_clones(deep_adapter):
    ad = deep_adapter
    torch.manual_seed(0)
    m = MaPLe(ad, NAMES, depth=4)
    c = m.couplings
    assert len(c) == 4 and all(layer.weight.shape == (ad.vision_width, ad.text_width) for layer in c)
    for i in (2, 3):
        torch.testing.assert_close(_weights(c[i]), _weights(c[1]), rtol=0, atol=0)
        assert c[i].weight.data_ptr() != c[1].weight.data_ptr()  # copies, not one tied parameter
    assert _differs(_weights(c[0]), _weights(c[1]), 1e-3)  # layer 0 is the reference's separate `proj`
    # they train separately: a step moves each deeper coupling by its own layer's gradient
    m.train()
    x = torch.randn(2, 3, ad.image_size, ad.image_size, generator=torch.Generator().manual_seed(0))
    m.loss(m(x), torch.tensor([0, 2])).backward()
    with torch.no_grad():
        for layer in c:
            layer.weight.sub_(layer.weight.grad)
    assert _differs(_weights(c[2]), _weights(c[1]))


def test_maple_independent_couplings_option(deep_adapter):
    ad = deep_adapter
    torch.manual_seed(0)
    c = MaPLe(ad, NAMES, depth=4, independent_couplings=True).couplings
    assert len(c) == 4
    for i in range(4):
        for j in range(i):
            assert _differs(_weights(c[i]), _weights(c[j]), 1e-3), (i, j)


def test_coupling_layers_follow_the_reference_and_the_former_draws():
    """Default: `proj` then `_get_clones(single_layer, depth - 1)`, the same RNG order as the
    reference (proj first, the cloned layer once); the option replays medkit's former
    `ModuleList(Linear for each layer)` bit for bit."""
    torch.manual_seed(0)
    cloned = coupling_layers(5, 8, 12)
    torch.manual_seed(0)
    proj, single = nn.Linear(8, 12), nn.Linear(8, 12)
    torch.testing.assert_close(_weights(cloned[0]), _weights(proj), rtol=0, atol=0)
    for layer in cloned[1:]:
        torch.testing.assert_close(_weights(layer), _weights(single), rtol=0, atol=0)
    torch.manual_seed(0)
    independent = coupling_layers(5, 8, 12, independent=True)
    torch.manual_seed(0)
    former = nn.ModuleList(nn.Linear(8, 12) for _ in range(5))
    for a, b in zip(independent, former):
        torch.testing.assert_close(_weights(a), _weights(b), rtol=0, atol=0)
    assert len(coupling_layers(0, 8, 12)) == 0 and len(coupling_layers(1, 8, 12)) == 1


def test_maple_couplings_are_seeded(deep_adapter):
    def couplings(seed: int, **kw) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [_weights(layer) for layer in MaPLe(deep_adapter, NAMES, depth=4, **kw).couplings]

    for kw in ({}, {"independent_couplings": True}):
        a, b, other = couplings(1, **kw), couplings(1, **kw), couplings(2, **kw)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert all(_differs(x, y, 1e-3) for x, y in zip(a, other))
    field = get_spec("maple").options.__dataclass_fields__["independent_couplings"]
    assert field.default is False
