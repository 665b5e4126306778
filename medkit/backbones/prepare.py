"""`python -m medkit models download KEY… --to DIR`: on a machine with internet, fetch zoo entries
into folders that `load_backbone("DIR/KEY")` loads on a machine without.

A folder holds what its hub repo holds (configs, tokenizer, one weights file) plus what the
hub route would otherwise fetch at load time: an open_clip model with a HuggingFace text
tower gets that tower's transformers config (`text_config/`) and its named tokenizer, so
nothing reaches for the network later. `medkit_source.json` records where it came from.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from .errors import BackboneNotAvailable
from .local import (OPEN_CLIP_CONFIG, SNAPSHOT_PATTERNS, TEXT_CONFIG_DIR, _hub_error, _pick_weights, first_line,
                    tag_uses_quick_gelu)
from .zoo import ZooEntry, entry

#: fetch(repo_id, target folder, preferred weight files) → the revision fetched
Fetch = Callable[[str, Path, tuple[str, ...]], str | None]


def hub_fetch(repo_id: str, target: Path, weights: tuple[str, ...] = ()) -> str | None:
    """The repo's configs, tokenizer and one weights file into `target` (huggingface_hub)."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        patterns = SNAPSHOT_PATTERNS + _pick_weights(repo_id, None, weights)
        snapshot_download(repo_id, allow_patterns=patterns, local_dir=target)
        return HfApi().model_info(repo_id).sha
    except Exception as e:  # noqa: BLE001
        raise _hub_error(repo_id, e) from e


def download(key: str, to: str | Path, fetch: Fetch = hub_fetch, progress: Callable[[str], None] = print) -> Path:
    """Prepare the folder `to/key` for zoo entry `key`; returns it."""
    e = entry(key)
    target = Path(to).expanduser() / key
    if e.route == "external":
        raise NotImplementedError(f"{key}: {e.notes}; it needs {e.needs}")
    if e.route == "state_dict":
        raise BackboneNotAvailable(f"{key}: its weights are not on a hub: get the file by hand ({e.source}) and "
                                   f"load it with load_backbone({key!r}, pretrained='PATH/TO/FILE.pt')")
    partial = target.with_name(target.name + ".partial")  # a killed download never looks complete
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    repo = e.hub_id or _open_clip_tag_repo(e)
    progress(f"{key}: fetching {repo} …")
    try:
        revision = fetch(repo, partial, e.weights_file)
        if e.route == "open_clip":
            _ensure_open_clip_config(e, partial)
        if e.route in ("open_clip", "open_clip_hub"):
            _save_text_tower(partial, progress)
    except OSError as err:  # the text tower's config or tokenizer could not be fetched
        shutil.rmtree(partial, ignore_errors=True)
        raise BackboneNotAvailable(f"{key}: {first_line(err)}") from err
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    (partial / "medkit_source.json").write_text(json.dumps(
        {"key": key, "source": e.source, "repo": repo, "revision": revision, "route": e.route,
         "downloaded": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    progress(f"{key}: ready in {target} (load_backbone({str(target)!r}) works offline)")
    return target


def _open_clip_tag_repo(e: ZooEntry) -> str:
    """The HF repo open_clip downloads a built-in tag from (OpenAI's weights: timm/…openai)."""
    import open_clip

    arch, tag = e.source.split("/", 1)
    hub = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "")
    if not hub:
        raise BackboneNotAvailable(f"{e.key}: open_clip has no HuggingFace repo for {arch}/{tag}")
    return hub.strip("/")


def _ensure_open_clip_config(e: ZooEntry, folder: Path) -> None:
    """A built-in tag's repo may lack open_clip_config.json: write it from open_clip's own
    architecture config and the tag's preprocessing (QuickGELU where the tag needs it)."""
    import open_clip

    arch, tag = e.source.split("/", 1)
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    quick = tag_uses_quick_gelu(arch, tag)
    if (folder / OPEN_CLIP_CONFIG).is_file():  # the repo's own: make sure it says QuickGELU where the tag does
        config = json.loads((folder / OPEN_CLIP_CONFIG).read_text())
        if quick and not config.get("model_cfg", {}).get("quick_gelu"):
            config.setdefault("model_cfg", {})["quick_gelu"] = True
            (folder / OPEN_CLIP_CONFIG).write_text(json.dumps(config, indent=1))
        return
    model_cfg = dict(open_clip.get_model_config(arch))
    if quick:
        model_cfg["quick_gelu"] = True
    preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    (folder / OPEN_CLIP_CONFIG).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=1))


def _save_text_tower(folder: Path, progress: Callable[[str], None]) -> None:
    """The HuggingFace text tower's config and the named tokenizer, into the folder."""
    config = json.loads((folder / OPEN_CLIP_CONFIG).read_text())
    text = config.get("model_cfg", {}).get("text_cfg", {})
    if "hf_model_name" in text:
        from transformers import AutoConfig

        progress(f"  text tower config {text['hf_model_name']} → {TEXT_CONFIG_DIR}/")
        AutoConfig.from_pretrained(text["hf_model_name"]).save_pretrained(folder / TEXT_CONFIG_DIR)
    if "hf_tokenizer_name" in text:
        from transformers import AutoTokenizer

        progress(f"  tokenizer {text['hf_tokenizer_name']}")
        AutoTokenizer.from_pretrained(text["hf_tokenizer_name"]).save_pretrained(folder)
