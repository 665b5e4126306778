"""Real checkpoints as users have them, on tiny local ones built here (never downloaded): every
layout loads strictly and gives the saved model's own features, then runs zero-shot and CoOp;
bad checkpoints fail with the keys; the zoo lists offline; the known-answer check and the
folder preparation work end to end."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conftest import REPO, TINY_NAMES, write_clipseg
from medkit.backbones import BackboneNotAvailable, CheckpointMismatch, load_backbone, zoo
from medkit.backbones.check import PROMPTS, check, probe, probe_images
from medkit.backbones.local import OPEN_CLIP_CONFIG, TEXT_CONFIG_DIR
from medkit.methods import CoOp, ZeroShotClassifier

TEXTS = ["a photo of a round implant.", "plate"]


def _save_tensors(state: dict, path: Path) -> None:
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))


def open_clip_folder(adapter, config_json: Path, folder: Path, tokenizer_dir: Path | None = None) -> Path:
    """The hub's open_clip layout of a tiny model: config (`model_cfg` + `preprocess_cfg`),
    safetensors weights and, for an HF text tower, its tokenizer and `text_config/`."""
    folder.mkdir(parents=True)
    model_cfg = json.loads(config_json.read_text())
    (folder / OPEN_CLIP_CONFIG).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    _save_tensors(adapter.model.state_dict(), folder / "open_clip_model.safetensors")
    if tokenizer_dir is not None:
        for f in tokenizer_dir.iterdir():
            shutil.copy(f, folder / f.name)
        (folder / TEXT_CONFIG_DIR).mkdir()
        shutil.copy(tokenizer_dir / "config.json", folder / TEXT_CONFIG_DIR / "config.json")
    return folder


@pytest.fixture(scope="module")
def layouts(adapters, model_configs, tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """name → (what load_backbone takes, the in-memory model it was saved from)."""
    root = tmp_path_factory.mktemp("layouts")
    bert = model_configs["hf"].parent / "tiny-bert"
    out = {"open_clip folder": (open_clip_folder(adapters["native"], model_configs["native"], root / "oc-native"),
                                adapters["native"]),
           "open_clip folder, HF text tower": (open_clip_folder(adapters["hf"], model_configs["hf"], root / "oc-hf", bert),
                                               adapters["hf"]),
           "transformers CLIP folder": (model_configs["hf_dual"], adapters["hf_dual"]),
           "transformers SigLIP folder": (model_configs["siglip"], adapters["siglip"])}
    out["transformers CLIPSeg folder (towers)"] = clipseg_folder(root / "clipseg", model_configs["hf_dual"])
    state = dict(adapters["native"].model.state_dict())
    torch.save({**state, "input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
                "vocab_size": torch.tensor(49408)}, root / "openai-format.pt")  # as OpenAI's archives carry
    out["OpenAI-format state dict"] = (root / "openai-format.pt", adapters["native"])
    return out


def clipseg_folder(folder: Path, clip_folder: Path):
    """A tiny CLIPSeg checkpoint folder and the adapter of its in-memory towers."""
    from medkit.backbones.hf_dual import HFDualAdapter, HFDualModel, PaddedTokenizer, transforms_from_processor
    import transformers

    model = write_clipseg(folder, clip_folder)
    train_tf, eval_tf = transforms_from_processor(folder, 48)  # more than the config's 32, as 352 vs 224
    tokenizer = PaddedTokenizer(transformers.AutoTokenizer.from_pretrained(folder), 77)
    return folder, HFDualAdapter(HFDualModel(model.clip, 48), tokenizer, train_tf, eval_tf, "clipseg-in-memory")


def load(layout: str, spec):
    path, _ = spec
    if layout == "OpenAI-format state dict":
        with pytest.warns(UserWarning, match="QuickGELU"):  # the tiny architecture uses GELU
            return load_backbone("tiny-native-clip", pretrained=str(path))
    return load_backbone(str(path))


LAYOUTS = ["open_clip folder", "open_clip folder, HF text tower", "transformers CLIP folder",
           "transformers SigLIP folder", "transformers CLIPSeg folder (towers)", "OpenAI-format state dict"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_the_saved_weights_and_runs_zero_shot_and_coop(layout, layouts, one_thread):
    loaded = load(layout, layouts[layout]).eval()
    original = layouts[layout][1]
    x = torch.stack([loaded.preprocess(im) for im in probe_images()])
    with torch.no_grad():  # the weights arrived (a random init would differ everywhere)
        torch.testing.assert_close(loaded.encode_text(TEXTS), original.encode_text(TEXTS), rtol=0, atol=1e-5)
        torch.testing.assert_close(loaded.encode_image(x), original.encode_image(x), rtol=0, atol=1e-5)
        zs = ZeroShotClassifier.from_templates(loaded, "a photo of a {}.", TINY_NAMES)(
            loaded.encode_image(x, normalize=True))
    assert zs.shape == (len(x), len(TINY_NAMES)) and torch.isfinite(zs).all()
    # CoOp from "a photo of a", untrained, is the hand-written prompt
    coop = CoOp(loaded, TINY_NAMES, n_ctx=4, ctx_init="a photo of a")
    with torch.no_grad():
        written = loaded.encode_text([f"a photo of a {c}." for c in TINY_NAMES], normalize=True)
        torch.testing.assert_close(F.normalize(coop.text_features(), dim=-1), written, rtol=0, atol=1e-5)
    y = torch.arange(len(x)) % len(TINY_NAMES)
    feats = loaded.encode_image(x, normalize=True).detach()
    opt = torch.optim.AdamW([p for p in coop.parameters() if p.requires_grad], lr=0.05, weight_decay=0.0)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.cross_entropy(coop(feats), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert {n for n, p in coop.named_parameters() if p.grad is not None} == {"context.ctx"}


def _drop_and_add(state: dict) -> dict:
    keys = sorted(state)
    out = {k: v for k, v in state.items() if k != keys[3]}
    out["head.surplus"] = torch.zeros(2)
    return out


def test_a_state_dict_with_missing_and_extra_keys_fails_with_the_keys(adapters, tmp_path):
    state = adapters["native"].model.state_dict()
    missing = sorted(state)[3]
    torch.save(_drop_and_add(dict(state)), tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatch) as err:
        load_backbone("tiny-native-clip", pretrained=str(tmp_path / "bad.pt"))
    msg = str(err.value)
    assert missing in msg and "head.surplus" in msg and "bad.pt" in msg and "tiny-native-clip" in msg
    assert err.value.missing == [missing] and err.value.unexpected == ["head.surplus"]
    wrong = dict(state)
    wrong["text_projection"] = torch.zeros(3, 3)
    torch.save(wrong, tmp_path / "shape.pt")
    with pytest.raises(CheckpointMismatch, match=r"text_projection: file \(3, 3\)"):
        load_backbone("tiny-native-clip", pretrained=str(tmp_path / "shape.pt"))


def test_a_folder_with_a_missing_key_fails_in_both_layouts(layouts, tmp_path):
    oc = tmp_path / "oc"
    shutil.copytree(layouts["open_clip folder"][0], oc)
    weights = load_file(str(oc / "open_clip_model.safetensors"))
    _save_tensors(_drop_and_add(weights), oc / "open_clip_model.safetensors")
    with pytest.raises(CheckpointMismatch, match="head.surplus"):
        load_backbone(str(oc))
    hf = tmp_path / "hf"
    shutil.copytree(layouts["transformers CLIP folder"][0], hf)
    weights = load_file(str(hf / "model.safetensors"))
    dropped = "text_projection.weight"
    _save_tensors({k: v for k, v in weights.items() if k != dropped}, hf / "model.safetensors")
    with pytest.raises(CheckpointMismatch, match=dropped):  # transformers would init it at random and warn
        load_backbone(str(hf))


def test_folders_missing_what_they_need_say_what(tmp_path, layouts):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="neither open_clip_config.json"):
        load_backbone(str(empty))
    no_weights = tmp_path / "no-weights"
    shutil.copytree(layouts["open_clip folder"][0], no_weights)
    (no_weights / "open_clip_model.safetensors").unlink()
    with pytest.raises(BackboneNotAvailable, match="no weights file"):
        load_backbone(str(no_weights))


def test_the_zoo_lists_offline_with_what_each_entry_needs(capsys):
    from medkit.__main__ import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for key in ("biomedclip", "quiltnet-b-16-pmb", "pubmedclip", "medsiglip-448", "chexzero", "clipseg-rd64-refined",
                "siglip-b-16", "openai-vit-b-16", "conch"):
        assert key in out
    table = zoo.table()
    assert table.set_index("key").loc["medsiglip-448", "gated"] == "yes"
    assert {e.family for e in zoo.ZOO.values()} >= {"openclip_native", "hf_text", "hf_dual"}
    assert all(e.licence and e.image_size and e.context_length for e in zoo.ZOO.values())


def test_zoo_entries_without_a_hub_say_how_to_get_them():
    with pytest.raises(BackboneNotAvailable, match="pretrained="):
        load_backbone("chexzero")
    with pytest.raises(NotImplementedError, match="conch"):
        load_backbone("conch")


def test_an_uncached_hub_name_offline_says_how_to_prepare_a_folder(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneNotAvailable, match="models download"):
        load_backbone("hf-hub:medkit-test/not-cached")


def _cache(root: Path, repo: str, folder: Path) -> None:
    """`folder` as the HuggingFace cache holds a downloaded snapshot of `repo`."""
    commit = "0" * 40
    base = root / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, base / "snapshots" / commit)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)


def test_hub_names_resolve_from_the_hf_cache_offline(layouts, tmp_path):
    """A fresh interpreter with HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at a cache that holds
    an open_clip repo and a transformers repo: both hub names load, with the saved weights."""
    cache = tmp_path / "hub"
    _cache(cache, "medkit-test/tiny-openclip", layouts["open_clip folder"][0])
    _cache(cache, "medkit-test/tiny-clip", layouts["transformers CLIP folder"][0])
    script = (
        "import json, torch\n"
        "from medkit.backbones import load_backbone\n"
        "from medkit.methods import CoOp\n"
        "out = {}\n"
        "for name in ('hf-hub:medkit-test/tiny-openclip', 'medkit-test/tiny-clip'):\n"
        "    ad = load_backbone(name).eval()\n"
        "    with torch.no_grad():\n"
        f"        out[name] = ad.encode_text({TEXTS!r}).tolist()\n"
        "        CoOp(ad, ['oval', 'plate'], n_ctx=4, ctx_init='a photo of a').text_features()\n"
        "print('RESULT' + json.dumps(out))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.split("RESULT", 1)[1])
    with torch.no_grad():
        for name, original in (("hf-hub:medkit-test/tiny-openclip", layouts["open_clip folder"][1]),
                               ("medkit-test/tiny-clip", layouts["transformers CLIP folder"][1])):
            torch.testing.assert_close(torch.tensor(got[name]), original.encode_text(TEXTS), rtol=0, atol=1e-5)


def test_the_known_answer_check_passes_on_the_same_weights_and_catches_a_changed_one(layouts, adapters, tmp_path):
    recorded = check(adapters["hf_dual"]).as_record()
    assert len(recorded) == 4 and len(recorded[0]) == len(PROMPTS)
    reloaded = load_backbone(str(layouts["transformers CLIP folder"][0]))
    assert check(reloaded, recorded).passed
    with torch.no_grad():  # a preprocessing or weight that is off shows as a moved cosine
        reloaded.model.visual.proj.weight.mul_(-1)
    result = check(reloaded, recorded)
    assert result.passed is False and result.max_difference > 1e-2
    assert "differs" in result.report("tiny")
    assert check(reloaded).passed is None and "no known answer" in check(reloaded).report("tiny")


def test_models_check_cli_exit_codes(layouts, adapters, monkeypatch, capsys):
    from medkit.__main__ import main

    folder = str(layouts["transformers CLIP folder"][0])
    assert main(["models", "check", folder]) == 2  # nothing recorded for a folder
    assert "known_answer=" in capsys.readouterr().out
    answer = tuple(map(tuple, probe(adapters["native"]).round(4)))
    state_file = str(layouts["OpenAI-format state dict"][0])
    entry = replace(zoo.ZOO["chexzero"], key="tiny", architecture="tiny-native-clip", known_answer=answer,
                    preprocess=None)
    monkeypatch.setitem(zoo.ZOO, "tiny", entry)
    with pytest.warns(UserWarning, match="QuickGELU"):
        assert main(["models", "check", "tiny", "--weights", state_file]) == 0
    assert "✓ matches" in capsys.readouterr().out
    monkeypatch.setitem(zoo.ZOO, "tiny", replace(entry, known_answer=tuple((v + 0.1,) * 5 for v in range(4))))
    with pytest.warns(UserWarning):
        assert main(["models", "check", "tiny", "--weights", state_file]) == 1


def test_download_prepares_folders_that_load_offline(layouts, model_configs, tmp_path):
    """`models download` with the hub replaced by local copies: a transformers entry, and an
    open_clip entry whose HF text tower config and tokenizer come into the folder (the
    original tower folder is gone afterwards, as the hub is on a machine without internet)."""
    from medkit.backbones.prepare import download

    bert = tmp_path / "remote-bert"
    shutil.copytree(model_configs["hf"].parent / "tiny-bert", bert)
    remote = tmp_path / "remote-oc"
    shutil.copytree(layouts["open_clip folder, HF text tower"][0], remote)
    shutil.rmtree(remote / TEXT_CONFIG_DIR)
    for f in ("vocab.txt", "tokenizer_config.json", "config.json"):
        (remote / f).unlink()
    cfg = json.loads((remote / OPEN_CLIP_CONFIG).read_text())
    cfg["model_cfg"]["text_cfg"].update(hf_model_name=str(bert), hf_tokenizer_name=str(bert))
    (remote / OPEN_CLIP_CONFIG).write_text(json.dumps(cfg))
    sources = {zoo.ZOO["pubmedclip"].hub_id: layouts["transformers CLIP folder"][0],
               zoo.ZOO["biomedclip"].hub_id: remote}

    def fake_fetch(repo, target, weights):
        shutil.copytree(sources[repo], target, dirs_exist_ok=True)
        return "abc123"

    lines: list[str] = []
    out = tmp_path / "models"
    for key in ("pubmedclip", "biomedclip"):
        folder = download(key, out, fetch=fake_fetch, progress=lines.append)
        assert json.loads((folder / "medkit_source.json").read_text())["revision"] == "abc123"
    shutil.rmtree(bert)
    assert not list(out.glob("*.partial"))
    with torch.no_grad():
        for key, original in (("pubmedclip", layouts["transformers CLIP folder"][1]),
                              ("biomedclip", layouts["open_clip folder, HF text tower"][1])):
            loaded = load_backbone(str(out / key))
            torch.testing.assert_close(loaded.encode_text(TEXTS), original.encode_text(TEXTS), rtol=0, atol=1e-5)
    assert any("text tower config" in line for line in lines)
    with pytest.raises(BackboneNotAvailable, match="by hand"):
        download("chexzero", out, fetch=fake_fetch, progress=lines.append)


def test_name_at_path_is_pretrained_in_one_string(layouts):
    """A notebook's `backbone` parameter is one string: NAME@PATH is NAME with pretrained=PATH."""
    path, original = layouts["OpenAI-format state dict"]
    with pytest.warns(UserWarning, match="QuickGELU"):
        ad = load_backbone(f"tiny-native-clip@{path}")
    with torch.no_grad():
        torch.testing.assert_close(ad.encode_text(TEXTS), original.encode_text(TEXTS), rtol=0, atol=1e-5)
    assert ad.source_args == ("tiny-native-clip", str(path))


def test_one_set_of_weights_is_downloaded_and_hub_errors_say_what_to_do(monkeypatch):
    """Repos hold the same weights twice (.bin and .safetensors) or in shards: one set is
    fetched. A gated repo and an unknown one get messages that say what to do."""
    import huggingface_hub

    from medkit.backbones import local

    listings = {"both": ["open_clip_config.json", "open_clip_pytorch_model.bin", "open_clip_model.safetensors"],
                "shards": ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                           "model-00002-of-00002.safetensors"], "none": ["README.md"]}

    class FakeApi:
        def list_repo_files(self, repo_id, revision=None):
            return listings[repo_id]

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert local._pick_weights("both", None, ()) == ["open_clip_model.safetensors"]
    assert local._pick_weights("both", None, ("open_clip_pytorch_model.bin",)) == ["open_clip_pytorch_model.bin"]
    assert local._pick_weights("shards", None, ()) == ["model.safetensors.index.json", "model-*.safetensors"]
    with pytest.raises(BackboneNotAvailable, match="no weights file"):
        local._pick_weights("none", None, ())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    gated = type("GatedRepoError", (Exception,), {})
    assert "HF_TOKEN" in str(local._hub_error("google/medsiglip-448", gated("401")))
    missing = type("RepositoryNotFoundError", (Exception,), {})
    assert "no such repository" in str(local._hub_error("org/typo", missing("404")))


def test_clipseg_towers_take_the_processor_size_with_interpolated_positions(layouts):
    """CLIPSeg feeds 352 px to towers configured at 224 (position embeddings interpolated): the
    adapter's image size and both transforms are the processor's, not the config's."""
    ad = load_backbone(str(layouts["transformers CLIPSeg folder (towers)"][0]))
    assert ad.image_size == 48 != ad.model.visual.vision_model.config.image_size
    im = probe_images()[0]
    assert ad.preprocess(im).shape[-1] == 48 and ad.preprocess_train(im).shape[-1] == 48
    with torch.no_grad():
        assert ad.encode_image_tokens(ad.preprocess(im)[None]).shape[1] == 1 + (48 // 8) ** 2


def test_loading_mistakes_are_errors_that_say_what(adapters, layouts, tmp_path):
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="empty.pt"):
        load_backbone("tiny-native-clip", pretrained=str(tmp_path / "empty.pt"))
    state = dict(adapters["native"].model.state_dict())
    state["visual.positional_embedding"] = torch.zeros(26, 32)  # a larger image size: no silent resizing
    torch.save(state, tmp_path / "bigger.pt")
    with pytest.raises(CheckpointMismatch, match="visual.positional_embedding"):
        load_backbone("tiny-native-clip", pretrained=str(tmp_path / "bigger.pt"))
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_backbone("./models/typo")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_backbone("chexzero@/nowhere/best.pt")
    with pytest.raises(ValueError, match="ARCHITECTURE"):
        load_backbone("pubmedclip", pretrained=str(layouts["OpenAI-format state dict"][0]))


def test_a_siglip_style_open_clip_tower_finds_where_the_text_ends(model_configs, tmp_path):
    """open_clip SigLIP: bidirectional text pooled at the last position, so the pooled index
    says nothing about where the text ends; the tokenizer's end token does (CoOp's init
    phrase is its 4 words, not words + end + padding)."""
    cfg = tmp_path / "tiny-siglip-open-clip.json"
    cfg.write_text(json.dumps({
        "embed_dim": 16, "custom_text": True, "init_logit_bias": -10,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2,
                     "no_causal_mask": True, "pool_type": "last", "proj_bias": True,
                     "hf_tokenizer_name": str(model_configs["hf_dual"].parent / "clip-bpe-tokenizer")}}))
    ad = load_backbone(str(cfg))
    assert ad.pools_fixed_position and ad.needed_length(ad.tokenize(TEXTS)) == 24
    ids = ad.tokenize(["a photo of a"])
    assert int(ad.content_lengths(ids)[0]) == 6  # start, 4 words, end
    coop = CoOp(ad, TINY_NAMES, n_ctx=4, ctx_init="a photo of a")
    with torch.no_grad():
        written = ad.encode_text([f"a photo of a {c}." for c in TINY_NAMES], normalize=True)
        torch.testing.assert_close(F.normalize(coop.text_features(), dim=-1), written, rtol=0, atol=1e-5)
