"""Segmentation with vision-language models: CLIPSeg's decoder on any backbone adapter."""
from .model import SegmentationModel, build_decoder, load_clipseg

__all__ = ["SegmentationModel", "build_decoder", "load_clipseg"]
