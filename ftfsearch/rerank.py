"""The balanced text-guided interaction (BTI): the parameter-free fine stage of FTF.

For a text vector t and a candidate with coarse vector g and region vectors r_1..r_R (all unit):
    a = softmax(<t, r_j> / tau);  v = normalize(sum_j a_j r_j)
    v_b = normalize(g + v)        (balanced; ``balanced=False`` uses v alone)
    s = (1 - alpha) * <t, g> + alpha * <t, v_b>
The same function runs in training (batched over texts, torch tensors with gradients, on any
device) and at query time (numpy arrays: a query process does not import torch); the operations
below are the ones both libraries spell alike, so there is one rerank, not two.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

Array = TypeVar("Array", "torch.Tensor", np.ndarray)
"""A torch tensor or a numpy array: every argument and result of one call is the same kind."""


def _xp(x: Any) -> ModuleType:
    """numpy for numpy arrays, else torch (imported only then)."""
    if isinstance(x, np.ndarray):
        return np
    import torch

    return torch


def _cast(x: Any, like: Any) -> Any:
    return x.astype(like.dtype, copy=False) if isinstance(x, np.ndarray) else x.to(like.dtype)


def _normalize(x: Any, xp: ModuleType) -> Any:
    """Unit rows along the last axis (as torch's F.normalize: norms below 1e-12 count as 1e-12)."""
    return x / xp.sqrt((x * x).sum(-1, keepdims=True)).clip(1e-12)


def _softmax(x: Any, xp: ModuleType) -> Any:
    e = xp.exp(x - xp.amax(x, -1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@dataclass
class BtiOutput:
    """Scores and the attention that produced them."""

    scores: Any
    """``[T, K]`` final scores."""
    fine: Any
    """``[T, K]`` fine scores ``<t, v_b>``."""
    coarse: Any
    """``[T, K]`` coarse scores ``<t, g>``."""
    attention: Any
    """``[T, K, R]`` text-guided attention over regions."""


def bti(
    text: Array,
    coarse: Array,
    regions: Array,
    tau: float,
    alpha: float,
    balanced: bool = True,
) -> BtiOutput:
    """Score K candidates for T texts.

    Args:
        text: ``[T, D]`` or ``[D]`` unit text vectors.
        coarse: ``[K, D]`` unit coarse vectors g.
        regions: ``[K, R, D]`` unit region vectors (any float dtype; computed in the text's dtype).
        tau: softmax temperature of the text-guided attention.
        alpha: weight of the fine score in the final score.
        balanced: weigh the attended regions against the whole tile (normalize(g + v)).
    """
    xp = _xp(text)
    if text.ndim == 1:
        text = text[None]
    coarse = _cast(coarse, text)
    regions = _cast(regions, text)
    s_c = text @ coarse.T  # [T, K]
    attn = _softmax(xp.moveaxis(regions @ text.T, 2, 0) / tau, xp)  # [T, K, R]
    v = _normalize(xp.moveaxis(xp.moveaxis(attn, 0, 1) @ regions, 1, 0), xp)  # [K, T, R] @ [K, R, D] -> [T, K, D]
    v_b = _normalize(coarse[None] + v, xp) if balanced else v
    s_f = (text[:, None, :] * v_b).sum(-1)  # [T, K]
    scores = (1.0 - alpha) * s_c + alpha * s_f
    return BtiOutput(scores=scores, fine=s_f, coarse=s_c, attention=attn)


NEGATIVE_WEIGHT = 0.25
"""Weight of the negatives' mean against the positives' mean in a search by example. Measured
(BENCHMARKS.md, "Search by example"; three examples and two marked misses): 0.25 beats 0.5 on
both UCM and RSICD and ties 0 (the misses only excluded) within a standard error; 1.0 ranks tiles
unlike the misses rather than like the examples and halves precision."""


@dataclass
class FusedOutput:
    """Scores of K candidates for a set of positive and negative query vectors."""

    scores: Any
    """``[K]``: with one positive and no negative, its BTI score; else the fused z-scores."""
    fine: Any
    """``[K]`` fine scores of the lead (first) positive."""
    attention: Any
    """``[K, R]`` attention of the lead positive: which region matched."""


def bti_fused(
    positives: Array,
    negatives: Array,
    coarse: Array,
    regions: Array,
    tau: float,
    alpha: float,
    balanced: bool = True,
    negative_weight: float = NEGATIVE_WEIGHT,
) -> FusedOutput:
    """BTI for each of P positive and N negative query vectors (text, example tiles, example
    regions), fused without parameters to learn: each one's scores are standardised over the
    candidates (a text and an image example score on different scales), positives averaged,
    minus ``negative_weight`` times the negatives' average. One positive alone keeps its raw
    BTI score, so a text query ranks exactly as :func:`bti` does."""
    xp = _xp(positives)
    queries = xp.concatenate([positives, _cast(negatives, positives)]) if len(negatives) else positives
    out = bti(queries, coarse, regions, tau=tau, alpha=alpha, balanced=balanced)
    p = positives.shape[0]
    if queries.shape[0] == 1:
        scores = out.scores[0]
    else:
        s = out.scores
        centred = s - s.mean(1, keepdims=True)
        z = centred / (xp.sqrt((centred * centred).mean(1, keepdims=True)) + 1e-6)  # population std
        scores = z[:p].mean(0)
        if z.shape[0] > p:
            scores = scores - negative_weight * z[p:].mean(0)
    return FusedOutput(scores=scores, fine=out.fine[0], attention=out.attention[0])
