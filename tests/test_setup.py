"""The set-up files: requirements.lock pins exactly (with hashes) everything requirements.txt asks for."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
RANGES = ROOT / "requirements.txt"


def logical_lines(path: Path) -> list[str]:
    """Requirement lines with `\\` continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse(path: Path) -> dict[str, tuple[Requirement, list[str]]]:
    reqs = {}
    for line in logical_lines(path):
        if line.startswith("-"):  # an option line (-e, -r, --index-url …), not a named requirement
            reqs.setdefault("<options>", (None, []))[1].append(line)
            continue
        spec, *opts = line.split(" --")
        req = Requirement(spec.strip())
        reqs[canonicalize_name(req.name)] = (req, ["--" + o.strip() for o in opts])
    return reqs


@pytest.fixture(scope="module")
def lock():
    return parse(LOCK)


def test_lock_has_a_header_saying_how_it_was_made():
    head = LOCK.read_text().splitlines()[:12]
    assert head and all(line.startswith("#") for line in head[:3])
    text = "\n".join(head)
    assert "uv pip compile requirements.txt" in text and "make lock" in text
    assert re.search(r"CPython 3\.\d+ on Linux x86_64", text)


def test_every_lock_entry_is_pinned_exactly_with_hashes(lock):
    assert "<options>" not in lock, f"option lines in the lock (pip's hash mode refuses -e): {lock['<options>'][1]}"
    assert len(lock) > 50  # torch alone brings the nvidia-*/triton wheels
    for name, (req, opts) in lock.items():
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version, f"{name}: {req}"
        assert any(o.startswith("--hash=sha256:") for o in opts), f"{name} has no --hash"


def test_every_requirement_of_the_ranges_is_in_the_lock_within_its_range(lock):
    ranges = parse(RANGES)
    ranges.pop("<options>", None)
    assert {"torch", "torchvision", "open-clip-torch", "timm", "transformers", "papermill", "ipykernel"} <= set(ranges)
    missing = sorted(set(ranges) - set(lock))
    assert not missing, f"in requirements.txt but not in requirements.lock (run `make lock`): {missing}"
    for name, (req, _) in ranges.items():
        pinned = next(iter(lock[name][0].specifier)).version
        assert req.specifier.contains(pinned, prereleases=True), f"lock pins {name}=={pinned}, outside {req}"


def test_torch_brings_its_linux_cuda_wheels(lock):
    assert "triton" in lock and any(name.startswith("nvidia-") for name in lock)


def test_make_installs_the_lock_by_default_and_registers_the_kernel():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^REQUIREMENTS \?= requirements\.lock$", makefile, re.M)
    assert "-m medkit kernel" in makefile and "--no-deps -e ." in makefile
