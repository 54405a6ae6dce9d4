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
class TrainDefaults:
    """What ``ftfsearch train --arch NAME`` trains this family with where no flag says otherwise
    (:meth:`ftfsearch.training.train.TrainConfig.for_family` applies them; a bare ``TrainConfig``,
    as the tests and experiments build it, keeps its own field defaults). None: not this family's
    concern, ``TrainConfig``'s default stands."""

    lr: float
    """Peak learning rate of the heads."""
    prompt_rate: float
    """Share of images whose second text is a class prompt."""
    feature_views: int | None = None
    """Frozen-trunk views cached per image (the pretrained towers)."""
    base_lr_scale: float | None = None
    """Learning rate of the fine-tuned base blocks relative to the heads (the pretrained towers)."""


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    """What it is, for ``--arch``'s help."""
    load: Callable[[Path, dict[str, Any], "torch.device"], "Encoder"]
    """Load a saved model directory of this family (its ``ftf_config.json`` already read)."""
    train: TrainDefaults

    @property
    def lr(self) -> float:
        """Default peak learning rate of the heads."""
        return self.train.lr


def _load_pretrained(root: Path, raw: dict[str, Any], device: torch.device) -> Encoder:
    from ftfsearch.model.pretrained import load_pretrained_encoder

    return load_pretrained_encoder(root, raw, device)


def _load_scratch(root: Path, raw: dict[str, Any], device: torch.device) -> Encoder:
    from ftfsearch.model.ftf import load_ftf_encoder

    return load_ftf_encoder(root, device)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("pretrained", "FTF on the pinned EfficientNet-Lite0 and MiniLM towers", _load_pretrained,
           TrainDefaults(lr=1e-3, prompt_rate=0.25, feature_views=8, base_lr_scale=0.05)),
    Family("scratch", "the small FTF from nothing", _load_scratch, TrainDefaults(lr=2e-3, prompt_rate=0.25)),
)}
DEFAULT_FAMILY = "pretrained"
"""What ``ftfsearch train`` trains without ``--arch``."""
SAVED_WITHOUT_FAMILY = "scratch"
"""The family of a model directory whose config names none (those saved before families)."""


def family(name: str) -> Family:
    """The family called ``name``; BadInput naming ``arch`` when there is none."""
    found = FAMILIES.get(name)
    if found is None:
        raise BadInput(f"`arch` {name!r}: use {' or '.join(FAMILIES)}")
    return found
