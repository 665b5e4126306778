"""What goes wrong when loading real checkpoints, said in the user's terms: the file, the keys,
the architecture, and what to do, instead of a stack trace from deep inside a library."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

_SHOW = 12  # keys listed per kind; the count says how many more


def _listing(title: str, keys: Sequence[str]) -> str:
    if not keys:
        return ""
    more = f" … and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return f"\n  {title} ({len(keys)}): " + ", ".join(keys[:_SHOW]) + more


class CheckpointMismatch(ValueError):
    """A state dict that does not fit its architecture. Nothing is loaded: medkit never falls
    back to `strict=False` (the missing tensors would stay randomly initialised)."""

    def __init__(self, source: Path | str, architecture: str, missing: Sequence[str] = (),
                 unexpected: Sequence[str] = (), mismatched: Sequence[str] = ()) -> None:
        self.source, self.architecture = str(source), architecture
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        super().__init__(
            f"{source} does not fit the architecture {architecture}; nothing was loaded"
            + _listing("missing: in the model, not in the file", self.missing)
            + _listing("unexpected: in the file, not in the model", self.unexpected)
            + _listing("shape mismatch", self.mismatched)
            + "\n  check the architecture name (`python -m medkit models` lists each entry's) or the file")


class BackboneNotAvailable(FileNotFoundError):
    """Weights that are neither in a local folder nor in the HuggingFace cache (offline), or
    behind a gate the user has not passed."""
