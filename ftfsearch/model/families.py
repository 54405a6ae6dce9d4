"""One table from a model family to everything it needs: how its saved directory loads, which
training task trains it, and its defaults (as open_clip's factory and torchgeo's model API keep
theirs). ``model/loading.py``, ``training/train.py`` and the CLI read it; a new family is one
entry here with its loader, and its training task registered under the same name in
``training/train.py`` (``@trains(name)``): the model layer never imports training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ftfsearch.errors import BadInput

if TYPE_CHECKING:  # the CLI reads the table for its help: no torch at its start
    import torch

    from ftfsearch.model.base import Encoder


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    """What it is, for ``--arch``'s help."""
    load: Callable[[Path, dict[str, Any], "torch.device"], "Encoder"]
    """Load a saved model directory of this family (its ``ftf_config.json`` already read)."""
    lr: float
    """Default peak learning rate of the heads."""


def _load_pretrained(root: Path, raw: dict[str, Any], device: torch.device) -> Encoder:
    from ftfsearch.model.pretrained import load_pretrained_encoder

    return load_pretrained_encoder(root, raw, device)


def _load_scratch(root: Path, raw: dict[str, Any], device: torch.device) -> Encoder:
    from ftfsearch.model.ftf import load_ftf_encoder

    return load_ftf_encoder(root, device)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("pretrained", "FTF on the pinned EfficientNet-Lite0 and MiniLM towers", _load_pretrained, 1e-3),
    Family("scratch", "the small FTF from nothing", _load_scratch, 2e-3),
)}
SAVED_WITHOUT_FAMILY = "scratch"
"""The family of a model directory whose config names none (those saved before families)."""


def family(name: str) -> Family:
    """The family called ``name``; BadInput naming ``arch`` when there is none."""
    found = FAMILIES.get(name)
    if found is None:
        raise BadInput(f"`arch` {name!r}: use {' or '.join(FAMILIES)}")
    return found
