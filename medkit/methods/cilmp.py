"""CILMP (IEEE TMI 2025): class prompts carrying LLM knowledge, edited per image.

Every class has a fixed LLM representation `[L, d]` (`medkit.knowledge`: the last-token
state of every layer of an LLM's answer about the class, or the MiniLM stand-in). A
bilateral low-rank intervention, conditioned on the image through the relationship
descriptor (`medkit.methods.intervention`), edits its first `prefix` and last `suffix`
vectors; a low-rank projection turns all L into prompt tokens. The class prompt is

    [SOS] ctx×n_ctx  knowledge×L  classname . [EOS]

with the context initialised from "a photo of a", deep text prompts (IVLP-style, the
context positions of layers 1..text_depth-1) and VPT-deep vision prompts. Loss: cross
entropy on the cosine logits. The LLM never runs here: its representations are buffers.

Ablations: `mode="no_rd"` (conditioned on the image without the matching prior),
`mode="unconditional"` (ReFT's LoReFT: one prompt per class, no image), `prefix=suffix=0`
(no intervention: the projected representations as they are).

Differences from the reference: `vision_depth=0` (no vision prompts) keeps the image tower
unprompted, so image features come from the feature cache — the tiny profile's setting, as
a conditional step already costs B·C text passes; the representations are standardised per
dimension over all of the dataset's classes before use (LLM states are far from the text
tower's token scale; the statistics cover every class so base and novel classes share
them) and the projection starts at the scale of real word embeddings; deep text prompts
have no interventions of their own. Class names (and `ctx_init`) enter the prompt with `_`
turned into spaces, as the CoOp-family references do; `keep_underscores=True` keeps them.
"""
from __future__ import annotations

import torch
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.backbones.adapter import replace_positions
from medkit.config import TrainConfig
from medkit.methods import OPTIMISER_SPACE, Budget, Choice, FloatRange, GridEntry, Ref, register
from medkit.methods.base import FrozenBackboneMethod
from medkit.methods.context import phrase_embeddings, prompt_layout
from medkit.methods.deep import prompt_stack, resolve_depth
from medkit.methods.intervention import KnowledgePrompts
from medkit.prompts import prompt_name


def standardized(hidden: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`[C, L, d]` → zero mean, unit variance per dimension over all classes and layers."""
    flat = hidden.float().reshape(-1, hidden.shape[-1])
    return (hidden.float() - flat.mean(0)) / (flat.std(0, unbiased=False) + eps)


DEFAULT_RANK = 8


def default_length(n_layers: int) -> int:
    """Intervened positions on each side (prefix = suffix) when none is given: the reference's
    4 + 4 of LLaMA's 32 layers; fewer layers (MiniLM: 6) get half each."""
    return min(4, n_layers // 2)


# B·C text passes per step and per evaluated image, like CoCoOp: on the CPU profiles K ∈ {1, 4, 16}
# only, a few steps, and a capped evaluation
@register("cilmp", kind="prompt", training=TrainConfig(epochs=100, batch_size=64, lr=0.0025),
          budgets={"smoke": Budget(train=dict(batch_size=4), eval_images={"few_shot": 8}, shots=(1, 4, 16)),
                   "tiny": Budget(train=dict(batch_size=4, lr=0.01,
                                             optimizer="adamw", weight_decay=0.0, warmup_epochs=0, validate=False), steps=4,
                                  eval_images={"few_shot": 30}, shots=(1, 4, 16))},
          grid=(GridEntry("CILMP", {"knowledge": Ref("knowledge")}),), example={"text_depth": 1},
          search_space={**OPTIMISER_SPACE, "rank": Choice((2, 4, 8, 16)), "dropout": FloatRange(0.0, 0.3)})
class CILMP(FrozenBackboneMethod):
    def __init__(self, adapter: BackboneAdapter, classnames: list[str], knowledge, n_ctx: int = 4,
                 ctx_init: str | None = "a photo of a", prefix: int | None = None, suffix: int | None = None, rank: int = DEFAULT_RANK,
                 proj_rank: int = 8, mode: str = "conditional", dropout: float = 0.1, text_depth: int | str = "all",
                 vision_depth: int | str = 0, n_vision_ctx: int = 4, text_chunk: int = 2048,
                 keep_underscores: bool = False) -> None:
        super().__init__(adapter, classnames)
        knowledge.for_classes(self.classnames)  # a clear error naming classes without representations
        index = [list(knowledge.classnames).index(c) for c in self.classnames]
        llm = standardized(knowledge.hidden)[index]
        self.n_ctx, self.mode, self.text_chunk = n_ctx, mode, text_chunk
        default = default_length(llm.shape[1])
        prefix = default if prefix is None else prefix
        suffix = default if suffix is None else suffix
        self.knowledge = KnowledgePrompts(llm, adapter.text_width, adapter.embed_dim, prefix=prefix, suffix=suffix,
                                          rank=rank, proj_rank=proj_rank, mode=mode, dropout=dropout, standardize=False)
        self._match_token_scale(adapter)
        n_tokens = self.knowledge.n_tokens
        ids, positions, base = prompt_layout(adapter, self.classnames, n_ctx + n_tokens,
                                             keep_underscores=keep_underscores)
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("positions", positions, persistent=False)
        self.register_buffer("base", base, persistent=False)
        if ctx_init:
            ctx_init = prompt_name(ctx_init, keep_underscores)
            vec = phrase_embeddings(adapter, ctx_init)
            if vec.shape[0] != n_ctx:
                raise ValueError(f"ctx_init {ctx_init!r} tokenises to {vec.shape[0]} tokens, not n_ctx={n_ctx}")
        else:
            vec = torch.randn(n_ctx, adapter.text_width) * 0.02
        self.ctx = nn.Parameter(vec)
        self.text_depth = resolve_depth(adapter, text_depth, ("text",))
        self.deep_text = prompt_stack(max(0, self.text_depth - 1), n_ctx, adapter.text_width)
        self.vision_depth = resolve_depth(adapter, vision_depth, ("vision",))
        self.vision = prompt_stack(self.vision_depth, n_vision_ctx, adapter.vision_width)
        # unprompted image tower: the features are the cache's, and a step costs text passes only
        self.uses_cached_features = self.vision_depth == 0

    @torch.no_grad()
    def _match_token_scale(self, adapter: BackboneAdapter) -> None:
        """Start the knowledge tokens at the norm of real word embeddings: a default-initialised
        projection of standardised representations lands ~7× larger (MiniLM), and tokens that
        large drown the rest of the prompt before any training step."""
        target = phrase_embeddings(adapter, "a photo of a").norm(dim=-1).mean()
        proj = self.knowledge.projection
        current = proj(self.knowledge.llm).norm(dim=-1).mean()
        if current > 0:
            proj.up.weight.mul_(target / current)
            proj.up.bias.mul_(target / current)

    @property
    def conditional(self) -> bool:
        return self.mode != "unconditional"

    def text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, C, E]` per image (conditional) or `[C, E]`."""
        c = self.n_classes
        tokens = self.knowledge(image_features.float() if self.conditional else None)
        b = tokens.shape[0] if self.conditional else 1
        tokens = tokens.reshape(b * c, *tokens.shape[-2:])                 # [B·C, L, D]
        ctx = self.ctx.expand(b * c, -1, -1)
        slots = torch.cat([ctx, tokens.to(ctx.dtype)], dim=1)
        base = self.base.repeat(b, 1, 1)
        positions = self.positions.repeat(b, 1)
        emb = replace_positions(base, slots, positions)
        ids = self.ids.repeat(b, 1)
        deep = [None, *self.deep_text]
        ctx_positions = positions[:, : self.n_ctx]
        feats = [self.adapter.encode_text_from_embeddings(emb[i:i + self.text_chunk], ids[i:i + self.text_chunk],
                                                          deep_prompts=deep, prompt_positions=ctx_positions[i:i + self.text_chunk])
                 for i in range(0, emb.shape[0], self.text_chunk)]
        out = torch.cat(feats)
        return out.reshape(b, c, -1) if self.conditional else out

    def precompute_text(self) -> torch.Tensor | None:
        return None if self.conditional else self.text_features()

    def forward(self, inputs: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if self.uses_cached_features:
            img = inputs
        else:
            img = self.adapter.encode_image(inputs, normalize=True, prompts=list(self.vision) or None)
        if text_features is None:
            text_features = self.text_features(img if self.conditional else None)
        return self.cosine_logits(img, text_features)
