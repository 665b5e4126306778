"""The package is layered: no module imports (at the top or inside a function) from a layer
above its own. A new module must be given a layer here."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "medkit"

LAYERS: list[tuple[str, ...]] = [
    ("config", "atomic", "paths", "profiles", "precision", "distributed"),
    ("data", "backbones", "seg", "features", "metrics", "multilabel_metrics", "losses", "prompts", "protocols", "runs", "plots",
     "knowledge", "tasks", "ledger", "studies"),
    ("methods", "seg.strategies"),
    ("train", "seg.train"),
    ("selection", "experiment", "seg.experiment"),
    ("grids",),
    ("reporting",),
    ("ui", "compare", "search", "seg_search", "sweep"),
    ("workbook", "bench", "__main__", "__init__"),
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def unit(module: str) -> str:
    """`medkit.methods.coop` → `methods`; `medkit.train` → `train`; a sub-module with a layer of
    its own by its dotted name (`medkit.seg.train` → `seg.train`: segmentation's loop sits with
    the training loop, its strategies with the methods, its runner with the runner)."""
    parts = module.split(".")
    if len(parts) > 2 and ".".join(parts[1:3]) in LAYER_OF:
        return ".".join(parts[1:3])
    return parts[1] if len(parts) > 1 else "__init__"


def medkit_imports(path: Path) -> set[str]:
    package = ".".join(("medkit",) + path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("medkit.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module and node.module.startswith("medkit"):
                out.add(node.module)
    return out


MODULES = sorted(p for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_runs_up_a_layer(path):
    own = unit("medkit." + ".".join(path.relative_to(ROOT).with_suffix("").parts))
    assert own in LAYER_OF, f"{own}: give this module a layer in tests/test_layers.py"
    for imported in medkit_imports(path):
        other = unit(imported)
        if other == "__init__" and imported == "medkit":
            continue
        assert other in LAYER_OF, f"{path.name} imports {imported}, which has no layer"
        assert LAYER_OF[other] <= LAYER_OF[own], f"{path.relative_to(ROOT)} ({own}) imports {imported} from a higher layer"


def test_modules_stay_small_or_say_why():
    for path in MODULES:
        text = path.read_text()
        if text.count("\n") > 420:
            assert "Why one module" in text[:3000], f"{path.relative_to(ROOT)} has {text.count(chr(10))} lines and no reason"
