"""The training loop: every method can fit a batch, runs are reproducible, an interrupted
run resumes exactly, and the schedule is the documented one."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.data import Split
from medkit.data.readers import read_imagefolder
from medkit.methods import IVLP, CoCoOp, CoOp, MaPLe, VPTDeep, build_vit
from medkit.methods.base import MethodBase
from medkit.train import Data, ResumeError, TrainConfig, encode, fit, lr_factor, predict, seed_everything

# read_imagefolder sorts the class folders: labels 0, 1, 2 are these names in this order;
# all are single tokens of both tiny tokenizers (see test_prompt_methods.py)
NAMES = ["oval", "plate", "round"]
FAST = TrainConfig(epochs=40, batch_size=6, optimizer="adamw", lr=1e-2, weight_decay=0.0, warmup_epochs=0,
                   augment=False)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run fastest on one thread


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Split:
    """Six 32-px PNGs, two per class: a class colour plus noise, read back as a Split."""
    root = tmp_path_factory.mktemp("imgs") / "train"
    rng = np.random.default_rng(0)
    colours = {"oval": (200, 60, 60), "plate": (60, 200, 60), "round": (60, 60, 200)}
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(2):
            arr = np.clip(np.array(colour) + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    sp = read_imagefolder(root)
    assert list(sp.labels.classnames) == NAMES and len(sp) == 6
    return sp


def _history(h: pd.DataFrame) -> pd.DataFrame:
    return h.drop(columns="seconds")  # wall time is the one column that may differ


# --- every method overfits one batch --------------------------------------------------

def _sharp_hf(adapters: dict[str, BackboneAdapter]) -> BackboneAdapter:
    """The tiny BERT of conftest at its 0.02 init gives every sentence the same CLS feature
    (cosine 1.0000 between any two): no text-side method could separate classes on it. A
    copy with its text transformer re-drawn at std 0.3 is input-sensitive (cosines ~0.4-0.7)."""
    ad = copy.deepcopy(adapters["hf"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ad.model.text.transformer.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3, generator=g)
    return ad


@dataclass(frozen=True)
class Case:
    build: Callable[[dict[str, BackboneAdapter]], nn.Module]
    data: str  # "features" (cached by encode) or "split" (images every step)
    lr: float
    min_loss_ratio: float = 3.0  # first-epoch loss / final loss


CASES: dict[str, Case] = {
    "coop-native": Case(lambda ads: CoOp(ads["native"], NAMES, n_ctx=4), "features", 1e-2),
    "coop-hf": Case(lambda ads: CoOp(_sharp_hf(ads), NAMES, n_ctx=4), "features", 3e-2),
    "coop-csc-native": Case(lambda ads: CoOp(ads["native"], NAMES, n_ctx=4, class_specific=True), "features", 1e-2),
    "cocoop-native": Case(lambda ads: CoCoOp(ads["native"], NAMES), "features", 1e-1),
    "cocoop-hf": Case(lambda ads: CoCoOp(_sharp_hf(ads), NAMES), "features", 1e-1),
    "vit-head": Case(lambda ads: build_vit("scratch", len(NAMES), mode="head"), "features", 3e-2),
    # image towers run every step: the 32-px native backbone keeps these fast
    "maple-native": Case(lambda ads: MaPLe(ads["native"], NAMES, depth="all"), "split", 1e-2),
    "ivlp-native": Case(lambda ads: IVLP(ads["native"], NAMES), "split", 1e-2),
    # VPT's class texts are fixed and near-parallel on this random tower (cosine 0.995):
    # prompts flip the predictions but cannot open large logit margins
    "vpt_deep-native": Case(lambda ads: VPTDeep(ads["native"], NAMES), "split", 1e-2, min_loss_ratio=1.05),
    "vit-full": Case(lambda ads: build_vit("scratch", len(NAMES), mode="full"), "split", 3e-2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_method_overfits_one_batch(adapters, split, name):
    """The whole path (loader, forward, loss, optimizer, schedule) really trains."""
    case = CASES[name]
    seed_everything(0)
    m = case.build(adapters)
    assert m.uses_cached_features == (case.data == "features")
    data = encode(m, split) if case.data == "features" else split
    logits0, y = predict(m, data)
    assert float((logits0.argmax(1) == y).float().mean()) < 1.0  # else reaching 1.0 proves nothing
    hist = fit(m, data, config=FAST.with_(lr=case.lr), progress=False)
    assert list(hist.epoch) == list(range(1, FAST.epochs + 1))
    logits, y = predict(m, data)
    first, last = float(nn.functional.cross_entropy(logits0, y)), float(nn.functional.cross_entropy(logits, y))
    assert float((logits.argmax(1) == y).float().mean()) == 1.0, f"{name}: loss {first:.3f} → {last:.3f}"
    assert last < first / case.min_loss_ratio, f"{name}: loss {first:.3f} → {last:.3f}"


def test_vit_head_mode_freezes_the_trunk():
    m = build_vit("scratch", len(NAMES), mode="head")
    assert m.uses_cached_features
    assert not any(p.requires_grad for p in m.trunk.parameters())
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    m.train()
    assert not m.trunk.training  # frozen: no dropout or statistics drift while the head trains
    full = build_vit("scratch", len(NAMES), mode="full")
    assert not full.uses_cached_features and all(p.requires_grad for p in full.parameters())
    with pytest.raises(ValueError, match="mode"):
        build_vit("scratch", len(NAMES), mode="partial")


def test_features_and_split_inputs_train_alike(adapters, split):
    """A cached-feature method given a Split encodes it itself: the same run either way."""
    ad = adapters["native"]
    cfg = FAST.with_(epochs=3)
    seed_everything(0)
    a = CoOp(ad, NAMES, n_ctx=4)
    ha = fit(a, split, config=cfg, progress=False)
    seed_everything(0)
    b = CoOp(ad, NAMES, n_ctx=4)
    hb = fit(b, encode(b, split), config=cfg, progress=False)
    pd.testing.assert_frame_equal(_history(ha), _history(hb))
    with pytest.raises(TypeError, match="Split"):
        fit(VPTDeep(ad, NAMES), encode(a, split), config=cfg, progress=False)


# --- reproducibility ------------------------------------------------------------------

def _seeded_run(adapters, split, kind: str, seed: int) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    ad = adapters["native"]
    seed_everything(seed)  # the random init happens before fit seeds the loop
    cfg = TrainConfig(epochs=3, batch_size=2, seed=seed, lr=0.05)
    if kind == "coop":  # shuffled mini-batches of cached features
        m = CoOp(ad, NAMES, n_ctx=4)
        data: Data = encode(m, split)
    else:  # image tower with random augmentation: the transform's RNG must be seeded too
        m, data, cfg = VPTDeep(ad, NAMES), split, cfg.with_(augment=True)
    return _history(fit(m, data, config=cfg, progress=False)), m.trainable_state()


@pytest.mark.parametrize("kind", ["coop", "vpt_deep"])
def test_same_seed_same_run(adapters, split, kind):
    h1, s1 = _seeded_run(adapters, split, kind, seed=1)
    h2, s2 = _seeded_run(adapters, split, kind, seed=1)
    pd.testing.assert_frame_equal(h1, h2)
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)
    h3, _ = _seeded_run(adapters, split, kind, seed=2)
    assert not np.allclose(h1.train_loss, h3.train_loss)  # the seed is actually used


# --- checkpoint and resume ------------------------------------------------------------

class _StopAfter:
    """Callback that interrupts training after `epoch` (the checkpoint is already written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, row: dict, method: nn.Module) -> bool:
        return row["epoch"] >= self.epoch


@pytest.mark.parametrize("kind", ["coop", "vpt_deep"])
def test_resume_continues_an_interrupted_run_exactly(adapters, split, tmp_path, kind):
    ad = adapters["native"]
    cfg = TrainConfig(epochs=4, batch_size=2, optimizer="adamw", lr=0.02, warmup_epochs=1, warmup_lr=1e-3,
                      augment=kind == "vpt_deep")

    def build() -> tuple[nn.Module, Data]:
        m = CoOp(ad, NAMES, n_ctx=4) if kind == "coop" else VPTDeep(ad, NAMES)
        return m, (encode(m, split) if kind == "coop" else split)

    seed_everything(0)
    whole, data = build()
    h_whole = fit(whole, data, config=cfg, progress=False)

    seed_everything(0)
    first, data = build()
    h_first = fit(first, data, config=cfg, checkpoint_dir=tmp_path, callbacks=[_StopAfter(2)], progress=False)
    assert list(h_first.epoch) == [1, 2] and (tmp_path / "last.pt").is_file()

    seed_everything(99)  # a fresh process: another init and RNG state, all restored from the checkpoint
    again, data = build()
    h_again = fit(again, data, config=cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert list(h_again.epoch) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(h_again.iloc[:2], h_first)  # the saved rows, seconds included
    pd.testing.assert_frame_equal(_history(h_again), _history(h_whole))
    expected = whole.trainable_state()
    torch.testing.assert_close(again.trainable_state(), expected, rtol=0, atol=0)

    # resuming a finished run trains no further
    h_done = fit(again, data, config=cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert list(h_done.epoch) == [1, 2, 3, 4]
    torch.testing.assert_close(again.trainable_state(), expected, rtol=0, atol=0)


def test_resume_with_more_epochs_follows_the_new_schedule(adapters, split, tmp_path):
    """Extending a finished 2-epoch run to 4 epochs: epochs 3-4 train at the new cosine's
    lr (not at the old run's final lr, which is 0 for a cosine that has run out)."""
    ad = adapters["native"]
    short = TrainConfig(epochs=2, batch_size=6, optimizer="adamw", lr=0.02, warmup_epochs=0)
    long = short.with_(epochs=4)
    seed_everything(0)
    m = CoOp(ad, NAMES, n_ctx=4)
    feats = encode(m, split)
    h_short = fit(m, feats, config=short, checkpoint_dir=tmp_path, progress=False)
    ctx = m.context.ctx.detach().clone()
    seed_everything(0)
    m2 = CoOp(ad, NAMES, n_ctx=4)
    h_long = fit(m2, feats, config=long, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert list(h_long.epoch) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(h_long.iloc[:2], h_short)
    np.testing.assert_allclose(h_long.lr.iloc[2:], [long.lr * lr_factor(e, long) for e in (2, 3)])
    assert (m2.context.ctx - ctx).abs().max() > 0  # it trained on from the checkpoint


# --- learning-rate schedule ----------------------------------------------------------

def test_lr_factor_warmup_then_cosine():
    cfg = TrainConfig(epochs=10, lr=0.002, warmup_epochs=1, warmup_lr=1e-5)
    assert lr_factor(0, cfg) == pytest.approx(1e-5 / 0.002)  # the constant warm-up epoch
    after = [lr_factor(e, cfg) for e in range(1, 10)]
    assert after == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 10)) for e in range(1, 10)])
    assert all(a > b for a, b in zip(after, after[1:])) and after[-1] > 0  # decays, never reaches 0 in-run
    no_warmup = cfg.with_(warmup_epochs=0)
    assert lr_factor(0, no_warmup) == 1.0
    assert lr_factor(5, no_warmup) == pytest.approx(0.5)
    two = cfg.with_(warmup_epochs=2)
    assert lr_factor(1, two) == pytest.approx(1e-5 / 0.002) and lr_factor(2, two) == pytest.approx(lr_factor(2, cfg))


def test_fit_applies_the_schedule(adapters, split):
    """The lr each epoch actually trains at is base lr × lr_factor(epoch)."""
    cfg = TrainConfig(epochs=4, batch_size=6, lr=0.01, warmup_epochs=1, warmup_lr=1e-4)
    m = CoOp(adapters["native"], NAMES, n_ctx=2)
    hist = fit(m, encode(m, split), config=cfg, progress=False)
    np.testing.assert_allclose(hist.lr, [cfg.lr * lr_factor(e, cfg) for e in range(4)])
    with pytest.raises(TypeError, match="unknown TrainConfig fields"):
        cfg.with_(learning_rate=1.0)


def test_resume_refuses_a_checkpoint_of_another_run_and_says_what_differs(adapters, split, tmp_path):
    """A fixed checkpoint folder reused by another seed, other data with the same class count,
    or another dataset identity: an error naming the difference, never a silent reuse."""
    ad = adapters["native"]
    cfg = TrainConfig(epochs=2, batch_size=6, optimizer="adamw", lr=0.02, warmup_epochs=0)
    seed_everything(0)
    m = CoOp(ad, NAMES, n_ctx=4)
    feats = encode(m, split)
    fit(m, feats, config=cfg, checkpoint_dir=tmp_path, progress=False, fingerprint={"dataset": "a-1234"})
    with pytest.raises(ResumeError, match=r"config\.seed: checkpoint 1 vs this run 2"):
        fit(CoOp(ad, NAMES, n_ctx=4), feats, config=cfg.with_(seed=2), checkpoint_dir=tmp_path, resume=True,
            progress=False, fingerprint={"dataset": "a-1234"})
    other = (feats[0], feats[1].flip(0))  # same size and classes, other labels per row
    with pytest.raises(ResumeError, match=r"train_data"):
        fit(CoOp(ad, NAMES, n_ctx=4), other, config=cfg, checkpoint_dir=tmp_path, resume=True, progress=False,
            fingerprint={"dataset": "a-1234"})
    with pytest.raises(ResumeError, match=r"dataset: checkpoint 'a-1234' vs this run 'b-9999'"):
        fit(CoOp(ad, NAMES, n_ctx=4), feats, config=cfg, checkpoint_dir=tmp_path, resume=True, progress=False,
            fingerprint={"dataset": "b-9999"})
    same = CoOp(ad, NAMES, n_ctx=4)  # the run it belongs to resumes (to its end: nothing left to train)
    h = fit(same, feats, config=cfg, checkpoint_dir=tmp_path, resume=True, progress=False, fingerprint={"dataset": "a-1234"})
    assert list(h.epoch) == [1, 2]
    torch.testing.assert_close(same.trainable_state(), m.trainable_state(), rtol=0, atol=0)


# --- precision --------------------------------------------------------------------------

class _Overflowing(MethodBase):
    """A linear head whose logits overflow fp16 (65504) but not bf16 or fp32."""

    def __init__(self, dim: int, classes: int, gain: float) -> None:
        super().__init__()
        self.head = nn.Linear(dim, classes)
        self.gain = gain

    def forward(self, x: torch.Tensor, text_features=None) -> torch.Tensor:
        return self.head(x) * self.gain


def test_precision_resolves_per_device_and_rejects_unknown_names():
    from medkit.precision import resolve

    assert resolve("auto", "cpu") == "fp32" and resolve("bf16", "cpu", amp=False) == "fp32"
    assert resolve("fp16", "cpu") == "fp16"
    with pytest.raises(ValueError, match="fp8"):
        resolve("fp8", "cpu")


def test_a_non_finite_loss_stops_the_run_with_the_step_and_what_to_do():
    from medkit.precision import NonFiniteLoss

    torch.manual_seed(0)
    x, y = torch.randn(8, 4) * 100, torch.arange(8) % 2
    cfg = FAST.with_(epochs=2, batch_size=4, validate=False)
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, step 1: .*under fp16.*'bf16'"):
        fit(_Overflowing(4, 2, 1e4), (x, y), config=cfg.with_(precision="fp16"), progress=False)
    history = fit(_Overflowing(4, 2, 1e4), (x, y), config=cfg.with_(precision="fp32"), progress=False)
    assert np.isfinite(history.train_loss).all()  # the same run in fp32 is fine


def test_cosine_logits_stay_float32_under_autocast(adapters, split):
    m = CoOp(adapters["native"], NAMES, n_ctx=4)
    feats = torch.randn(3, m.adapter.embed_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.matmul(feats, feats.T).dtype == torch.bfloat16  # autocast is on …
        logits = m.cosine_logits(feats, m.text_features())
    assert logits.dtype == torch.float32  # … and the logits are out of it
    with torch.no_grad():
        torch.testing.assert_close(logits, m.cosine_logits(feats, m.text_features()), rtol=0, atol=0.05)
    bf16 = fit(CoOp(adapters["native"], NAMES, n_ctx=4), encode(m, split),
               config=FAST.with_(epochs=1, precision="bf16"), progress=False)
    assert np.isfinite(bf16.train_loss).all()
