"""The weights of the training loss's terms, apart from :mod:`ftfsearch.training.train` so the CLI's
``--loss-weights`` help shows them without importing torch."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ftfsearch.errors import BadInput


@dataclass
class LossWeights:
    """How much each term of the training loss counts (the terms: :mod:`ftfsearch.training.train`)."""

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
