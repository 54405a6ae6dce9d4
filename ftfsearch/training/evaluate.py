"""Cross-modal retrieval evaluation on caption datasets: coarse recall alone vs FTF (recall K, BTI rerank).

Standard protocol: every caption is a text->image query whose only positive is its own image;
every image is an image->text query that hits when any of its captions is in the top k. R@1/5/10
in both directions and mR (the mean of the six), in percent. FTF reranks the top ``recall_k``
coarse candidates with :func:`ftfsearch.rerank.bti` (for image->text the candidates are captions,
each scored against the image's regions); ranks beyond K keep the coarse order.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftfsearch.training.datasets import CaptionDataset, CaptionSplit, load_pixels
from ftfsearch.errors import BadInput
from ftfsearch.model.base import Encoder, RerankParams
from ftfsearch.rerank import bti

KS = (1, 5, 10)
EVAL_PIXELS = 224
"""Images are decoded once at this size (and cached); the encoder resizes to its own input size."""


@dataclass
class Recalls:
    """R@1/5/10 in percent for one direction."""

    r1: float
    r5: float
    r10: float


@dataclass
class RetrievalMetrics:
    """Both directions and their mean recall (mR, mean of six)."""

    t2i: Recalls
    i2t: Recalls

    @property
    def mR(self) -> float:
        vals = [self.t2i.r1, self.t2i.r5, self.t2i.r10, self.i2t.r1, self.i2t.r5, self.i2t.r10]
        return float(sum(vals) / 6.0)

    def to_dict(self) -> dict[str, Any]:
        return {"t2i": asdict(self.t2i), "i2t": asdict(self.i2t), "mR": round(self.mR, 2)}


@dataclass
class Embeddings:
    """Encoded split: unit coarse/region vectors of images, unit text vectors, caption owners."""

    coarse: torch.Tensor
    regions: torch.Tensor
    text: torch.Tensor
    owner: torch.Tensor
    image_seconds: float = 0.0
    text_seconds: float = 0.0


@dataclass
class EvalReport:
    """What ``ftfsearch eval`` prints."""

    dataset: str
    split: str
    model_id: str
    num_images: int
    num_captions: int
    recall_k: int
    rerank: RerankParams
    coarse: RetrievalMetrics
    ftf: RetrievalMetrics
    recall_ceiling: dict[str, float]
    images_per_s: float
    queries_per_s: float
    ablation: dict[str, RetrievalMetrics] = field(default_factory=dict)
    """Rerank variants scored on the same embeddings (``--ablation``), by name."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "model": self.model_id,
            "num_images": self.num_images,
            "num_captions": self.num_captions,
            "recall_k": self.recall_k,
            "rerank": asdict(self.rerank),
            "coarse": self.coarse.to_dict(),
            "ftf": self.ftf.to_dict(),
            "recall_ceiling": {k: round(v, 2) for k, v in self.recall_ceiling.items()},
            "images_per_s": round(self.images_per_s, 1),
            "queries_per_s": round(self.queries_per_s, 1),
            **({"ablation": {k: v.to_dict() for k, v in self.ablation.items()}} if self.ablation else {}),
            **self.extra,
        }


def encode_split(encoder: Encoder, split: CaptionSplit, pixels: np.ndarray, batch_size: int = 128) -> Embeddings:
    """Encode all images (uint8 ``[N, H, W, 3]``) and captions of a split, timing each side."""
    t0 = time.perf_counter()
    gs, rs = [], []
    for start in range(0, len(pixels), batch_size):
        g, r = encoder.encode_images(torch.from_numpy(np.array(pixels[start:start + batch_size])))
        gs.append(g)
        rs.append(r)
    t1 = time.perf_counter()
    text = encoder.encode_text(split.captions)
    t2 = time.perf_counter()
    return Embeddings(
        coarse=torch.cat(gs).float(), regions=torch.cat(rs).float(), text=text.float(),
        owner=torch.from_numpy(split.caption_owner), image_seconds=t1 - t0, text_seconds=t2 - t1,
    )


def _pct(hits: torch.Tensor) -> float:
    return float(hits.float().mean().item() * 100.0)


def recalls(ranked_hits: torch.Tensor) -> Recalls:
    """R@1/5/10 of ``ranked_hits [Q, >=10]`` (bool: whether the item at each rank is a positive)."""
    return Recalls(*(round(_pct(ranked_hits[:, :k].any(dim=1)), 2) for k in KS))


@dataclass(frozen=True)
class Scores:
    """What :func:`score` measures on one set of embeddings."""

    coarse: RetrievalMetrics
    """Coarse recall alone."""
    ftf: RetrievalMetrics
    """Coarse recall of ``recall_k`` candidates, then the BTI rerank."""
    recall_ceiling: dict[str, float]
    """Percent of queries (``t2i``, ``i2t``) with a positive among the ``recall_k`` candidates."""
    search_seconds: float
    """Time spent on text->image search and rerank."""


def score(emb: Embeddings, recall_k: int, params: RerankParams) -> Scores:
    """Coarse and FTF metrics of both directions, the recall ceiling at K, and the t2i search time."""
    n, q = emb.coarse.shape[0], emb.text.shape[0]
    k_img = min(recall_k, n)
    k_txt = min(recall_k, q)
    top = max(KS)
    owner = emb.owner

    # text -> image
    t0 = time.perf_counter()
    sims = emb.text @ emb.coarse.T  # [Q, N]
    ranked = sims.topk(min(max(k_img, top), n), dim=1).indices  # coarse ranks, at least 10 deep
    cand = ranked[:, :k_img]  # [Q, K]
    reranked = ranked.clone()
    for i in range(q):
        c = cand[i]
        s = bti(emb.text[i], emb.coarse[c], emb.regions[c], params.tau, params.alpha, params.balanced).scores[0]
        reranked[i, :k_img] = c[s.argsort(descending=True)]
    t2i_seconds = time.perf_counter() - t0
    own = owner.unsqueeze(1)
    coarse_t2i = recalls(_pad(ranked == own, top))
    ftf_t2i = recalls(_pad(reranked == own, top))
    ceiling_t2i = _pct((cand == own).any(dim=1))

    # image -> text
    sims_t = sims.T  # [N, Q]
    ranked_t = sims_t.topk(min(max(k_txt, top), q), dim=1).indices
    cand_t = ranked_t[:, :k_txt]  # [N, K]
    reranked_t = ranked_t.clone()
    for j in range(n):
        c = cand_t[j]
        s = bti(emb.text[c], emb.coarse[j:j + 1], emb.regions[j:j + 1], params.tau, params.alpha, params.balanced).scores[:, 0]
        reranked_t[j, :k_txt] = c[s.argsort(descending=True)]
    img_ids = torch.arange(n).unsqueeze(1)
    coarse_i2t = recalls(_pad(owner[ranked_t] == img_ids, top))
    ftf_i2t = recalls(_pad(owner[reranked_t] == img_ids, top))
    ceiling_i2t = _pct((owner[cand_t] == img_ids).any(dim=1))
    return Scores(
        coarse=RetrievalMetrics(coarse_t2i, coarse_i2t),
        ftf=RetrievalMetrics(ftf_t2i, ftf_i2t),
        recall_ceiling={"t2i": ceiling_t2i, "i2t": ceiling_i2t},
        search_seconds=t2i_seconds,
    )


def _pad(hits: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad rank hits with False so R@10 is defined on sets of fewer than 10 items."""
    if hits.shape[1] >= width:
        return hits
    return torch.cat([hits, torch.zeros(hits.shape[0], width - hits.shape[1], dtype=torch.bool)], dim=1)


def evaluate(
    encoder: Encoder,
    dataset: CaptionDataset | CaptionSplit,
    split: str = "test",
    recall_k: int = 50,
    rerank: RerankParams | None = None,
    pixels: np.ndarray | None = None,
    cache_dir: Path | None = None,
    max_images: int | None = None,
    ablation: bool = False,
) -> EvalReport:
    """Evaluate an encoder on one split: coarse vs FTF, recall ceiling at K, throughput.

    ``rerank`` defaults to the parameters stored with the model; ``max_images`` keeps the first
    N images of the split (for quick checks; the report says so). ``ablation`` also scores, on the
    same embeddings, FTF without balancing (v instead of normalize(g + v)) and FTF at K = 20 and 100.
    """
    if recall_k < 1:
        raise BadInput(f"`recall_k` {recall_k}: must be at least 1")
    part = dataset.split(split) if isinstance(dataset, CaptionDataset) else dataset
    if max_images is not None and max_images < len(part):
        part = CaptionSplit(part.name, part.split, part.images[:max_images])
    if pixels is None:
        pixels = load_pixels(part, EVAL_PIXELS, cache_dir)
    params = rerank or encoder.rerank_params
    emb = encode_split(encoder, part, pixels)
    scores = score(emb, recall_k, params)
    n, q = len(part), emb.text.shape[0]
    variants: dict[str, RetrievalMetrics] = {}
    if ablation:
        unbalanced = RerankParams(tau=params.tau, alpha=params.alpha, balanced=False)
        variants[f"FTF no balance, K={recall_k}"] = score(emb, recall_k, unbalanced).ftf
        for k in (20, 50, 100):
            if k != recall_k:
                variants[f"FTF K={k}"] = score(emb, k, params).ftf
    return EvalReport(
        dataset=part.name, split=part.split, model_id=encoder.id, num_images=n, num_captions=q,
        recall_k=recall_k, rerank=params, coarse=scores.coarse, ftf=scores.ftf, recall_ceiling=scores.recall_ceiling,
        images_per_s=n / max(emb.image_seconds, 1e-9),
        queries_per_s=q / max(emb.text_seconds + scores.search_seconds, 1e-9), ablation=variants,
    )


def format_report(report: EvalReport) -> str:
    """A fixed-width table: coarse and FTF rows, R@1/5/10 both directions, mR."""
    head = (f"{report.dataset} {report.split}: {report.num_images} images, {report.num_captions} captions, "
            f"model {report.model_id}, K={report.recall_k}, tau={report.rerank.tau:g}, "
            f"alpha={report.rerank.alpha:g}{'' if report.rerank.balanced else ', unbalanced'}")
    rows = [("coarse", report.coarse), ("FTF", report.ftf), *report.ablation.items()]
    width = max(len(name) for name, _ in rows)
    cols = f"{'':{width}} | {'t2i R@1':>7} {'R@5':>6} {'R@10':>6} | {'i2t R@1':>7} {'R@5':>6} {'R@10':>6} | {'mR':>6}"
    lines = [head, cols, "-" * len(cols)]
    for name, m in rows:
        lines.append(
            f"{name:{width}} | {m.t2i.r1:7.2f} {m.t2i.r5:6.2f} {m.t2i.r10:6.2f} | "
            f"{m.i2t.r1:7.2f} {m.i2t.r5:6.2f} {m.i2t.r10:6.2f} | {m.mR:6.2f}"
        )
    lines.append(
        f"recall ceiling at K: t2i {report.recall_ceiling['t2i']:.1f}%, i2t {report.recall_ceiling['i2t']:.1f}%; "
        f"throughput: {report.images_per_s:.0f} images/s, {report.queries_per_s:.0f} queries/s"
    )
    return "\n".join(lines)
