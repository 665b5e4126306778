"""One protocol over vision-language models, whatever their towers.

Prompt methods need a handful of operations: tokenize, look up token embeddings, encode
text *from embeddings* (so learned context vectors can replace word embeddings), encode
images, the logit scale and the widths. `BackboneAdapter` gives them for the two tower
families that cover the field:

- `OpenCLIPNativeAdapter`: open_clip's own text transformer (OpenAI CLIP, LAION,
  PubMedCLIP …): causal mask, pooled at the EOT token (argmax of the ids).
- `HFTextAdapter`: a HuggingFace encoder as text tower (BiomedCLIP's PubMedBERT,
  MiniCLIP's MiniLM): bidirectional, attention mask from the padding, pooled by the
  tower's pooler (CLS or mean) then projected.

Methods talk only to this protocol; none of them knows which family it runs on.
"""
from __future__ import annotations

from typing import Callable, Sequence

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

    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text space."""
        with torch.no_grad():
            return int(self.encode_text(self.tokenize(["x"])).shape[-1])

    @property
    def image_size(self) -> int:
        size = getattr(self.model.visual, "image_size", 224)
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        feats = self.model.encode_image(images.to(self.device, self.dtype))
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, ids_or_texts: torch.Tensor | Sequence[str], normalize: bool = False) -> torch.Tensor:
        """The model's own text path (the reference for `encode_text_from_embeddings`)."""
        ids = ids_or_texts if isinstance(ids_or_texts, torch.Tensor) else self.tokenize(ids_or_texts)
        feats = self.model.encode_text(ids.to(self.device))
        return F.normalize(feats, dim=-1) if normalize else feats

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, normalize: bool = True) -> torch.Tensor:
        """Encode many sentences in batches (prompt ensembles, class templates)."""
        out = [self.encode_text(list(texts[i:i + batch_size]), normalize=normalize) for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.empty(0)

    # --- family hooks ------------------------------------------------------------------
    @property
    def text_width(self) -> int:
        return int(self.token_embedding(self.tokenize(["x"])[:, :1]).shape[-1])

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pooled_index(self, ids: torch.Tensor) -> torch.Tensor:
        """Per row, the position whose final state becomes the text feature (if any)."""
        raise NotImplementedError

    def encode_text_from_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor,
                                    normalize: bool = False) -> torch.Tensor:
        """Text features from token embeddings `[N, L, D]`.

        `ids` are the token ids of the same prompts (with placeholder words where context
        vectors sit): they give the pooled position and the padding mask.
        """
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

    def encode_text_from_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor,
                                    normalize: bool = False) -> torch.Tensor:
        t = self._text()
        length = embeddings.shape[1]
        x = embeddings + t.positional_embedding[:length].to(embeddings.dtype)
        mask = t.attn_mask[:length, :length] if t.attn_mask is not None else None
        x = t.transformer(x, attn_mask=mask)
        x = t.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), self.pooled_index(ids.to(x.device))]
        proj = t.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x, dim=-1) if normalize else x


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

    def encode_text_from_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor,
                                    normalize: bool = False) -> torch.Tensor:
        hf = self._hf
        mask = self.attention_mask(ids.to(embeddings.device))
        out = hf.transformer(inputs_embeds=embeddings, attention_mask=mask)
        x = hf.proj(hf.pooler(out, mask))
        return F.normalize(x, dim=-1) if normalize else x


def wrap(model: nn.Module, tokenizer: Callable, preprocess_train: Callable, preprocess: Callable,
         name: str) -> BackboneAdapter:
    """Pick the adapter for an open_clip model by its text tower."""
    from open_clip.hf_model import HFTextEncoder

    cls = HFTextAdapter if isinstance(getattr(model, "text", None), HFTextEncoder) else OpenCLIPNativeAdapter
    return cls(model, tokenizer, preprocess_train, preprocess, name)
