"""The Encoder protocol: the only thing the rest of ftfsearch knows about a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
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

    All outputs are L2-normalised float32 tensors on the CPU.
    """

    id: str
    """Stable model id recorded in a collection; a collection refuses other ids."""
    dim: int
    num_regions: int
    region_layout: str
    """Id of the region layout (e.g. ``grid-1-2-3``), recorded in each tile's payload."""
    rerank_params: RerankParams
    max_text_tokens: int
    device: torch.device

    @property
    def region_boxes(self) -> np.ndarray:
        """Region boxes ``[R, 4]`` as ``(x0, y0, x1, y1)`` fractions of the tile."""
        ...

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``uint8 [B, H, W, 3]`` -> ``(coarse [B, D], regions [B, R, D])``."""
        ...

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """``list[str]`` -> ``[B, D]``."""
        ...

    def count_text_tokens(self, text: str) -> int:
        """Number of tokens the text encoder would see before truncation."""
        ...
