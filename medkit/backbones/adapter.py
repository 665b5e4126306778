"""One protocol over vision-language models, whatever their towers.

Prompt methods need a handful of operations: tokenize, look up token embeddings, encode
text *from embeddings* (so learned context vectors can replace word embeddings), encode
images, the logit scale and the widths. `BackboneAdapter` gives them for the tower families
that cover the field; the two open_clip families live here, transformers dual encoders
(PubMedCLIP, MedSigLIP, CLIPSeg's towers) in `hf_dual`:

- `OpenCLIPNativeAdapter`: open_clip's own text transformer (OpenAI CLIP, LAION,
  PubMedCLIP …): causal mask, pooled at the EOT token (argmax of the ids).
- `HFTextAdapter`: a HuggingFace encoder as text tower (BiomedCLIP's PubMedBERT,
  MiniCLIP's MiniLM): bidirectional, attention mask from the padding, pooled by the
  tower's pooler (CLS or mean) then projected.

Methods talk only to this protocol; none of them knows which family it runs on.

Why one module: the protocol's shared image-tower code (vision prompt hooks for timm and
open_clip ViTs, local tokens) and the two open_clip text families are read together when a
family is added; splitting them would scatter one contract over three files.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import cached_property
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BackboneAdapter(nn.Module):
    """Common surface of a CLIP-like model. Subclasses implement the text-side hooks."""

    family: str = "abstract"

    def __init__(self, model: nn.Module, tokenizer: Callable, preprocess_train: Callable,
                 preprocess: Callable, name: str) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess_train = preprocess_train
        self.preprocess = preprocess  # evaluation transform
        self.name = name

    # --- shared ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp of the model's learned temperature (the multiplier of cosine logits)."""
        return self.model.logit_scale.exp()

    @cached_property
    def embed_dim(self) -> int:
        """Width of the joint image-text space."""
        with torch.no_grad():
            return int(self.encode_text(self.tokenize(["x"])).shape[-1])

    @cached_property
    def vision_width(self) -> int:
        """Token width inside the image transformer (where vision prompts live)."""
        block = self.vision_blocks()[0]
        norm = getattr(block, "norm1", None) or getattr(block, "ln_1")
        return int(norm.normalized_shape[0])

    @property
    def text_depth(self) -> int:
        return len(self.text_blocks())

    @property
    def vision_depth(self) -> int:
        return len(self.vision_blocks())

    @property
    def image_size(self) -> int:
        size = getattr(self.model.visual, "image_size", 224)
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def encode_image(self, images: torch.Tensor, normalize: bool = False,
                     prompts: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Image features; `prompts` are deep vision prompts, one entry per block.

        `prompts[0]` (`[P, W]` or `[B, P, W]`) is appended after the patch, class and
        positional embeddings (prompts get no positional embedding, as in VPT and MaPLe);
        `prompts[i]` for i ≥ 1 replaces those P tokens at the input of block i (None: they
        carry through). The prompt tokens are dropped before the final norm and pooling.
        """
        with self._vision_prompt_hooks(prompts):
            feats = self.model.encode_image(images.to(self.device, self.dtype))
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_image_tokens(self, images: torch.Tensor,
                            prompts: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """`[B, 1 + T, E]`: the pooled image feature followed by the T local (patch) tokens,
        each projected into the joint space by the tower's own projection (DualCoOp's and
        PsPG's local features; DualCoOp applies the attention-pool's projection per position,
        the ViT analogue is the final norm + projection per token). Unnormalised; token 0
        equals `encode_image`. Deep vision `prompts` work as in `encode_image` (they are
        dropped before the final norm, so no prompt token is returned)."""
        visual = self.model.visual
        images = images.to(self.device, self.dtype)
        with self._vision_prompt_hooks(prompts):
            trunk = getattr(visual, "trunk", None)
            if trunk is not None and hasattr(trunk, "forward_features"):  # open_clip TimmModel
                pooled, local = self._timm_tokens(visual, trunk, images)
            elif hasattr(visual, "output_tokens"):  # open_clip VisionTransformer
                before = visual.output_tokens
                visual.output_tokens = True
                try:
                    pooled, local = visual(images)
                finally:
                    visual.output_tokens = before
                if visual.proj is not None:
                    local = local @ visual.proj
            else:
                raise NotImplementedError(f"{type(visual).__name__} image tower: local tokens need a ViT "
                                          "(timm VisionTransformer or open_clip VisionTransformer)")
        return torch.cat([pooled.unsqueeze(1), local], dim=1)

    @staticmethod
    def _timm_tokens(visual: nn.Module, trunk: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = trunk.forward_features(images)
        local = trunk.fc_norm(x[:, getattr(trunk, "num_prefix_tokens", 1):])  # Identity under token pooling
        pooled = trunk.forward_head(x, pre_logits=True)
        classifier = getattr(trunk, "head", None)
        if isinstance(classifier, nn.Linear):  # the trunk's classifier is the projection (no extra head)
            pooled, local = classifier(pooled), classifier(local)
        return visual.head(pooled), visual.head(local)

    # --- image tower structure (ViT towers of both open_clip and timm) -------------------
    def _vision_parts(self) -> tuple[list[nn.Module], nn.Module, nn.Module, str]:
        """(blocks, module whose input receives appended prompts, module at which prompts
        are dropped, whether they are dropped from its input ("pre") or output ("post"))."""
        visual = self.model.visual
        trunk = getattr(visual, "trunk", None)
        if trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "norm_pre"):
            return list(trunk.blocks), trunk.norm_pre, trunk.norm, "pre"  # timm VisionTransformer
        if hasattr(visual, "transformer") and hasattr(visual, "ln_pre"):
            return list(visual.transformer.resblocks), visual.ln_pre, visual.transformer, "post"  # open_clip ViT
        raise NotImplementedError(
            f"{type(visual).__name__} image tower: vision prompts need a ViT (timm VisionTransformer or "
            "open_clip VisionTransformer)")

    def vision_blocks(self) -> list[nn.Module]:
        return self._vision_parts()[0]

    def encode_image_layers(self, images: torch.Tensor, layers: Sequence[int],
                            prompts: Sequence[torch.Tensor | None] | None = None, with_pooled: bool = False
                            ) -> list[torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor]:
        """The activations `[B, 1 + T, W]` at the output of each image-tower block in `layers`
        (0-based: what transformers' `hidden_states[i + 1]` holds; CLIPSeg's decoder reads
        them), with deep vision `prompts` as in `encode_image` and their tokens removed.
        `with_pooled`: also the image feature of the same pass (`encode_image`'s, unnormalised)."""
        blocks = self.vision_blocks()
        bad = [i for i in layers if not 0 <= i < len(blocks)]
        if bad:
            raise ValueError(f"layers {bad} outside the image tower's {len(blocks)} blocks")
        n = 0 if not prompts or prompts[0] is None else prompts[0].shape[-2]
        found: dict[int, torch.Tensor] = {}

        def keep(i: int):
            def hook(_m, _args, out):
                x = out[0] if isinstance(out, tuple) else out
                found[i] = x[:, : x.shape[1] - n]
            return hook

        handles = [blocks[i].register_forward_hook(keep(i)) for i in dict.fromkeys(layers)]
        try:
            pooled = self.encode_image(images, prompts=prompts)
        finally:
            for h in handles:
                h.remove()
        return ([found[i] for i in layers], pooled) if with_pooled else [found[i] for i in layers]

    @contextmanager
    def _vision_prompt_hooks(self, prompts: Sequence[torch.Tensor | None] | None) -> Iterator[None]:
        if not prompts or prompts[0] is None:
            yield
            return
        blocks, entry, exit_, exit_side = self._vision_parts()
        if len(prompts) > len(blocks):
            raise ValueError(f"{len(prompts)} vision prompt layers for a tower of depth {len(blocks)}")
        n = prompts[0].shape[-2]

        def append(_m, args):
            x = args[0]
            p = prompts[0].to(x.dtype).expand(x.shape[0], -1, -1)
            return (torch.cat([x, p], dim=1), *args[1:])

        def replacer(p: torch.Tensor):
            def hook(_m, args, kwargs):
                x = args[0]
                x = torch.cat([x[:, :-n], p.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
                return (x, *args[1:]), kwargs
            return hook

        def drop_pre(_m, args):
            return (args[0][:, :-n], *args[1:])

        def drop_post(_m, _args, out):
            return out[:, :-n]

        handles = [entry.register_forward_pre_hook(append)]
        handles += [blocks[i].register_forward_pre_hook(replacer(p), with_kwargs=True)
                    for i, p in enumerate(prompts) if i > 0 and p is not None]
        handles.append(exit_.register_forward_pre_hook(drop_pre) if exit_side == "pre"
                       else exit_.register_forward_hook(drop_post))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def encode_text(self, ids_or_texts: torch.Tensor | Sequence[str], normalize: bool = False,
                    cut: bool = True) -> torch.Tensor:
        """Text features. `cut`: run the tower only over the positions that reach the pooled
        feature (same features, ~3× less work at 77 positions); `cut=False` is the model's
        own full-length path, the reference every other text path is tested against."""
        ids = ids_or_texts if isinstance(ids_or_texts, torch.Tensor) else self.tokenize(ids_or_texts)
        ids = ids.to(self.device)
        if cut:
            ids = self.trim(ids)
            feats = self._encode_embeddings(self.token_embedding(ids), ids)
        else:
            feats = self.model.encode_text(ids)
        return F.normalize(feats, dim=-1) if normalize else feats

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, normalize: bool = True) -> torch.Tensor:
        """Encode many sentences in batches (prompt ensembles, class templates)."""
        out = [self.encode_text(list(texts[i:i + batch_size]), normalize=normalize) for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.empty(0)

    # --- family hooks ------------------------------------------------------------------
    @cached_property
    def text_width(self) -> int:
        return int(self.token_embedding(self.tokenize(["x"])[:, :1]).shape[-1])

    def text_blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def needed_length(self, ids: torch.Tensor) -> int:
        """How many leading positions can reach the pooled feature (the rest is padding)."""
        raise NotImplementedError

    @cached_property
    def start_tokens(self) -> int:
        """How many tokens the tokenizer puts before the text: 1 (OpenAI's SOS, BERT's [CLS])
        or 0 (SigLIP's sentencepiece tokenizer, which only appends its EOS)."""
        a, b = self.tokenize(["a"])[0], self.tokenize(["b"])[0]
        return 1 if int(a[0]) == int(b[0]) else 0

    def content_lengths(self, ids: torch.Tensor) -> torch.Tensor:
        """Per row, the positions up to and including the end token (the rest is padding).
        Towers that pool the end token give it directly; towers that pool a fixed position
        (SigLIP's last) search the tokenizer's end token."""
        if not self.pools_fixed_position:
            return self.pooled_index(ids) + 1
        return first_end_lengths(ids, end_token_id(self.tokenizer))

    @property
    def pools_fixed_position(self) -> bool:
        """Whether the pooled position is fixed (SigLIP's last) rather than the end token."""
        return False

    def trim(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids cut after the last position that matters: the text tower then runs
        over ~12 positions instead of 77 (or 256), with the same pooled features."""
        return ids[:, : self.needed_length(ids)]

    @contextmanager
    def _text_prompt_hooks(self, deep_prompts: Sequence[torch.Tensor | None] | None,
                           positions: torch.Tensor | None) -> Iterator[None]:
        """Replace the context positions at the input of block i by `deep_prompts[i]` (i ≥ 1)."""
        if not deep_prompts or all(p is None for p in deep_prompts[1:]):
            yield
            return
        blocks = self.text_blocks()
        if len(deep_prompts) > len(blocks):
            raise ValueError(f"{len(deep_prompts)} text prompt layers for a tower of depth {len(blocks)}")
        if positions is None:
            raise ValueError("deep text prompts need the context positions")

        def replacer(p: torch.Tensor):
            def hook(_m, args, kwargs):
                x = args[0]
                return (replace_positions(x, p, positions), *args[1:]), kwargs
            return hook

        handles = [blocks[i].register_forward_pre_hook(replacer(p), with_kwargs=True)
                   for i, p in enumerate(deep_prompts) if i > 0 and p is not None]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pooled_index(self, ids: torch.Tensor) -> torch.Tensor:
        """Per row, the position whose final state becomes the text feature (if any)."""
        raise NotImplementedError

    def encode_text_from_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor,
                                    normalize: bool = False,
                                    deep_prompts: Sequence[torch.Tensor | None] | None = None,
                                    prompt_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Text features from token embeddings `[N, L, D]`.

        `ids` are the token ids of the same prompts (with placeholder words where context
        vectors sit): they give the pooled position and the padding mask. `deep_prompts[i]`
        (`[n, D]` or `[N, n, D]`, i ≥ 1) replaces the states at `prompt_positions` (`[n]` or
        `[N, n]`) at the input of block i, as MaPLe/IVLP do; entry 0 is ignored (the
        first-layer context is already in `embeddings`).
        """
        with self._text_prompt_hooks(deep_prompts, prompt_positions):
            x = self._encode_embeddings(embeddings, ids)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text_shared_prefix(self, embeddings: torch.Tensor, ids: torch.Tensor, prefix: int,
                                  normalize: bool = False) -> torch.Tensor:
        """`encode_text_from_embeddings` for prompts whose first `prefix` positions are the
        same in every row (CoOp's shared context: start token + context vectors). A causal
        tower computes those positions once instead of once per class — their states cannot
        depend on what follows. Bidirectional towers take the ordinary path."""
        return self.encode_text_from_embeddings(embeddings, ids, normalize)

    def _encode_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class OpenCLIPNativeAdapter(BackboneAdapter):
    family = "openclip_native"

    def _text(self) -> nn.Module:
        # CLIP keeps the text modules on the model itself; CustomTextCLIP under .text
        return self.model.text if hasattr(self.model, "text") else self.model

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self._text().token_embedding(ids.to(self.device))

    def pooled_index(self, ids: torch.Tensor) -> torch.Tensor:
        t = self._text()
        pool = getattr(t, "text_pool_type", getattr(t, "pool_type", "argmax"))
        if pool == "argmax":
            return ids.argmax(dim=-1)
        if pool == "eos":
            eos = getattr(t, "text_eos_id", getattr(t, "eos_id", None))
            return (ids == eos).int().argmax(dim=-1)
        if pool == "first":
            return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)

    @property
    def pools_fixed_position(self) -> bool:
        t = self._text()
        return getattr(t, "text_pool_type", getattr(t, "pool_type", "argmax")) in ("last", "first")

    def text_blocks(self) -> list[nn.Module]:
        return list(self._text().transformer.resblocks)

    def needed_length(self, ids: torch.Tensor) -> int:
        # causal attention: nothing after the pooled (EOT) position can reach it
        return int(self.pooled_index(ids).max()) + 1

    def encode_text_shared_prefix(self, embeddings: torch.Tensor, ids: torch.Tensor, prefix: int,
                                  normalize: bool = False) -> torch.Tensor:
        prefix = min(prefix, embeddings.shape[1] - 1)
        if prefix < 2 or not self._blocks_support_prefix_sharing():
            return self.encode_text_from_embeddings(embeddings, ids, normalize)
        x = self._encode_embeddings(embeddings, ids, prefix)
        return F.normalize(x, dim=-1) if normalize else x

    def _blocks_support_prefix_sharing(self) -> bool:
        """open_clip's default pre-norm block (LN → MHA → LayerScale, LN → MLP → LayerScale),
        batch-first, causal: the block's own modules are then called on prefix and suffix."""
        from open_clip.transformer import ResidualAttentionBlock

        t = self._text()
        return (t.attn_mask is not None and getattr(t.transformer, "batch_first", False)
                and not t.transformer.grad_checkpointing
                and all(type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv")
                        and isinstance(b.attn, nn.MultiheadAttention) and b.attn.batch_first
                        for b in self.text_blocks()))

    def _shared_prefix_transformer(self, x: torch.Tensor, mask: torch.Tensor, prefix: int) -> torch.Tensor:
        """The text transformer over `[N, L, D]` whose rows agree on the first `prefix`
        positions: the prefix runs once (batch 1); the other positions attend to its keys and
        values (broadcast) and to their own, causally. Equal to the full pass (tested)."""
        n = x.shape[0]
        pre, suf = x[:1, :prefix], x[:, prefix:]
        suffix_mask = mask[prefix:, :].to(x.dtype)
        for block in self.text_blocks():
            h_suf = block.ln_1(suf)
            kv = torch.cat([block.ln_1(pre).expand(n, -1, -1), h_suf], dim=1)
            attn = block.attn(h_suf, kv, kv, need_weights=False, attn_mask=suffix_mask)[0]
            suf = suf + block.ls_1(attn)
            suf = suf + block.ls_2(block.mlp(block.ln_2(suf)))
            pre = block(pre, attn_mask=mask[:prefix, :prefix])
        return torch.cat([pre.expand(n, -1, -1), suf], dim=1)

    def _encode_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor, shared_prefix: int = 0) -> torch.Tensor:
        t = self._text()
        length = embeddings.shape[1]
        x = embeddings + t.positional_embedding[:length].to(embeddings.dtype)
        mask = t.attn_mask[:length, :length] if t.attn_mask is not None else None
        if shared_prefix:
            x = self._shared_prefix_transformer(x, mask, shared_prefix)
        else:
            x = t.transformer(x, attn_mask=mask)
        x = t.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), self.pooled_index(ids.to(x.device))]
        proj = t.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x


class HFTextAdapter(BackboneAdapter):
    family = "hf_text"

    @property
    def _hf(self) -> nn.Module:
        return self.model.text

    def attention_mask(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids != self._hf.config.pad_token_id).long()

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self._hf.transformer.get_input_embeddings()(ids.to(self.device))

    def pooled_index(self, ids: torch.Tensor) -> torch.Tensor:
        # CLS-style poolers read position 0; mean poolers read all unpadded positions,
        # which this returns as the last unpadded index (the [SEP] token).
        return self.attention_mask(ids).sum(dim=-1) - 1

    def text_blocks(self) -> list[nn.Module]:
        return list(self._hf.transformer.encoder.layer)

    def needed_length(self, ids: torch.Tensor) -> int:
        # bidirectional, but padding is masked out: the longest unpadded prompt is enough
        return int(self.attention_mask(ids).sum(dim=-1).max())

    def _encode_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        hf = self._hf
        mask = self.attention_mask(ids.to(embeddings.device))
        out = hf.transformer(inputs_embeds=embeddings, attention_mask=mask)
        return hf.proj(hf.pooler(out, mask))


def end_token_id(tokenizer) -> int | None:
    """The end-of-text id of a medkit tokenizer callable (open_clip's SimpleTokenizer or
    HFTokenizer, or a transformers tokenizer wrapped by `hf_dual.PaddedTokenizer`)."""
    if getattr(tokenizer, "eot_token_id", None) is not None:
        return int(tokenizer.eot_token_id)
    inner = getattr(tokenizer, "tokenizer", None)
    eos = getattr(inner, "eos_token_id", None)
    return None if eos is None else int(eos)


def first_end_lengths(ids: torch.Tensor, end: int | None) -> torch.Tensor:
    """Per row, the position after the first `end` token (the full length where there is none)."""
    full = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)
    if end is None:
        return full
    hit = ids == end
    return torch.where(hit.any(-1), hit.int().argmax(-1) + 1, full)


def replace_positions(x: torch.Tensor, values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x `[N, L, D]` with x[r, positions[r, j]] = values[r, j] (values/positions broadcast over rows)."""
    n, d = values.shape[-2], x.shape[-1]
    pos = positions.to(x.device).expand(x.shape[0], n)
    return x.scatter(1, pos.unsqueeze(-1).expand(-1, -1, d), values.to(x.dtype).expand(x.shape[0], n, d))


def wrap(model: nn.Module, tokenizer: Callable, preprocess_train: Callable, preprocess: Callable,
         name: str) -> BackboneAdapter:
    """Pick the adapter for an open_clip model by its text tower."""
    from open_clip.hf_model import HFTextEncoder

    cls = HFTextAdapter if isinstance(getattr(model, "text", None), HFTextEncoder) else OpenCLIPNativeAdapter
    return cls(model, tokenizer, preprocess_train, preprocess, name)
