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


@pytest.fixture(scope="session")
def model_configs(tmp_path_factory) -> dict[str, Path]:
    """open_clip model-config JSONs of both tower families, tiny and randomly initialised."""
    root = tmp_path_factory.mktemp("model_configs")
    bert = _write_tiny_bert(root / "tiny-bert")
    native = root / "tiny-native-clip.json"
    native.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32,
                                                                  "patch_size": 8, "head_width": 16},
                                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32,
                                               "heads": 2, "layers": 2}}))
    hf = root / "tiny-timm-hf-clip.json"  # the BiomedCLIP layout: timm ViT + BERT, CLS pooler, MLP proj
    hf.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224",
                                                              "timm_model_pretrained": False, "timm_pool": "token",
                                                              "timm_proj": "linear", "image_size": 224},
                              "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert),
                                           "hf_model_pretrained": False, "hf_proj_type": "mlp",
                                           "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32}}))
    return {"native": native, "hf": hf}


@pytest.fixture(scope="session")
def adapters(model_configs):
    from medkit.backbones import load_backbone

    torch.manual_seed(0)
    return {k: load_backbone(str(p)).eval() for k, p in model_configs.items()}


# --------------------------------------------------------------------------- shared tiny data

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
