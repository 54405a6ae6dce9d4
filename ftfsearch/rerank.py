"""The balanced text-guided interaction (BTI): the parameter-free fine stage of FTF.

For a text vector t and a candidate with coarse vector g and region vectors r_1..r_R (all unit):
    a = softmax(<t, r_j> / tau);  v = normalize(sum_j a_j r_j)
    v_b = normalize(g + v)        (balanced; ``balanced=False`` uses v alone)
    s = (1 - alpha) * <t, g> + alpha * <t, v_b>
The same function runs in training (batched over texts) and at query time, on any torch device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class BtiOutput:
    """Scores and the attention that produced them."""

    scores: torch.Tensor
    """``[T, K]`` final scores."""
    fine: torch.Tensor
    """``[T, K]`` fine scores ``<t, v_b>``."""
    coarse: torch.Tensor
    """``[T, K]`` coarse scores ``<t, g>``."""
    attention: torch.Tensor
    """``[T, K, R]`` text-guided attention over regions."""


def bti(
    text: torch.Tensor,
    coarse: torch.Tensor,
    regions: torch.Tensor,
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
    if text.dim() == 1:
        text = text.unsqueeze(0)
    dtype = text.dtype
    coarse = coarse.to(dtype)
    regions = regions.to(dtype)
    s_c = text @ coarse.T  # [T, K]
    logits = torch.einsum("td,krd->tkr", text, regions) / tau  # [T, K, R]
    attn = logits.softmax(dim=-1)
    v = F.normalize(torch.einsum("tkr,krd->tkd", attn, regions), dim=-1)  # [T, K, D]
    v_b = F.normalize(coarse.unsqueeze(0) + v, dim=-1) if balanced else v
    s_f = torch.einsum("td,tkd->tk", text, v_b)
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

    scores: torch.Tensor
    """``[K]``: with one positive and no negative, its BTI score; else the fused z-scores."""
    fine: torch.Tensor
    """``[K]`` fine scores of the lead (first) positive."""
    attention: torch.Tensor
    """``[K, R]`` attention of the lead positive: which region matched."""


def bti_fused(
    positives: torch.Tensor,
    negatives: torch.Tensor,
    coarse: torch.Tensor,
    regions: torch.Tensor,
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
    queries = torch.cat([positives, negatives.to(positives.dtype)]) if len(negatives) else positives
    out = bti(queries, coarse, regions, tau=tau, alpha=alpha, balanced=balanced)
    p = positives.shape[0]
    if queries.shape[0] == 1:
        scores = out.scores[0]
    else:
        s = out.scores
        z = (s - s.mean(dim=1, keepdim=True)) / (s.std(dim=1, keepdim=True, unbiased=False) + 1e-6)
        scores = z[:p].mean(dim=0)
        if z.shape[0] > p:
            scores = scores - negative_weight * z[p:].mean(dim=0)
    return FusedOutput(scores=scores, fine=out.fine[0], attention=out.attention[0])
