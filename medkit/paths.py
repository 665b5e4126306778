"""Where `data/` and `outputs/` are, whatever folder a notebook was started from."""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def project_path(path: str | Path) -> Path:
    """Absolute paths stay; relative ones are anchored at the project root (the folder with
    `notebooks/` and `medkit/`), so JupyterLab started in notebooks/ writes to the same
    `outputs/` as papermill started at the root. Outside a checkout: the working directory."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    root = PROJECT_ROOT if (PROJECT_ROOT / "notebooks").is_dir() else Path.cwd()
    return root / p
