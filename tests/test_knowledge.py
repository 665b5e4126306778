"""Per-class LLM representations (CILMP): the causal-LM extraction on tiny random models,
the MiniLM stand-in on its real weights, the on-disk format, and the CLI. All offline."""
from __future__ import annotations

import json

import pytest
import torch

from medkit.backbones.miniclip import minilm_dir
from medkit.knowledge import (QUESTION, KnowledgeError, LLMRepresentations, build_prompt,
                              causal_lm_representations, encoder_representations, main,
                              minilm_representations)

CLASSES = ["pacemaker", "hip screw", "knee plate"]
DESCRIPTIONS = {
    "pacemaker": ["a small oval device with two leads", "a metal can in the chest"],
    "hip screw": ["a long threaded screw through the femoral neck"],
    "knee plate": ["a flat plate with many screws", "a striped plate along the tibia", "a plate near the knee"],
}
N_NEW = 6


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run fastest on one thread


def _tiny_gpt2(vocab_size: int, eos_id: int | None, seed: int = 0):
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, vocab_size=vocab_size,
                     bos_token_id=eos_id, eos_token_id=eos_id)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module")
def bert_tokenizer():
    """MiniLM's BERT tokenizer: has a pad token and no chat template (the plain-question path)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


@pytest.fixture(scope="module")
def chat_tokenizer():
    """A word-level tokenizer with a chat template and NO pad token (like LLaMA's)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set((QUESTION.format(" ".join(CLASSES)) + " user assistant : , . metal plate screw").lower()
                       .replace(",", " , ").split()))
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                          "{% if add_generation_prompt %}<s> assistant : {% endif %}")
    assert fast.pad_token is None
    return fast


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(str(minilm_dir())).eval(), AutoTokenizer.from_pretrained(str(minilm_dir()))


# --- causal LM ------------------------------------------------------------------------


def _independent_check(model, tokenizer, reps: LLMRepresentations, use_chat_template: bool) -> None:
    """Redo generate + forward outside medkit.knowledge; compare the first and last layers.

    The last layer comes from GPT2Model.last_hidden_state (after ln_f), the first from a hook
    on block 0: both checks fail if the code picks the wrong position or is off by the
    embedding entry of hidden_states."""
    for i, cls in enumerate(reps.classnames):
        text = QUESTION.format(cls)
        if use_chat_template:
            rendered = f"<s> user : {text} </s> <s> assistant : "
            prompt = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
        else:
            prompt = tokenizer(text, return_tensors="pt")["input_ids"]
        assert torch.equal(prompt, build_prompt(tokenizer, cls, use_chat_template=use_chat_template))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.no_grad():
            ids = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=N_NEW, pad_token_id=pad)
            captured = {}
            hook = model.transformer.h[0].register_forward_hook(
                lambda m, a, out: captured.__setitem__("h0", out[0] if isinstance(out, tuple) else out))
            try:
                last = model.transformer(input_ids=ids).last_hidden_state[0, -1]
            finally:
                hook.remove()
        torch.testing.assert_close(reps.hidden[i, -1], last, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(reps.hidden[i, 0], captured["h0"][0, -1], rtol=1e-5, atol=1e-5)
        assert reps.texts[i] == tokenizer.decode(ids[0, prompt.shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.parametrize("chat", [False, True], ids=["plain-bert-tokenizer", "chat-template-no-pad"])
def test_causal_lm_last_token_every_layer(bert_tokenizer, chat_tokenizer, chat):
    tokenizer = chat_tokenizer if chat else bert_tokenizer
    model = _tiny_gpt2(len(tokenizer), tokenizer.eos_token_id)
    reps = causal_lm_representations(model, tokenizer, CLASSES, max_new_tokens=N_NEW, progress=False)
    assert reps.hidden.shape == (len(CLASSES), 2, 32) and reps.hidden.dtype == torch.float32
    assert (reps.n_layers, reps.dim, reps.kind, reps.question) == (2, 32, "causal-lm", QUESTION)
    assert reps.classnames == CLASSES and all(isinstance(t, str) for t in reps.texts)
    # distinct classes, distinct representations
    flat = reps.hidden.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(len(CLASSES))).min() > 1e-4
    _independent_check(model, tokenizer, reps, use_chat_template=chat)
    # greedy: a second run is identical
    again = causal_lm_representations(model, tokenizer, CLASSES, max_new_tokens=N_NEW, progress=False)
    assert torch.equal(reps.hidden, again.hidden) and reps.texts == again.texts


def test_causal_lm_generates_and_ignores_template_when_asked(chat_tokenizer):
    """max_new_tokens bounds the answer; use_chat_template=False falls back to the plain question."""
    model = _tiny_gpt2(len(chat_tokenizer), eos_id=None)  # no eos: always exactly max_new_tokens
    reps = causal_lm_representations(model, chat_tokenizer, CLASSES[:1], max_new_tokens=3, progress=False)
    assert len(reps.texts[0].split()) == 3
    plain = causal_lm_representations(model, chat_tokenizer, CLASSES[:1], max_new_tokens=3,
                                      use_chat_template=False, progress=False)
    assert not torch.equal(plain.hidden, reps.hidden)
    plain_prompt = build_prompt(chat_tokenizer, CLASSES[0], use_chat_template=False)
    assert "assistant" not in chat_tokenizer.decode(plain_prompt[0])


# --- MiniLM stand-in ------------------------------------------------------------------


def test_minilm_shapes_and_pooling_by_hand(minilm):
    model, tokenizer = minilm
    reps = encoder_representations(model, tokenizer, CLASSES, DESCRIPTIONS, batch_size=2, progress=False)
    assert reps.hidden.shape == (3, 6, 384) and reps.kind == "encoder"
    assert reps.texts[2] == " | ".join(DESCRIPTIONS["knee plate"])
    # by hand, one sentence at a time (no padding at all), for the 3-sentence class whose
    # sentences are split across batches of 2 above
    per_sentence = []
    with torch.no_grad():
        for s in DESCRIPTIONS["knee plate"]:
            out = model(**tokenizer(s, return_tensors="pt"), output_hidden_states=True)
            per_sentence.append(torch.stack([h[0].mean(0) for h in out.hidden_states[1:]]))
    torch.testing.assert_close(reps.hidden[2], torch.stack(per_sentence).mean(0), rtol=1e-4, atol=1e-5)
    flat = reps.hidden.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(3)).min() > 1e-2


def test_minilm_loader_matches_and_missing_descriptions_are_named(minilm):
    reps = minilm_representations(CLASSES[:1], DESCRIPTIONS, progress=False)
    by_hand = encoder_representations(*minilm, CLASSES[:1], DESCRIPTIONS, progress=False)
    torch.testing.assert_close(reps.hidden, by_hand.hidden)
    with pytest.raises(KnowledgeError, match="stent"):
        encoder_representations(*minilm, CLASSES + ["stent"], DESCRIPTIONS, progress=False)
    with pytest.raises(KnowledgeError, match="hip screw"):
        encoder_representations(*minilm, CLASSES, {**DESCRIPTIONS, "hip screw": []}, progress=False)


# --- storage --------------------------------------------------------------------------


def _reps(names=("a/b", "a_b", "A_b", "zeta")) -> LLMRepresentations:
    g = torch.Generator().manual_seed(0)
    return LLMRepresentations(list(names), torch.randn(len(names), 4, 5, generator=g),
                              [f"text of {n}" for n in names], "tiny", "causal-lm", QUESTION)


def test_save_load_round_trip(tmp_path):
    reps = _reps()  # names that sanitise alike, and differ only in case: distinct files
    reps.save(tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    assert list(index["files"]) == reps.classnames
    assert len({f.lower() for f in index["files"].values()}) == 4
    assert not list(tmp_path.glob("*.tmp"))
    entry = torch.load(tmp_path / index["files"]["zeta"], weights_only=True)
    assert entry["classname"] == "zeta" and entry["hidden"].shape == (4, 5)
    back = LLMRepresentations.load(tmp_path)
    assert back.classnames == reps.classnames and back.texts == reps.texts
    assert torch.equal(back.hidden, reps.hidden)
    assert (back.source, back.kind, back.question) == ("tiny", "causal-lm", QUESTION)
    order = ["zeta", "a/b"]
    sub = LLMRepresentations.load(tmp_path, order)
    assert sub.classnames == order and torch.equal(sub.hidden, reps.hidden[[3, 0]])


def test_load_errors_name_folder_classes_and_file(tmp_path):
    _reps().save(tmp_path)
    with pytest.raises(KnowledgeError, match="stent") as e:
        LLMRepresentations.load(tmp_path, ["zeta", "stent"])
    assert str(tmp_path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="index.json"):
        LLMRepresentations.load(tmp_path / "nowhere")
    # one class with another layer count: the error names its file
    bad = LLMRepresentations(["zeta"], torch.zeros(1, 3, 5), ["t"], "tiny", "causal-lm", QUESTION)
    other = tmp_path / "other"
    bad.save(other)
    (tmp_path / "zeta.pt").write_bytes((other / "zeta.pt").read_bytes())
    with pytest.raises(KnowledgeError, match="zeta.pt"):
        LLMRepresentations.load(tmp_path)


def test_for_classes_subsets_and_reorders():
    reps = _reps()
    sub = reps.for_classes(["zeta", "a_b"])
    assert sub.classnames == ["zeta", "a_b"] and sub.texts == ["text of zeta", "text of a_b"]
    assert torch.equal(sub.hidden, reps.hidden[[3, 1]]) and sub.source == reps.source
    with pytest.raises(KeyError, match="stent"):
        reps.for_classes(["zeta", "stent"])
    with pytest.raises(KnowledgeError, match="shape"):
        LLMRepresentations(["a"], torch.zeros(1, 5), ["t"], "s", "encoder", "q")


# --- CLI ------------------------------------------------------------------------------


def test_cli_minilm_from_descriptions_json(tmp_path, capsys):
    desc = tmp_path / "descriptions.json"
    desc.write_text(json.dumps({c: DESCRIPTIONS[c] for c in CLASSES[:2]}))
    out = tmp_path / "reps"
    reps = main(["--encoder", "minilm", "--classes-from", str(desc), "--out", str(out)])
    assert "2 classes x 6 layers x 384" in capsys.readouterr().out
    back = LLMRepresentations.load(out)
    assert back.classnames == CLASSES[:2] and torch.equal(back.hidden, reps.hidden)
    # a class list without sentences cannot feed the encoder: a usage error, not a crash
    names = tmp_path / "names.json"
    names.write_text(json.dumps(CLASSES))
    with pytest.raises(SystemExit):
        main(["--encoder", "minilm", "--classes-from", str(names), "--out", str(tmp_path / "x")])


def test_cli_causal_lm_from_local_folder(tmp_path, chat_tokenizer):
    """The users' path (load_causal_lm with the Auto classes) on a model saved locally."""
    folder = tmp_path / "tiny-lm"
    model = _tiny_gpt2(len(chat_tokenizer), chat_tokenizer.eos_token_id)
    model.save_pretrained(folder)
    chat_tokenizer.save_pretrained(folder)
    names = tmp_path / "names.json"
    names.write_text(json.dumps(CLASSES[:2]))
    reps = main(["--model", str(folder), "--classes-from", str(names), "--out", str(tmp_path / "reps"),
                 "--max-new-tokens", str(N_NEW), "--dtype", "float32"])
    direct = causal_lm_representations(model, chat_tokenizer, CLASSES[:2], max_new_tokens=N_NEW, progress=False)
    assert reps.source == str(folder) and reps.texts == direct.texts
    torch.testing.assert_close(LLMRepresentations.load(tmp_path / "reps").hidden, direct.hidden)
