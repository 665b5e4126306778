"""Ways to adapt a segmentation VLM, as TuneVLSeg defines them, on medkit's prompt machinery.

Every strategy wraps a `SegmentationModel` and maps (images or their cached activations, the
index of each image's prompt among `prompts`) to mask logits. Registry names:

| name | what trains | vision tower per step |
|---|---|---|
| `seg_zeroshot` | nothing: the prompt as written | cached |
| `seg_decoder` | the decoder (MedVLSM's BiomedCLIPSeg recipe) | cached |
| `seg_finetune` | towers and decoder | runs |
| `seg_coop` | context tokens before the prompt (text); `depth` > 1 adds deep text prompts | cached |
| `seg_cocoop` | the context and a meta-net adding an image-conditioned bias to it | cached |
| `seg_vpt_deep` | vision prompt tokens in the first `depth` blocks | runs |
| `seg_maple` | text context + deep text prompts, coupled text → vision per layer | runs |
| `seg_shared_attn` | one context of text + vision width per layer, through a TransformerEncoderLayer, split per side | runs |
| `seg_shared_separate` | one `shared_dim` context per layer, projected to each side | runs |

TuneVLSeg's defaults: 4 context tokens, std 0.02, the context after the start token and before
the prompt, init "a photo of a" (`ctx_init=None`: random), the model frozen (`freeze_all`).
`upsampler=True` adds the learnable upsampler (`LearnableUpsampler`) to any strategy.
Deviations, each an option: the shared-context strategies draw their context at random (no
text init; TuneVLSeg's have none either), and Shared Separate uses one projection per side for
every layer (`per_layer_projections=True`: one per layer and side).

Frozen-tower strategies (`cached = True`) read the activations the decoder needs and the pooled
image feature from `medkit.seg.cache` (computed once per image); the rest run the image tower.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medkit.backbones.adapter import replace_positions
from medkit.methods.cocoop import MetaNet
from medkit.methods.context import PromptContext
from medkit.methods.deep import prompt_stack, resolve_depth
from medkit.methods.maple import coupling_layers
from medkit.methods.registry import Choice, FloatRange, IntRange, SearchSpace

from .model import LearnableUpsampler, SegmentationModel, patch_size

KINDS = ("zeroshot", "decoder", "finetune", "text", "visual", "multimodal")


#: the VLSM poster's Optuna space (lr 1e-5–5e-3 log, weight decay 1e-5–1e-2 log, depth 1–10)
#: with lr's top widened to 2e-2 so that it covers the CPU profiles' 1e-2 for prompts (a space
#: file with `lr: {low: 1.0e-5, high: 5.0e-3, log: true}` gives the poster's exactly); the depth
#: runs to the backbone's layers ("layers": 12 on CLIPSeg's ViT-B/16, as its depth 1–11/1–10)
SEG_OPTIMISER_SPACE: SearchSpace = {"lr": FloatRange(1e-5, 2e-2, log=True),
                                    "weight_decay": FloatRange(1e-5, 1e-2, log=True)}
SEG_DEPTH_SPACE: SearchSpace = {**SEG_OPTIMISER_SPACE, "depth": IntRange(1, "layers")}


@dataclass(frozen=True)
class SegStrategySpec:
    name: str
    cls: type
    kind: str
    search_space: SearchSpace = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """The constructor's options and their defaults (after the model and the prompts)."""
        params = list(inspect.signature(self.cls.__init__).parameters.values())[3:]
        return {p.name: p.default for p in params}

    def check(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.options()))
        if unknown:
            raise ValueError(f"{self.name}: unknown options {unknown}; it takes {sorted(self.options())}")


SEG_STRATEGIES: dict[str, SegStrategySpec] = {}


def register_seg(name: str, kind: str, search_space: SearchSpace | None = None):
    """`search_space`: what `python -m medkit search --method NAME` tunes (SegTrainConfig fields
    and the strategy's options; `medkit.search`)."""
    if kind not in KINDS:
        raise ValueError(f"{name}: kind {kind!r} not in {KINDS}")

    def wrap(cls: type) -> type:
        SEG_STRATEGIES[name] = SegStrategySpec(name, cls, kind, dict(search_space or {}))
        cls.registry_name = name
        return cls
    return wrap


def build_strategy(name: str, model: SegmentationModel, prompts: Sequence[str], **options: Any) -> "SegStrategy":
    if name not in SEG_STRATEGIES:
        raise ValueError(f"unknown segmentation strategy {name!r}; choose from {sorted(SEG_STRATEGIES)}")
    spec = SEG_STRATEGIES[name]
    spec.check(options)
    return spec.cls(model, list(prompts), **options)


class SegStrategy(nn.Module):
    """The frozen model, the prompts it is conditioned on, an optional learnable upsampler."""

    cached = False  # whether the image tower is frozen and unprompted (activations can be cached)
    trains_model = False  # whether some of the model's own weights train (then the strategy owns them)
    registry_name = ""

    def __init__(self, model: SegmentationModel, prompts: list[str], upsampler: bool = False) -> None:
        super().__init__()
        if not prompts:
            raise ValueError("a segmentation strategy needs at least one prompt")
        self.model = self.own(model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.trained_part().parameters():
            p.requires_grad_(True)
        self.prompts = list(prompts)
        self.upsampler = LearnableUpsampler(self.model.reduce_dim, patch_size(self.model.adapter)) if upsampler else None

    def own(self, model: SegmentationModel) -> SegmentationModel:
        """The model this strategy runs: the shared frozen one, or its own copy of what trains."""
        return model

    def trained_part(self) -> nn.Module:
        """The part of the model whose weights train (none: an empty module)."""
        return nn.Module()

    @property
    def adapter(self):
        return self.model.adapter

    def train(self, mode: bool = True) -> "SegStrategy":
        super().train(mode)
        self.model.eval()  # frozen parts: no dropout / BatchNorm updates in the towers or decoder
        self.trained_part().train(mode)
        return self

    # --- what the subclasses change
    def text_features(self, index: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def vision_prompts(self) -> list[torch.Tensor | None] | None:
        return None

    # --- the common forward
    def forward(self, index: torch.Tensor, images: torch.Tensor | None = None,
                activations: Sequence[torch.Tensor] | None = None, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """Mask logits `[B, H, W]`: from `activations` (+ `pooled`) when cached, else from `images`."""
        if activations is None:
            if images is None:
                raise ValueError("pass images, or cached activations")
            activations, pooled = self.model.adapter.encode_image_layers(
                images, self.model.extract_layers, self.vision_prompts(), with_pooled=True)
        elif not self.cached:
            raise ValueError(f"{self.registry_name} prompts or trains the image tower: it needs images, not cached "
                             "activations")
        return self.model.decode(activations, self.text_features(index, pooled), self.upsampler)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        missing = sorted(n for n, p in own.items() if p.requires_grad and n not in state)
        if missing or set(state) - set(own):
            raise ValueError(f"{self.registry_name}: state does not fit (missing {missing[:4]}, unexpected "
                             f"{sorted(set(state) - set(own))[:4]})")
        with torch.no_grad():
            for n, v in state.items():
                own[n].copy_(v)


class _FixedText(SegStrategy):
    """The prompts as written, encoded once (or every step, when the text tower trains)."""

    text_trains = False

    def __init__(self, model: SegmentationModel, prompts: list[str], upsampler: bool = False) -> None:
        super().__init__(model, prompts, upsampler)
        self.register_buffer("ids", self.adapter.trim(self.adapter.tokenize(self.prompts)), persistent=False)
        if not self.text_trains:
            with torch.no_grad():
                self.register_buffer("fixed", self.adapter.encode_text(self.ids).float(), persistent=False)

    def text_features(self, index: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        if not self.text_trains:
            return self.fixed[index]
        used, inverse = torch.unique(index, return_inverse=True)
        return self.adapter.encode_text(self.ids[used]).float()[inverse]


@register_seg("seg_zeroshot", "zeroshot")
class SegZeroShot(_FixedText):
    cached = True


@register_seg("seg_decoder", "decoder", SEG_OPTIMISER_SPACE)
class SegDecoderOnly(_FixedText):
    """Only the decoder trains (the towers frozen and shared): MedVLSM's recipe for a fresh decoder."""

    cached = True
    trains_model = True

    def own(self, model: SegmentationModel) -> SegmentationModel:
        return SegmentationModel(model.adapter, copy.deepcopy(model.decoder), model.extract_layers)

    def trained_part(self) -> nn.Module:
        return self.model.decoder


@register_seg("seg_finetune", "finetune", SEG_OPTIMISER_SPACE)
class SegFineTune(_FixedText):
    """Every weight of the model trains (the upper bound TuneVLSeg's tables compare with)."""

    trains_model = True
    text_trains = True

    def own(self, model: SegmentationModel) -> SegmentationModel:
        return copy.deepcopy(model)

    def trained_part(self) -> nn.Module:
        return self.model


class _Context(SegStrategy):
    """A learnable context spliced before every prompt (`PromptContext` over the prompt texts)."""

    def __init__(self, model: SegmentationModel, prompts: list[str], n_ctx: int = 4,
                 ctx_init: str | None = "a photo of a", upsampler: bool = False) -> None:
        super().__init__(model, prompts, upsampler)
        self.context = PromptContext(self.adapter, self.prompts, n_ctx, ctx_init)

    def rows(self, index: torch.Tensor, ctx: torch.Tensor | None = None, bias: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embeddings `[B, L, D]`, ids, context positions) of each image's prompt, with `ctx`
        (default: the learned one) plus a per-image `bias` `[B, D]`."""
        c = self.context
        ctx = c.ctx if ctx is None else ctx
        ctx = ctx.unsqueeze(0).expand(len(index), -1, -1) if bias is None else ctx.unsqueeze(0) + bias[:, None]
        pos = c.positions[index]
        return replace_positions(c.base[index].to(ctx.dtype), ctx, pos), c.ids[index], pos

    def encode(self, index: torch.Tensor, deep: Sequence[torch.Tensor | None] | None = None,
               ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Text features of the prompts in `index`, each distinct prompt encoded once."""
        used, inverse = torch.unique(index, return_inverse=True)
        emb, ids, pos = self.rows(used, ctx)
        return self.adapter.encode_text_from_embeddings(emb, ids, deep_prompts=deep, prompt_positions=pos).float()[inverse]


@register_seg("seg_coop", "text", SEG_DEPTH_SPACE)
class SegCoOp(_Context):
    """CoOp: `n_ctx` context vectors before the prompt. `depth` > 1 (a medkit option, for the
    depth sweep) also replaces the context positions at the input of text blocks 1..depth-1."""

    cached = True

    def __init__(self, model: SegmentationModel, prompts: list[str], n_ctx: int = 4,
                 ctx_init: str | None = "a photo of a", depth: int = 1, upsampler: bool = False) -> None:
        super().__init__(model, prompts, n_ctx, ctx_init, upsampler)
        self.depth = resolve_depth(self.adapter, depth, ("text",))
        self.deep_text = prompt_stack(max(0, self.depth - 1), self.context.n_ctx, self.adapter.text_width)

    def text_features(self, index: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        return self.encode(index, [None, *self.deep_text] if len(self.deep_text) else None)


@register_seg("seg_cocoop", "text", SEG_OPTIMISER_SPACE)
class SegCoCoOp(_Context):
    """CoCoOp: the context plus a meta-net bias from each image's pooled feature."""

    cached = True

    def __init__(self, model: SegmentationModel, prompts: list[str], n_ctx: int = 4,
                 ctx_init: str | None = "a photo of a", upsampler: bool = False) -> None:
        super().__init__(model, prompts, n_ctx, ctx_init, upsampler)
        self.meta_net = MetaNet(self.adapter.embed_dim, self.adapter.text_width)

    def text_features(self, index: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        if pooled is None:
            raise ValueError("seg_cocoop needs the pooled image feature")
        bias = self.meta_net(F.normalize(pooled.float(), dim=-1))
        emb, ids, _ = self.rows(index, bias=bias)  # one prompt per image: every row is its own
        return self.adapter.encode_text_from_embeddings(emb, ids).float()


@register_seg("seg_vpt_deep", "visual", SEG_DEPTH_SPACE)
class SegVPTDeep(_FixedText):
    """VPT-deep: `n_ctx` vision tokens (std 0.02) in the first `depth` image-tower blocks."""

    def __init__(self, model: SegmentationModel, prompts: list[str], n_ctx: int = 4, depth: int | str = "all",
                 upsampler: bool = False) -> None:
        super().__init__(model, prompts, upsampler)
        self.depth = resolve_depth(self.adapter, depth, ("vision",))
        if self.depth < 1:
            raise ValueError("seg_vpt_deep needs depth ≥ 1")
        self.vision = prompt_stack(self.depth, n_ctx, self.adapter.vision_width)

    def vision_prompts(self) -> list[torch.Tensor]:
        return list(self.vision)


@register_seg("seg_maple", "multimodal", SEG_DEPTH_SPACE)
class SegMaPLe(_Context):
    """MaPLe: the text context (layer 0) and deep text prompts (layers 1..depth-1), each
    projected to the image tower's width as that layer's vision prompt."""

    def __init__(self, model: SegmentationModel, prompts: list[str], n_ctx: int = 4,
                 ctx_init: str | None = "a photo of a", depth: int | str = "all", upsampler: bool = False) -> None:
        super().__init__(model, prompts, n_ctx, ctx_init, upsampler)
        self.depth = resolve_depth(self.adapter, depth)
        if self.depth < 1:
            raise ValueError("seg_maple needs depth ≥ 1")
        self.deep_text = prompt_stack(self.depth - 1, n_ctx, self.adapter.text_width)
        self.couplings = coupling_layers(self.depth, self.adapter.text_width, self.adapter.vision_width)

    def vision_prompts(self) -> list[torch.Tensor]:
        return [proj(src) for proj, src in zip(self.couplings, [self.context.ctx, *self.deep_text])]

    def text_features(self, index: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        return self.encode(index, [None, *self.deep_text])


class _Shared(_Context):
    """A context per layer made jointly for both towers; `split()` gives (text, vision) per layer."""

    def __init__(self, model: SegmentationModel, prompts: list[str], n_ctx: int = 4, depth: int | str = "all",
                 upsampler: bool = False) -> None:
        super().__init__(model, prompts, n_ctx, None, upsampler)
        self.depth = resolve_depth(self.adapter, depth)
        if self.depth < 1:
            raise ValueError(f"{self.registry_name} needs depth ≥ 1")
        self.context.ctx.requires_grad_(False)  # layer 0's text context comes from the shared one

    def split(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        raise NotImplementedError

    def vision_prompts(self) -> list[torch.Tensor]:
        return self.split()[1]

    def text_features(self, index: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        text = self.split()[0]
        return self.encode(index, [None, *text[1:]], ctx=text[0])


@register_seg("seg_shared_attn", "multimodal",
              {**SEG_DEPTH_SPACE, "heads": Choice((16, 20, 32)), "ff": Choice((1280, 1420))})
class SegSharedAttention(_Shared):
    """One `[n_ctx, text_width + vision_width]` context per layer, all layers through one
    TransformerEncoderLayer (`heads`, feed-forward `ff`, dropout 0.1), split per side."""

    def __init__(self, model: SegmentationModel, prompts: list[str], n_ctx: int = 4, depth: int | str = "all",
                 heads: int = 16, ff: int = 1280, upsampler: bool = False) -> None:
        super().__init__(model, prompts, n_ctx, depth, upsampler)
        tw, vw = self.adapter.text_width, self.adapter.vision_width
        if (tw + vw) % heads:
            raise ValueError(f"seg_shared_attn: heads={heads} must divide the joint width {tw} + {vw} = {tw + vw}")
        self.shared = nn.Parameter(torch.randn(self.depth, n_ctx, tw + vw) * 0.02)
        self.mixer = nn.TransformerEncoderLayer(tw + vw, heads, ff, dropout=0.1, batch_first=True)

    def split(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        mixed = self.mixer(self.shared)  # layers as the batch: each layer's tokens attend to each other
        tw = self.adapter.text_width
        return list(mixed[..., :tw]), list(mixed[..., tw:])


@register_seg("seg_shared_separate", "multimodal", {**SEG_DEPTH_SPACE, "shared_dim": Choice((32, 64))})
class SegSharedSeparate(_Shared):
    """One `[n_ctx, shared_dim]` context per layer projected to each side by a Linear."""

    def __init__(self, model: SegmentationModel, prompts: list[str], n_ctx: int = 4, depth: int | str = "all",
                 shared_dim: int = 64, per_layer_projections: bool = False, upsampler: bool = False) -> None:
        super().__init__(model, prompts, n_ctx, depth, upsampler)
        self.shared = nn.Parameter(torch.randn(self.depth, n_ctx, shared_dim) * 0.02)
        n = self.depth if per_layer_projections else 1
        self.to_text = nn.ModuleList(nn.Linear(shared_dim, self.adapter.text_width) for _ in range(n))
        self.to_vision = nn.ModuleList(nn.Linear(shared_dim, self.adapter.vision_width) for _ in range(n))

    def split(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        pick = (lambda m, i: m[i]) if len(self.to_text) > 1 else (lambda m, i: m[0])
        return ([pick(self.to_text, i)(self.shared[i]) for i in range(self.depth)],
                [pick(self.to_vision, i)(self.shared[i]) for i in range(self.depth)])
