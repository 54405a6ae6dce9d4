"""The Encoder protocol: the only thing the rest of ftfsearch knows about a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ftfsearch.errors import BadInput

if TYPE_CHECKING:  # the protocol names torch types; the query path must not import torch for it
    import torch


@dataclass(frozen=True)
class RerankParams:
    """Hyperparameters of the BTI rerank, chosen on a validation split and stored with the model."""

    tau: float = 0.05
    alpha: float = 0.5
    balanced: bool = True
    k: int = 50
    """Candidates recalled for the rerank; chosen on validation with tau and alpha."""


@runtime_checkable
class Encoder(Protocol):
    """Encodes image tiles into a coarse vector plus region vectors, and text into one vector.

    All outputs are L2-normalised float32 arrays on the CPU: torch tensors, except the text vectors
    of the query path's encoder (:class:`~ftfsearch.model.query.QueryEncoder`), numpy arrays so that
    a query need not import torch (``np.asarray`` and ``torch.as_tensor`` read both).
    """

    id: str
    """Stable model id recorded in a collection; a collection refuses other ids."""
    dim: int
    num_regions: int
    region_layout: str
    """Id of the region layout (e.g. ``grid-1-2-3``), recorded in each tile's payload."""
    rerank_params: RerankParams
    max_text_tokens: int

    @property
    def device(self) -> torch.device:
        """Where the model runs (the query encoder loads its torch model to answer)."""
        ...

    @property
    def region_boxes(self) -> np.ndarray:
        """Region boxes ``[R, 4]`` as ``(x0, y0, x1, y1)`` fractions of the tile."""
        ...

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``uint8 [B, H, W, 3]`` -> ``(coarse [B, D], regions [B, R, D])``."""
        ...

    def encode_text(self, texts: list[str]) -> torch.Tensor | np.ndarray:
        """``list[str]`` -> ``[B, D]``."""
        ...

    def count_text_tokens(self, text: str) -> int:
        """Number of tokens the text encoder would see before truncation."""
        ...


def check_texts(texts: list[str]) -> list[str]:
    """Validate a text batch: a list (or tuple) of strings, not one string."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise BadInput(f"texts: expected a list of strings, got {type(texts).__name__}")
    return list(texts)
