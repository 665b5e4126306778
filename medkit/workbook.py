"""Run the numbered notebooks headless with papermill, in order, one run folder each.

Each notebook gets a run folder made here (so the executed copy can live in it), and
parameters: the profile, `interactive=False`, the run folder and the data/outputs roots.
The first failure stops the workbook with the notebook and cell named.
"""
from __future__ import annotations

import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from medkit.profiles import get_profile
from medkit.runs import start_run

KERNEL_NAME = "medkit"
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
    (another interpreter, other packages) can never run the workbook by accident.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name="medkit (.venv)", prefix=sys.prefix)
    return KERNEL_NAME


def run_workbook(profile: str = "tiny", only: list[str] | None = None, start: str | None = None,
                 notebooks_dir: Path | str = "notebooks", outputs_root: Path | str = "outputs",
                 data_root: Path | str = "data", extra_parameters: dict | None = None) -> list[NotebookResult]:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    prof = get_profile(profile)
    kernel = ensure_kernel()
    outputs_root, notebooks_dir = Path(outputs_root), Path(notebooks_dir)
    executed_dir = outputs_root / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for book in list_notebooks(notebooks_dir, only, start):
        run = start_run(book.stem, profile, {"profile": prof.as_dict(), "notebook": book.name}, root=outputs_root)
        out = run.path / book.name
        params = {"profile": profile, "interactive": False, "run_dir": str(run.path),
                  "outputs_root": str(outputs_root), "data_root": str(data_root), **(extra_parameters or {})}
        print(f"▶ {book.name} (profile {profile}) → {run.path}", flush=True)
        t0 = time.time()
        try:
            pm.execute_notebook(str(book), str(out), parameters=params, kernel_name=kernel,
                                execution_timeout=prof.cell_timeout_s, progress_bar=False, log_output=False, language="python",
                                cwd=str(Path.cwd()))
        except PapermillExecutionError as e:
            raise WorkbookError(f"{book.name} failed in cell {e.cell_index} (execution count {e.exec_count}): "
                                f"{e.ename}: {e.evalue}\n  executed copy with the traceback: {out}") from None
        except Exception as e:  # kernel death, timeout, bad notebook JSON
            raise WorkbookError(f"{book.name} failed: {type(e).__name__}: {e}\n  partial copy: {out}") from None
        shutil.copyfile(out, executed_dir / book.name)
        results.append(NotebookResult(book, out, time.time() - t0))
        print(f"  done in {results[-1].seconds:.0f} s", flush=True)
    return results


def summary(results: list[NotebookResult], outputs_root: Path | str = "outputs") -> str:
    root = Path(outputs_root)
    lines = [f"{r.notebook.name:32s} {r.seconds:7.0f} s   {r.executed.parent}" for r in results]
    lines += ["", f"executed notebooks: {root / 'executed'}/", f"run folders:        {root / 'runs'}/",
              f"results table:      {root / 'results.csv'}"]
    return "\n".join(lines)
