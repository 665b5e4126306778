"""The contract every registered method meets, on every tiny tower family (SigLIP included).

Parametrised over the registry (as timm tests every model in `list_models()`): a method is
tested here the moment it registers, with the options of its first few-shot grid entry
and its `example` options (what fits a 2-layer tower)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import FAMILIES, TINY_NAMES, tiny_knowledge
from medkit.config import TrainConfig
from medkit.experiment import Experiment, Setting
from medkit.features import FeatureCache
from medkit.methods import REGISTRY, get_spec, list_methods
from medkit.methods.base import Method
from medkit.train import fit, transforms_of

CASES = [(name, family) for name in REGISTRY for family in FAMILIES]
BASE, NOVEL = TINY_NAMES[:2], TINY_NAMES[2:]


def setting_for(name: str) -> Setting:
    spec = get_spec(name)
    options = {**(dict(spec.grid[0].options) if spec.grid else {}), **spec.example}
    return Setting(name, "contract", options)


def reports(dataset):
    """Image-report pairs of the tiny dataset (contrastive fine-tuning reads them)."""
    from dataclasses import replace

    from medkit.data import Split

    train = dataset.splits["train"]
    return Split("train", [replace(s, text=f"an x-ray of a {s.classname} device") for s in train.samples], train.labels)


@pytest.fixture()
def experiment(adapters, tiny_dataset, tmp_path, request):
    family = request.node.callspec.params["family"]
    return Experiment(None, tiny_dataset, adapters[family], "smoke", FeatureCache(tmp_path / "cache"),
                      {"knowledge": tiny_knowledge(), "reports": reports(tiny_dataset)}, data_root=str(tmp_path),
                      log=lambda s: None)


def built(name: str, experiment, classnames=TINY_NAMES):
    """(setting, the method built from it) under a fixed seed."""
    setting = setting_for(name)
    torch.manual_seed(0)
    return setting, experiment.build(setting, list(classnames), seed=1)


def batch(method, n_per_class: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A small batch in the method's input space: images through its own evaluation
    transform, then frozen features where it reads the feature cache."""
    rng = np.random.default_rng(seed)
    _, tf = transforms_of(method)
    labels = torch.arange(method.n_classes).repeat_interleave(n_per_class)
    images = torch.stack([tf(Image.fromarray(np.clip(rng.normal(70 * int(c), 30, (40, 40, 3)), 0, 255).astype(np.uint8)))
                          for c in labels])
    x = method.image_encoder().encode(images) if method.uses_cached_features else images
    if getattr(method, "multilabel", False):  # findings: the class and, for even classes, the next one too
        targets = F.one_hot(labels, method.n_classes)
        even = labels % 2 == 0
        targets[even] |= F.one_hot((labels[even] + 1) % method.n_classes, method.n_classes)
        targets[1, 0] = -1  # an uncertain label, masked
        return x, targets.long()
    return x, labels


def task_loss(method, logits: torch.Tensor, y: torch.Tensor) -> float:
    """Cross-entropy, or for multi-label methods their own loss (ASL, ranking, … may trade a
    worse cross-entropy for what they optimise)."""
    if getattr(method, "multilabel", False):
        return float(method.loss(logits.float(), y))
    return float(F.cross_entropy(logits, y))


def task_accuracy(method, logits: torch.Tensor, y: torch.Tensor) -> float:
    from medkit.train import hits

    correct, counted = hits(logits, y)
    return correct / counted


def frozen(method, x: torch.Tensor) -> torch.Tensor:
    return x if method.uses_cached_features else method.image_encoder().encode(x)


def lifecycle(method, x, y) -> None:
    feats = (frozen(method, x), y)
    method.prepare(feats, feats)
    method.finish(feats)


def test_every_method_is_registered_with_its_options_and_budgets():
    assert {"zeroshot", "linear_probe", "coop", "cocoop", "maple", "vit_finetune", "biomedcoop", "cilmp"} <= set(REGISTRY)
    for name, spec in REGISTRY.items():
        assert spec.cls.registry_name == name
        assert isinstance(spec.training_defaults(), TrainConfig)
        fields = spec.options.__dataclass_fields__
        assert "adapter" not in fields and "classnames" not in fields
    coop = get_spec("coop").options.__dataclass_fields__
    assert coop["class_specific"].type is bool and coop["n_ctx"].default == 16  # typed as the constructor is
    assert list_methods("deep_prompt") == ["maple", "vpt_deep", "ivlp"]


@pytest.mark.parametrize("name,family", CASES)
def test_forward_backward_gradients_only_into_the_method(name, family, experiment, one_thread):
    _, method = built(name, experiment)
    assert isinstance(method, Method), f"{name} does not meet the Method protocol"
    x, y = batch(method)
    lifecycle(method, x, y)
    method.train()
    logits = method(x)
    assert logits.shape == (len(y), len(TINY_NAMES)) and torch.isfinite(logits).all()
    own = {n for n, p in method.named_parameters() if p.requires_grad}
    assert not any(n.startswith("adapter.") for n in own), f"{name} trains its backbone"
    if not method.trains_by_gradient:
        return
    terms = method.loss_terms(logits.float(), y)
    assert terms and all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    method.zero_grad(set_to_none=True)
    method.backward_step(terms)
    with_grad = {n for n, p in method.named_parameters() if p.grad is not None}
    assert with_grad <= own, f"gradients outside the method's parameters: {sorted(with_grad - own)[:3]}"
    assert any(float(p.grad.abs().sum()) > 0 for n, p in method.named_parameters() if n in with_grad)


@pytest.mark.parametrize("name,family", CASES)
def test_trainable_state_round_trip(name, family, experiment, one_thread):
    setting, trained = built(name, experiment)
    x, y = batch(trained)
    lifecycle(trained, x, y)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    torch.manual_seed(5)  # another initialisation
    fresh = experiment.build(setting, TINY_NAMES, seed=2)
    fresh.load_trainable_state(trained.trainable_state())
    trained.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,family", CASES)
def test_fits_one_small_batch(name, family, experiment, one_thread):
    """The training loop (or the method's own fit) lowers the loss on the batch it sees."""
    _, method = built(name, experiment)
    x, y = batch(method)
    if get_spec(name).kind == "zeroshot":
        assert not list(method.trainable_parameters())  # nothing to fit
        return
    if not method.trains_by_gradient and hasattr(method, "pairs"):  # fine-tunes its backbone on image-text pairs
        from medkit.methods.clip_finetune_contrastive import contrastive_loss

        before = contrastive_loss(method.adapter, method.pairs)
        lifecycle(method, x, y)
        after = contrastive_loss(method.adapter, method.pairs)
        assert after < before, f"{name}: contrastive loss {before:.4f} → {after:.4f}"
        return
    if not method.trains_by_gradient:
        text = getattr(method, "text_weights", None)
        chance = 1.0 / len(TINY_NAMES) if y.dim() == 1 else float((y[y >= 0] == 0).float().mean())
        before = float((method.cosine_logits(frozen(method, x), text).argmax(1) == y).float().mean()) \
            if text is not None else chance
        lifecycle(method, x, y)
        method.eval()
        with torch.no_grad():
            after = task_accuracy(method, method(x), y)
        assert after >= before and after > chance
        return
    lifecycle(method, x, y)
    method.eval()
    with torch.no_grad():
        before = task_loss(method, method(x), y)
    # multi-label log-odds are scaled steeply (DualCoOp's 20 · 5): a smaller step
    lr = 1e-3 if getattr(method, "multilabel", False) else 1e-2
    cfg = TrainConfig(epochs=15, batch_size=len(y), optimizer="adamw", lr=lr, weight_decay=0.0, warmup_epochs=0,
                      augment=False, validate=False, seed=1)
    history = fit(method, (x, y), None, cfg, progress=False) if method.uses_cached_features else None
    if history is None:  # image inputs: the same loop over an in-memory batch
        opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=lr)
        for _ in range(15):
            method.train()
            opt.zero_grad(set_to_none=True)
            method.backward_step(method.loss_terms(method(x).float(), y))
            opt.step()
    method.eval()
    with torch.no_grad():
        after = task_loss(method, method(x), y)
    assert after < before, f"{name}: loss {before:.4f} → {after:.4f}"
    if history is not None:
        first_term = next(iter(method.loss_terms(method(x).float(), y)))
        assert {"train_loss", f"train_{first_term}"} <= set(history.columns)


@pytest.mark.parametrize("name,family", CASES)
def test_base_to_novel_transfer_where_the_method_allows_it(name, family, experiment, one_thread):
    setting, method = built(name, experiment, BASE)
    x, y = batch(method, 2)
    lifecycle(method, x, y)
    spec = get_spec(name)
    if not spec.novel_classes or method.class_indexed_parameters():
        with pytest.raises(ValueError, match="tied to the base classes"):
            experiment.transfer(setting, method, NOVEL, seed=1)
        return
    novel = experiment.transfer(setting, method, NOVEL, seed=1)
    assert novel.classnames == NOVEL
    for key, value in method.trainable_state().items():
        assert torch.equal(novel.trainable_state()[key], value)
    with torch.no_grad():
        assert novel(x).shape == (len(x), len(NOVEL))
