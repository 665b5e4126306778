"""PsPG's first phase: contrastive fine-tuning of both towers on image-report pairs.

CLIP's symmetric InfoNCE (open_clip's `ClipLoss`) over (image, report) pairs — MIMIC-CXR in
the paper, the training dataset's reports here (`pairs`: a Split whose samples carry
`text`, e.g. `read_pspg_jsonl` of a reports file) — on a copy of the backbone (the shared
adapter other methods use stays untouched). `text_layers` says how many of the text
tower's top blocks train (-1: all, the reference; otherwise the projection trains too);
`text_layers=0` locks the text tower (LiT-style: every report is encoded once, the image
tower alone trains — the CPU profiles' budget). The image tower trains fully. Scored as multi-label zero-shot with the fixed positive / negative
prompts on the fine-tuned towers; `save_to` (a name; `{seed}` is filled in) writes the
fine-tuned backbone where `load_backbone(name)` finds it, so DualCoOp and PsPG can start
from it by name.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from medkit.backbones import BackboneAdapter
from medkit.data import ImageDataset, Split
from medkit.features import ImageEncoder, adapter_token_encoder
from medkit.methods import Ref, register
from medkit.methods.base import freeze
from medkit.methods.multilabel import NEGATIVE_TEMPLATE, POSITIVE_TEMPLATE, MultiLabelMethod, pair_log_odds
from medkit.prompts import prompt_name


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, split: Split, transform) -> None:
        self.images, self.texts = ImageDataset(split, transform), [s.text or "" for s in split.samples]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int):
        return self.images[i][0], self.texts[i]


def contrastive_finetune(adapter: BackboneAdapter, pairs: Split, epochs: int = 2, batch_size: int = 64,
                         lr: float = 1e-5, weight_decay: float = 0.2, text_layers: int = -1, seed: int = 1,
                         progress: bool | str = "lines", on_start=None) -> list[dict]:
    """Fine-tune `adapter` in place on (image, report) pairs; returns the per-epoch history.
    `on_start` receives the names of the parameters that train."""
    from open_clip.loss import ClipLoss

    missing = [str(s.path) for s in pairs.samples if not s.text]
    if missing:
        raise ValueError(f"{len(missing)} image(s) of the pairs have no report text, e.g. {missing[:3]}")
    model = adapter.model
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.visual.parameters():
        p.requires_grad_(True)
    blocks = adapter.text_blocks()
    for block in blocks[len(blocks) - (len(blocks) if text_layers < 0 else text_layers):]:
        for p in block.parameters():
            p.requires_grad_(True)
    text = model.text if hasattr(model, "text") else model
    for name in ("proj", "text_projection", "ln_final") if text_layers != 0 else ():
        part = getattr(text, name, None)
        if isinstance(part, (torch.nn.Module, torch.nn.Parameter)):
            part.requires_grad_(True)
    model.logit_scale.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    if on_start is not None:
        on_start([f"model.{n}" for n, p in model.named_parameters() if p.requires_grad])
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    data = DataLoader(_Pairs(pairs, adapter.preprocess_train), batch_size=batch_size, shuffle=True, generator=gen,
                      drop_last=len(pairs) > batch_size)
    loss_fn, history, t0 = ClipLoss(), [], time.time()
    # a locked text tower (text_layers=0, LiT-style) encodes every report once, not once per step
    locked = {t: f for t, f in zip(data.dataset.texts, adapter.encode_texts(data.dataset.texts))} if text_layers == 0 else None
    model.train()
    for epoch in range(epochs):
        total, n = 0.0, 0
        for images, texts in data:
            img = adapter.encode_image(images, normalize=True)
            txt = (torch.stack([locked[t] for t in texts]) if locked is not None
                   else adapter.encode_text(list(texts), normalize=True))
            loss = loss_fn(img, txt, model.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(texts), n + len(texts)
        history.append({"epoch": epoch + 1, "train_loss": total / max(n, 1), "seconds": time.time() - t0})
        if progress == "lines":
            print(f"contrastive fine-tuning epoch {epoch + 1}/{epochs} loss {total / max(n, 1):.3f} "
                  f"{time.time() - t0:.0f}s", flush=True)
    freeze(model)
    return history



@torch.no_grad()
def contrastive_loss(adapter: BackboneAdapter, pairs: Split, batch_size: int = 256) -> float:
    """CLIP's loss over (image, report) pairs in evaluation mode, in batches (a validation of
    the fine-tuning: lower is better aligned)."""
    from open_clip.loss import ClipLoss

    was = adapter.model.training
    adapter.model.eval()
    data = DataLoader(_Pairs(pairs, adapter.preprocess), batch_size=batch_size)
    total, n = 0.0, 0
    for images, texts in data:
        img = adapter.encode_image(images, normalize=True)
        txt = adapter.encode_text(list(texts), normalize=True)
        total += float(ClipLoss()(img, txt, adapter.model.logit_scale.exp())) * len(texts)
        n += len(texts)
    adapter.model.train(was)
    return total / max(n, 1)


@register("clip_finetune_contrastive", kind="finetune", example={"epochs": 4, "batch_size": 16, "lr": 1e-5})
class ContrastiveFinetune(MultiLabelMethod):
    trains_by_gradient = False  # its own loop over image-report pairs, in `prepare`
    uses_cached_features = False  # its image tower changes

    def __init__(self, adapter: BackboneAdapter, classnames: list[str], pairs: Split | None = Ref("reports"),
                 epochs: int = 2, batch_size: int = 64, lr: float = 1e-5, weight_decay: float = 0.2,
                 text_layers: int = -1, seed: int | None = Ref("seed"), save_to: str | None = None,
                 data_root: str = Ref("data_root"),
                 positive: str = POSITIVE_TEMPLATE, negative: str = NEGATIVE_TEMPLATE) -> None:
        super().__init__(adapter, classnames)
        self.base = adapter  # the shared, frozen backbone: features for `prepare` come from it
        self.adapter = copy.deepcopy(adapter)  # what fine-tunes
        self.pairs, self.save_to, self.data_root, self.templates = pairs, save_to, data_root, (positive, negative)
        self.train_options = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                  text_layers=text_layers, seed=seed or 1)
        self.history: list[dict] = []
        self._encode_prompts()

    def _encode_prompts(self) -> None:
        names = [prompt_name(c) for c in self.classnames]
        with torch.no_grad():
            self.positive = self.adapter.encode_texts([self.templates[0].format(n) for n in names]).float()
            self.negative = self.adapter.encode_texts([self.templates[1].format(n) for n in names]).float()

    def image_encoder(self) -> ImageEncoder:
        return adapter_token_encoder(self.base)

    def prepare(self, train, val=None) -> None:
        if self.pairs is None:
            raise ValueError("clip_finetune_contrastive needs image-report pairs (option pairs=, or the run's "
                             "'reports' resource)")
        self.history = contrastive_finetune(self.adapter, self.pairs, **self.train_options, on_start=self._remember)
        self._encode_prompts()
        if self.save_to:
            from medkit.backbones import save_finetuned

            save_finetuned(self.adapter, self.save_to.format(seed=self.train_options["seed"]), self.data_root)

    def forward(self, images: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        img = self.adapter.encode_image(images)
        return pair_log_odds(img, self.positive.to(img.device), self.negative.to(img.device),
                             self.adapter.logit_scale.float())

    def _remember(self, names: list[str]) -> None:
        self.tuned = [f"adapter.{n}" for n in names]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What the fine-tuning changed (image tower, the trained text blocks, projections,
        temperature, and the buffers of the image tower such as BatchNorm statistics)."""
        params = dict(self.named_parameters())
        state = {n: params[n].detach().clone() for n in getattr(self, "tuned", [])}
        state.update({f"adapter.model.visual.{n}": b.detach().clone()
                      for n, b in self.adapter.model.visual.named_buffers() if getattr(self, "tuned", None)})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        own = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        unknown = sorted(set(state) - set(own))
        if unknown:
            raise KeyError(f"checkpoint has tensors this method lacks: {unknown[:5]}")
        with torch.no_grad():
            for n, v in state.items():
                own[n].copy_(v)
        self.tuned = sorted(n for n in state if n in dict(self.named_parameters()))
        self._encode_prompts()
