"""CLIPSeg's decoder on medkit's backbone adapter, so the prompt machinery of every tower family
serves segmentation too.

CLIPSeg reads the activations of a few image-tower blocks (`extract_layers`), conditions them
on a text feature by FiLM, runs a small transformer and a transposed convolution to the mask
logits. The decoder here is transformers' own `CLIPSegDecoder`; what differs from the stock
`CLIPSegForImageSegmentation.forward` is where the activations and the text feature come from:
the adapter (`encode_image_layers`, `encode_text` or a prompt learner's text features), with
gradients, so prompts inside either encoder can train (the stock forward runs both encoders
under `torch.no_grad()`). With no prompts it equals the stock forward (tested).

- `load_clipseg(folder)`: a real CLIPSeg checkpoint (`CIDAS/clipseg-rd64-refined` …): its
  towers as a transformers-family adapter, its decoder as trained.
- `build_decoder(adapter, extract_layers, …)`: a fresh decoder sized for any adapter (MiniCLIP,
  BiomedCLIP), to be trained.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from medkit.backbones import BackboneAdapter


def patch_size(adapter: BackboneAdapter) -> int:
    """The image tower's patch size (the decoder's transposed convolution undoes it)."""
    visual = adapter.model.visual
    candidates = [getattr(getattr(visual, "vision_model", None), "config", None),
                  getattr(getattr(visual, "trunk", None), "patch_embed", None), visual]
    for c in candidates:
        size = getattr(c, "patch_size", None)
        if size is not None:
            return int(size[0] if isinstance(size, (tuple, list)) else size)
    raise NotImplementedError(f"{type(visual).__name__}: no patch size (segmentation needs a ViT image tower)")


def build_decoder(adapter: BackboneAdapter, extract_layers: Sequence[int] = (3, 6, 9), reduce_dim: int = 64,
                  heads: int = 4, intermediate: int = 2048, conditional_layer: int = 0,
                  complex_transposed: bool = False) -> nn.Module:
    """A randomly initialised CLIPSeg decoder for `adapter`'s widths (CLIPSeg's defaults:
    layers 3, 6, 9 of twelve, reduce_dim 64, 4 heads, FF 2048, FiLM at the first layer)."""
    from transformers import CLIPSegConfig
    from transformers.models.clipseg.modeling_clipseg import CLIPSegDecoder

    depth = len(adapter.vision_blocks())
    if max(extract_layers) >= depth:
        raise ValueError(f"extract_layers {list(extract_layers)} outside the image tower's {depth} blocks")
    config = CLIPSegConfig(
        text_config={}, vision_config={"hidden_size": adapter.vision_width, "patch_size": patch_size(adapter),
                                       "image_size": adapter.image_size, "num_attention_heads": heads},
        projection_dim=adapter.embed_dim, extract_layers=list(extract_layers), reduce_dim=reduce_dim,
        decoder_num_attention_heads=heads, decoder_intermediate_size=intermediate,
        conditional_layer=conditional_layer, use_complex_transposed_convolution=complex_transposed)
    return CLIPSegDecoder(config)


class SegmentationModel(nn.Module):
    """Mask logits `[B, H, W]` of images given a conditional (text) feature per image."""

    def __init__(self, adapter: BackboneAdapter, decoder: nn.Module, extract_layers: Sequence[int]) -> None:
        super().__init__()
        self.adapter = adapter
        self.decoder = decoder
        self.extract_layers = list(extract_layers)

    def activations(self, images: torch.Tensor, prompts: Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        return self.adapter.encode_image_layers(images, self.extract_layers, prompts)

    def decode(self, activations: Sequence[torch.Tensor], conditional: torch.Tensor) -> torch.Tensor:
        """Mask logits from (cached or fresh) activations and one conditional feature per image."""
        if conditional.shape[0] != activations[0].shape[0]:
            conditional = conditional.expand(activations[0].shape[0], -1)
        return self.decoder(list(activations), conditional).logits.reshape(activations[0].shape[0],
                                                                            *self._mask_size(activations))

    def _mask_size(self, activations: Sequence[torch.Tensor]) -> tuple[int, int]:
        side = int(round((activations[0].shape[1] - 1) ** 0.5)) * patch_size(self.adapter)
        return side, side

    def forward(self, images: torch.Tensor, conditional: torch.Tensor,
                prompts: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        return self.decode(self.activations(images, prompts), conditional)


def load_clipseg(folder: str | Path, name: str | None = None, device: str = "cpu") -> SegmentationModel:
    """A CLIPSeg checkpoint folder (hub layout of `CLIPSegForImageSegmentation`), loaded strictly:
    towers and decoder as trained."""
    from transformers import CLIPSegForImageSegmentation

    from medkit.backbones.hf_dual import adapter_of, check_loading_info, quiet_transformers, read_config

    folder = Path(folder)
    if read_config(folder).get("model_type") != "clipseg":
        raise ValueError(f"{folder}/config.json: not a CLIPSeg model (model_type "
                         f"{read_config(folder).get('model_type')!r})")
    with quiet_transformers():
        hf, info = CLIPSegForImageSegmentation.from_pretrained(folder, output_loading_info=True)
    check_loading_info(info, folder, "CLIPSegForImageSegmentation")
    hf = hf.float().eval()
    adapter = adapter_of(hf.clip, folder, name or folder.name)
    return SegmentationModel(adapter, hf.decoder, hf.config.extract_layers).to(device)
