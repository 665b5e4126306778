"""The model zoo: the checkpoints users reach for, by the names they know, each with its loading
route, tower family, image size, context length, licence, gate and what it needs.

`python -m medkit models` prints it (no network); `load_backbone(key)` loads an entry;
`python -m medkit models download KEY… --to DIR` prepares folders on a machine with internet
that `load_backbone("DIR/KEY")` then loads offline; `python -m medkit models check KEY` runs
the fixed zero-shot probe (`medkit.backbones.check`) and compares it with `known_answer`.

Routes:
- `open_clip`: a built-in open_clip architecture and pretrained tag (`source` "ARCH/TAG");
- `open_clip_hub`: an open_clip repo on the HuggingFace hub (`source` "hf-hub:org/repo");
- `transformers`: a transformers dual encoder repo (`source` "org/repo"; `hf_dual` family);
- `state_dict`: a bare state-dict file the user has (`architecture` names the open_clip
  architecture; pass the file as `pretrained=`);
- `external`: needs a package of its own; listed so users know what it takes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True)
class ZooEntry:
    key: str
    title: str
    route: str  # open_clip | open_clip_hub | transformers | state_dict | external
    source: str  # what the route loads: "ARCH/TAG", "hf-hub:org/repo", "org/repo", or where to get the file
    family: str  # openclip_native | hf_text | hf_dual
    image_size: int
    context_length: int
    licence: str
    gated: bool = False
    domain: str = "general"
    architecture: str | None = None  # state_dict route: the open_clip architecture
    needs: str = "internet once (or a prepared folder)"
    notes: str = ""
    #: the probe's cosine matrix on the real weights (`models check KEY --record` prints it);
    #: None until a machine with the weights has recorded it
    known_answer: tuple[tuple[float, ...], ...] | None = None
    weights_file: tuple[str, ...] = field(default=())  # preferred weight files of a hub repo
    #: open_clip PreprocessCfg fields where the checkpoint was trained with its own (state_dict route)
    preprocess: dict | None = None

    @property
    def hub_id(self) -> str | None:
        if self.route == "open_clip_hub":
            return self.source.removeprefix("hf-hub:")
        if self.route == "transformers":
            return self.source
        return None

    @property
    def loadable(self) -> bool:
        return self.route != "external"


ZOO: dict[str, ZooEntry] = {e.key: e for e in [
    ZooEntry("openai-vit-b-16", "OpenAI CLIP ViT-B/16", "open_clip", "ViT-B-16/openai", "openclip_native",
             224, 77, "MIT", notes="the references' backbone (CoOp, CoCoOp, MaPLe, BiomedCoOp's CLIP rows)"),
    ZooEntry("openai-vit-b-32", "OpenAI CLIP ViT-B/32", "open_clip", "ViT-B-32/openai", "openclip_native",
             224, 77, "MIT"),
    ZooEntry("biomedclip", "BiomedCLIP (PubMedBERT + ViT-B/16, PMC-15M)", "open_clip_hub",
             "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "hf_text", 224, 256, "MIT",
             domain="biomedical", notes="timm ViT + HF PubMedBERT text tower; `download` also saves the text "
             "tower's transformers config into the folder (open_clip fetches it from the hub otherwise)"),
    ZooEntry("quiltnet-b-32", "QuiltNet B-32 (histopathology, Quilt-1M)", "open_clip_hub", "hf-hub:wisdomik/QuiltNet-B-32",
             "openclip_native", 224, 77, "MIT", domain="histopathology"),
    ZooEntry("quiltnet-b-16", "QuiltNet B-16", "open_clip_hub", "hf-hub:wisdomik/QuiltNet-B-16", "openclip_native",
             224, 77, "MIT", domain="histopathology"),
    ZooEntry("quiltnet-b-16-pmb", "QuiltNet B-16-PMB (PubMedBERT text)", "open_clip_hub",
             "hf-hub:wisdomik/QuiltNet-B-16-PMB", "hf_text", 224, 256, "MIT", domain="histopathology"),
    ZooEntry("pubmedclip", "PubMedCLIP ViT-B/32 (ROCO)", "transformers", "flaviagiammarino/pubmed-clip-vit-base-patch32",
             "hf_dual", 224, 77, "MIT", domain="radiology", notes="a transformers CLIPModel"),
    ZooEntry("siglip-b-16", "SigLIP ViT-B/16 (WebLI), open_clip", "open_clip_hub", "hf-hub:timm/ViT-B-16-SigLIP",
             "openclip_native", 224, 64, "Apache-2.0",
             notes="sigmoid loss: bidirectional text tower pooled at the last position, a learned logit bias"),
    ZooEntry("medsiglip-448", "MedSigLIP-448 (Health AI Developer Foundations)", "transformers", "google/medsiglip-448",
             "hf_dual", 448, 64, "Health AI Developer Foundations terms of use", gated=True, domain="medical",
             needs="a HuggingFace account that accepted the terms (HF_TOKEN), internet once",
             notes="a transformers SiglipModel; 448 px: ~4x the compute of 224 px per image"),
    ZooEntry("chexzero", "CheXzero (OpenAI ViT-B/32 fine-tuned on MIMIC-CXR reports)", "state_dict",
             "https://github.com/rajpurkarlab/CheXzero (weights on Google Drive, e.g. best_64_5e-05_original_22000_0.864.pt)",
             "openclip_native", 224, 77, "MIT (code); weights: see the repository", domain="chest x-ray",
             architecture="ViT-B-32-quickgelu",
             needs="the .pt file, downloaded by hand: load_backbone('chexzero', pretrained=PATH)",
             notes="a bare OpenAI-format state dict (OpenAI's key names, QuickGELU); its own preprocessing: "
             "aspect-preserving resize with zero padding, one grey mean/std (101.48761, 83.43944 on 0-255); its "
             "zero-shot scores softmax raw cosines of ('{}', 'no {}'): a monotone map of ours, same AUC",
             preprocess={"mean": (0.39799, 0.39799, 0.39799), "std": (0.32721, 0.32721, 0.32721),
                         "resize_mode": "longest", "interpolation": "bicubic"}),
    ZooEntry("clipseg-rd64-refined", "CLIPSeg rd64 refined: its CLIP ViT-B/16 towers", "transformers",
             "CIDAS/clipseg-rd64-refined", "hf_dual", 352, 77, "Apache-2.0", domain="segmentation",
             notes="the towers only (the decoder's keys are expected and unused here); 352 px"),
    ZooEntry("clipseg-rd64", "CLIPSeg rd64: its CLIP ViT-B/16 towers", "transformers", "CIDAS/clipseg-rd64", "hf_dual",
             352, 77, "Apache-2.0", domain="segmentation", notes="the towers only; 352 px"),
    ZooEntry("conch", "CONCH ViT-B/16 (histopathology)", "external", "hf_hub:MahmoodLab/conch", "external", 448, 128,
             "CC-BY-NC-ND-4.0", gated=True, domain="histopathology",
             needs="the `conch` package (MahmoodLab's fork of open_clip) and accepted terms",
             notes="listed, not wrapped: its CoCa-style model has no medkit adapter yet"),
]}


def entry(key: str) -> ZooEntry:
    try:
        return ZOO[key]
    except KeyError:
        raise KeyError(f"{key!r} is not in the model zoo; entries: {sorted(ZOO)}") from None


def table() -> pd.DataFrame:
    """The zoo as a table (what `python -m medkit models` prints)."""
    rows = [{"key": e.key, "model": e.title, "route": e.route, "family": e.family, "image": e.image_size,
             "context": e.context_length, "licence": e.licence, "gated": "yes" if e.gated else "",
             "known answer": "recorded" if e.known_answer else "—", "needs": e.needs} for e in ZOO.values()]
    return pd.DataFrame(rows)
