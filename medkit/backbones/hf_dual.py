"""The third tower family: HuggingFace transformers dual encoders (`CLIPModel`, `SiglipModel`,
and the CLIP towers of `CLIPSegModel`) behind the same adapter protocol.

PubMedCLIP, MedSigLIP and CLIPSeg ship as transformers folders, not open_clip ones. The
adapter drives the model's *own* forward passes: text from embeddings replaces the output of
the text embedding module (token + position embeddings) through a forward hook, so masks,
pooling (CLIP: the EOS token; SigLIP: the last position) and the head stay the library's, in
every transformers version the requirements admit. Deep prompts are hooks on the encoder
layers, as for the other two families.

Weights are loaded strictly: a missing or unexpected key is an error that lists the keys
(`CheckpointMismatch`), never transformers' warning and a randomly initialised tensor.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .adapter import BackboneAdapter
from .errors import CheckpointMismatch

#: `model_type` of a transformers config → (class name, whether the text tower is causal)
SUPPORTED = {"clip": ("CLIPModel", True), "siglip": ("SiglipModel", False), "clipseg": ("CLIPSegModel", True)}
#: keys a checkpoint may lack or carry without anything being wrong: buffers transformers
#: rebuilds (position ids) and, for CLIPSeg's towers, the segmentation decoder.
_BENIGN_MISSING = ("position_ids",)
_UNUSED_PREFIXES = {"clipseg": ("decoder.",)}


class HFVisionTower(nn.Module):
    """A transformers vision model and its projection into the joint space (Identity for
    SigLIP, whose attention-pooling head already gives the joint feature)."""

    def __init__(self, vision_model: nn.Module, proj: nn.Module, input_size: int | None = None) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.proj = proj
        #: what the folder's processor feeds (CLIPSeg: 352 px into a 224-px config, its position
        #: embeddings interpolated); the config's size where there is no processor
        self.input_size = int(input_size or vision_model.config.image_size)

    @property
    def image_size(self) -> int:
        return self.input_size

    def _run(self, pixel_values: torch.Tensor):
        if pixel_values.shape[-1] != int(self.vision_model.config.image_size):
            return self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=True)
        return self.vision_model(pixel_values=pixel_values)

    @property
    def has_class_token(self) -> bool:
        return hasattr(self.vision_model, "pre_layrnorm")  # CLIP-style; SigLIP has neither

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self._run(pixel_values)
        if out.pooler_output is None:
            raise NotImplementedError("this SigLIP vision tower has no pooling head (vision_use_head=False)")
        return self.proj(out.pooler_output)

    def tokens(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled feature, local tokens), both projected. CLIP: the final norm and projection
        per patch token (the ViT analogue of DualCoOp's per-position projection); SigLIP: the
        normed patch tokens (its pooling head mixes all positions, it has no per-token form)."""
        out = self._run(pixel_values)
        hidden = out.last_hidden_state
        if self.has_class_token:
            local = self.vision_model.post_layernorm(hidden[:, 1:])
        else:
            local = hidden  # already after post_layernorm
        return self.proj(out.pooler_output), self.proj(local)


class HFTextTower(nn.Module):
    """A transformers text model and its projection (Identity for SigLIP: its head is inside)."""

    def __init__(self, text_model: nn.Module, proj: nn.Module) -> None:
        super().__init__()
        self.text_model = text_model
        self.proj = proj

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.text_model(input_ids=input_ids).pooler_output)


class HFDualModel(nn.Module):
    """The open_clip-like surface (`visual`, `text`, `encode_image`, `encode_text`,
    `logit_scale`, `logit_bias`) over a transformers dual encoder. It holds the towers, not
    the transformers model, so each parameter is registered once; `hf` keeps the original
    for `save_pretrained`."""

    def __init__(self, hf: nn.Module, input_size: int | None = None) -> None:
        super().__init__()
        kind = hf.config.model_type
        if kind not in SUPPORTED:
            raise ValueError(f"transformers model_type {kind!r} is not a supported dual encoder "
                             f"(supported: {sorted(SUPPORTED)})")
        self.kind = kind
        self.causal = SUPPORTED[kind][1]
        self.visual = HFVisionTower(hf.vision_model, getattr(hf, "visual_projection", None) or nn.Identity(), input_size)
        self.text = HFTextTower(hf.text_model, getattr(hf, "text_projection", None) or nn.Identity())
        self.logit_scale = hf.logit_scale
        self.logit_bias = getattr(hf, "logit_bias", None)  # SigLIP's sigmoid bias (None for CLIP)
        self._hf = [hf]  # not a submodule: its parameters are the towers'

    @property
    def hf(self) -> nn.Module:
        return self._hf[0]

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids)


class PaddedTokenizer:
    """A transformers tokenizer as medkit's tokenizer callable: texts → ids `[N, L]`, padded to
    the context length as the towers were trained (SigLIP: "max_length", no attention mask)."""

    def __init__(self, tokenizer, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts), padding="max_length", max_length=self.context_length, truncation=True,
                              return_tensors="pt")["input_ids"]


class HFDualAdapter(BackboneAdapter):
    family = "hf_dual"

    @property
    def _text_model(self) -> nn.Module:
        return self.model.text.text_model

    @property
    def _vision_model(self) -> nn.Module:
        return self.model.visual.vision_model

    @property
    def image_size(self) -> int:
        return self.model.visual.image_size

    @cached_property
    def vision_width(self) -> int:
        return int(self.vision_blocks()[0].layer_norm1.normalized_shape[0])

    # --- text ----------------------------------------------------------------------------
    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self._text_model.embeddings.token_embedding(ids.to(self.device))

    def pooled_index(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.model.causal:  # SigLIP pools the last position, padding or not
            return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        eos = self._text_model.config.eos_token_id
        if eos == 2:  # configs from before transformers#24773 pool at the highest id, as OpenAI's CLIP
            return ids.argmax(dim=-1)
        return (ids == eos).int().argmax(dim=-1)

    @property
    def pools_fixed_position(self) -> bool:
        return not self.model.causal  # SigLIP pools the last (padding) position

    def text_blocks(self) -> list[nn.Module]:
        return list(self._text_model.encoder.layers)

    def needed_length(self, ids: torch.Tensor) -> int:
        if not self.model.causal:  # bidirectional and unmasked: every position reaches the pooled one
            return int(ids.shape[1])
        return int(self.pooled_index(ids).max()) + 1

    def _encode_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        emb = self._text_model.embeddings
        length = embeddings.shape[1]

        def replace(_m, _args, _out):
            return embeddings + emb.position_embedding(emb.position_ids[:, :length]).to(embeddings.dtype)

        handle = emb.register_forward_hook(replace)
        try:
            return self.model.text(ids[:, :length].to(embeddings.device))
        finally:
            handle.remove()

    # --- image ---------------------------------------------------------------------------
    def vision_blocks(self) -> list[nn.Module]:
        return list(self._vision_model.encoder.layers)

    @contextmanager
    def _vision_prompt_hooks(self, prompts: Sequence[torch.Tensor | None] | None) -> Iterator[None]:
        """Prompts appended to the output of the patch embedding (before CLIP's pre-norm, as
        MaPLe/VPT do in OpenAI's ViT), replaced at the input of layer i, dropped from the
        encoder's output (before the final norm and pooling)."""
        if not prompts or prompts[0] is None:
            yield
            return
        blocks = self.vision_blocks()
        if len(prompts) > len(blocks):
            raise ValueError(f"{len(prompts)} vision prompt layers for a tower of depth {len(blocks)}")
        n = prompts[0].shape[-2]

        def append(_m, _args, out):
            return torch.cat([out, prompts[0].to(out.dtype).expand(out.shape[0], -1, -1)], dim=1)

        def replacer(p: torch.Tensor):
            def hook(_m, args, kwargs):
                if args:
                    x = args[0]
                    x = torch.cat([x[:, :-n], p.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
                    return (x, *args[1:]), kwargs
                x = kwargs["hidden_states"]
                kwargs["hidden_states"] = torch.cat([x[:, :-n], p.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
                return args, kwargs
            return hook

        def drop(_m, _args, out):
            if isinstance(out, tuple):
                return (out[0][:, :-n], *out[1:])
            out.last_hidden_state = out.last_hidden_state[:, :-n]
            return out

        vm = self._vision_model
        handles = [vm.embeddings.register_forward_hook(append)]
        handles += [blocks[i].register_forward_pre_hook(replacer(p), with_kwargs=True)
                    for i, p in enumerate(prompts) if i > 0 and p is not None]
        handles.append(vm.encoder.register_forward_hook(drop))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def encode_image_tokens(self, images: torch.Tensor,
                            prompts: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        with self._vision_prompt_hooks(prompts):
            pooled, local = self.model.visual.tokens(images.to(self.device, self.dtype))
        return torch.cat([pooled.unsqueeze(1), local], dim=1)


# --------------------------------------------------------------------------- loading

def _class(kind: str):
    import transformers

    return getattr(transformers, SUPPORTED[kind][0])


def read_config(source: str | Path) -> dict:
    """config.json of a transformers folder (or a cached hub snapshot)."""
    path = Path(source) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no config.json (a transformers model folder has config.json, the "
                                "weights (model.safetensors or pytorch_model.bin), the tokenizer files and "
                                "preprocessor_config.json)")
    return json.loads(path.read_text())


def load_hf_dual(folder: str | Path, name: str, device: str = "cpu") -> HFDualAdapter:
    """A transformers dual encoder from a local folder in the hub's layout, loaded strictly."""
    folder = Path(folder)
    config = read_config(folder)
    kind = config.get("model_type")
    if kind not in SUPPORTED:
        raise ValueError(f"{folder}/config.json: model_type {kind!r} is not a dual encoder medkit wraps "
                         f"(supported: {sorted(SUPPORTED)})")
    weights = [p.name for p in folder.glob("*.safetensors")] + [p.name for p in folder.glob("pytorch_model*.bin")]
    if not weights:
        raise FileNotFoundError(f"{folder}: no weights (model.safetensors or pytorch_model.bin); the folder has "
                                f"{sorted(p.name for p in folder.iterdir())}")
    with quiet_transformers():  # its load report and bars: what matters is raised below
        hf, info = _class(kind).from_pretrained(folder, output_loading_info=True)
    check_loading_info(info, folder, SUPPORTED[kind][0], _UNUSED_PREFIXES.get(kind, ()))
    hf = hf.float()  # transformers 5 keeps the checkpoint's dtype ("auto"), 4.x gives fp32: fp32 in both
    return adapter_of(hf, folder, name).to(device)


def adapter_of(hf: nn.Module, folder: Path, name: str) -> HFDualAdapter:
    """The adapter of loaded transformers towers, with the folder's tokenizer and processor."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    context = int(hf.config.text_config.max_position_embeddings)
    size = processor_size(folder) or int(hf.config.vision_config.image_size)
    train_tf, eval_tf = transforms_from_processor(folder, size)
    return HFDualAdapter(HFDualModel(hf.eval(), size), PaddedTokenizer(tokenizer, context), train_tf, eval_tf, name)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def check_loading_info(info: dict, source: Path | str, architecture: str, unused_prefixes: tuple[str, ...] = ()) -> None:
    """transformers' `output_loading_info` as an error: it would otherwise initialise the
    missing tensors at random and only log a warning."""
    missing = sorted(k for k in info.get("missing_keys", []) if not k.endswith(_BENIGN_MISSING))
    unexpected = sorted(k for k in info.get("unexpected_keys", []) if not k.startswith(unused_prefixes)
                        and not k.endswith(_BENIGN_MISSING))
    mismatched = sorted(f"{k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in info.get("mismatched_keys", []))
    mismatched += [str(m) for m in info.get("error_msgs", []) or []]
    if missing or unexpected or mismatched:
        raise CheckpointMismatch(source, architecture, missing, unexpected, mismatched)


_RESAMPLE = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


def to_rgb(image):
    """Grayscale radiographs (and RGBA) as the 3-channel images the towers were trained on."""
    return image.convert("RGB")


def processor_size(folder: Path) -> int | None:
    """The square size the folder's processor produces (crop, or height/width, or shortest edge)."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    size = cfg.get("crop_size") if cfg.get("do_center_crop", False) else cfg.get("size")
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        return int(size.get("height") or size.get("shortest_edge") or 0) or None
    return None


def transforms_from_processor(folder: Path, image_size: int) -> tuple[Callable, Callable]:
    """(train, eval) torchvision transforms equal to the folder's `preprocessor_config.json`:
    resize (shortest edge, or to height × width), optional centre crop, the tower's mean/std.
    Training adds open_clip's default augmentation (RandomResizedCrop, scale 0.9–1)."""
    from torchvision import transforms as T

    path = Path(folder) / "preprocessor_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    mean = cfg.get("image_mean", [0.48145466, 0.4578275, 0.40821073])
    std = cfg.get("image_std", [0.26862954, 0.26130258, 0.27577711])
    mode = getattr(T.InterpolationMode, _RESAMPLE.get(int(cfg.get("resample", 3)), "BICUBIC"))
    size = cfg.get("size", {"shortest_edge": image_size})
    size = {"shortest_edge": size} if isinstance(size, int) else size
    steps: list = [to_rgb]
    if "shortest_edge" in size:
        steps.append(T.Resize(int(size["shortest_edge"]), interpolation=mode))
    else:
        steps.append(T.Resize((int(size["height"]), int(size["width"])), interpolation=mode))
    if cfg.get("do_center_crop", "shortest_edge" in size):
        crop = cfg.get("crop_size", image_size)
        crop = (crop, crop) if isinstance(crop, int) else (int(crop["height"]), int(crop["width"]))
        steps.append(T.CenterCrop(crop))
    tail = [T.ToTensor(), T.Normalize(mean, std)] if cfg.get("do_normalize", True) else [T.ToTensor()]
    train = T.Compose([to_rgb, T.RandomResizedCrop(image_size, scale=(0.9, 1.0), interpolation=mode), *tail])
    return train, T.Compose([*steps, *tail])


def write_clip_bpe_tokenizer(folder: Path, context_length: int = 77) -> Path:
    """A transformers CLIP tokenizer with OpenAI's real BPE (open_clip ships the merges), in
    the hub's layout, written offline: its ids equal open_clip's tokenizer's up to the padding.
    For folders built locally (tests, the benchmark's random CLIPSeg)."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    st = SimpleTokenizer()
    vocab = {k: v for k, v in st.encoder.items() if k not in ("<start_of_text>", "<end_of_text>")}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = st.encoder["<start_of_text>"], st.encoder["<end_of_text>"]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = sorted(st.bpe_ranks, key=st.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": context_length, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    AutoTokenizer.from_pretrained(folder).save_pretrained(folder)  # tokenizer.json: later loads skip the conversion
    return folder


def write_random_clipseg(folder: Path, config=None, image_size: int = 352, seed: int = 0) -> nn.Module:
    """A randomly initialised `CLIPSegForImageSegmentation` saved in the hub's layout with the
    BPE tokenizer and CLIPSeg's processor (squash to `image_size`, bilinear, ImageNet mean/std);
    `config` None is `CLIPSegConfig()`, CLIPSeg rd64's architecture. Returns the model."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.CLIPSegForImageSegmentation(config or transformers.CLIPSegConfig()).eval()
    folder.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(folder)
    tok = write_clip_bpe_tokenizer(folder / "tokenizer")
    for f in tok.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "size": {"height": image_size, "width": image_size},
        "resample": 2, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    return model
