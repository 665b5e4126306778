"""Segmentation with vision-language models: CLIPSeg's decoder on any backbone adapter (`model`),
the loss and metrics (`metrics`: MONAI's Dice + CE, per-sample Dice / IoU / HD95, pooled IoU),
tensors and cached activations (`data`), models by name and the offline decoder pretraining
(`load`); the strategies (`strategies`), the loop (`train`) and the runner (`experiment`) sit
in the layers of the methods, the training loop and the runner."""
from .model import SegmentationModel, build_decoder, load_clipseg

__all__ = ["SegmentationModel", "build_decoder", "load_clipseg"]
