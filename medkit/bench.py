"""`python -m medkit.bench [--quick]`: medkit's fast paths against the reference paths.

Each row runs one operation both ways, in this process, on the same inputs, and checks
that the outputs agree:

- `coop_step`: a CoOp training step at batch 32 (16 shared context tokens, the reference's
  default). Reference: image features recomputed from the image files every step, prompts
  run over all context positions (77 for CLIP). medkit: features from the on-disk cache,
  prompts cut after their last real token, and on causal towers the shared context prefix
  run once instead of once per class.
- `cocoop_step`: a CoCoOp step at batch 4. Reference: image features recomputed, a Python
  loop over the images encoding K full-length prompts each. medkit: cached features, one
  text-tower call for all B·K cut prompts.
- `eval_pass`: logits for the test images. Reference: per batch of 100, images encoded
  and class prompts re-encoded. medkit: features loaded from the cache, prompts once.
- `text_cut`: text forward + backward of the K learned prompts, full length vs cut (the cut
  alone).
- `seg_coop_step`: a CoOp step of CLIPSeg prompt tuning (4 context tokens, batch 4, 352 px,
  CLIPSeg rd64's architecture with random weights). Reference: transformers' stock
  `CLIPSegForImageSegmentation.forward` with the learned prompt's text feature as its
  `conditional_embeddings`, so the frozen vision tower runs every step. medkit: the vision
  activations the decoder reads come from the cache (`medkit.seg`), a step runs the text tower
  and the decoder.

Backbones: MiniCLIP (the offline stand-in, untrained weights: speed does not depend on
them) and a randomly initialised ViT-B/16 open_clip CLIP (`ViT-B-16-quickgelu`), both at
45 classes with the implant world's class names and rendered radiographs. On CUDA the
medkit paths are also timed under bf16 autocast (rows with backbone `… · bf16`).

Writes `outputs/bench.csv` (name, backbone, naive_s, medkit_s, ratio, max_abs_diff,
peak_mb: seconds per step or pass, the medkit path's peak memory above its start) and
`outputs/bench.md`; exits 1 if any output disagrees beyond its tolerance.

Why one module over ~400 lines: each row pairs a reference implementation with medkit's path
for the same operation, and the pairs are only trustworthy read side by side; nothing else
imports them.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import platform
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from medkit.backbones import BackboneAdapter
from medkit.data import ImageDataset, LabelSpace, Sample, Split
from medkit.features import FeatureCache
from medkit.methods import CoCoOp, CoOp
from medkit.methods.context import PromptContext
from medkit.precision import autocast

N_CLASSES = 45
TOLERANCE = 1e-4  # fp32 paths: the cut and batched computations are the same arithmetic
BF16_TOLERANCE = 0.5  # logits under bf16 autocast (8 mantissa bits) vs the fp32 reference
# The targets on the ViT-B/16-shaped model (2 CPU cores): printed next to the ratios.
TARGETS = {"coop_step": 8.0, "cocoop_step": 3.0, "eval_pass": 20.0, "seg_coop_step": 5.0}


@dataclass
class Row:
    name: str
    backbone: str
    naive_s: float
    medkit_s: float
    ratio: float
    max_abs_diff: float
    peak_mb: float
    tolerance: float = TOLERANCE

    @property
    def agrees(self) -> bool:
        return bool(self.max_abs_diff <= self.tolerance)


@dataclass(frozen=True)
class Sizes:
    coop_batch: int = 32
    cocoop_batch: int = 4
    eval_images: int = 450
    eval_batch: int = 100
    naive_steps: int = 3
    medkit_steps: int = 10
    seg_batch: int = 4
    seg_image_size: int = 352

    @classmethod
    def quick(cls) -> "Sizes":
        # image-tower passes dominate (one ViT-B/16 forward per image: ~0.4 s on 2 cores):
        # one batch of eval images, fewer steps
        return cls(eval_images=100, naive_steps=2, medkit_steps=3)


# --------------------------------------------------------------------------- measurement

class PeakMemory:
    """Peak memory in use above the start of a block: CUDA's allocator counter, or on CPU the
    bytes glibc's malloc has handed out (`mallinfo2`, freed memory excluded, sampled every
    2 ms; the resident set size where glibc is absent)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb = device, float("nan")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        self._start = self._max = _host_bytes_in_use()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._max = max(self._max, _host_bytes_in_use())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._start) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self.peak_mb = (max(self._max, _host_bytes_in_use()) - self._start) / 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO = _mallinfo2()


def _host_bytes_in_use() -> float:
    if _MALLINFO is not None:
        info = _MALLINFO()
        return float(info.uordblks + info.hblkhd)  # heap chunks in use + mmapped chunks (large tensors)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096.0
    except OSError:
        return float("nan")


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


# --------------------------------------------------------------------------- inputs

def implant_split(name: str, n: int, size: int, folder: Path, seed: int) -> Split:
    """`n` radiographs of the implant world's 45 classes rendered to PNG files (the reference
    paths decode and transform them every step, as a training loop over files does)."""
    from medkit.data.synthetic.cues import implants45_classes
    from medkit.data.synthetic.render import render

    classes = implants45_classes()
    labels = LabelSpace([c.name for c in classes])
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        k = i % len(classes)
        path = folder / f"{name}_{i:04d}.png"
        render(classes[k].cues, "xray", size, rng).save(path)
        samples.append(Sample(path, k, classes[k].name))
    return Split(name, samples, labels)


def full_length(context: PromptContext, adapter: BackboneAdapter) -> PromptContext:
    """A copy of `context` whose prompts run over every position of the tokenizer (the
    reference's 77 for CLIP), sharing the learned context parameter."""
    full = copy.copy(context)  # shallow: the same `ctx` Parameter
    full._buffers = dict(context._buffers)
    ids = _pad(context.ids, adapter)
    full._buffers["ids"] = ids
    with torch.no_grad():
        full._buffers["base"] = adapter.token_embedding(ids).float()
    return full


def _pad(ids: torch.Tensor, adapter: BackboneAdapter) -> torch.Tensor:
    """Cut ids padded back to the tokenizer's full length with its padding id."""
    reference = adapter.tokenize(["x"])
    pad_id = int(reference[0, -1])  # the last position of a short prompt is padding
    out = torch.full((ids.shape[0], reference.shape[1]), pad_id, dtype=ids.dtype, device=ids.device)
    out[:, : ids.shape[1]] = ids
    return out


def image_batch(adapter: BackboneAdapter, split: Split, idx: list[int]) -> torch.Tensor:
    ds = ImageDataset(split, adapter.preprocess)
    return torch.stack([ds[i][0] for i in idx])


# --------------------------------------------------------------------------- the four rows

def _coop(adapter: BackboneAdapter, names: list[str]) -> tuple[CoOp, CoOp]:
    """The reference CoOp (16 random context tokens, class token at the end) and its
    full-length twin sharing the same context parameter."""
    torch.manual_seed(0)
    fast = CoOp(adapter, names, n_ctx=16).to(adapter.device)
    slow = copy.copy(fast)
    slow._modules = dict(fast._modules)
    slow._modules["context"] = full_length(fast.context, adapter)
    return fast, slow


def _step_race(name: str, naive_forward: Callable, medkit_forward: Callable, params: list[torch.nn.Parameter],
               adapter, train: Split, cache: FeatureCache, batch: int, sizes: Sizes, device, amp) -> Row:
    """The same SGD steps from the same starting parameters, first the reference way (images
    decoded and encoded every step, `naive_forward`), then medkit's (cached features,
    `medkit_forward`, the method, whose image features the cache holds); the logits of the
    shared steps are compared."""
    idx = list(range(batch))
    y = torch.as_tensor([train.samples[i].label for i in idx], device=device)
    feats = cache.get(medkit_forward, train).features[idx].to(device)
    start = [p.detach().clone() for p in params]

    def step(forward, image_features):
        with _autocast(device, amp):
            logits = forward(image_features)
        loss = F.cross_entropy(logits.float(), y)
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in params:
                p -= 0.002 * p.grad  # plain SGD: both paths take identical steps
        return logits.detach().float()

    def naive_step():
        with torch.no_grad():
            img = adapter.encode_image(image_batch(adapter, train, idx).to(device), normalize=True).float()
        return step(naive_forward, img)

    naive_t, naive_logits = _steps(naive_step, sizes.naive_steps, device)
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    with PeakMemory(device) as mem:
        medkit_t, medkit_logits = _steps(lambda: step(medkit_forward, feats), sizes.medkit_steps, device)
    diff = _max_diff(naive_logits, medkit_logits[: len(naive_logits)])
    return _row(name, naive_t, medkit_t, diff, mem.peak_mb, amp)


def bench_coop_step(adapter, names, train: Split, cache: FeatureCache, sizes: Sizes, device, amp) -> Row:
    fast, slow = _coop(adapter, names)
    return _step_race("coop_step", slow, fast, [fast.context.ctx], adapter, train, cache, sizes.coop_batch, sizes,
                      device, amp)


def bench_cocoop_step(adapter, names, train: Split, cache: FeatureCache, sizes: Sizes, device, amp) -> Row:
    torch.manual_seed(0)
    fast = CoCoOp(adapter, names).to(device)
    slow_ctx = full_length(fast.context, adapter)

    def per_image_loop(image_features):
        """The reference forward: one K-prompt text pass per image, at full length."""
        bias = fast.meta_net(image_features)
        rows = []
        for i in range(image_features.shape[0]):
            emb = slow_ctx.embeddings(bias[i:i + 1])
            text = adapter.encode_text_from_embeddings(emb, slow_ctx.ids)
            rows.append(fast.cosine_logits(image_features[i:i + 1], text))
        return torch.cat(rows)

    params = [p for p in fast.parameters() if p.requires_grad]
    return _step_race("cocoop_step", per_image_loop, fast, params, adapter, train, cache, sizes.cocoop_batch, sizes,
                      device, amp)


def bench_eval_pass(adapter, names, test: Split, cache_root: Path, sizes: Sizes, device, amp) -> Row:
    from medkit.train import predict

    fast, slow = _coop(adapter, names)
    y = torch.as_tensor(test.targets)

    @torch.no_grad()
    def naive_pass():
        out = []
        for x, _ in DataLoader(ImageDataset(test, adapter.preprocess), batch_size=sizes.eval_batch):
            img = adapter.encode_image(x.to(device), normalize=True).float()
            out.append(slow(img).float().cpu())  # prompts re-encoded for every batch
        return torch.cat(out)

    naive_t, naive_logits = _timed(naive_pass, device)

    def medkit_pass():
        cache = FeatureCache(cache_root)  # a new pass: features read from disk, not memory
        logits, labels = predict(fast, test, batch_size=sizes.eval_batch, cache=cache, amp=amp)
        assert torch.equal(labels, y)
        return logits

    with PeakMemory(device) as mem:
        medkit_t, medkit_logits = _timed(medkit_pass, device)
    return _row("eval_pass", naive_t, medkit_t, _max_diff([naive_logits], [medkit_logits]), mem.peak_mb, amp)


def bench_text_cut(adapter, names, sizes: Sizes, device, amp) -> Row:
    """The cut alone: the same per-class text pass over every position vs up to the last
    real token (no prefix sharing, which `coop_step` adds on causal towers)."""
    fast, slow = _coop(adapter, names)

    def fwd_bwd(context: PromptContext):
        fast.context.ctx.grad = None
        with _autocast(device, amp):
            feats = adapter.encode_text_from_embeddings(context.embeddings(), context.ids)
        feats.float().square().sum().backward()
        return feats.detach().float()

    naive_t, naive_f = _steps(lambda: fwd_bwd(slow.context), sizes.naive_steps, device)
    with PeakMemory(device) as mem:
        medkit_t, medkit_f = _steps(lambda: fwd_bwd(fast.context), sizes.medkit_steps, device)
    return _row("text_cut", naive_t, medkit_t, _max_diff(naive_f, medkit_f[: len(naive_f)]), mem.peak_mb, amp)


def _steps(fn: Callable[[], torch.Tensor], n: int, device) -> tuple[float, list[torch.Tensor]]:
    """Seconds per call (median of `n`) and every call's output."""
    times, outs = [], []
    for _ in range(n):
        t, out = _timed(fn, device)
        times.append(t)
        outs.append(out.cpu())
    return float(np.median(times)), outs


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - z).abs().max()) for x, z in zip(a, b))


def _row(name: str, naive_t: float, medkit_t: float, diff: float, peak: float, amp: bool) -> Row:
    return Row(name, "", round(naive_t, 4), round(medkit_t, 4), round(naive_t / medkit_t, 1), diff, round(peak, 1),
               BF16_TOLERANCE if amp else TOLERANCE)


def _autocast(device: torch.device, amp: bool):
    """bf16 on CUDA (the rows' BF16_TOLERANCE assumes it), nothing elsewhere."""
    return autocast("bf16", device, amp and device.type == "cuda")


def bench_seg_coop_step(folder: Path, sizes: Sizes, device, amp, config=None) -> Row:
    """CLIPSeg CoOp steps: the stock forward (vision tower every step) against cached
    activations, the same SGD steps from the same context; the mask logits are compared."""
    from medkit.backbones.hf_dual import write_random_clipseg
    from medkit.seg.model import load_clipseg
    from medkit.seg.strategies import SegCoOp

    stock = write_random_clipseg(folder, config, sizes.seg_image_size).to(device)
    model = load_clipseg(folder, device=str(device))
    for p in list(model.parameters()) + list(stock.parameters()):
        p.requires_grad_(False)
    torch.manual_seed(0)
    coop = SegCoOp(model, ["polyp", "kidney stone"]).to(device)
    size = model.adapter.image_size
    x = torch.randn(sizes.seg_batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    masks = (torch.rand(sizes.seg_batch, size, size, generator=torch.Generator().manual_seed(2)) > 0.8).float().to(device)
    index = torch.arange(sizes.seg_batch, device=device) % 2
    with torch.no_grad():
        acts, pooled = model.adapter.encode_image_layers(x, model.extract_layers, with_pooled=True)
    ctx, start = coop.context.ctx, coop.context.ctx.detach().clone()

    def step(forward):
        with _autocast(device, amp):
            logits = forward()
        loss = F.binary_cross_entropy_with_logits(logits.float(), masks)
        ctx.grad = None
        loss.backward()
        with torch.no_grad():
            ctx.sub_(0.01 * ctx.grad)
        return logits.detach().float()

    def stock_step():
        return stock(pixel_values=x, conditional_embeddings=coop.text_features(index, None)).logits

    naive_t, naive_logits = _steps(lambda: step(stock_step), sizes.naive_steps, device)
    with torch.no_grad():
        ctx.copy_(start)
    with PeakMemory(device) as mem:
        medkit_t, medkit_logits = _steps(lambda: step(lambda: coop(index, activations=acts, pooled=pooled)),
                                         sizes.medkit_steps, device)
    diff = _max_diff(naive_logits, medkit_logits[: len(naive_logits)])
    return _row("seg_coop_step", naive_t, medkit_t, diff, mem.peak_mb, amp)


# --------------------------------------------------------------------------- backbones and the run

def backbones(which: list[str], device: torch.device) -> dict[str, BackboneAdapter]:
    from medkit.backbones import wrap

    out = {}
    for name in which:
        torch.manual_seed(0)
        if name == "miniclip":
            from medkit.backbones import miniclip

            cfg = miniclip.PRESETS["miniclip"]
            train_tf, eval_tf = miniclip.transforms(cfg)
            out["MiniCLIP"] = wrap(miniclip.build_model(cfg).eval(), miniclip.tokenizer(cfg), train_tf, eval_tf,
                                   "miniclip (untrained)")
        elif name == "vit-b-16":
            import open_clip

            model, train_tf, eval_tf = open_clip.create_model_and_transforms("ViT-B-16-quickgelu", pretrained=None)
            out["ViT-B-16 (random init)"] = wrap(model.eval(), open_clip.get_tokenizer("ViT-B-16-quickgelu"),
                                                 train_tf, eval_tf, "ViT-B-16-quickgelu")
        else:
            raise ValueError(f"unknown bench backbone {name!r}; choose miniclip or vit-b-16")
    return {k: v.to(device) for k, v in out.items()}


def run(quick: bool = False, which: tuple[str, ...] = ("miniclip", "vit-b-16"), device: str | None = None,
        log: Callable[[str], None] = print) -> tuple[list[Row], dict]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = Sizes.quick() if quick else Sizes()
    rows, notes = [], {}
    for label, adapter in backbones(list(which), dev).items():
        with tempfile.TemporaryDirectory(prefix="medkit-bench-") as tmp:
            tmp = Path(tmp)
            train = implant_split("train", max(sizes.coop_batch, sizes.cocoop_batch), 64, tmp / "img", seed=1)
            test = implant_split("test", sizes.eval_images, 64, tmp / "img", seed=2)
            names = list(train.labels.classnames)
            assert len(names) == N_CLASSES
            cache = FeatureCache(tmp / "cache")
            t = time.perf_counter()
            cache.get(adapter, train)
            cache.get(adapter, test)
            notes[label] = {"cache_build_s": round(time.perf_counter() - t, 2),
                            "prompt_positions": _positions(adapter, names)}
            log(f"{label}: feature cache built in {notes[label]['cache_build_s']:.1f} s "
                f"({len(train) + len(test)} images); prompts cut {notes[label]['prompt_positions']}")
            for amp in ([False, True] if dev.type == "cuda" else [False]):
                suffix = " · bf16" if amp else ""
                for fn in (lambda: bench_text_cut(adapter, names, sizes, dev, amp),
                           lambda: bench_coop_step(adapter, names, train, cache, sizes, dev, amp),
                           lambda: bench_cocoop_step(adapter, names, train, cache, sizes, dev, amp),
                           lambda: bench_eval_pass(adapter, names, test, tmp / "cache", sizes, dev, amp)):
                    row = fn()
                    row.backbone = label + suffix
                    rows.append(row)
                    log(f"  {row.name:<12} naive {row.naive_s:8.3f} s  medkit {row.medkit_s:7.3f} s  "
                        f"×{row.ratio:<6} max|Δ| {row.max_abs_diff:.1e}  peak {row.peak_mb:.0f} MB"
                        + ("" if row.agrees else f"  ✗ DISAGREES (tolerance {row.tolerance:g})"))
    if "vit-b-16" in which:  # CLIPSeg at its real size: the towers of ViT-B/16 at 352 px
        with tempfile.TemporaryDirectory(prefix="medkit-bench-clipseg-") as tmp:
            for amp in ([False, True] if dev.type == "cuda" else [False]):
                row = bench_seg_coop_step(Path(tmp) / f"clipseg-{amp}", sizes, dev, amp)
                row.backbone = f"CLIPSeg rd64 (random init, {sizes.seg_image_size} px)" + (" · bf16" if amp else "")
                rows.append(row)
                log(f"  {row.name:<12} naive {row.naive_s:8.3f} s  medkit {row.medkit_s:7.3f} s  "
                    f"×{row.ratio:<6} max|Δ| {row.max_abs_diff:.1e}  peak {row.peak_mb:.0f} MB"
                    + ("" if row.agrees else f"  ✗ DISAGREES (tolerance {row.tolerance:g})"))
    notes["device"] = _describe(dev)
    notes["sizes"] = asdict(sizes)
    return rows, notes


def _positions(adapter: BackboneAdapter, names: list[str]) -> str:
    ctx = CoOp(adapter, names, n_ctx=16).context
    return f"{ctx.ids.shape[1]} of {adapter.tokenize(['x']).shape[1]} positions (CoOp, 16 context tokens)"


def _describe(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def write(rows: list[Row], notes: dict, out_dir: Path, quick: bool) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = ["name", "backbone", "naive_s", "medkit_s", "ratio", "max_abs_diff", "peak_mb"]
    df = pd.DataFrame([{c: getattr(r, c) for c in cols} for r in rows])
    csv = out_dir / "bench.csv"
    df.to_csv(csv, index=False)
    lines = [f"# medkit bench{' (--quick)' if quick else ''}", "",
             f"torch {torch.__version__} · {notes['device']} · {time.strftime('%Y-%m-%d %H:%M')} · "
             f"{notes['sizes']['eval_images']} eval images, 45 classes", "",
             "| operation | backbone | reference (s) | medkit (s) | speed-up | target | max abs diff | medkit peak MB |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        target = TARGETS.get(r.name)
        met = "" if target is None or not ("ViT-B-16" in r.backbone or "CLIPSeg" in r.backbone) or "bf16" in r.backbone else \
            f"≥ {target:g}× {'✓' if r.ratio >= target else '✗'}"
        lines.append(f"| {r.name} | {r.backbone} | {r.naive_s:.3f} | {r.medkit_s:.3f} | {r.ratio:g}× | {met} | "
                     f"{r.max_abs_diff:.1e}{'' if r.agrees else ' ✗'} | {r.peak_mb:.0f} |")
    lines += ["", "Seconds per step (`coop_step`, `cocoop_step`, `text_cut`: median over steps) or per pass "
              "(`eval_pass`). The medkit numbers exclude building the feature cache, which happens once per "
              "backbone, split and view and is then shared by every epoch, seed and method:", ""]
    lines += [f"- {k}: cache built in {v['cache_build_s']} s; prompts cut to {v['prompt_positions']}"
              for k, v in notes.items() if isinstance(v, dict) and "cache_build_s" in v]
    md = out_dir / "bench.md"
    md.write_text("\n".join(lines) + "\n")
    return csv, md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medkit.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and 100 eval images (< 5 min on 2 cores)")
    parser.add_argument("--backbones", nargs="+", default=["miniclip", "vit-b-16"], choices=["miniclip", "vit-b-16"])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--outputs", default="outputs")
    args = parser.parse_args(argv)
    from medkit.paths import project_path

    t0 = time.time()
    rows, notes = run(args.quick, tuple(args.backbones), args.device)
    csv, md = write(rows, notes, project_path(args.outputs), args.quick)
    bad = [r for r in rows if not r.agrees]
    print(f"\nwrote {csv} and {md} in {time.time() - t0:.0f} s")
    if bad:
        print("✗ outputs disagree: " + ", ".join(f"{r.name} on {r.backbone} (max |Δ| {r.max_abs_diff:.1e} > "
                                                 f"{r.tolerance:g})" for r in bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
