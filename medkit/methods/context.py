"""Learnable context vectors spliced into tokenised class prompts (CoOp and its family).

Every class prompt is tokenised with placeholder words where the context goes, e.g.
`"X X X X COR-858."`; the placeholders' embeddings are replaced by the learned vectors and
the text tower runs from embeddings. The placeholder ids keep the pooled position and the
padding mask right for both tower families, and the ids are cut after the last position
that can reach the pooled feature.
"""
from __future__ import annotations

import torch
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.backbones.adapter import replace_positions
from medkit.prompts import prompt_name

PLACEHOLDER = "X"
POSITIONS = ("end", "middle", "front")


def placeholder_id(adapter: BackboneAdapter) -> int:
    ids = adapter.tokenize([PLACEHOLDER])[0]
    return int(ids[adapter.start_tokens])  # after the start token (SOS / [CLS]), if the tokenizer has one


def phrase_embeddings(adapter: BackboneAdapter, phrase: str) -> torch.Tensor:
    """Token embeddings `[T, D]` of a phrase without its start/end tokens."""
    ids = adapter.tokenize([phrase])
    end = int(adapter.content_lengths(ids)[0]) - 1  # the end token's position
    with torch.no_grad():
        return adapter.token_embedding(ids[:, adapter.start_tokens:end])[0].float()


def build_prompts(classnames: list[str], n_ctx: int, fixed_words: str = "", position: str = "end",
                  keep_underscores: bool = False) -> list[str]:
    """Class prompt strings with `n_ctx` placeholders (CoOp's class-token positions); the
    names go in through `prompt_name` (underscores → spaces unless `keep_underscores`)."""
    if position not in POSITIONS:
        raise ValueError(f"class-token position {position!r}: choose one of {POSITIONS}")
    ctx = [PLACEHOLDER] * n_ctx
    fixed = f" {fixed_words}" if fixed_words else ""
    out = []
    for name in (prompt_name(c, keep_underscores) for c in classnames):
        if position == "end":
            text = " ".join(ctx) + f"{fixed} {name}."
        elif position == "front":
            text = f"{name} " + " ".join(ctx) + f"{fixed}."
        else:
            half = n_ctx // 2
            text = " ".join(ctx[:half]) + f" {name} " + " ".join(ctx[half:]) + f"{fixed}."
        out.append(text.strip())
    return out


def prompt_layout(adapter: BackboneAdapter, classnames: list[str] | tuple[str, ...], n_slots: int, fixed_words: str = "",
                  position: str = "end", keep_underscores: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token ids `[K, L]` cut after the last real token, slot positions `[K, n_slots]`,
    frozen token embeddings `[K, L, D]`) of the class prompts with `n_slots` placeholders."""
    prompts = build_prompts(list(classnames), n_slots, fixed_words, position, keep_underscores)
    ids = adapter.trim(adapter.tokenize(prompts))
    x_id = placeholder_id(adapter)
    rows = [(r == x_id).nonzero().flatten() for r in ids]
    bad = [(c, len(p)) for c, p in zip(classnames, rows) if len(p) != n_slots]
    if bad:
        raise ValueError(f"class names that tokenise with the placeholder {PLACEHOLDER!r} break the prompt: "
                         f"{bad[:3]} (expected {n_slots} placeholders)")
    with torch.no_grad():
        base = adapter.token_embedding(ids).float()
    return ids, torch.stack(rows), base


class PromptContext(nn.Module):
    """Context vectors (shared `[n_ctx, D]` or class-specific `[K, n_ctx, D]`) and the
    class prompts they are spliced into.

    `init`: None → N(0, std²) (CoOp's random init); a phrase → its first `n_ctx` words'
    embeddings, the remaining words stay as fixed text after the context (MaPLe's "a photo"
    learnable + "of a" fixed).

    Class-specific (CSC) and random: every class's context is its own N(0, std²) draw, one
    `[K, n_ctx, D]` tensor as in CoOp's reference; `shared_class_init=True` draws one
    `[n_ctx, D]` context and copies it to every class (medkit's former behaviour).
    Class-specific from a phrase: every class starts from the phrase's embeddings, whatever
    `shared_class_init` says. (CoOp's reference ignores CSC when given a phrase and keeps a
    single generic context; here the copies are separate per-class parameters.)

    `keep_underscores=False` (the reference's): `_` becomes a space in the class names and
    the init phrase before tokenising (`medkit.prompts.prompt_name`); True feeds them as given.
    """

    def __init__(self, adapter: BackboneAdapter, classnames: list[str], n_ctx: int | None = 4,
                 init: str | None = None, class_specific: bool = False, position: str = "end",
                 init_std: float = 0.02, keep_underscores: bool = False, shared_class_init: bool = False) -> None:
        super().__init__()
        # the references turn `_` into spaces in the init phrase too (CoOp: `ctx_init.replace("_", " ")`)
        init = prompt_name(init, keep_underscores) if init else init
        words = init.split() if init else []
        if n_ctx is None:
            if not words:
                raise ValueError("n_ctx=None needs an init phrase (its word count becomes n_ctx)")
            n_ctx = len(words)
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be ≥ 1, got {n_ctx}")
        if words and len(words) < n_ctx:
            raise ValueError(f"init phrase {init!r} has {len(words)} words, fewer than n_ctx={n_ctx}")
        self.n_ctx, self.class_specific, self.position = n_ctx, class_specific, position
        self.init_phrase = init
        ids, positions, base = prompt_layout(adapter, classnames, n_ctx, " ".join(words[n_ctx:]), position,
                                             keep_underscores)
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("positions", positions, persistent=False)
        self.register_buffer("base", base, persistent=False)
        width = self.base.shape[-1]
        if words:
            vec = phrase_embeddings(adapter, " ".join(words[:n_ctx]))
            if vec.shape[0] != n_ctx:
                raise ValueError(f"init words {words[:n_ctx]} tokenise to {vec.shape[0]} tokens, not {n_ctx}: "
                                 "choose words that are single tokens for this tokenizer")
        elif class_specific and not shared_class_init:
            vec = torch.randn(len(classnames), n_ctx, width) * init_std  # one independent draw per class
        else:
            vec = torch.randn(n_ctx, width) * init_std
        if class_specific and vec.dim() == 2:  # a phrase, or the shared draw: the same start for every class
            vec = vec.unsqueeze(0).repeat(len(classnames), 1, 1)
        self.ctx = nn.Parameter(vec)

    @property
    def n_prompts(self) -> int:
        return self.ids.shape[0]

    @property
    def shared_prefix(self) -> int:
        """Leading positions identical in every prompt (start token + shared context + fixed
        words when the class name comes last); 0 when the context is class-specific."""
        if self.class_specific or self.n_prompts < 2:
            return 0
        differs = (self.ids != self.ids[:1]).any(dim=0).nonzero()
        return int(differs[0]) if len(differs) else 0

    def shared_context(self) -> torch.Tensor:
        """`[n_ctx, D]`: the context itself, or its class mean when class-specific (what an
        image-side coupling sees: image prompts must not depend on the class)."""
        return self.ctx.mean(0) if self.class_specific else self.ctx

    def embeddings(self, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt embeddings `[K, L, D]`, or `[B·K, L, D]` with a per-image `bias` `[B, D]`
        added to every context token (CoCoOp)."""
        k, n = self.n_prompts, self.n_ctx
        ctx = self.ctx if self.class_specific else self.ctx.unsqueeze(0).expand(k, n, -1)
        base, pos = self.base, self.positions
        if bias is not None:
            b = bias.shape[0]
            ctx = (ctx.unsqueeze(0) + bias[:, None, None, :]).reshape(b * k, n, -1)
            base = base.unsqueeze(0).expand(b, -1, -1, -1).reshape(b * k, *base.shape[1:])
            pos = pos.repeat(b, 1)
        return replace_positions(base.to(ctx.dtype), ctx, pos)
