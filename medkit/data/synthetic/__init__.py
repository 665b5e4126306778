"""The embedded synthetic world: cue vocabulary, renderer, dataset writer."""
from .cues import ClassSpec, Cues, description_ensemble, implants45_classes, ortho12_classes
from .render import DOMAINS, render
from .world import DATASETS, WORLD_VERSION, WorldSpec, build, spec_for

__all__ = ["ClassSpec", "Cues", "DATASETS", "DOMAINS", "WORLD_VERSION", "WorldSpec", "build",
           "description_ensemble", "implants45_classes", "ortho12_classes", "render", "spec_for"]
