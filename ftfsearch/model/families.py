"""One table from a model family to everything it needs: how its saved directory loads, which
training task trains it, and its defaults (as open_clip's factory and torchgeo's model API keep
theirs). ``model/loading.py``, ``training/train.py`` and the CLI read it; a new family is one
entry here with its loader, and its training task registered under the same name in
``training/train.py`` (``@trains(name)``): the model layer never imports training.
"""

from __future__ import annotations

import dataclasses
import math
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


@dataclass
class LossWeights:
    """How much each term of the training loss counts (the terms: :mod:`ftfsearch.training.train`), the
    same for every family; kept beside the family table so ``train --help`` shows them without the
    CLI importing the training package."""

    coarse: float = 0.5
    fine: float = 2.0
    """The fine (BTI) term leads: at full scale (1, 1) -> (0.5, 2) raised val FTF mR from 18.49 to
    19.94 and RSICD test FTF mR from 10.12 to 10.99 (model card)."""
    text: float = 0.5
    region: float = 0.1
    """Low on purpose: at 0.5 the regions collapsed onto the coarse vector within two epochs
    (their loss fell to 0.02) and the rerank added nothing (see the model card)."""
    rerank: float = 0.0
    """The residual rerank term (module docstring); 0 keeps the head, and so checkpoints, as before."""

    @classmethod
    def parse(cls, text: str) -> "LossWeights":
        """``"fine=0,text=0.25"``: these terms reweighted, the others at their defaults (ablations
        remove a term with 0)."""
        terms = {f.name for f in dataclasses.fields(cls)}
        given: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            name, eq, value = (s.strip() for s in part.partition("="))
            if name not in terms or not eq:
                raise BadInput(f"`loss_weights` {text!r}: {part!r} is not TERM=WEIGHT with a term of "
                               f"{', '.join(sorted(terms))}")
            try:
                weight = float(value)
            except ValueError:
                weight = -1.0
            if not math.isfinite(weight) or weight < 0:
                raise BadInput(f"`loss_weights` {text!r}: the weight of {name} must be a number of at least 0")
            given[name] = weight
        return cls(**given)

    def as_text(self) -> str:
        """The weights as :meth:`parse` reads them."""
        return ",".join(f"{f.name}={getattr(self, f.name):g}" for f in dataclasses.fields(self))


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
