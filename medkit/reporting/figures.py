"""Figures of the notebooks and the data they show, built from runner outcomes and datasets
(the plotting itself is `medkit.plots`: plain functions returning matplotlib Figures)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader

from medkit.backbones import BackboneAdapter
from medkit.data import Dataset, ImageDataset, Split
from medkit.experiment import Outcome
from medkit.features import CachedFeatures, encode_split
from medkit.metrics import confusion
from medkit.methods import ZeroShotClassifier
from medkit.plots import plot_confusion, plot_histories, plot_learned_vs_zeroshot, plot_sample_grid
from medkit.prompts import study_template_for
from medkit.protocols import spread, take


def _groups(dataset: Dataset) -> list[str] | None:
    labels = dataset.labels
    return [labels.group_of[c] for c in labels.classnames] if labels.has_groups else None


def spread_subset(split: Split, limit: int | None) -> Split:
    """An evenly spaced subset of the split (every class kept in class-ordered splits)."""
    return take(split, spread(len(split), limit))


# --------------------------------------------------------------------------- datasets

def sample_grid(dataset: Dataset, split: str = "train", per_class: int = 1, max_classes: int = 45,
                ncols: int = 9, title: str = "") -> Figure:
    """One (or `per_class`) image per class, classes in label order (so grouped by group)."""
    ds = ImageDataset(dataset[split])
    first: dict[int, list[int]] = {}
    for i, s in enumerate(dataset[split].samples):
        if s.label < max_classes and len(first.setdefault(s.label, [])) < per_class:
            first[s.label].append(i)
    idx = [i for label in sorted(first) for i in first[label]]
    names = dataset.labels.classnames
    group_of = dataset.labels.group_of or {}
    titles = [names[dataset[split].samples[i].label] + (f"\n{group_of[names[dataset[split].samples[i].label]]}"
                                                        if group_of else "") for i in idx]
    return plot_sample_grid([ds.image(i) for i in idx], titles, ncols=ncols,
                            title=title or f"{dataset.id} ({dataset.domain or 'real'})")


def descriptions_table(dataset: Dataset, classes: Sequence[str] | None = None, n: int = 3, n_outliers: int = 3) -> pd.DataFrame:
    """A few true sentences and the deliberate outliers of some classes."""
    if not dataset.descriptions:
        return pd.DataFrame()
    rows = []
    for c in list(classes or dataset.labels.classnames[:3]):
        sentences = dataset.descriptions[c]
        rows += [{"class": c, "kind": "description", "sentence": s} for s in sentences[:n]]
        rows += [{"class": c, "kind": "outlier", "sentence": s} for s in sentences[len(sentences) - n_outliers:]]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- outcomes

def best_outcome(outcomes: Sequence[Outcome]) -> Outcome:
    """The first seed of the setting with the best mean test accuracy."""
    def mean_acc(sid: str) -> float:
        return float(np.mean([o.row["acc"] for o in outcomes if o.setting.id == sid]))

    best = max(dict.fromkeys(o.setting.id for o in outcomes), key=mean_acc)
    return next(o for o in outcomes if o.setting.id == best)


def curves_figure(outcomes: Sequence[Outcome], title: str = "") -> Figure:
    """Loss and accuracy per epoch of every setting (first seed of each)."""
    several = len({o.setting.method for o in outcomes}) > 1
    first: dict[str, pd.DataFrame] = {}
    for o in outcomes:
        if o.history is not None:
            first.setdefault(f"{o.setting.method}: {o.setting.variant}" if several else o.setting.variant, o.history)
    return plot_histories(first, title)


def confusion_figure(outcome: Outcome, dataset: Dataset, title: str = "") -> Figure:
    labels = dataset.labels
    cm = confusion(outcome.test_labels.numpy(), outcome.test_logits.argmax(1).numpy(), labels.n_classes)
    s = outcome.setting
    return plot_confusion(cm, labels.classnames, _groups(dataset), title=title or
                          f"{dataset.id} · {s.method} ({s.variant}) · test, seed {outcome.seed}")


@torch.no_grad()
def learned_features(method: nn.Module, split: Split, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image features, class text features, labels) as the trained method sees them:
    prompted image features for deep-prompt methods, frozen ones otherwise; CoCoOp's text
    features conditioned on the mean image feature."""
    split = spread_subset(split, limit)
    method.eval()
    prompts = method.vision_prompts() if hasattr(method, "vision_prompts") else list(getattr(method, "vision", [])) or None
    imgs, ys = [], []
    for x, y in DataLoader(ImageDataset(split, method.adapter.preprocess), batch_size=256):
        imgs.append(method.adapter.encode_image(x, normalize=True, prompts=prompts).float())
        ys.append(y)
    img = torch.cat(imgs)
    txt = method.text_features(img.mean(0, keepdim=True))[0] if hasattr(method, "meta_net") else method.precompute_text()
    return img, txt.float(), torch.cat(ys)


@torch.no_grad()
def tsne_figure(outcome: Outcome, dataset: Dataset, adapter: BackboneAdapter, points: int = 600) -> Figure:
    """Test images and class text features, zero-shot (frozen image features, the study's
    hand-crafted prompt) next to what the trained prompt method produces."""
    split = dataset.splits["test"]
    img_l, txt_l, y = learned_features(outcome.method, split, limit=points)
    zs = ZeroShotClassifier.from_templates(adapter, study_template_for(dataset.labels.has_groups), dataset.labels.classnames)
    img_z = encode_split(adapter, spread_subset(split, points))
    s = outcome.setting
    return plot_learned_vs_zeroshot([("zero-shot (class name, study template)", img_z, zs.class_features),
                                     (f"{s.method} · {s.variant} (seed {outcome.seed})", img_l, txt_l)],
                                    y, dataset.labels.classnames, _groups(dataset))


@torch.no_grad()
def vit_tsne_figure(outcome: Outcome, dataset: Dataset, data_root: str = "data", points: int = 600) -> Figure:
    """Test-image features of the ViT trunk before (pretrained weights) and after fine-tuning."""
    from medkit.methods import build_vit

    split = dataset.splits["test"]
    sub = spread_subset(split, points)
    weights = outcome.setting.full_options["weights"]
    before = build_vit(weights, dataset.labels.n_classes, "head", data_root, seed=outcome.seed)
    feats = {label: encode_split(model, sub) for label, model in (("pretrained", before), ("fine-tuned", outcome.method))}
    y = torch.tensor([s.label for s in sub.samples])
    return plot_learned_vs_zeroshot([(f"{weights} trunk, before fine-tuning", feats["pretrained"], None),
                                     (f"after: {outcome.setting.variant} (seed {outcome.seed})", feats["fine-tuned"], None)],
                                    y, dataset.labels.classnames, _groups(dataset))


def gap_figure(gap: pd.DataFrame) -> Figure:
    """Validation and test accuracy per setting, side by side."""
    import matplotlib.pyplot as plt

    labels = [f"{m}\n{v}" for m, v in gap.index]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(labels)), 4.5), layout="constrained")
    ax.bar(x - 0.2, gap["val"], 0.4, label="validation")
    ax.bar(x + 0.2, gap["test"], 0.4, label="test")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("accuracy (mean over seeds)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return fig


# --------------------------------------------------------------------------- BiomedCoOp's prompt selection (07)

def prompt_selection(method: nn.Module, features: torch.Tensor, batch_size: int = 32, seed: int = 0,
                     taus: Sequence[float] = (1.5,)) -> dict[str, np.ndarray]:
    """How often each pruning rule keeps each prompt over random training batches of a
    BiomedCoOp (`{rule: keep frequency [S]}`), and the mean prompt scores (`"score"`)."""
    from medkit.methods.biomedcoop import keep_prompts, prompt_scores

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(features), generator=gen)
    scale = method.adapter.logit_scale.float().detach()
    scores, kept = [], {}
    for i in range(0, len(order), batch_size):
        s = prompt_scores(features[order[i:i + batch_size]], method.sentences, scale)
        scores.append(s)
        for rule in ("mad", "zscore"):
            for tau in taus:
                kept.setdefault(f"{rule} τ={tau:g}", []).append(keep_prompts(s, rule, tau).float())
    out = {k: torch.stack(v).mean(0).numpy() for k, v in kept.items()}
    out["score"] = torch.stack(scores).mean(0).numpy()
    return out


def outlier_mask(n_prompts: int, n_outliers: int) -> np.ndarray:
    """The synthetic world appends its outlier sentences last: prompts S-n..S-1."""
    mask = np.zeros(n_prompts, dtype=bool)
    if n_outliers:
        mask[-n_outliers:] = True
    return mask


def selection_summary(selection: Mapping[str, Mapping[str, np.ndarray]], datasets: Mapping[str, Dataset]) -> pd.DataFrame:
    """Per dataset and rule: prompts kept per batch (mean), and the share of the known
    outlier prompts and of the true prompts pruned in most batches."""
    out = []
    for name, sel in selection.items():
        n_out = datasets[name].meta.get("world", {}).get("n_outlier_sentences", 0)
        outliers = outlier_mask(len(sel["score"]), n_out)
        for rule, freq in sel.items():
            if rule == "score":
                continue
            pruned = freq < 0.5
            out.append({"dataset": name, "rule": rule, "prompts": len(freq), "kept per batch": round(float(freq.sum()), 1),
                        "outliers pruned": f"{int(pruned[outliers].sum())}/{int(outliers.sum())}" if n_out else "—",
                        "true prompts pruned": f"{int(pruned[~outliers].sum())}/{int((~outliers).sum())}"})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- CILMP's prompts (08)

def confusable_pair(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """The two classes most often mistaken for each other (both directions summed)."""
    n = logits.shape[1]
    cm = confusion(labels.numpy(), logits.argmax(1).numpy(), n).astype(float)
    sym = cm + cm.T
    np.fill_diagonal(sym, -1)
    i, j = np.unravel_index(int(sym.argmax()), sym.shape)
    return int(min(i, j)), int(max(i, j))


@torch.no_grad()
def pair_prompt_features(method: nn.Module, features: CachedFeatures, pair: tuple[int, int]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image features, their labels, the class text features the method builds for those
    images — one per image and class of the pair for image-conditioned prompts —, their labels)."""
    rows = torch.nonzero((features.labels == pair[0]) | (features.labels == pair[1])).flatten()
    img, y = features.features[rows], features.labels[rows]
    method.eval()
    if getattr(method, "conditional", False) or hasattr(method, "meta_net"):
        txt = method.text_features(img)[:, list(pair)]                      # [N, 2, E]
        t_y = torch.as_tensor(pair).expand(len(rows), 2)
        return img, y, txt.reshape(-1, txt.shape[-1]), t_y.reshape(-1)
    txt = method.precompute_text()[list(pair)]
    return img, y, txt, torch.as_tensor(pair)
