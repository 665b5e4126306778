"""Run the numbered notebooks headless with papermill, in order, one run folder each.

Each notebook gets a run folder made here (so the executed copy can live in it), and
parameters: the profile, `interactive=False`, the run folder and the data/outputs roots.
The first failure stops the workbook with the notebook and cell named, and marks its run
folder failed; `outputs/workbook.json` records each notebook's state so `--resume`
continues from the last finished run. One-off builds (MiniCLIP, the supervised stand-in)
happen before the first notebook, outside papermill's cell timeout.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from medkit.atomic import atomic_write_text
from medkit.backbones import build_offline
from medkit.profiles import get_profile
from medkit.runs import Run, open_run, start_run

KERNEL_NAME = "medkit"
STATE_FILE = "workbook.json"  # which notebooks of the last workbook finished, and their run folders
NOTEBOOK_RE = re.compile(r"^(\d\d)_[\w-]+\.ipynb$")


@dataclass
class NotebookResult:
    notebook: Path
    executed: Path
    seconds: float


class WorkbookError(RuntimeError):
    pass


def list_notebooks(folder: Path, only: list[str] | None = None, start: str | None = None) -> list[Path]:
    books = sorted(p for p in folder.glob("*.ipynb") if NOTEBOOK_RE.match(p.name))
    if only:
        books = [p for p in books if p.name[:2] in only]
    if start:
        books = [p for p in books if p.name[:2] >= start]
    if not books:
        raise WorkbookError(f"no notebooks NN_*.ipynb in {folder} match only={only} from={start}")
    return books


def ensure_kernel() -> str:
    """Register this interpreter as the `medkit` Jupyter kernel inside its own prefix.

    papermill is always given this kernel by name, so a user's global `python3` kernel
    (another interpreter, other packages) can never run the workbook by accident. The
    kernel found must live in this prefix: a `medkit` kernel of another environment (whose
    python may resolve through symlinks to the same base interpreter) is not ours.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        ours = Path(spec.resource_dir).resolve().is_relative_to(Path(sys.prefix).resolve())
        if ours and Path(spec.argv[0]) == Path(sys.executable):
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name="medkit (.venv)", prefix=sys.prefix)
    return KERNEL_NAME


def _save_state(path: Path | None, state: dict) -> None:
    if path is None:
        return
    atomic_write_text(path, json.dumps(state, indent=1) + "\n")


def _resume_state(path: Path, profile: str | None) -> dict:
    if not path.is_file():
        raise WorkbookError(f"nothing to resume: {path} not found (no workbook has run with these outputs)")
    state = json.loads(path.read_text())
    if profile is not None and profile != state["profile"]:
        raise WorkbookError(f"the workbook to resume ran profile {state['profile']!r}, not {profile!r}: "
                            f"run --resume --profile {state['profile']}")
    return state


def run_workbook(profile: str | None = "tiny", only: list[str] | None = None, start: str | None = None,
                 notebooks_dir: Path | str = "notebooks", outputs_root: Path | str = "outputs",
                 data_root: Path | str = "data", extra_parameters: dict | None = None,
                 resume: bool = False, prebuild: bool = True, record_state: bool = True) -> list[NotebookResult]:
    """Run the notebooks in order; `resume=True` continues the last workbook of `outputs_root`
    (`workbook.json`): finished notebooks are skipped, the interrupted one runs again in its
    own run folder (its finished runs are restored, its interrupted run resumes from its
    last epoch, no row is written twice), the rest run as usual. `prebuild=False` skips
    building the profile's offline backbones first (notebooks then build what they use);
    `record_state=False` leaves `workbook.json` (what `--resume` continues) as it was, for a
    notebook run on its own (`python -m medkit report`)."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    outputs_root, notebooks_dir = Path(outputs_root), Path(notebooks_dir)
    state_path = outputs_root / STATE_FILE if record_state else None
    if resume and state_path is None:
        raise WorkbookError("resume continues the recorded workbook: record_state must be True")
    if resume:
        state = _resume_state(state_path, profile)
        profile = state["profile"]
        books = [notebooks_dir / name for name in state["notebooks"]]
    else:
        profile = profile or "tiny"
        books = list_notebooks(notebooks_dir, only, start)
        state = {"profile": profile, "started": datetime.now().isoformat(timespec="seconds"),
                 "notebooks": {b.name: {"state": "pending"} for b in books}}
    prof = get_profile(profile)
    kernel = ensure_kernel()
    executed_dir = outputs_root / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    _save_state(state_path, state)
    # one-off pretrainings (MiniCLIP, supervised stand-ins) here, not under a cell timeout
    built = build_offline([prof.backbone, *prof.vit_weights], data_root, progress="lines") if prebuild else []
    if built:
        print(f"offline backbones ready: {', '.join(built)}", flush=True)
    results = []
    for book in books:
        entry = state["notebooks"][book.name]
        if resume and entry["state"] == "complete":
            print(f"✓ {book.name}: complete in {entry['run_dir']}", flush=True)
            continue
        if resume and entry.get("run_dir") and (Path(entry["run_dir"]) / "config.json").is_file():
            run = open_run(entry["run_dir"])
            run.mark("running")
            print(f"▶ {book.name} (profile {profile}) resumes in {run.path}", flush=True)
        else:
            run = start_run(book.stem, profile, {"profile": prof.as_dict(), "notebook": book.name}, root=outputs_root)
            print(f"▶ {book.name} (profile {profile}) → {run.path}", flush=True)
        entry.update(state="running", run_dir=str(run.path))
        _save_state(state_path, state)
        out = run.path / book.name
        params = {"profile": profile, "interactive": False, "run_dir": str(run.path),
                  "outputs_root": str(outputs_root), "data_root": str(data_root), **(extra_parameters or {})}
        t0 = time.time()
        try:
            pm.execute_notebook(str(book), str(out), parameters=params, kernel_name=kernel,
                                execution_timeout=prof.cell_timeout_s, progress_bar=False, log_output=False, language="python",
                                cwd=str(Path.cwd()))
        except PapermillExecutionError as e:
            _failed(run, entry, state_path, state, f"{e.ename}: {e.evalue}")
            raise WorkbookError(f"{book.name} failed in cell {e.cell_index} (execution count {e.exec_count}): "
                                f"{e.ename}: {e.evalue}\n  executed copy with the traceback: {out}") from None
        except Exception as e:  # kernel death, timeout, bad notebook JSON
            _failed(run, entry, state_path, state, f"{type(e).__name__}: {e}")
            raise WorkbookError(f"{book.name} failed: {type(e).__name__}: {e}\n  partial copy: {out}") from None
        if run.status != "complete":
            run.complete()  # a notebook without the closing `run.complete()` cell
        shutil.copyfile(out, executed_dir / book.name)
        html = export_target(book)
        if html:  # the report notebook: one page without code, figures embedded
            from medkit.reporting.report import export_html

            try:
                print(f"  report → {export_html(out, outputs_root / html)}", flush=True)
            except Exception as e:
                _failed(run, entry, state_path, state, f"HTML export: {type(e).__name__}: {e}")
                raise WorkbookError(f"{book.name} ran, but its export to {outputs_root / html} failed: "
                                    f"{type(e).__name__}: {e}\n  executed copy: {out}") from None
        results.append(NotebookResult(book, out, time.time() - t0))
        entry.update(state="complete", seconds=round(results[-1].seconds))
        _save_state(state_path, state)
        print(f"  done in {results[-1].seconds:.0f} s", flush=True)
    return results


def export_target(book: Path) -> str | None:
    """The HTML file (under the outputs root) a notebook asks to be exported to, in its
    metadata: `{"medkit": {"export_html": "report.html"}}`."""
    meta = json.loads(book.read_text()).get("metadata", {})
    return meta.get("medkit", {}).get("export_html")


def _failed(run: Run, entry: dict, state_path: Path | None, state: dict, detail: str) -> None:
    run.mark("failed", detail[:500])
    entry.update(state="failed")
    _save_state(state_path, state)

def summary(results: list[NotebookResult], outputs_root: Path | str = "outputs") -> str:
    root = Path(outputs_root)
    lines = [f"{r.notebook.name:32s} {r.seconds:7.0f} s   {r.executed.parent}" for r in results]
    lines += ["", f"executed notebooks: {root / 'executed'}/", f"run folders:        {root / 'runs'}/",
              f"results table:      {root / 'results.csv'}"]
    return "\n".join(lines)
