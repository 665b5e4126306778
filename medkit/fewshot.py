"""The few-shot experiments of notebooks 07 and 08: every method × K × seed on cached
features, and base-to-novel.

Each dataset's splits are encoded once (`FeatureCache`: the evaluation transform for
train, val and test, plus augmented training views); a K-shot draw or a base/novel
subset is a row selection of those features, so no image is encoded twice. Per run:

    build → prepare(frozen train, val features) → fit (if the method trains by gradient)
    → finish(val) → test metrics → a results.csv row (`shots`, `seed`, split `test`;
    base-to-novel: split `base` and `novel`).

Method options may name dataset resources (`Ref("descriptions")`, `Ref("knowledge")`)
resolved per dataset, so one settings list serves every dataset. Zero-shot settings do
not train: they are evaluated once and their row is repeated for every K × seed, so the
table and the curves treat every method alike.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from medkit.backbones import BackboneAdapter
from medkit.data import Dataset, LabelSpace, Split
from medkit.evaluation import evaluate_logits
from medkit.features import CachedFeatures, FeatureCache, adapter_encoder
from medkit.methods import ZeroShotClassifier, get_method
from medkit.methods.cilmp import DEFAULT_RANK, default_length
from medkit.prompts import CLIP_DEFAULT_TEMPLATE
from medkit.protocols import SEEDS, SHOTS, base_novel_classes, few_shot, harmonic_mean, restrict, save_indices
from medkit.runs import Run, sanitise
from medkit.study import Setting, train_config
from medkit.train import TrainConfig, fit, predict, seed_everything


# Optimizer steps per run by profile and method (None: the references' epochs). Image-
# conditioned methods (CoCoOp, CILMP) cost B·C text passes per step and per evaluated image.
PROFILE_STEPS: dict[str, dict[str, int] | None] = {
    "smoke": {"default": 2},
    "tiny": {"default": 10, "cocoop": 4, "cilmp": 4},
    "paper": None,
}
# Test images evaluated by profile and method (None: all; spread evenly over the split).
PROFILE_EVAL_IMAGES: dict[str, dict[str, int]] = {
    "smoke": {"cocoop": 8, "cilmp": 8},
    "tiny": {"cocoop": 30, "cilmp": 30},
    "paper": {},
}


@dataclass(frozen=True)
class Ref:
    """A method option that is a per-dataset resource (`descriptions`, `knowledge`)."""

    name: str


def resolve(options: Mapping[str, Any], resources: Mapping[str, Any], method: str = "") -> dict[str, Any]:
    out = {}
    for key, value in options.items():
        if isinstance(value, Ref):
            if resources.get(value.name) is None:
                raise ValueError(f"{method}: option {key!r} needs the dataset's {value.name!r}, which this run has "
                                 f"not got (resources: {sorted(k for k, v in resources.items() if v is not None)})")
            value = resources[value.name]
        out[key] = value
    return out


@dataclass
class SplitFeatures:
    """Frozen features of a dataset's splits: `train_views` holds augmented views."""

    train: CachedFeatures
    train_views: CachedFeatures | None
    val: CachedFeatures
    test: CachedFeatures


def dataset_features(adapter: BackboneAdapter, splits: Mapping[str, Split], cache: FeatureCache,
                     views: int) -> SplitFeatures:
    enc = adapter_encoder(adapter)
    return SplitFeatures(cache.get(enc, splits["train"]), cache.get(enc, splits["train"], views) if views else None,
                         cache.get(enc, splits["val"]), cache.get(enc, splits["test"]))


def spread(n: int, limit: int | None) -> np.ndarray:
    """Evenly spaced row indices (keeps every class in class-ordered splits)."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.linspace(0, n - 1, limit).round().astype(int)


def step_budget(cfg: TrainConfig, n_train: int, steps: int | None) -> TrainConfig:
    """With `steps`, the epochs that give about that many optimizer steps for `n_train`
    images (few-shot sets span 12 to 720 images: a fixed epoch count would give 1-shot
    runs one step). None keeps the config's epochs (the references' protocol)."""
    if steps is None:
        return cfg
    batch = min(cfg.batch_size, n_train)
    per_epoch = math.ceil(n_train / batch)
    if cfg.max_steps_per_epoch:
        per_epoch = min(per_epoch, cfg.max_steps_per_epoch)
    if per_epoch >= steps:  # one partial epoch (a random subset of the images, shuffled per seed)
        return cfg.with_(batch_size=batch, epochs=1, max_steps_per_epoch=steps)
    return cfg.with_(batch_size=batch, epochs=math.ceil(steps / per_epoch))


def build(setting: Setting, adapter: BackboneAdapter, classnames: Sequence[str], resources: Mapping[str, Any]) -> nn.Module:
    options = resolve(setting.options, resources, setting.method)
    if setting.method == "zeroshot":
        if "ensembles" in options:
            return ZeroShotClassifier.from_ensembles(adapter, options["ensembles"], list(classnames))
        return ZeroShotClassifier.from_templates(adapter, options.get("templates", CLIP_DEFAULT_TEMPLATE), list(classnames))
    return get_method(setting.method)(adapter, list(classnames), **options)


@dataclass
class FewShotRun:
    """One trained method with what it produced."""

    setting: Setting
    shots: int
    seed: int
    row: dict
    method: nn.Module
    history: pd.DataFrame | None


class Experiment:
    """One dataset on one backbone: features cached once, then any number of runs."""

    def __init__(self, run: Run | None, dataset: Dataset, adapter: BackboneAdapter, profile: str,
                 cache: FeatureCache, resources: Mapping[str, Any] | None = None, views: int = 8,
                 steps: Mapping[str, int] | None | str = "profile", eval_images: Mapping[str, int] | None | str = "profile",
                 log: Callable[[str], None] = print) -> None:
        """`steps` / `eval_images`: per method name ("default" for the rest); "profile" takes
        the profile's (`PROFILE_STEPS`, `PROFILE_EVAL_IMAGES`)."""
        self.run, self.dataset, self.adapter, self.profile, self.cache = run, dataset, adapter, profile, cache
        self.resources = {"descriptions": dataset.descriptions, **(resources or {})}
        self.steps = PROFILE_STEPS.get(profile) if steps == "profile" else steps
        self.eval_images = dict(PROFILE_EVAL_IMAGES.get(profile, {}) if eval_images == "profile" else eval_images or {})
        self.views, self.log = views, log
        self.features = dataset_features(adapter, dataset.splits, cache, views)
        self._zero_shot: dict[tuple, dict] = {}

    # ------------------------------------------------------------------ pieces
    def config(self, setting: Setting, seed: int, n_train: int) -> TrainConfig:
        cfg = train_config(setting.budget or setting.method, self.profile, seed=seed, **setting.train)
        if cfg.select == "last" and cfg.patience is None:
            # the references report the last epoch: validating every epoch would only cost
            # time (a text pass per validation image for image-conditioned methods)
            cfg = cfg.with_(validate=False)
        if self.steps is None:
            return cfg
        return step_budget(cfg, n_train, self.steps.get(setting.method, self.steps.get("default")))

    def _row(self, setting: Setting, split: str, shots: int, seed: int, metrics: dict, train_s: float,
             eval_s: float) -> dict:
        row = {"dataset": self.dataset.name, "split": split, "method": setting.method, "variant": setting.variant,
               "backbone": getattr(self.adapter, "name", ""), "shots": shots, "seed": seed,
               **{k: metrics.get(k) for k in ("acc", "top3", "f1_macro", "auc", "kappa", "group_acc")},
               "train_s": round(train_s, 2), "eval_s": round(eval_s, 2)}
        if self.run is not None:
            self.run.add_result(**row)
        return row

    def evaluate(self, method: nn.Module, setting: Setting, test: CachedFeatures,
                 labels: LabelSpace) -> tuple[dict, float, torch.Tensor, torch.Tensor]:
        rows = spread(len(test), self.eval_images.get(setting.method))
        test = test.take(rows) if len(rows) < len(test) else test
        t = time.time()
        if isinstance(method, ZeroShotClassifier):
            logits, y = method.logits_from_features(test.features), test.labels
        else:
            logits, y = predict(method, test)
        return evaluate_logits(logits, y, labels), time.time() - t, logits, y

    def train(self, setting: Setting, classnames: Sequence[str], train: CachedFeatures,
              train_views: CachedFeatures | None, val: CachedFeatures, seed: int,
              progress: bool | str = False) -> tuple[nn.Module, pd.DataFrame | None, float]:
        """Build, prepare, fit and finish one method on the given features."""
        seed_everything(seed)
        t = time.time()
        method = build(setting, self.adapter, classnames, self.resources)
        history = None
        if not isinstance(method, ZeroShotClassifier):
            method.prepare((train.features, train.labels), (val.features, val.labels))
            if method.trains_by_gradient:
                cfg = self.config(setting, seed, len(train))
                data = train_views if (train_views is not None and cfg.augment) else train
                history = fit(method, data, val, cfg, progress=progress,
                              desc=f"{setting.method} {setting.variant} s{seed}")
            method.finish((val.features, val.labels))
        return method, history, time.time() - t

    # ------------------------------------------------------------------ protocols
    def few_shot(self, settings: Sequence[Setting], shots: Sequence[int] = SHOTS, seeds: Sequence[int] = SEEDS,
                 progress: bool | str = False) -> list[FewShotRun]:
        """Every setting × K × seed (a setting's own `shots` narrows K)."""
        labels = self.dataset.labels
        out = []
        draws = {}
        for k in shots:
            for seed in seeds:
                splits, idx = few_shot(self.dataset.splits, k, seed)
                draws[k, seed] = idx
                if self.run is not None:
                    save_indices(self.run.path / "fewshot_indices" / f"{sanitise(self.dataset.name)}_K{k}_s{seed}.json",
                                 idx, {"dataset": self.dataset.name, "shots": k, "seed": seed})
        for setting in settings:
            for k in [k for k in shots if setting.shots is None or k in setting.shots]:
                for seed in seeds:
                    out.append(self._few_shot_one(setting, k, seed, draws[k, seed], labels, progress))
        return out

    def _few_shot_one(self, setting: Setting, k: int, seed: int, idx: dict[str, list[int]], labels: LabelSpace,
                      progress: bool | str) -> FewShotRun:
        f = self.features
        if setting.method == "zeroshot":
            key = (setting.variant,)
            if key not in self._zero_shot:
                method = build(setting, self.adapter, labels.classnames, self.resources)
                metrics, eval_s, _, _ = self.evaluate(method, setting, f.test, labels)
                self._zero_shot[key] = {"metrics": metrics, "eval_s": eval_s, "method": method}
            z = self._zero_shot[key]
            return FewShotRun(setting, k, seed, self._row(setting, "test", k, seed, z["metrics"], 0.0, z["eval_s"]),
                              z["method"], None)
        train = f.train.take(idx["train"])
        views = f.train_views.take(idx["train"]) if f.train_views is not None else None
        val = f.val.take(idx["val"])
        method, history, train_s = self.train(setting, labels.classnames, train, views, val, seed, progress)
        metrics, eval_s, _, _ = self.evaluate(method, setting, f.test, labels)
        row = self._row(setting, "test", k, seed, metrics, train_s, eval_s)
        self.log(f"{self.dataset.name} · {setting.method} · {setting.variant} · K={k} · seed {seed}: "
                 f"acc {row['acc']:.3f} · {train_s:.1f}s")
        return FewShotRun(setting, k, seed, row, method, history)

    def base_to_novel(self, settings: Sequence[Setting], shots: int = 16, seeds: Sequence[int] = SEEDS,
                      progress: bool | str = False) -> list[dict]:
        """Train on the base half (K shots), evaluate on base and on novel test images; a
        trained method moves to the novel classes by rebuilding it for them and loading its
        trained parameters — which only works when none of them is indexed by class."""
        labels = self.dataset.labels
        base, novel = base_novel_classes(labels)
        base_splits = {s: restrict(self.dataset.splits[s], base) for s in ("train", "val")}
        space = {"base": base_splits["train"].labels, "novel": restrict(self.dataset.splits["test"], novel).labels}
        f = self.features
        rows_of = {"train": f.train.labels, "val": f.val.labels, "test": f.test.labels}
        # restrict keeps the split's order, so these rows line up with the restricted splits
        pick = {s: {half: np.flatnonzero(np.isin(rows_of[s].numpy(), cls)) for half, cls in
                    (("base", base), ("novel", novel))} for s in rows_of}
        relabel = {half: {c: i for i, c in enumerate(cls)} for half, cls in (("base", base), ("novel", novel))}

        def part(cf: CachedFeatures | None, split: str, half: str) -> CachedFeatures | None:
            if cf is None:
                return None
            rows = pick[split][half]
            return cf.take(rows, [relabel[half][int(y)] for y in rows_of[split][rows]])

        out = []
        for seed in seeds:
            _, idx = few_shot(base_splits, shots, seed)
            train, val = part(f.train, "train", "base").take(idx["train"]), part(f.val, "val", "base").take(idx["val"])
            views = part(f.train_views, "train", "base")
            views = views.take(idx["train"]) if views is not None else None
            for setting in settings:
                method, _, train_s = self.train(setting, space["base"].classnames, train, views, val, seed, progress)
                novel_method = self._transfer(setting, method, space["novel"].classnames)
                accs = {}
                for half, m in (("base", method), ("novel", novel_method)):
                    metrics, eval_s, _, _ = self.evaluate(m, setting, part(f.test, "test", half), space[half])
                    out.append(self._row(setting, half, shots, seed, metrics, train_s if half == "base" else 0.0, eval_s))
                    accs[half] = metrics["acc"]
                self.log(f"{self.dataset.name} · base-to-novel · {setting.method} · {setting.variant} · seed {seed}: "
                         f"base {accs['base']:.3f} novel {accs['novel']:.3f} HM {harmonic_mean(accs['base'], accs['novel']):.3f}")
        return out

    def _transfer(self, setting: Setting, trained: nn.Module, classnames: Sequence[str]) -> nn.Module:
        fresh = build(setting, self.adapter, classnames, self.resources)
        if isinstance(fresh, ZeroShotClassifier):
            return fresh
        if fresh.class_indexed_parameters() or not fresh.trains_by_gradient:
            raise ValueError(f"{setting.method} · {setting.variant}: its trained parameters are tied to the base "
                             "classes; base-to-novel needs a class-agnostic method (shared context, meta-net, …)")
        fresh.load_trainable_state(trained.trainable_state())
        return fresh.eval()


# --------------------------------------------------------------------------- tables and curves

def shot_table(rows: Sequence[dict] | pd.DataFrame, metric: str = "acc", split: str = "test") -> pd.DataFrame:
    """mean ± std over seeds, one row per (dataset, method, variant), one column per K."""
    df = pd.DataFrame(list(rows)) if not isinstance(rows, pd.DataFrame) else rows
    df = df[df["split"] == split]
    g = df.groupby(["dataset", "method", "variant", "shots"], sort=False)[metric]
    stats = g.agg(["mean", "std"]).reset_index()
    stats["cell"] = [f"{m:.3f}" if np.isnan(s) else f"{m:.3f} ± {s:.3f}" for m, s in zip(stats["mean"], stats["std"])]
    table = stats.pivot_table(index=["dataset", "method", "variant"], columns="shots", values="cell", aggfunc="first",
                              sort=False)
    table.columns = [f"K={int(k)}" for k in table.columns]
    return table


def base_novel_table(rows: Sequence[dict] | pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    """Base, novel (mean ± std over seeds) and the harmonic mean of the mean accuracies
    (HM per seed, then averaged, is also given)."""
    df = pd.DataFrame(list(rows)) if not isinstance(rows, pd.DataFrame) else rows
    df = df[df["split"].isin(["base", "novel"])]
    wide = df.pivot_table(index=["dataset", "method", "variant", "seed"], columns="split", values=metric,
                          aggfunc="mean").reset_index()
    wide["hm"] = [harmonic_mean(b, n) for b, n in zip(wide["base"], wide["novel"])]
    g = wide.groupby(["dataset", "method", "variant"], sort=False)
    out = g[["base", "novel", "hm"]].agg(["mean", "std"])
    table = pd.DataFrame(index=out.index)
    for col in ("base", "novel"):
        table[col] = [f"{m:.3f} ± {s:.3f}" if not np.isnan(s) else f"{m:.3f}" for m, s in out[col].values]
    table["HM"] = [harmonic_mean(b, n) for b, n in zip(out[("base", "mean")], out[("novel", "mean")])]
    table["HM per seed"] = [f"{m:.3f} ± {s:.3f}" if not np.isnan(s) else f"{m:.3f}" for m, s in out["hm"].values]
    table["n"] = g.size()
    return table


# --------------------------------------------------------------------------- the notebooks' settings

PHOTO = "a photo of a"
# Prompts from the class name alone vs prompts that carry class knowledge (descriptions,
# LLM representations): the comparison notebook 07 draws at low K.
NAME_ONLY = ("class names", "CoOp", "CoCoOp", "KgCoOp")
KNOWLEDGE_GUIDED = ("description ensemble", "BiomedCoOp", "CILMP")


def few_shot_settings(profile: str) -> list[Setting]:
    """Every method of notebook 07, one variant each (the variant is the curve's label).

    On the CPU profiles CILMP runs at K ∈ {1, 4, 16}: B·C text passes per step and per
    evaluated image do not fit the whole grid in the tiny profile's time on 2 cores."""
    cilmp_shots = (1, 4, 16) if profile in ("smoke", "tiny") else None
    return [
        Setting("zeroshot", "class names", {"templates": "a photo of a {}."}),
        Setting("zeroshot", "description ensemble", {"ensembles": Ref("descriptions")}),
        Setting("linear_probe", "LP", {}),
        Setting("lp_pp", "LP++", {}),
        Setting("clip_adapter", "CLIP-Adapter", {}),
        Setting("tip_adapter", "Tip-Adapter", {}),
        Setting("tip_adapter_f", "Tip-Adapter-F", {}),
        Setting("coop", "CoOp", {"n_ctx": None, "ctx_init": PHOTO}),
        Setting("kgcoop", "KgCoOp", {}),
        Setting("cocoop", "CoCoOp", {"n_ctx": None, "ctx_init": PHOTO}),
        Setting("biomedcoop", "BiomedCoOp", {"ensembles": Ref("descriptions")}),
        Setting("cilmp", "CILMP", {"knowledge": Ref("knowledge")}, shots=cilmp_shots),
    ]


def base_to_novel_settings() -> list[Setting]:
    """The methods whose trained parameters do not depend on the classes (plus zero-shot)."""
    keep = {"class names", "description ensemble", "CLIP-Adapter", "CoOp", "KgCoOp", "CoCoOp", "BiomedCoOp", "CILMP"}
    return [replace(s, shots=None) for s in few_shot_settings("paper") if s.variant in keep]


def biomedcoop_ablations(taus: Sequence[float] = (1.0, 2.5)) -> list[Setting]:
    """No SCCM / no KDSP / no pruning; the reference code's z-score rule; a τ sweep of the MAD rule."""
    ens = {"ensembles": Ref("descriptions")}
    out = [Setting("biomedcoop", "full (MAD, τ=1.5)", ens),
           Setting("biomedcoop", "no SCCM", {**ens, "lambda_sccm": 0.0}),
           Setting("biomedcoop", "no KDSP", {**ens, "lambda_kdsp": 0.0}),
           Setting("biomedcoop", "no pruning", {**ens, "pruning": "none"}),
           Setting("biomedcoop", "z-score rule (reference code), τ=1.5", {**ens, "pruning": "zscore"})]
    out += [Setting("biomedcoop", f"MAD, τ={t:g}", {**ens, "tau": t}) for t in taus]
    return out


def cilmp_ablations(lengths: Sequence[int] = (1, 2, 3), ranks: Sequence[int] = (2, 4, 16),
                    n_layers: int | None = None) -> list[Setting]:
    """The CILMP paper's ablations (w/o RD, w/o conditional, w/o intervention) and its
    intervention-length (prefix = suffix) and rank sweeps. The full model uses the defaults
    (`default_length(n_layers)` each side, `DEFAULT_RANK`); given `n_layers`, sweep points equal
    to a default are left out, since the full model's runs are exactly those runs."""
    k = {"knowledge": Ref("knowledge")}
    skip = cilmp_defaults(n_layers) if n_layers is not None else {}
    out = [Setting("cilmp", "CILMP", k),
           Setting("cilmp", "w/o RD", {**k, "mode": "no_rd"}),
           Setting("cilmp", "w/o conditional", {**k, "mode": "unconditional"}),
           Setting("cilmp", "w/o intervention", {**k, "prefix": 0, "suffix": 0})]
    out += [Setting("cilmp", f"length {n}", {**k, "prefix": n, "suffix": n}) for n in lengths if n != skip.get("length")]
    out += [Setting("cilmp", f"rank {r}", {**k, "rank": r}) for r in ranks if r != skip.get("rank")]
    return out


def cilmp_defaults(n_layers: int) -> dict[str, int]:
    """The full CILMP's place in the length and rank sweeps."""
    return {"length": default_length(n_layers), "rank": DEFAULT_RANK}


def cilmp_sweep(ablation_rows: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """The length and rank sweeps as rows with `sweep` ("length" | "rank") and `value`, the full
    CILMP's rows standing at its default length and rank; an explicit sweep point equal to a
    default is dropped so that no configuration is counted twice."""
    defaults = cilmp_defaults(n_layers)
    parts = ablation_rows["variant"].str.extract(r"^(length|rank) (\d+)$")
    swept = ablation_rows[parts[0].notna()].assign(sweep=parts[0].dropna(), value=parts[1].dropna().astype(int))
    swept = swept[swept["value"] != swept["sweep"].map(defaults)]
    full = ablation_rows[ablation_rows["variant"] == "CILMP"]
    frames = [swept] + [full.assign(sweep=kind, value=v) for kind, v in defaults.items()]
    return pd.concat(frames, ignore_index=True).sort_values(["sweep", "value"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- findings

def knowledge_vs_names(rows: Sequence[dict] | pd.DataFrame, shots: Sequence[int] = (1, 2)) -> pd.DataFrame:
    """Per dataset and K: the best name-only and the best knowledge-guided method (mean test
    accuracy over seeds) and the difference."""
    df = pd.DataFrame(list(rows)) if not isinstance(rows, pd.DataFrame) else rows
    df = df[(df["split"] == "test") & df["shots"].isin(shots)]
    mean = df.groupby(["dataset", "shots", "variant"])["acc"].agg(["mean", "std"]).reset_index()
    out = []
    for (name, k), g in mean.groupby(["dataset", "shots"]):
        best = {}
        for family, members in (("name-only", NAME_ONLY), ("knowledge-guided", KNOWLEDGE_GUIDED)):
            sub = g[g["variant"].isin(members)]
            if len(sub):
                r = sub.loc[sub["mean"].idxmax()]
                best[family] = (r["variant"], r["mean"], r["std"])
        if len(best) == 2:
            (nv, nm, ns), (kv, km, ks) = best["name-only"], best["knowledge-guided"]
            out.append({"dataset": name, "K": int(k), "best name-only": f"{nv} {nm:.3f} ± {ns:.3f}",
                        "best knowledge-guided": f"{kv} {km:.3f} ± {ks:.3f}", "difference": round(km - nm, 3),
                        "knowledge wins": bool(km > nm)})
    return pd.DataFrame(out)


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
                key = f"{rule} τ={tau:g}"
                kept.setdefault(key, []).append(keep_prompts(s, rule, tau).float())
    out = {k: torch.stack(v).mean(0).numpy() for k, v in kept.items()}
    out["score"] = torch.stack(scores).mean(0).numpy()
    return out


def profile_shots(profile: str, shots: Sequence[int]) -> list[int]:
    """The smoke profile runs the two smallest K: it checks code paths, not curves."""
    return sorted(shots)[:2] if profile == "smoke" else sorted(shots)


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


def _mean_std(df: pd.DataFrame, **match: Any) -> tuple[float, float, int]:
    sel = df
    for k, v in match.items():
        sel = sel[sel[k] == v]
    acc = sel["acc"].astype(float)
    return float(acc.mean()), float(acc.std()) if len(acc) > 1 else float("nan"), len(acc)


def findings_07(results: pd.DataFrame, knowledge_table: pd.DataFrame, ablations: pd.DataFrame,
                selection_table: pd.DataFrame) -> list[str]:
    """The notebook's conclusions as sentences with their numbers."""
    lines = []
    if len(knowledge_table):
        wins = int(knowledge_table["knowledge wins"].sum())
        lines.append(f"knowledge-guided prompts beat name-only prompts at low K in {wins} of {len(knowledge_table)} "
                     f"(dataset, K) cases: " + "; ".join(
                         f"{r['dataset']} K={r['K']}: {r['best knowledge-guided']} vs {r['best name-only']} "
                         f"({r['difference']:+.3f})" for _, r in knowledge_table.iterrows()))
    test = results[results["split"] == "test"]
    for name in dict.fromkeys(test["dataset"]):
        d = test[test["dataset"] == name]
        parts = []
        for k in sorted(d["shots"].unique()):
            b, _, nb = _mean_std(d, variant="BiomedCoOp", shots=k)
            c, _, nc = _mean_std(d, variant="CoOp", shots=k)
            if nb and nc:
                parts.append(f"K={k} {b:.3f} vs {c:.3f}")
        if parts:
            lines.append(f"{name}: BiomedCoOp vs CoOp (mean test acc): " + ", ".join(parts))
    for name in dict.fromkeys(ablations["dataset"]):
        d = ablations[(ablations["dataset"] == name) & (ablations["split"] == "test")]
        mad, mad_s, n1 = _mean_std(d, variant="full (MAD, τ=1.5)")
        z, z_s, n2 = _mean_std(d, variant="z-score rule (reference code), τ=1.5")
        if n1 and n2:
            spread = max(np.nan_to_num(mad_s), np.nan_to_num(z_s))
            verdict = "within the seeds' spread" if abs(mad - z) <= spread else "larger than the seeds' spread"
            sel = selection_table[selection_table["dataset"] == name].set_index("rule")
            kept = ""
            if {"mad τ=1.5", "zscore τ=1.5"} <= set(sel.index):
                m, zz = sel.loc["mad τ=1.5"], sel.loc["zscore τ=1.5"]
                kept = (f"; the rules keep {m['kept per batch']} vs {zz['kept per batch']} of {m['prompts']} prompts per "
                        f"batch and prune {m['outliers pruned']} vs {zz['outliers pruned']} known outliers "
                        f"({m['true prompts pruned']} vs {zz['true prompts pruned']} true prompts)")
            lines.append(f"{name}: MAD rule {mad:.3f} ± {mad_s:.3f} vs z-score rule {z:.3f} ± {z_s:.3f} test acc "
                         f"({mad - z:+.3f}, {verdict}){kept}")
    return lines


# --------------------------------------------------------------------------- notebook 08 (CILMP)

def cilmp_table_settings() -> list[Setting]:
    """CILMP's comparison table: zero-shot and the prompt learners, at one K, every seed."""
    keep = ("class names", "description ensemble", "CoOp", "CoCoOp", "KgCoOp", "BiomedCoOp", "CILMP")
    return [replace(s, shots=None) for s in few_shot_settings("paper") if s.variant in keep]


def confusable_pair(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """The two classes most often mistaken for each other (both directions summed)."""
    from sklearn.metrics import confusion_matrix

    n = logits.shape[1]
    cm = confusion_matrix(labels.numpy(), logits.argmax(1).numpy(), labels=list(range(n))).astype(float)
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


def findings_08(table_rows: pd.DataFrame, ablation_rows: pd.DataFrame, n_layers: int) -> list[str]:
    """CILMP against the other prompt learners and its ablations, as sentences with numbers."""
    lines = []
    test = table_rows[table_rows["split"] == "test"]
    for name in dict.fromkeys(test["dataset"]):
        d = test[test["dataset"] == name]
        means = d.groupby("variant")[["acc", "f1_macro", "auc", "kappa"]].mean()
        if "CILMP" not in means.index:
            continue
        others = means.drop(index="CILMP")
        rival = others["acc"].idxmax()
        c, r = means.loc["CILMP"], means.loc[rival]
        lines.append(f"{name}: CILMP acc {c['acc']:.3f} F1 {c['f1_macro']:.3f} AUC {c['auc']:.3f} kappa {c['kappa']:.3f} "
                     f"vs the best other method, {rival}: acc {r['acc']:.3f} F1 {r['f1_macro']:.3f} AUC {r['auc']:.3f} "
                     f"kappa {r['kappa']:.3f}")
    a = ablation_rows[ablation_rows["split"] == "test"]
    if len(a):
        stats = a.groupby("variant")["acc"].agg(["mean", "std"])
        if "CILMP" in stats.index:
            full = stats.loc["CILMP", "mean"]
            parts = [f"{v} {stats.loc[v, 'mean']:.3f} ± {stats.loc[v, 'std']:.3f} ({stats.loc[v, 'mean'] - full:+.3f})"
                     for v in ("w/o RD", "w/o conditional", "w/o intervention") if v in stats.index]
            lines.append(f"{a['dataset'].iloc[0]} ablations (acc; full CILMP {full:.3f} ± {stats.loc['CILMP', 'std']:.3f}): "
                         + ", ".join(parts))
        sweep, defaults = cilmp_sweep(a, n_layers), cilmp_defaults(n_layers)
        for kind, g in sweep.groupby("sweep", sort=False):
            means = g.groupby("value")["acc"].mean()
            lines.append(f"{kind} sweep: " + ", ".join(
                f"{v} {m:.3f}" + (" (full CILMP)" if v == defaults[kind] else "") for v, m in means.items())
                + f"; best {kind} {means.idxmax()}")
    return lines
