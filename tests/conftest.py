"""Shared fixtures. Tests never touch the network: hubs are switched off here, and the
tiny models below are built from configs written into a temporary folder."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the feature cache of code that is given no data folder: never the checkout's data/
os.environ["MEDKIT_CACHE"] = tempfile.mkdtemp(prefix="medkit-test-cache-")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]

_WORDS = ("a photo of an x-ray the implant device with two three one leads striped dotted grid round oval "
          "plate screw small large marker ring cross header . , cardiac orthopedic grayscale showing by").split()


def _write_tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT with a ~60-token vocab, in the layout AutoModel/AutoTokenizer read."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(_WORDS)) + list("abcdefghijklmnopqrstuvwxyz0123456789-")
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": len(dict.fromkeys(vocab)),
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 64, "pad_token_id": 0, "type_vocab_size": 2,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                                                              "model_max_length": 64}))
    return folder


from medkit.backbones.hf_dual import write_clip_bpe_tokenizer  # noqa: E402 — re-exported for the tests


def write_hf_dual(folder: Path, kind: str = "clip", tokenizer: Path | None = None) -> Path:
    """A tiny transformers dual encoder folder in the hub's layout (config.json, safetensors,
    tokenizer, preprocessor_config.json): `clip` (causal text, EOS pooling, CLS + projection)
    or `siglip` (bidirectional text pooled at the last position, attention-pool head, bias).
    Both use OpenAI's BPE (the SigLIP tokenizer is sentencepiece, which tests do not need)."""
    import shutil

    import transformers

    torch.manual_seed(3)
    folder.mkdir(parents=True, exist_ok=True)
    tower = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if kind == "clip":
        cfg = transformers.CLIPConfig(
            text_config={**tower, "vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 49406,
                         "eos_token_id": 49407, "pad_token_id": 49407},
            vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=16)
        model, context = transformers.CLIPModel(cfg), 77
        processor = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 32},
                     "crop_size": {"height": 32, "width": 32}, "do_center_crop": True, "resample": 3,
                     "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
    else:
        cfg = transformers.SiglipConfig(
            text_config={**tower, "vocab_size": 49408, "max_position_embeddings": 40, "projection_size": 32},
            vision_config={**tower, "image_size": 32, "patch_size": 8})
        model, context = transformers.SiglipModel(cfg), 40
        processor = {"image_processor_type": "SiglipImageProcessor", "size": {"height": 32, "width": 32},
                     "do_center_crop": False, "resample": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    tok = tokenizer or write_clip_bpe_tokenizer(folder.parent / "clip-bpe-tokenizer")
    for f in tok.iterdir():
        shutil.copy(f, folder / f.name)
    cfg_path = folder / "tokenizer_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "model_max_length": context}))
    return folder


def write_clipseg(folder: Path, clip_folder: Path):
    """A tiny `CLIPSegForImageSegmentation` saved as the hub has CLIPSeg (towers under `clip.`,
    the decoder beside them; its processor feeds 48 px to towers configured at 32, as the real
    one feeds 352 to 224, positions interpolated); returns the in-memory model."""
    import shutil

    import transformers

    torch.manual_seed(4)
    tower = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}
    cfg = transformers.CLIPSegConfig(
        text_config={**tower, "vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 49406,
                     "eos_token_id": 49407, "pad_token_id": 49407},
        vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=16, reduce_dim=8,
        extract_layers=[1, 2], decoder_num_attention_heads=2, decoder_intermediate_size=16)
    model = transformers.CLIPSegForImageSegmentation(cfg).eval()
    model.save_pretrained(folder)
    for f in clip_folder.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "special")):
            shutil.copy(f, folder / f.name)
    (folder / "preprocessor_config.json").write_text(json.dumps({  # CLIPSeg's: squash, bilinear, ImageNet
        "image_processor_type": "ViTImageProcessor", "size": {"height": 48, "width": 48}, "resample": 2,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    return model


@pytest.fixture(scope="session")
def model_configs(tmp_path_factory) -> dict[str, Path]:
    """Tiny randomly initialised models of the three tower families: open_clip model-config
    JSONs (native text tower; timm + HF text tower) and transformers folders (CLIP, SigLIP)."""
    root = tmp_path_factory.mktemp("model_configs")
    bert = _write_tiny_bert(root / "tiny-bert")
    native = root / "tiny-native-clip.json"
    native.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32,
                                                                  "patch_size": 8, "head_width": 16},
                                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32,
                                               "heads": 2, "layers": 2}}))
    # the BiomedCLIP layout: timm ViT + BERT, CLS pooler, MLP proj; timm's own test ViT (160 px, depth 6,
    # width 64) is ~10x cheaper than vit_tiny at 224 px, and the same VisionTransformer class
    hf = root / "tiny-timm-hf-clip.json"
    hf.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"timm_model_name": "test_vit",
                                                              "timm_model_pretrained": False, "timm_pool": "token",
                                                              "timm_proj": "linear", "image_size": 160},
                              "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert),
                                           "hf_model_pretrained": False, "hf_proj_type": "mlp",
                                           "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32}}))
    tok = write_clip_bpe_tokenizer(root / "clip-bpe-tokenizer")
    return {"native": native, "hf": hf, "hf_dual": write_hf_dual(root / "tiny-hf-clip", "clip", tok),
            "siglip": write_hf_dual(root / "tiny-hf-siglip", "siglip", tok)}


@pytest.fixture(scope="session")
def adapters(model_configs):
    from medkit.backbones import load_backbone

    torch.manual_seed(0)
    return {k: load_backbone(str(p)).eval() for k, p in model_configs.items()}


# --------------------------------------------------------------------------- shared tiny data

#: the tower families every adapter invariant runs on (SigLIP is the hf_dual family's second flavour)
FAMILIES = ("native", "hf", "hf_dual", "siglip")

TINY_NAMES = ["oval", "plate", "round", "screw"]
TINY_GROUPS = {"oval": "g1", "plate": "g1", "round": "g2", "screw": "g2"}
TINY_PER_SPLIT = {"train": 4, "val": 2, "test": 3}


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: the runner's small matrices are faster so, and results do not
    depend on how many cores the machine has."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Four classes in two groups, 32-px images written to disk (train 4, val 2, test 3 per
    class), with descriptions: what a user's small dataset looks like to the runner."""
    import numpy as np
    from PIL import Image

    from medkit.data import Dataset, LabelSpace, Sample, Split

    root = tmp_path_factory.mktemp("tinyset")
    rng = np.random.default_rng(0)
    labels = LabelSpace(TINY_NAMES, TINY_GROUPS)
    splits = {}
    for split, n in TINY_PER_SPLIT.items():
        samples = []
        for c, name in enumerate(TINY_NAMES):
            for i in range(n):
                path = root / f"{split}_{name}_{i}.png"
                px = np.clip(rng.normal(60 * c, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(path)
                samples.append(Sample(path, c, name, TINY_GROUPS[name]))
        splits[split] = Split(split, samples, labels)
    desc = {n: [f"a {n} device", f"an x-ray of a {n} implant", f"the {n} with two leads"] for n in TINY_NAMES}
    return Dataset("tinyset", splits, labels, root, desc)


def tiny_knowledge(names=TINY_NAMES):
    """Per-class 'LLM representations' [C, 4 layers, 8]: random, seeded."""
    from medkit.knowledge import LLMRepresentations

    h = torch.randn(len(names), 4, 8, generator=torch.Generator().manual_seed(1))
    return LLMRepresentations(list(names), h, list(names), "test", "encoder", "q")


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """A data root made fresh for this session: the first test that needs the smoke backbones
    and worlds builds them there (browser, compare, workbook tests), later ones reuse them
    (as a user's second run does)."""
    return tmp_path_factory.mktemp("smoke_data")
