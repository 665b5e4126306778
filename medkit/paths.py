"""Where `data/` and `outputs/` are, whatever folder a notebook was started from; reading the
small YAML / JSON files users give the commands."""
from __future__ import annotations

from pathlib import Path
from typing import Any

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


def read_yaml_or_json(path: str | Path) -> Any:
    """A small file a user wrote for a command (a search space, notebook parameter sets):
    JSON by its `.json` suffix, else YAML (which also reads JSON)."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() == ".json":
        import json

        return json.loads(text)
    import yaml

    return yaml.safe_load(text)
