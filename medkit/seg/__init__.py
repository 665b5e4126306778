"""Segmentation with vision-language models: CLIPSeg's decoder on any backbone adapter, and the
loss and metrics (MONAI's Dice + CE, per-sample Dice / IoU / HD95)."""
from .model import SegmentationModel, build_decoder, load_clipseg

__all__ = ["SegmentationModel", "build_decoder", "load_clipseg"]
