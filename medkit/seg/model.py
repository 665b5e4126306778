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
from contextlib import contextmanager, nullcontext
from typing import Iterator, Sequence

import torch
from torch import nn

from medkit.backbones import BackboneAdapter


def patch_size(adapter: BackboneAdapter) -> int:
    """Pixels per image-tower token along a side (the decoder's transposed convolution undoes
    it): the image size over the token grid, which also holds for a convolutional stem."""
    visual = adapter.model.visual
    hf = getattr(getattr(visual, "vision_model", None), "config", None)
    if hf is not None:
        return int(hf.patch_size)
    for owner in (getattr(visual, "trunk", None), visual):
        embed = getattr(owner, "patch_embed", None)
        grid = getattr(embed, "grid_size", None) or getattr(owner, "grid_size", None)
        if grid is not None:
            return adapter.image_size // int(grid[0] if isinstance(grid, (tuple, list)) else grid)
    raise NotImplementedError(f"{type(visual).__name__}: no token grid (segmentation needs a ViT image tower)")


class LearnableUpsampler(nn.Module):
    """TuneVLSeg's learnable upsampler: the decoder's last feature map `[B, reduce_dim, h, w]`
    upsampled bilinearly by the patch size and a 5×5 convolution (replicate padding) to one
    channel, blended with the transposed convolution's logits by a learnable ratio (init 0.5):
    `α·transposed + (1 − α)·conv(upsample(features))`."""

    def __init__(self, reduce_dim: int, patch: int) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=patch, mode="bilinear", align_corners=False)
        self.conv = nn.Conv2d(reduce_dim, 1, kernel_size=5, padding=2, padding_mode="replicate")
        self.ratio = nn.Parameter(torch.tensor(0.5))

    @contextmanager
    def attached(self, decoder: nn.Module) -> Iterator[None]:
        """Blend into `decoder`'s output while the context lasts (the decoder may be shared by
        several strategies, so it is never changed for good)."""
        def blend(_m, args, out):
            return self.ratio * out + (1 - self.ratio) * self.conv(self.upsample(args[0]))

        handle = decoder.transposed_convolution.register_forward_hook(blend)
        try:
            yield
        finally:
            handle.remove()


def default_layers(depth: int) -> list[int]:
    """CLIPSeg's choice (blocks 3, 6, 9 of twelve, 0-based after the block) scaled to `depth`."""
    return sorted({max(0, min(depth - 1, round(depth * k / 4))) for k in (1, 2, 3)})


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

    @property
    def reduce_dim(self) -> int:
        return int(self.decoder.reduces[0].out_features)

    def decode(self, activations: Sequence[torch.Tensor], conditional: torch.Tensor,
               upsampler: LearnableUpsampler | None = None) -> torch.Tensor:
        """Mask logits from (cached or fresh) activations and one conditional feature per image."""
        if conditional.shape[0] != activations[0].shape[0]:
            conditional = conditional.expand(activations[0].shape[0], -1)
        with upsampler.attached(self.decoder) if upsampler is not None else nullcontext():
            out = self.decoder(list(activations), conditional).logits
        return out.reshape(activations[0].shape[0], *self._mask_size(activations))

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
