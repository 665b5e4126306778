"""What every method shares: one protocol, a frozen backbone, its own few parameters.

A method is an `nn.Module` whose `forward` maps a batch to class logits, built as
`cls(adapter, classnames, **options)`. Its lifecycle, run by `medkit.experiment` for every
method alike: `prepare(train, val)` with frozen features (closed-form fits, caches,
data-driven initialisations) → the gradient loop when `trains_by_gradient` →
`finish(val)` (searches on validation) → evaluation. Two kinds of input exist, and the
trainer picks by `uses_cached_features`:

- `True`: the image tower is frozen and unprompted (CoOp, CoCoOp, linear probe, a head
  on a frozen ViT): `forward` takes image *features* from `image_encoder()`, which the
  feature cache computes once per image (and augmented view) instead of once per step;
- `False`: the image tower runs every step (MaPLe, VPT, IVLP, full fine-tuning):
  `forward` takes image tensors.

A training step asks the method for its loss as named terms (`loss_terms`: logged per
term) and lets it turn them into gradients (`backward_step`: the sum by default; a method
that shapes gradients, ProGrad-style, overrides it).
"""
from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.features import ImageEncoder, adapter_encoder
from medkit.precision import float32

Features = tuple[torch.Tensor, torch.Tensor]


@runtime_checkable
class Method(Protocol):
    """The protocol every registered method meets (`tests/test_method_contract.py`)."""

    uses_cached_features: bool
    trains_by_gradient: bool
    classnames: list[str]

    def image_encoder(self) -> ImageEncoder: ...
    def precompute_text(self) -> torch.Tensor | None: ...
    def prepare(self, train: Features, val: Features | None = None) -> None: ...
    def finish(self, val: Features | None) -> None: ...
    def loss_terms(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]: ...
    def backward_step(self, terms: dict[str, torch.Tensor]) -> torch.Tensor: ...
    def trainable_state(self) -> dict[str, torch.Tensor]: ...
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None: ...
    def class_indexed_parameters(self) -> set[str]: ...


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The terms summed in their order (the first term is the start, not 0 + it)."""
    values = list(terms.values())
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


class MethodBase(nn.Module):
    """Defaults of the lifecycle hooks, shared by the frozen-backbone methods and ViT
    fine-tuning."""

    uses_cached_features: bool = True
    #: False: `prepare` fits the method (a closed form, a search, its own full-batch loop)
    #: and the runner skips the gradient loop (zero-shot, linear probe, Tip-Adapter, LP++).
    trains_by_gradient: bool = True
    #: evaluate in one batch: the logits are one matrix product, so a row's logits must not
    #: depend on how a split happens to be batched (zero-shot).
    eval_in_one_batch: bool = False

    def precompute_text(self) -> torch.Tensor | None:
        """Class text features that do not depend on the image (computed once per evaluation
        pass); None for image-conditioned methods."""
        return None

    def prepare(self, train: Features, val: Features | None = None) -> None:
        """Called once before training with the frozen, unaugmented image features and labels
        of the training (and validation) images: cache models, closed-form fits and
        data-driven initialisations read them here. Nothing by default."""

    def finish(self, val: Features | None) -> None:
        """Called once after training with the validation features and labels:
        hyperparameter searches on validation (Tip-Adapter's α, β). Nothing by default."""

    def loss_terms(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training loss as named terms, each already weighted; the loss is their sum."""
        return {"ce": F.cross_entropy(logits, targets)}

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return total_loss(self.loss_terms(logits, targets))

    def backward_step(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Turn the step's loss terms into gradients of the trainable parameters; returns the
        loss that was minimised (for the log)."""
        total = total_loss(terms)
        total.backward()
        return total

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Only the method's own parameters: a checkpoint never holds the backbone."""
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        unknown = sorted(set(state) - set(params))
        if unknown:
            raise KeyError(f"checkpoint has parameters this method lacks: {unknown[:5]}")
        with torch.no_grad():
            for n, v in state.items():
                if params[n].shape != v.shape:
                    raise ValueError(f"{n}: checkpoint shape {tuple(v.shape)} ≠ {tuple(params[n].shape)}")
                params[n].copy_(v)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def class_indexed_parameters(self) -> set[str]:
        """Names of parameters whose first axis is the class (hierarchical stage 2 expands
        these from groups to classes; everything else is copied as is)."""
        return set()


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class FrozenBackboneMethod(MethodBase):
    """Base of the prompt methods: the adapter is frozen and stays in eval mode.

    Eval mode matters even when nothing trains: MiniCLIP's stem has BatchNorm whose running
    statistics would drift under `train()`.
    """

    def __init__(self, adapter: BackboneAdapter, classnames: list[str] | tuple[str, ...]) -> None:
        super().__init__()
        self.adapter = freeze(adapter)
        self.classnames = list(classnames)

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def train(self, mode: bool = True) -> "FrozenBackboneMethod":
        super().train(mode)
        self.adapter.eval()
        return self

    def image_encoder(self) -> ImageEncoder:
        """The frozen tower's normalised features: one cache entry per backbone and split
        serves zero-shot and every prompt method alike."""
        return adapter_encoder(self.adapter)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised frozen image features of a batch (what the feature cache stores)."""
        return self.image_encoder().encode(images)

    def cosine_logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """scale · norm(img) · norm(txt)ᵀ; text `[K, E]` or per image `[B, K, E]`; in float32
        under autocast too (`medkit.precision.float32`)."""
        with float32(image_features.device):
            img = F.normalize(image_features.float(), dim=-1)
            txt = F.normalize(text_features.float(), dim=-1)
            scale = self.adapter.logit_scale.float()
            if txt.dim() == 3:
                return scale * torch.einsum("be,bke->bk", img, txt)
            return scale * img @ txt.T
