"""Run folders (config, metrics, history, figures, checkpoints) and the shared results table.

Layout under `root` (default "outputs"):

    runs/<YYYYmmdd-HHMMSS>_<notebook>_<tag>[-2]/config.json, metrics.json, history.csv,
                                                figures/, checkpoints/
    results.csv   one row per evaluated (run, dataset, split, method…), appended by all notebooks

A row's fields are fields: `split` is train/val/test (the domain has its own column),
`classes` says which label set was scored (all, base, novel, groups), `protocol` how the
training set was selected (full, few_shot, base_to_novel, hierarchical), `options` the
method's options as JSON and `setting_id` a stable id of (method, options, training
overrides). Files written before these columns existed still load: `read_results` fills
them from the old encodings, and appending to such a file rewrites its header first.
"""
from __future__ import annotations

import csv
import dataclasses
import fcntl
import io
import json
import math
import os
import platform
import re
import subprocess
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from medkit.atomic import atomic_write_text

LEGACY_COLUMNS = [
    "run_id", "notebook", "dataset", "split", "method", "variant", "backbone", "shots", "seed",
    "acc", "top3", "f1_macro", "auc", "kappa", "group_acc", "train_s", "eval_s",
]
# appended after the legacy ones, so a reader of the old layout finds its columns where they were
ROW_FIELDS = ["task", "domain", "protocol", "classes", "setting_id", "options", "train_dataset", "prompt"]
RESULT_COLUMNS = LEGACY_COLUMNS + ROW_FIELDS
TEXT_COLUMNS = ["run_id", "notebook", "dataset", "split", "method", "variant", "backbone", *ROW_FIELDS]
TRACKED_PACKAGES = ("torch", "torchvision", "open_clip_torch", "timm", "transformers",
                    "numpy", "scikit-learn", "pandas", "matplotlib", "monai")
RESULTS_FILE = "results.csv"
STATUS_FILE = "status.json"
RUN_STATES = ("running", "complete", "failed")


# --------------------------------------------------------------------------- environment


def sanitise(name: str) -> str:
    """Characters outside [A-Za-z0-9_.-] become "_" so names are safe in paths on every OS."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name)) or "_"


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions from package metadata (no imports, so torch is not loaded here)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _git(*args: str) -> str | None:
    """Output of a git command in the cwd, or None if git is missing or it fails."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> tuple[str | None, bool | None]:
    """(commit hash, has uncommitted changes) of the repo holding the cwd; Nones outside a repo."""
    if _git("rev-parse", "--is-inside-work-tree") != "true":
        return None, None
    commit = _git("rev-parse", "HEAD")  # None in a repository without commits yet
    status = _git("status", "--porcelain")
    return commit, (None if status is None else bool(status))


def json_safe(obj: Any) -> Any:
    """A strict-JSON copy: Paths → str, numpy → Python, tuples/sets → lists, NaN → null, else repr."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN/inf; other tools must be able to read the files
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((json_safe(v) for v in obj), key=repr)  # sorted: stable files across runs
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return json_safe(dataclasses.asdict(obj))
    return repr(obj)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(json_safe(data), indent=2, sort_keys=False) + "\n")


# --------------------------------------------------------------------------- results table


def _csv_cell(value: Any) -> Any:
    """None → blank; numpy/torch scalars → Python so the CSV holds plain numbers."""
    if value is None:
        return ""
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    return value


def result_columns() -> list[str]:
    """The table's columns: the fixed ones, then any metric a registered task adds."""
    from medkit.tasks import metric_columns

    return RESULT_COLUMNS + [c for c in metric_columns() if c not in RESULT_COLUMNS]


def append_result(root: Path | str, row: Mapping[str, Any]) -> dict[str, Any]:
    """Append one row to root/results.csv under an exclusive lock; header only when new.

    The lock serialises notebooks that run in parallel, so lines never interleave and the
    header is written exactly once. A file with fewer columns (an older layout) is
    rewritten with the full header first, its rows kept and the new columns left blank.
    """
    columns = result_columns()
    unknown = sorted(set(row) - set(columns))
    if unknown:
        raise ValueError(f"unknown result fields {unknown}; allowed: {columns}")
    full = {c: row.get(c) for c in columns}
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([_csv_cell(full[c]) for c in columns])

    path = Path(root) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", newline="") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            if os.fstat(f.fileno()).st_size == 0:
                f.write(",".join(columns) + "\n")
            else:
                _upgrade_header(f, path, columns)
            f.seek(0, os.SEEK_END)
            f.write(buf.getvalue())
            f.flush()
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return full


def _upgrade_header(f: io.TextIOBase, path: Path, columns: list[str]) -> None:
    """Rewrite a table whose header is a prefix of `columns` (an older layout) in place;
    refuse one written with other columns rather than corrupt it."""
    f.seek(0)
    header = f.readline().strip().split(",")
    if header == columns:
        return
    if header != columns[: len(header)]:
        raise ValueError(f"{path} has columns {header}, expected {columns}; move it aside")
    f.seek(0)
    rows = list(csv.reader(f))[1:]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(r + [""] * (len(columns) - len(r)) for r in rows)
    f.seek(0)
    f.truncate()
    f.write(out.getvalue())  # under the lock: no other writer sees the file half rewritten


def run_status(path: Path) -> str:
    status = Path(path) / STATUS_FILE
    if not status.is_file():
        return "complete"  # folders made before runs recorded a status, or rows of no folder
    try:
        return str(json.loads(status.read_text()).get("state", "running"))
    except (json.JSONDecodeError, OSError):
        return "running"  # unreadable: not known to be complete


def read_results(root: Path | str = "outputs", complete_only: bool = True, current: "Run | str | None" = None,
                 say: bool = True) -> pd.DataFrame:
    """All result rows with every column of `result_columns()`; an empty frame when nothing
    was recorded yet. Rows of runs that did not complete (interrupted, failed, or still
    running elsewhere) are left out unless `complete_only=False`, and a line says so; the
    caller's own run (`current`) is kept. Rows of the old layout get their fields from its encodings: a split
    `xray_test` is domain `xray`, split `test`; a split `base`/`novel` is the test split of
    those classes (protocol base_to_novel); a variant `hier. …` is the hierarchical protocol."""
    path = Path(root) / RESULTS_FILE
    columns = result_columns()
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=columns)
    df = pd.read_csv(path, dtype={c: "string" for c in TEXT_COLUMNS})
    if complete_only and len(df):
        own = current.id if isinstance(current, Run) else current
        ids = [i for i in df["run_id"].dropna().unique() if i != own]
        states = {i: run_status(Path(root) / "runs" / str(i)) for i in ids}
        incomplete = [i for i, state in states.items() if state != "complete"]
        if incomplete:
            dropped = df["run_id"].isin(incomplete)
            if say:
                print(f"results: ignoring {int(dropped.sum())} rows of {len(incomplete)} incomplete run(s): "
                      + ", ".join(f"{i} ({states[i]})" for i in incomplete[:5])
                      + (" …" if len(incomplete) > 5 else ""))
            df = df[~dropped].reset_index(drop=True)
    for c in columns:
        if c not in df:
            df[c] = (pd.Series(pd.NA, index=df.index, dtype="string") if c in TEXT_COLUMNS
                     else pd.Series(np.nan, index=df.index, dtype="float64"))
    return legacy_fields(df)[columns + [c for c in df.columns if c not in columns]]


def legacy_fields(df: pd.DataFrame) -> pd.DataFrame:
    """Fill the row fields of rows written before they existed (their `task` is blank)."""
    old = df["task"].isna()
    if not old.any():
        return df
    df = df.copy()
    split = df.loc[old, "split"].astype("string")
    variant = df.loc[old, "variant"].astype("string").fillna("")
    parts = split.str.extract(r"^(?:(?P<domain>[a-z]+)_)?(?P<split>train|val|test)$")
    halves = split.isin(["base", "novel"]).to_numpy(bool)
    hier = variant.str.startswith("hier.").to_numpy(bool)
    stage1 = variant.str.startswith("hier. stage 1").to_numpy(bool)
    few = pd.to_numeric(df.loc[old, "shots"], errors="coerce").notna().to_numpy(bool)
    df.loc[old, "domain"] = parts["domain"]
    df.loc[old, "split"] = parts["split"].where(~halves, "test").fillna(split)
    df.loc[old, "classes"] = np.select([halves, stage1], [split.to_numpy(object), "groups"], "all")
    df.loc[old, "protocol"] = np.select([halves, hier, few], ["base_to_novel", "hierarchical", "few_shot"], "full")
    df.loc[old, "task"] = "single_label"
    return df


# --------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class Run:
    """One notebook run: a folder holding its config, metrics, history, figures and checkpoints."""

    path: Path
    notebook: str
    root: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def figures_dir(self) -> Path:
        return self.path / "figures"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def save_metrics(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Merge into metrics.json (later keys win) and return the merged content."""
        path = self.path / "metrics.json"
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged.update(json_safe(metrics))
        _write_json(path, merged)
        return merged

    def save_figure(self, fig: Any, name: str) -> Path:
        """figures/<name>.png at 120 dpi; the figure stays open so the notebook still shows it."""
        stem = sanitise(name[:-4] if name.lower().endswith(".png") else name)
        path = self.figures_dir / f"{stem}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        return path

    @property
    def status(self) -> str:
        """"running" (made, not finished: interrupted if nothing runs it), "complete" or "failed";
        a folder from before status files existed counts as complete."""
        return run_status(self.path)

    def mark(self, state: str, detail: str = "") -> None:
        if state not in RUN_STATES:
            raise ValueError(f"state={state!r}: use one of {RUN_STATES}")
        _write_json(self.path / STATUS_FILE, {"state": state, "updated": datetime.now().isoformat(timespec="seconds"),
                                              **({"detail": detail} if detail else {})})

    def complete(self) -> None:
        """Mark the run complete: the last cell of every notebook calls this."""
        self.mark("complete")

    def checkpoint_path(self, name: str) -> Path:
        """Path for a checkpoint file inside this run (the file itself is not created)."""
        return self.checkpoints_dir / sanitise(name)

    def add_result(self, **fields: Any) -> dict[str, Any]:
        """Append a row to root/results.csv with this run's id and notebook filled in."""
        return append_result(self.root, {"run_id": self.id, "notebook": self.notebook, **fields})


def _make_unique_dir(parent: Path, name: str) -> Path:
    """Create parent/name, or name-2, name-3… if taken; mkdir is atomic so racing runs differ."""
    for i in range(1, 10_000):
        path = parent / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir(parents=False, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not find a free run folder for {parent / name}")


def _run_meta(run_id: str, notebook: str) -> dict[str, Any]:
    commit, dirty = git_state()
    return {
        "run_id": run_id,
        "notebook": notebook,
        "created": datetime.now().isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def start_run(notebook: str, tag: str, config: Mapping[str, Any], root: Path | str = "outputs") -> Run:
    """Create a fresh run folder and write config.json (the config plus a `_meta` block)."""
    root = Path(root)
    runs_dir = root / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = _make_unique_dir(runs_dir, f"{stamp}_{sanitise(notebook)}_{sanitise(tag)}")
    (path / "figures").mkdir()
    (path / "checkpoints").mkdir()
    run = Run(path=path, notebook=notebook, root=root)
    _write_json(path / "config.json", {**json_safe(dict(config)), "_meta": _run_meta(run.id, notebook)})
    run.mark("running")
    return run


def open_run(path: Path | str, config: Mapping[str, Any] | None = None) -> Run:
    """Re-open a run folder made by the workbook runner and merge the notebook's resolved
    parameters into its config.json (the runner only knew the profile)."""
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path} is not a run folder (no config.json)")
    current = json.loads(cfg_path.read_text())
    run = Run(path=path, notebook=current.get("_meta", {}).get("notebook", path.name), root=path.parent.parent)
    if config:
        _write_json(cfg_path, {**current, **json_safe(dict(config))})
    return run


def pinned_run(folder: Path | str, notebook: str, tag: str, config: Mapping[str, Any],
               root: Path | str = "outputs") -> tuple[Run, str]:
    """The run folder a command keeps for one job (a comparison, a search), and the state it
    was in ("new" when made now): `folder/run.txt` points at it, so the same command run again
    reopens it and resumes. The pointer is relative to `folder`: a moved outputs/ still resumes."""
    folder = Path(folder)
    pointer = folder / "run.txt"
    if pointer.is_file():
        path = (folder / pointer.read_text().strip()).resolve()
        if (path / "config.json").is_file():
            run = open_run(path, config)
            before = run.status
            run.mark("running")
            return run, before
    run = start_run(notebook, tag, config, root=root)
    folder.mkdir(parents=True, exist_ok=True)
    pointer.write_text(os.path.relpath(run.path.resolve(), folder.resolve()) + "\n")
    return run, "new"


def notebook_run(notebook: str, tag: str, config: Mapping[str, Any], run_dir: str | Path = "",
                 root: Path | str = "outputs") -> Run:
    """What a notebook calls: the runner's folder when headless, a fresh one in JupyterLab."""
    return open_run(run_dir, config) if run_dir else start_run(notebook, tag, config, root)
