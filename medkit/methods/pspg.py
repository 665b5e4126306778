"""PsPG (PRCV 2024): pseudo-prompts generated per finding by autoregressive decoders.

Two prompt decoders (positive, negative) turn each finding's name feature into `n_tokens`
pseudo-tokens — complete prompts, no class-name tokens (`prefix=True` appends the name, the
reference's ENABLE_PREFIX) — that enter the text tower in place of word embeddings. Each
decoder step: a GRU cell, self-attention across findings, cross-attention to image
features, a residual, a projection to the token width. The image side: global + local
tokens weighted by Spatial Fusion (ECA-style: average and max pooling over channels, one
3-parameter 1-D convolution over tokens, a sigmoid) and the token similarities averaged; the
finding's probability is the softmax over (positive, negative) with a learnable temperature
(init 1/0.07). The image tower is frozen (features from the cache).

`token_reduce="sum"` is the reference's reduction. medkit averages by default: the sum over
1 + T tokens at temperature 1/0.07 puts the pair softmax deep in saturation at
initialisation (|log-odds| of 40-290 measured with 65 tokens), where ASL's clamped log has
no gradient — on the embedded world the ASL loss did not move in 6 epochs. The sum is the
mean times 1 + T, which the learnable temperature could absorb if it ever got a gradient.

Conditioning — where medkit departs from the reference on purpose:
- `conditioning="image"` (default): each image's prompts attend to that image's own fused
  tokens, so a prediction never depends on the other images of its batch. It costs a text
  pass per image × finding × decoder (as CoCoOp's per-image prompts do).
- `conditioning="batch"`: the reference. The decoders attend over the global features of
  the whole mini-batch, one prompt set per batch, so a test prediction changes with its
  batch-mates; evaluation then runs in chunks of `batch_size_eval` (the reference's 64).

Ablation switches (the paper's Tables 2-3): `loss` (`released` = the released code's
0.1·ASL + 0.07·ranking, the default as in that code; `asl+spcl` the paper's; `bce`, `asl`,
`ranking`, `asl+pcl`), `features` (`g`, `gl`, `gl_sf`), `decoder` (`gru`, `transformer`,
`nar`), `prompts` (`positive`: positive prompts only with a learned threshold; `one_decoder`:
one decoder for both polarities, told apart by a learned polarity embedding; `two_decoders`).
The pair losses build pair prompts by concatenating two findings' positive pseudo-tokens;
under per-image conditioning they are computed for the first `pair_images` images of a
batch (a text pass per pair and image), under per-batch conditioning once per batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.backbones.adapter import replace_positions
from medkit.config import TrainConfig
from medkit.methods import Budget, register
from medkit.methods.context import prompt_layout
from medkit.methods.multilabel import LOSSES, MultiLabelMethod, loss_terms
from medkit.prompts import prompt_name

DECODERS = ("gru", "transformer", "nar")
FEATURES = ("g", "gl", "gl_sf")
PROMPTS = ("positive", "one_decoder", "two_decoders")
CONDITIONING = ("image", "batch")


class SpatialFusion(nn.Module):
    """ECA-style attention over tokens: sigmoid(conv(avg over channels) + conv(max over
    channels)), one 1-D convolution of 3 weights shared by both poolings."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[B, K, E]` → weights `[B, K]`."""
        avg, mx = tokens.mean(-1, keepdim=True).transpose(1, 2), tokens.amax(-1, keepdim=True).transpose(1, 2)
        return torch.sigmoid(self.conv(avg) + self.conv(mx)).squeeze(1)


class PromptDecoder(nn.Module):
    """Finding name features `[C, E]` + visual context `[G, K, E]` → pseudo-tokens `[G, C, n, W]`."""

    def __init__(self, embed_dim: int, width: int, n_tokens: int, hidden: int, heads: int, dropout: float,
                 kind: str) -> None:
        super().__init__()
        if kind not in DECODERS:
            raise ValueError(f"decoder {kind!r}: choose one of {DECODERS}")
        self.kind, self.n_tokens = kind, n_tokens
        self.inp = nn.Linear(embed_dim, hidden)
        self.ctx = nn.Linear(embed_dim, hidden)
        if kind == "gru":
            self.cell = nn.GRUCell(hidden, hidden)
        elif kind == "transformer":  # the recurrence as causal self-attention over the steps so far
            self.cell = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout, batch_first=True)
        else:  # non-autoregressive: every position at once from learned position queries
            self.position = nn.Parameter(torch.randn(n_tokens, hidden) * 0.02)
        self.self_attn = nn.MultiheadAttention(hidden, heads, dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(hidden, heads, dropout, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, width)

    def _refine(self, h: torch.Tensor, ctx: torch.Tensor, g: int, c: int) -> torch.Tensor:
        """Self-attention across findings, cross-attention to the image context, residual."""
        h = h.reshape(g, c, -1)
        h = self.norm(h + self.self_attn(h, h, h, need_weights=False)[0])
        return h + self.cross_attn(h, ctx, ctx, need_weights=False)[0]

    def forward(self, names: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        g, c = context.shape[0], names.shape[0]
        ctx = self.ctx(context.float())
        start = self.inp(names.float()).unsqueeze(0).expand(g, -1, -1).reshape(g * c, -1)
        if self.kind == "nar":
            steps = [self._refine(start + p, ctx, g, c) for p in self.position]
            return self.out(torch.stack(steps, dim=2))
        h, x, outs, history = torch.zeros_like(start), start, [], [start]
        for _ in range(self.n_tokens):
            if self.kind == "gru":
                h = self.cell(x, h)
            else:
                seq = torch.stack(history, dim=1)
                mask = nn.Transformer.generate_square_subsequent_mask(seq.shape[1], device=seq.device)
                h = self.cell(seq, src_mask=mask, is_causal=True)[:, -1]
            o = self._refine(h, ctx, g, c)
            outs.append(o)
            x = o.reshape(g * c, -1)
            history.append(x)
        return self.out(torch.stack(outs, dim=2))


# reference: SGD (Nesterov) 1e-4, wd 0.05, cosine over 50 epochs, 5 warm-up at 1e-6, batch 64. CPU budgets by
# conditioning: per batch a step is one text pass per finding and decoder; per image one per image × finding × decoder
_REFERENCE = TrainConfig(epochs=50, batch_size=64, lr=1e-4, weight_decay=0.05, warmup_epochs=5, warmup_lr=1e-6)
_TINY = dict(epochs=3, batch_size=64, lr=2e-3, optimizer="adamw", weight_decay=0.0, warmup_epochs=0, augment=False)


@register("pspg", kind="prompt", defaults_by="conditioning",
          training={"image": _REFERENCE, "batch": _REFERENCE},
          budgets={"tiny": {"image": Budget(train={**_TINY, "epochs": 1, "batch_size": 32, "max_steps_per_epoch": 2,
                                                   "validate": False}, eval_images={"full": 48}),
                            "batch": Budget(train=_TINY)},
                   "smoke": Budget(train=dict(epochs=1, batch_size=16, max_steps_per_epoch=2, augment=False),
                                   eval_images={"full": 16})},
          example={"n_tokens": 2, "hidden": 16, "heads": 2})
class PsPG(MultiLabelMethod):
    def __init__(self, adapter: BackboneAdapter, classnames: list[str], n_tokens: int = 16, hidden: int = 512,
                 heads: int = 8, dropout: float = 0.2, decoder: str = "gru", features: str = "gl_sf",
                 prompts: str = "two_decoders", loss: str = "released", conditioning: str = "image",
                 prefix: bool = False, logit_scale_init: float = 1 / 0.07, pair_images: int = 8,
                 batch_size_eval: int = 64, token_reduce: str = "mean") -> None:
        super().__init__(adapter, classnames)
        for name, value, choices in (("features", features, FEATURES), ("prompts", prompts, PROMPTS),
                                     ("conditioning", conditioning, CONDITIONING), ("loss", loss, LOSSES),
                                     ("token_reduce", token_reduce, ("mean", "sum"))):
            if value not in choices:
                raise ValueError(f"pspg {name}={value!r}: choose one of {choices}")
        self.features, self.prompts, self.conditioning, self.loss_name = features, prompts, conditioning, loss
        self.n_tokens, self.pair_images, self.batch_size_eval = n_tokens, pair_images, batch_size_eval
        self.token_reduce = token_reduce
        e, w = adapter.embed_dim, adapter.text_width
        make = lambda: PromptDecoder(e, w, n_tokens, hidden, heads, dropout, decoder)  # noqa: E731
        self.decoders = nn.ModuleList([make()] if prompts != "two_decoders" else [make(), make()])
        if prompts == "one_decoder":
            self.polarity = nn.Parameter(torch.randn(2, e) * 0.02)
        if prompts == "positive":
            self.threshold = nn.Parameter(torch.zeros(()))
        self.fusion = SpatialFusion() if features == "gl_sf" else None
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        names = [prompt_name(c) for c in self.classnames]
        with torch.no_grad():
            self.register_buffer("names", adapter.encode_texts(names, normalize=True).float(), persistent=False)
        layout = prompt_layout(adapter, names if prefix else [""], n_tokens)
        for key, value in zip(("ids", "positions", "base"), layout):
            self.register_buffer(key, value, persistent=False)
        self.prefix = prefix
        if pair_images and loss in ("asl+pcl", "asl+spcl"):
            pairs = prompt_layout(adapter, [""], 2 * n_tokens)
            for key, value in zip(("pair_ids", "pair_positions", "pair_base"), pairs):
                self.register_buffer(key, value, persistent=False)
        self._pair_scores: torch.Tensor | None = None

    # ------------------------------------------------------------------ image side
    def _visual(self, image_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens the score reads `[B, K, E]` unit norm, their weights `[B, K]`)."""
        tokens = self.tokens(image_features)
        if self.features == "g":
            tokens = tokens[:, :1]
        unit = F.normalize(tokens, dim=-1)
        weight = self.fusion(tokens) if self.fusion is not None else torch.ones(unit.shape[:2], device=unit.device)
        return unit, weight

    def _similarity(self, unit: torch.Tensor, weight: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Mean (or the reference's sum) over tokens of weight · cos(token, text): text `[C, E]`
        or per image `[B, C, E]`."""
        text = F.normalize(text.float(), dim=-1)
        sims = torch.einsum("bke,ce->bkc", unit, text) if text.dim() == 2 else torch.einsum("bke,bce->bkc", unit, text)
        weighted = weight.unsqueeze(-1) * sims
        return weighted.sum(1) if self.token_reduce == "sum" else weighted.mean(1)

    # ------------------------------------------------------------------ prompts
    def _encode(self, tokens: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Pseudo-tokens `[N, n, W]` spliced into their prompt → text features `[N, E]`."""
        n = tokens.shape[0]
        rows = ids.shape[0]
        if rows == 1:
            ids, positions, base = ids.expand(n, -1), positions.expand(n, -1), base.expand(n, -1, -1)
        else:  # one prompt per finding (prefix): tokens come finding-major within each group
            reps = n // rows
            ids, positions, base = ids.repeat(reps, 1), positions.repeat(reps, 1), base.repeat(reps, 1, 1)
        emb = replace_positions(base.to(tokens.dtype), tokens, positions)
        return self.adapter.encode_text_from_embeddings(emb, ids)

    def _pseudo_tokens(self, context: torch.Tensor) -> list[torch.Tensor]:
        """Per polarity, pseudo-tokens `[G, C, n, W]` (one polarity when positive only)."""
        if self.prompts == "one_decoder":
            names = torch.cat([self.names + self.polarity[0], self.names + self.polarity[1]])
            both = self.decoders[0](names, context)
            return [both[:, :self.n_classes], both[:, self.n_classes:]]
        return [dec(self.names, context) for dec in self.decoders]

    def _text(self, context: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Text features per polarity `[G, C, E]` and the positive pseudo-tokens."""
        tokens = self._pseudo_tokens(context)
        g, c = tokens[0].shape[:2]
        feats = [self._encode(t.reshape(g * c, self.n_tokens, -1), self.ids, self.positions, self.base).reshape(g, c, -1)
                 for t in tokens]
        return feats, tokens[0]

    def _context(self, image_features: torch.Tensor, unit: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.conditioning == "batch":  # the reference: the batch's global features, one context for all
            return self.tokens(image_features)[:, 0].unsqueeze(0)
        return unit * weight.unsqueeze(-1)  # each image its own fused tokens

    # ------------------------------------------------------------------ scores
    def _scores(self, image_features: torch.Tensor) -> torch.Tensor:
        unit, weight = self._visual(image_features)
        feats, pos_tokens = self._text(self._context(image_features, unit, weight))
        if self.conditioning == "batch":
            feats = [f[0] for f in feats]
        scale = self.logit_scale.exp()
        pos = self._similarity(unit, weight, feats[0])
        if self.prompts == "positive":
            scores = scale * (pos - self.threshold)
        else:
            scores = scale * (pos - self._similarity(unit, weight, feats[1]))
        if self.training and self.loss_name in ("asl+pcl", "asl+spcl"):
            self._pair_scores = self._pairs(unit, weight, pos_tokens, scale)
        return scores

    def _pairs(self, unit: torch.Tensor, weight: torch.Tensor, pos_tokens: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Log-odds `[B', C(C-1)/2]` of each finding pair (i < j) co-occurring, from the
        concatenated positive pseudo-tokens P_i P_j (the first `pair_images` images under
        per-image conditioning)."""
        i, j = torch.triu_indices(self.n_classes, self.n_classes, offset=1, device=pos_tokens.device)
        if self.conditioning == "image":
            unit, weight, pos_tokens = unit[:self.pair_images], weight[:self.pair_images], pos_tokens[:self.pair_images]
        g = pos_tokens.shape[0]
        pair_tokens = torch.cat([pos_tokens[:, i], pos_tokens[:, j]], dim=2)  # [G, P, 2n, W]
        feats = self._encode(pair_tokens.reshape(g * len(i), 2 * self.n_tokens, -1), self.pair_ids, self.pair_positions,
                             self.pair_base).reshape(g, len(i), -1)
        return scale * self._similarity(unit, weight, feats[0] if g == 1 else feats)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditioning == "batch" and not self.training:  # the reference's evaluation batches
            chunks = image_features.split(self.batch_size_eval)
            return torch.cat([self._scores(c) for c in chunks])
        return self._scores(image_features)

    def loss_terms(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        pair_targets = targets[:self.pair_images] if self.conditioning == "image" else targets
        return loss_terms(self.loss_name, logits, targets, None if self._pair_scores is None else
                          (self._pair_scores, pair_targets))
