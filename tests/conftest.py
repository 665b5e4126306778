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
