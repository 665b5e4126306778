"""Weights from where users have them: a local folder in the hub's layout, a bare state-dict
file with an architecture name, or a hub name resolved from the local HuggingFace cache.

- An **open_clip folder** holds `open_clip_config.json` (`model_cfg` + `preprocess_cfg`), the
  weights (`open_clip_model.safetensors` or `open_clip_pytorch_model.bin`), the tokenizer files
  where the text tower has a HuggingFace tokenizer, and `text_config/` where it has a
  HuggingFace text model (BiomedCLIP's PubMedBERT: open_clip reads that model's config from
  the hub even when the weights are local, so `models download` saves it into the folder).
- A **transformers folder** holds `config.json`, `model.safetensors` (or `pytorch_model.bin`),
  the tokenizer files and `preprocessor_config.json` (`hf_dual`).
- A **state-dict file** (CheXzero's `.pt`) needs the architecture: OpenAI-format state dicts
  load into open_clip's CLIP (same key names); OpenAI's TorchScript archives too.

A hub name (`hf-hub:org/repo` for open_clip, `org/repo` for transformers) is a snapshot
folder: downloaded where there is internet, read from the HuggingFace cache where
`HF_HUB_OFFLINE=1`. Every route loads strictly and says what is missing.
"""
from __future__ import annotations

import json
import os
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn

from .adapter import BackboneAdapter, wrap
from .errors import BackboneNotAvailable, CheckpointMismatch

OPEN_CLIP_CONFIG = "open_clip_config.json"
#: weight files in the order open_clip prefers them
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "model.safetensors",
                     "pytorch_model.bin")
TEXT_CONFIG_DIR = "text_config"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")
#: what a snapshot needs besides the weights (configs, tokenizers, processors)
SNAPSHOT_PATTERNS = ["*.json", "*.txt", "*.model"]
#: keys OpenAI's TorchScript archives carry that are not parameters
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")


def first_line(e: BaseException) -> str:
    """An exception's message in one line (some have none: say the type)."""
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def folder_kind(folder: Path) -> str:
    """'open_clip' or 'transformers', from the files a folder holds."""
    if (folder / OPEN_CLIP_CONFIG).is_file():
        return "open_clip"
    if (folder / "config.json").is_file():
        return "transformers"
    raise FileNotFoundError(
        f"{folder} is not a model folder: it has neither {OPEN_CLIP_CONFIG} (open_clip layout) nor config.json "
        f"(transformers layout); it has {sorted(p.name for p in folder.iterdir())[:20]}")


def load_folder(folder: str | Path, name: str | None = None, device: str = "cpu",
                tokenizer_from_folder: bool = True) -> BackboneAdapter:
    """The adapter of a local model folder (either layout). `tokenizer_from_folder`: an open_clip
    folder's own tokenizer files win over its config's `hf_tokenizer_name` (open_clip's
    `local-dir:` rule); hub snapshots read the named tokenizer, as open_clip's `hf-hub:` does."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    label = name or folder.name
    if folder_kind(folder) == "open_clip":
        return load_open_clip_folder(folder, label, device, tokenizer_from_folder)
    from .hf_dual import load_hf_dual

    return load_hf_dual(folder, label, device)


# --------------------------------------------------------------------------- open_clip

def build_open_clip(model_cfg: dict, source: str) -> nn.Module:
    """An open_clip CLIP / CustomTextCLIP from a `model_cfg`, with no weights fetched for
    either tower (they come from the checkpoint)."""
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = deepcopy(model_cfg)
    if "multimodal_cfg" in cfg:
        raise NotImplementedError(f"{source}: CoCa models (multimodal_cfg) are not wrapped by a medkit adapter")
    text, vision = cfg.setdefault("text_cfg", {}), cfg.setdefault("vision_cfg", {})
    if "timm_model_name" in vision:
        vision["timm_model_pretrained"] = False
    if "hf_model_name" in text:
        text["hf_model_pretrained"] = False
    custom = cfg.pop("custom_text", False) or "hf_model_name" in text
    try:
        return (CustomTextCLIP if custom else CLIP)(**cfg)
    except OSError as e:  # transformers could not find the HF text tower's config
        raise BackboneNotAvailable(
            f"{source}: the text tower {text.get('hf_model_name')!r} needs its transformers config, which is "
            f"neither in the folder ({TEXT_CONFIG_DIR}/config.json) nor in the HuggingFace cache"
            + (" (HF_HUB_OFFLINE=1)" if is_offline() else "")
            + "; `python -m medkit models download NAME --to DIR` saves it into the folder") from e


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """(state dict, whether it is in OpenAI's own format: a TorchScript archive or its meta keys)."""
    from open_clip.factory import load_state_dict

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if _is_torchscript(path):
        state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())  # OpenAI's original .pt archives
        return {k: v for k, v in state.items() if k not in OPENAI_META_KEYS}, True
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as e:  # noqa: BLE001 — pickles beyond tensors: say which file, not torch's internals
        raise ValueError(f"{path}: not a readable state dict ({type(e).__name__}: {first_line(e)})") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and not any(
            isinstance(v, torch.Tensor) for v in state.values()):
        state = state["model"]  # {"model": state_dict, "epoch": …} training checkpoints
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: holds {type(state).__name__}, not a state dict of tensors")
    return {k: v for k, v in state.items() if k not in OPENAI_META_KEYS}, any(k in state for k in OPENAI_META_KEYS)


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def load_checkpoint_strict(model: nn.Module, path: Path, architecture: str) -> bool:
    """open_clip's conversions (third-party layouts, old text key names), then a strict load; any missing, unexpected or mis-shaped key raises
    `CheckpointMismatch` with the keys, before a single tensor is copied. Returns whether the
    file was in OpenAI's own format."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    state, openai = read_state_dict(path)
    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        own = getattr(model, key, None)
        if key in state and own is not None and own.ndim != state[key].ndim:
            state[key] = state[key].reshape(own.shape)
    state.pop("text.transformer.embeddings.position_ids", None)  # dropped by transformers 4.31
    # no positional-embedding interpolation (open_clip's load_checkpoint does it silently): a
    # 384-px or 64-token checkpoint in a 224-px / 77-token architecture is a wrong architecture
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise CheckpointMismatch(path, architecture, missing, unexpected, shapes)
    model.load_state_dict(state, strict=True)
    return openai


def _weights_in(folder: Path) -> Path:
    for name in OPEN_CLIP_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise BackboneNotAvailable(f"{folder}: no weights file; expected one of {list(OPEN_CLIP_WEIGHTS)}, the folder "
                               f"has {sorted(p.name for p in folder.iterdir())[:20]}")


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in TOKENIZER_FILES)


def load_open_clip_folder(folder: Path, name: str, device: str = "cpu", tokenizer_from_folder: bool = True) -> BackboneAdapter:
    import open_clip

    try:
        config = json.loads((folder / OPEN_CLIP_CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / OPEN_CLIP_CONFIG}: not valid JSON ({e})") from e
    if "model_cfg" not in config:
        raise ValueError(f"{folder / OPEN_CLIP_CONFIG}: no 'model_cfg' (the hub layout is "
                         '{"model_cfg": {...}, "preprocess_cfg": {...}})')
    model_cfg = deepcopy(config["model_cfg"])
    text_cfg = model_cfg.get("text_cfg", {})
    if "hf_model_name" in text_cfg and (folder / TEXT_CONFIG_DIR / "config.json").is_file():
        text_cfg["hf_model_name"] = str(folder / TEXT_CONFIG_DIR)  # the copy `models download` saved
    weights = _weights_in(folder)
    model = build_open_clip(model_cfg, str(folder))
    load_checkpoint_strict(model, weights, f"{name} ({OPEN_CLIP_CONFIG})")
    train_tf, eval_tf = _open_clip_transforms(model, config.get("preprocess_cfg"))
    if "hf_tokenizer_name" in text_cfg and not (tokenizer_from_folder and _has_tokenizer(folder)):
        tokenizer = open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"],
                                                    context_length=text_cfg.get("context_length", 77),
                                                    **text_cfg.get("tokenizer_kwargs", {}))
    else:
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    return wrap(model.eval(), tokenizer, train_tf, eval_tf, name).to(device)


def load_state_dict_file(architecture: str, path: str | Path, device: str = "cpu",
                         preprocess: dict | None = None, quick_gelu: bool = False) -> BackboneAdapter:
    """An open_clip architecture (`ViT-B-32-quickgelu`, …) with weights from a bare state-dict
    file. OpenAI-format state dicts (CheXzero's) share open_clip's key names but not its
    activation: they need the `-quickgelu` architecture. A file that shows it is OpenAI's
    (a TorchScript archive, or its meta keys) loaded into a GELU architecture warns: the keys
    fit, the features would not. A plain state dict cannot tell; the zoo entry names the
    architecture. `preprocess`: open_clip `PreprocessCfg` fields the weights were trained with
    (default: OpenAI's mean/std, shortest-side resize and centre crop); `quick_gelu`: force
    OpenAI's activation (an OpenAI tag's architecture given a file)."""
    import warnings

    import open_clip

    path = Path(path).expanduser()
    cfg = open_clip.get_model_config(architecture)
    if cfg is None:
        close = [m for m in open_clip.list_models() if architecture.lower().split("-")[0] in m.lower()][:8]
        raise ValueError(f"unknown open_clip architecture {architecture!r} for {path}; e.g. {close}")
    if quick_gelu:
        cfg = {**cfg, "quick_gelu": True}
    model = build_open_clip(cfg, architecture)
    if load_checkpoint_strict(model, path, architecture) and not cfg.get("quick_gelu", False):
        warnings.warn(f"{path} is an OpenAI-format checkpoint but {architecture} uses GELU, not OpenAI's "
                      f"QuickGELU: use {architecture}-quickgelu unless the weights were trained with GELU", stacklevel=2)
    train_tf, eval_tf = _open_clip_transforms(model, preprocess)
    return wrap(model.eval(), open_clip.get_tokenizer(architecture), train_tf, eval_tf,
                f"{architecture}@{path.name}").to(device)


def _open_clip_transforms(model: nn.Module, preprocess: dict | None = None):
    """open_clip's (train, eval) transforms of `preprocess` (PreprocessCfg fields; others, as a
    hub config may hold, are ignored) at the model's image size."""
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    pre = PreprocessCfg(**{**merge_preprocess_dict(PreprocessCfg(), preprocess or {}), "size": model.visual.image_size})
    return image_transform_v2(pre, is_train=True), image_transform_v2(pre, is_train=False)


def tag_uses_quick_gelu(architecture: str, tag: str | None) -> bool:
    """Whether an open_clip pretrained tag was trained with QuickGELU (OpenAI's weights are)."""
    import open_clip

    return bool(tag) and bool((open_clip.get_pretrained_cfg(architecture, tag) or {}).get("quick_gelu", False))


# --------------------------------------------------------------------------- hub snapshots

def hub_snapshot(repo_id: str, revision: str | None = None, weights: tuple[str, ...] = ()) -> Path:
    """The folder of a hub repo: downloaded (configs, tokenizer, one weights file) where there
    is internet, the cached snapshot where `HF_HUB_OFFLINE=1`."""
    from huggingface_hub import snapshot_download

    try:
        if is_offline():
            return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        patterns = SNAPSHOT_PATTERNS + _pick_weights(repo_id, revision, weights)
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 — huggingface_hub's errors, said with what to do
        if not is_offline() and type(e).__name__ not in ("GatedRepoError", "RepositoryNotFoundError",
                                                          "RevisionNotFoundError"):
            try:  # no network but HF_HUB_OFFLINE unset: a cached snapshot still serves
                return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
            except Exception:  # noqa: BLE001
                pass
        raise _hub_error(repo_id, e) from e


def _pick_weights(repo_id: str, revision: str | None, preferred: tuple[str, ...]) -> list[str]:
    """One set of weights (repos often hold the same weights as .bin and .safetensors, or in
    shards with an index): the patterns to download."""
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files(repo_id, revision=revision)
    for name in (*preferred, *OPEN_CLIP_WEIGHTS):
        if name in files:
            return [name]
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index in files:
            stem = index.removesuffix(".index.json").rsplit(".", 1)
            return [index, f"{stem[0]}-*.{stem[1]}"]
    raise BackboneNotAvailable(f"{repo_id}: no weights file among {files[:20]}")


def _hub_error(repo_id: str, e: Exception) -> Exception:
    kind = type(e).__name__
    if isinstance(e, (BackboneNotAvailable, CheckpointMismatch)):
        return e
    if kind == "GatedRepoError":
        return BackboneNotAvailable(
            f"{repo_id} is gated: accept its terms at https://huggingface.co/{repo_id}, then `hf auth login` "
            "(or set HF_TOKEN) and run again")
    if kind in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        return BackboneNotAvailable(f"{repo_id}: no such repository or revision on the HuggingFace hub ({kind}), "
                                    "and no local folder of that name")
    if is_offline() or kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        from huggingface_hub import constants

        return BackboneNotAvailable(
            f"{repo_id} is not in the local HuggingFace cache ({constants.HF_HUB_CACHE}) and the hub cannot be "
            "reached" + (" (HF_HUB_OFFLINE=1)" if is_offline() else "") + ": on a machine with internet run "
            f"`python -m medkit models download NAME --to DIR`, copy DIR here and load_backbone('DIR/NAME')")
    return BackboneNotAvailable(f"{repo_id}: could not be fetched ({kind}: {first_line(e)}); a local folder of "
                                "that name does not exist either")
