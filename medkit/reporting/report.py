"""One report over every notebook: each seed's main tables in the paper's layout with the
paper's published numbers beside medkit's on the same rows, the findings tables of the
notebooks, a figure gallery and the environment; `export_html` writes it as one HTML file
with the figures embedded (no network needed to open it).

The published numbers are `published.csv` next to this file: one row per printed number,
with the seed, table, the paper's row label, the medkit method · variant that corresponds
(empty where none does; a method without a variant names the family of a row medkit does not run), the metric as a medkit column, the value as a fraction and the
seed line it was read from. medkit's numbers are the test rows of the latest run of each
setting in `results.csv`, mean ± std over seeds.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from medkit.protocols import harmonic_mean
from medkit.reporting.tables import mean_std

PUBLISHED = Path(__file__).with_name("published.csv")
SEEDS = {"implant": "The implant study (COL828 report): OrthoNet and pacemakers — notebooks 01–06",
         "biomedcoop": "BiomedCoOp (CVPR 2025): few-shot and base-to-novel averages — notebook 07",
         "cilmp": "CILMP (IEEE TMI 2025): comparison and ablations — notebook 08",
         "pspg": "PsPG (PRCV 2024): multi-label chest radiographs — notebook 09",
         "vlsm": "VLSM prompt tuning (TuneVLSeg poster): fine-tuning Dice — notebook 10"}
# seeds whose paper trains on full data where medkit's notebook runs a K-shot protocol (08: K=16):
# their rows match on method and variant whatever the protocol and K
LOOSE_PROTOCOL = {"cilmp"}
NOT_RUN = "—"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def load_published(path: Path | str = PUBLISHED) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"medkit_dataset": str, "method": str, "variant": str})
    for col in ("medkit_dataset", "method", "variant"):
        df[col] = df[col].fillna("")
    return df


def dataset_name(dataset_id: str) -> str:
    """`synth_ortho12-1a2b3c4d` → `synth_ortho12`: a dataset's id carries a fingerprint of its
    files after the name; the published rows name the stand-in without it."""
    head, _, tail = str(dataset_id).rpartition("-")
    return head if head and len(tail) == 8 and all(c in "0123456789abcdef" for c in tail) else str(dataset_id)


LATEST_KEY = ["setting", "name", "train_dataset", "backbone", "protocol", "classes", "shots"]


def _test_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The test rows the report reads: the newest run of each setting on each dataset,
    backbone, protocol, label set and K (an older run of the same setting elsewhere — another
    notebook's K, another dataset — stays); `python -m medkit compare` runs are its own report."""
    df = results[results["split"] == "test"].copy()
    if "notebook" in df:
        df = df[~df["notebook"].fillna("").astype(str).str.startswith("compare_")]
    if df.empty:
        return df
    df["classes"] = df["classes"].fillna("").replace("", "all") if "classes" in df else "all"
    df["name"] = df["dataset"].map(dataset_name)
    if "run_id" in df:
        ident = df["method"].astype(str) + "|" + df["variant"].astype(str) + "|" + (df["options"].astype(str) if "options" in df else "")
        df["setting"] = df["setting_id"].fillna(ident) if "setting_id" in df else ident
        for col in LATEST_KEY:
            if col not in df:
                df[col] = ""
        keys = df[LATEST_KEY].astype(str)
        newest = df.groupby([keys[c] for c in LATEST_KEY], dropna=False)["run_id"].transform("max")
        df = df[df["run_id"] == newest]
    return df


def averaged(pub: pd.Series) -> bool:
    """A paper's average over its own datasets: compared with medkit's average over its datasets."""
    return str(pub["paper_dataset"]).lower().startswith("average")


# The CPU profiles cannot download ImageNet-21k, CLIP or DINOv2 weights: notebook 01 fine-tunes
# offline stand-ins (a cue-supervised trunk for supervised ImageNet-21k pretraining, MiniCLIP's
# image tower for CLIP's; DINOv2 has none). A paper row of those weights is matched to its
# stand-in's rows when the weights themselves did not run, and the setting column says so.
STANDINS = {"vit_finetune": {"in21k": ("supervised", "supervised-smoke"), "clip": ("miniclip", "miniclip-smoke")}}


def _variants(pub: pd.Series) -> list[str]:
    """The paper row's variant, then its stand-ins' (`in21k, full` → `supervised, full`, …)."""
    weights, _, rest = pub["variant"].partition(", ")
    return [pub["variant"], *(f"{w}, {rest}" for w in STANDINS.get(pub["method"], {}).get(weights, ()))]


def _matching(rows: pd.DataFrame, pub: pd.Series, anywhere: bool = False) -> pd.DataFrame:
    """medkit's test rows for one published number: the method on the paper dataset's stand-in
    (every dataset for a paper's average, or with `anywhere`; none for a dataset without a
    stand-in), its protocol and K, then the exact variant or else its offline stand-in."""
    if rows.empty or not (pub["method"] and pub["variant"]):  # a method family but no setting: no counterpart
        return rows.iloc[:0]
    df = rows[rows["method"] == pub["method"]]
    if pub["medkit_dataset"] and not anywhere:
        df = df[df["name"] == pub["medkit_dataset"]]
    elif not (averaged(pub) or anywhere):
        return rows.iloc[:0]
    if pub["seed"] in LOOSE_PROTOCOL:  # full-data paper, K-shot notebook: medkit's largest K per dataset
        k = pd.to_numeric(df["shots"], errors="coerce").fillna(np.inf)
        df = df[k == k.groupby(df["name"]).transform("max")]
    else:
        df = df[df["protocol"] == pub["protocol"]]
        if not pd.isna(pub["shots"]):
            df = df[pd.to_numeric(df["shots"], errors="coerce") == float(pub["shots"])]
    for variant in _variants(pub):  # the exact setting first, a stand-in only when it did not run
        if (df["variant"] == variant).any():
            return df[df["variant"] == variant]
    return rows.iloc[:0]


def _per_seed(df: pd.DataFrame, metric: str) -> pd.Series:
    """The metric per seed, averaged over datasets first (a paper's average over datasets is
    set against medkit's; its spread is still the seeds')."""
    values = pd.to_numeric(df[metric], errors="coerce") if metric in df else pd.Series(np.nan, index=df.index)
    seeds = df["seed"].fillna(-1) if "seed" in df else pd.Series(-1, index=df.index)
    return values.groupby(seeds).mean().dropna()


def medkit_cell(rows: pd.DataFrame, pub: pd.Series, anywhere: bool = False) -> tuple[float, float, int]:
    """(mean, std over seeds, n seeds) of medkit's test rows for one published number; n = 0
    when none ran. `hm` is the harmonic mean of base and novel accuracy."""
    df = _matching(rows, pub, anywhere)
    if df.empty:
        return np.nan, np.nan, 0
    if pub["metric"] == "hm":
        base, novel = (_per_seed(df[df["classes"] == c], "acc") for c in ("base", "novel"))
        if base.empty or novel.empty:
            return np.nan, np.nan, 0
        return harmonic_mean(base.mean(), novel.mean()), np.nan, int(min(len(base), len(novel)))
    values = _per_seed(df[df["classes"] == pub["classes"]], pub["metric"])
    if values.empty:
        return np.nan, np.nan, 0
    return float(values.mean()), float(values.std()) if len(values) > 1 else np.nan, int(len(values))


def _column(pub: pd.Series, several_datasets: bool, several_k: bool) -> str:
    parts = [pub["paper_dataset"]] if several_datasets else []
    if several_k and not pd.isna(pub["shots"]):
        parts.append(f"K={int(pub['shots'])}")
    if pub["classes"] not in ("all", ""):
        parts.append(pub["classes"])
    parts.append(pub["metric"])
    return " · ".join(parts)


def paper_table(published: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """One paper table: the paper's rows (its own labels), and per column (dataset, K, metric
    as the paper spreads them) the published number beside medkit's mean ± std (n seeds).
    A paper dataset without a stand-in gets no medkit number; the row's numbers on the
    embedded world's datasets (mean over them) stand in `embedded world · …` columns after the
    paper's, with no published number beside them."""
    several_datasets = published["paper_dataset"].nunique() > 1
    several_k = published["shots"].nunique() > 1
    cells: dict[str, dict[tuple[str, str], str]] = {}
    settings: dict[str, tuple[str, set]] = {}
    matched = 0
    for _, pub in published.iterrows():
        col = _column(pub, several_datasets, several_k)
        row = pub["paper_method"]
        mean, std, n = medkit_cell(rows, pub)
        matched += n > 0
        cells.setdefault(row, {})[(col, "paper")] = f"{pub['value']:.3f}"
        no_standin = bool(pub["method"] and pub["variant"] and not pub["medkit_dataset"] and not averaged(pub))
        cells[row][(col, "medkit")] = (f"{mean_std(mean, std)} (n={n})" if n else "no stand-in" if no_standin else NOT_RUN)
        if no_standin:
            world = " · ".join(["embedded world", *_column(pub, False, several_k).split(" · ")])
            if (world, "medkit") not in cells[row]:
                m, sd, k = medkit_cell(rows, pub, anywhere=True)
                cells[row][(world, "paper")] = ""
                cells[row][(world, "medkit")] = f"{mean_std(m, sd)} (n={k})" if k else NOT_RUN
        if pub["method"] and pub["variant"]:
            ran = _matching(rows, pub, anywhere=no_standin)
            variant = ran["variant"].iloc[0] if len(ran) else pub["variant"]
            note = f" (stand-in for {pub['variant'].partition(', ')[0]})" if variant != pub["variant"] else ""
            where = pub["medkit_dataset"] or ("mean over medkit's datasets" if averaged(pub) else "the embedded world")
            label, places = settings.setdefault(row, (f"{pub['method']} · {variant}{note}", set()))
            places.add(where)
        else:
            settings.setdefault(row, (f"no counterpart{f' (a {pub.method} variant medkit does not run)' if pub['method'] else ''}", set()))
    table = pd.DataFrame.from_dict(cells, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    cols = list(dict.fromkeys(c for c, _ in table.columns))
    cols = [c for c in cols if not c.startswith("embedded world")] + [c for c in cols if c.startswith("embedded world")]
    table = table[[(c, s) for c in cols for s in ("paper", "medkit")]].fillna("")
    table.insert(0, ("", "medkit setting"), [settings[r][0] + (f" on {', '.join(sorted(settings[r][1]))}" if settings[r][1] else "")
                                             for r in table.index])
    table.index.name = "paper's row"
    table.attrs["matched"] = matched  # published numbers with a medkit number beside them
    return table


@dataclass
class SeedTables:
    seed: str
    title: str
    tables: list[tuple[str, pd.DataFrame]]  # (table id · caption, table)
    matched: int  # published numbers with a medkit number beside them
    total: int


def seed_tables(results: pd.DataFrame, published: pd.DataFrame | None = None) -> list[SeedTables]:
    """Every seed's tables with medkit's numbers beside the paper's, in the seeds' order."""
    published = load_published() if published is None else published
    rows = _test_rows(results)
    out = []
    for seed, title in SEEDS.items():
        pub = published[published["seed"] == seed]
        tables, matched = [], 0
        for table_id, part in pub.groupby("table", sort=False):
            t = paper_table(part, rows)
            tables.append((f"{table_id} · {part['caption'].iloc[0]}", t))
            matched += t.attrs["matched"]
        out.append(SeedTables(seed, title, tables, matched, len(pub)))
    return out


# --------------------------------------------------------------------------- run folders


@dataclass
class NotebookRun:
    notebook: str
    path: Path
    config: dict
    metrics: dict
    figures: list[Path] = field(default_factory=list)


def latest_runs(outputs_root: Path | str) -> dict[str, NotebookRun]:
    """The newest complete run folder of every notebook (run ids start with a timestamp)."""
    from medkit.runs import run_status

    out: dict[str, NotebookRun] = {}
    for path in sorted((Path(outputs_root) / "runs").glob("*/config.json")):
        folder = path.parent
        if run_status(folder) != "complete":
            continue
        config = json.loads(path.read_text())
        notebook = config.get("_meta", {}).get("notebook") or folder.name.split("_", 1)[-1]
        if notebook.startswith(("compare_", "search_", "sweep_", "run_")):  # the commands' own folders, not notebooks
            continue
        metrics_path = folder / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        out[notebook] = NotebookRun(notebook, folder, config, metrics, sorted((folder / "figures").glob("*.png")))
    return dict(sorted(out.items()))


def findings_tables(runs: Mapping[str, NotebookRun]) -> dict[str, pd.DataFrame]:
    """Every notebook's findings, as its run folder recorded them: `findings.csv` (06) or the
    `findings` entry of `metrics.json` (lines of text, or table records), each row saying which
    profile decided it (a tiny-budget finding is not a full-budget one)."""
    out = {}
    for name, run in runs.items():
        csv = run.path / "findings.csv"
        found = run.metrics.get("findings")
        if csv.is_file():
            table = pd.read_csv(csv)
        elif found:
            table = pd.DataFrame(found) if isinstance(found[0], dict) else pd.DataFrame({"finding": found})
        else:
            continue
        table.insert(0, "profile", (run.config.get("profile") or {}).get("name", ""))
        out[name] = table
    return out


GALLERY_FIRST = ("shots_vs_acc", "confusion", "tsne", "curves", "base_to_novel", "overlays", "zeroshot", "per_finding", "roc")


def gallery(runs: Mapping[str, NotebookRun], per_notebook: int = 4) -> dict[str, list[Path]]:
    """A few figures of every notebook, the kinds people look at first."""
    def rank(p: Path) -> tuple[int, str]:
        return next((i for i, k in enumerate(GALLERY_FIRST) if p.stem.startswith(k)), len(GALLERY_FIRST)), p.stem

    return {name: sorted(run.figures, key=rank)[:per_notebook] for name, run in runs.items() if run.figures}


def environment(runs: Mapping[str, NotebookRun], packages: Sequence[str] = ("torch", "open_clip_torch", "timm",
                                                                                "transformers", "scikit-learn", "monai")
                ) -> pd.DataFrame:
    """Per notebook run: profile, backbone, git commit (dirty or not), when, and package versions."""
    rows = []
    for name, run in runs.items():
        meta, prof = run.config.get("_meta", {}), run.config.get("profile", {})
        versions = meta.get("packages", {})
        rows.append({"notebook": name, "run": run.path.name, "profile": prof.get("name", ""),
                     "backbone": prof.get("backbone", ""), "device": prof.get("device", ""),
                     "git commit": (meta.get("git_commit") or "")[:10] + (" (dirty)" if meta.get("git_dirty") else ""),
                     **{p: versions.get(p, "") for p in packages}})
    df = pd.DataFrame(rows)
    return df.loc[:, [c for c in df.columns if (df[c].astype(str) != "").any()]] if len(df) else df  # untracked packages: no column


# --------------------------------------------------------------------------- HTML


def export_html(notebook: Path | str, html: Path | str) -> Path:
    """The executed notebook as one HTML page without its code cells: figures are embedded
    PNGs, and no script or style sheet is fetched from the network (nbconvert's CDN links for
    require.js and MathJax are dropped: the report has neither widgets nor formulas)."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, embed_images=True)
    exporter.mathjax_url = ""
    exporter.require_js_url = ""
    if hasattr(exporter, "mermaid_js_url"):
        exporter.mermaid_js_url = ""
    nb = nbformat.read(str(notebook), as_version=4)
    # a page has no kernel: widgets (an explorer of an interactive run) would only make it fetch
    # the widget manager from a CDN to draw nothing
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if WIDGET_MIME not in o.get("data", {})]
    body, _ = exporter.from_notebook_node(nb)
    body = strip_remote_assets(body)
    html = Path(html)
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(body, encoding="utf-8")
    return html


def strip_remote_assets(html: str) -> str:
    """Drop <script src=http…> and <link href=http…> tags: opening the page fetches nothing."""
    import re

    html = re.sub(r"<script[^>]*\bsrc=[\"'](?:https?://[^\"']*)?[\"'][^>]*>\s*</script>", "", html, flags=re.I)
    return re.sub(r"<link[^>]*\bhref=[\"']https?://[^>]*>", "", html, flags=re.I)


def remote_assets(html: str) -> list[str]:
    """The addresses a browser would fetch to show the page (scripts, styles, images)."""
    import re

    return re.findall(r"<(?:script|img|link|iframe)[^>]*\b(?:src|href)=[\"'](https?://[^\"']+)", html, flags=re.I)


def style(table: pd.DataFrame) -> Any:
    """Paper and medkit columns told apart at a glance (medkit's cells shaded)."""
    medkit_cols = [c for c in table.columns if isinstance(c, tuple) and c[1] == "medkit"]
    return table.style.set_properties(subset=medkit_cols, **{"background-color": "#eef5ff"})
