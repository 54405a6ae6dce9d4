"""Cross-modal retrieval evaluation on caption datasets: coarse recall alone vs FTF (recall K, BTI rerank).

Standard protocol: every caption is a text->image query whose only positive is its own image;
every image is an image->text query that hits when any of its captions is in the top k. R@1/5/10
in both directions and mR (the mean of the six), in percent. FTF reranks the top ``recall_k``
coarse candidates with :func:`ftfsearch.rerank.bti` (for image->text the candidates are captions,
each scored against the image's regions); ranks beyond K keep the coarse order.

Tied scores are real here (UCM test: 1,050 captions, 377 distinct strings), so a rank taken from
``topk`` would depend on the order ties come out in. R@K is instead the expectation over a uniformly
random order of tied items (:func:`hit_chances`), which is deterministic; the strict variant, which
counts no tie against the positive, is reported beside it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ftfsearch.training.datasets import CaptionDataset, CaptionSplit, load_pixels
from ftfsearch.errors import BadInput
from ftfsearch.model.base import Encoder, RerankParams
from ftfsearch.model.sources import device_label
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
    strict_coarse: RetrievalMetrics
    """``coarse`` with no tie counted against the positive."""
    strict_ftf: RetrievalMetrics
    """``ftf`` with no tie counted against the positive."""
    recall_ceiling: dict[str, float]
    images_per_s: float
    queries_per_s: float
    ablation: dict[str, RetrievalMetrics] = field(default_factory=dict)
    """Rerank variants scored on the same embeddings (``--ablation``), by name."""
    extra: dict[str, Any] = field(default_factory=dict)
    device: str = ""
    """Where the model encoded (``cpu``, ``cuda:0``)."""

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
            "strict": {"coarse": self.strict_coarse.to_dict(), "ftf": self.strict_ftf.to_dict()},
            "recall_ceiling": {k: round(v, 2) for k, v in self.recall_ceiling.items()},
            "images_per_s": round(self.images_per_s, 1),
            "queries_per_s": round(self.queries_per_s, 1),
            "device": self.device,
            **({"ablation": {k: v.to_dict() for k, v in self.ablation.items()}} if self.ablation else {}),
            **self.extra,
        }


def encode_split(encoder: Encoder, split: CaptionSplit, pixels: np.ndarray, batch_size: int = 128) -> Embeddings:
    """Encode all images (uint8 ``[N, H, W, 3]``) and captions of a split, timing each side.

    Each distinct caption is encoded once, so identical captions get identical vectors whatever
    batch they would have fallen in (their scores then tie exactly; see :func:`hit_chances`).
    """
    t0 = time.perf_counter()
    gs, rs = [], []
    for start in range(0, len(pixels), batch_size):
        g, r = encoder.encode_images(torch.from_numpy(np.array(pixels[start:start + batch_size])))
        gs.append(g)
        rs.append(r)
    t1 = time.perf_counter()
    distinct, back = np.unique(np.asarray(split.captions, dtype=object), return_inverse=True)
    text = encoder.encode_text([str(c) for c in distinct])[torch.from_numpy(back.reshape(-1))]
    t2 = time.perf_counter()
    return Embeddings(
        coarse=torch.cat(gs).float(), regions=torch.cat(rs).float(), text=torch.as_tensor(text).float(),
        owner=torch.from_numpy(split.caption_owner), image_seconds=t1 - t0, text_seconds=t2 - t1,
    )


def _pct(hits: torch.Tensor) -> float:
    return float(hits.float().mean().item() * 100.0)


def recalls(ranked_hits: torch.Tensor) -> Recalls:
    """R@1/5/10 of ``ranked_hits [Q, >=10]`` (bool: whether the item at each rank is a positive).

    Counts ranks as given, so tied scores count in whatever order they were sorted; ``ftfsearch eval``
    scores with :func:`hit_chances` instead.
    """
    return Recalls(*(round(_pct(ranked_hits[:, :k].any(dim=1)), 2) for k in KS))


def hit_chances(
    scores: torch.Tensor, positive: torch.Tensor, ks: tuple[int, ...] = KS, tier: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chance of a hit at each K, ``[Q, len(ks)]``: expected over a random order of ties, and strict.

    Items are ranked by ``(tier, scores)``, both descending (``tier`` puts reranked candidates above
    the coarse tail; none means one tier). A query hits at K when any of its ``positive`` items is in
    the top K. Let the best positive be the one with the highest key, ``g`` the items strictly above
    it (all negatives), and ``p`` positives and ``n`` negatives exactly tied with it. With the tied
    block in a uniformly random order, the hit chance is that one of the ``p`` lands in the block's
    first ``r = K - g`` places: 0 for r <= 0, 1 for r > n, else ``1 - C(n, r) / C(n + p, r)``
    (computed with log-gamma; one positive gives ``r / (n + 1)``). Positives below the tied block
    cannot change it: if none of the block's first r is positive the top K is full of negatives.
    Strict counts no tie against the positive: a hit when ``g < K``. Without ties both are the
    plain rank. A query without positives never hits.
    """
    s = scores.double()
    t = torch.zeros_like(s) if tier is None else tier.double()
    pos = positive.bool()
    has = pos.any(dim=1)
    low = torch.tensor(float("-inf"), dtype=torch.float64)
    t_best = torch.where(pos, t, low).amax(dim=1, keepdim=True)
    s_best = torch.where(pos & (t == t_best), s, low).amax(dim=1, keepdim=True)
    above = (t > t_best) | ((t == t_best) & (s > s_best))
    tied = (t == t_best) & (s == s_best)
    g = above.sum(dim=1).double()
    p = (tied & pos).sum(dim=1).double()
    n = (tied & ~pos).sum(dim=1).double()
    expected, strict = [], []
    for k in ks:
        r = k - g
        rc = r.clamp(min=0.0).minimum(n)  # in range for the log-gamma terms; the masks below decide the rest
        miss = torch.exp(torch.lgamma(n + 1) - torch.lgamma(n - rc + 1) - torch.lgamma(n + p + 1) + torch.lgamma(n + p - rc + 1))
        chance = torch.where(r <= 0, 0.0, torch.where(r > n, 1.0, 1.0 - miss))
        expected.append(torch.where(has, chance, 0.0))
        strict.append((has & (g < k)).double())
    return torch.stack(expected, dim=1), torch.stack(strict, dim=1)


def _recalls(chances: torch.Tensor) -> Recalls:
    """R@1/5/10 in percent from per-query hit chances ``[Q, 3]``."""
    return Recalls(*(round(float(chances[:, i].mean().item()) * 100.0, 2) for i in range(len(KS))))


@dataclass(frozen=True)
class Scores:
    """What :func:`score` measures on one set of embeddings (one dataset's split)."""

    coarse: RetrievalMetrics
    """Coarse recall alone, expected over a random order of tied scores."""
    ftf: RetrievalMetrics
    """Coarse recall of ``recall_k`` candidates, then the BTI rerank; ties as in ``coarse``."""
    recall_ceiling: dict[str, float]
    """Percent of queries (``t2i``, ``i2t``) with a positive among the ``recall_k`` candidates."""
    search_seconds: float
    """Time spent on text->image search and rerank."""
    strict_coarse: RetrievalMetrics
    """``coarse`` with no tie counted against the positive (an upper bound of any tie order)."""
    strict_ftf: RetrievalMetrics
    """``ftf`` with no tie counted against the positive."""


def _unique_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of ``x`` (flattened past dim 0) and the index of each row's copy, so equal inputs
    are scored once and tie exactly."""
    uniq, inverse = torch.unique(x.reshape(x.shape[0], -1), dim=0, return_inverse=True)
    first = torch.full((uniq.shape[0],), x.shape[0], dtype=torch.long, device=x.device).scatter_reduce(
        0, inverse, torch.arange(x.shape[0], device=x.device), reduce="amin")
    return first, inverse


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _candidates(sims: torch.Tensor, k: int) -> torch.Tensor:
    """``[Q, M]`` bool: the top ``k`` by score, with every item tied at the k-th score (a tie is never
    split between the rerank and the tail, so which tied item is reranked cannot matter)."""
    kth = sims.topk(min(k, sims.shape[1]), dim=1).values[:, -1:]
    return sims >= kth


def _rerank_keys(
    sims: torch.Tensor, cand: torch.Tensor, item_inv: torch.Tensor, fine: Callable[[int, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The coarse scores with each query's candidates replaced by their fine scores.

    ``item_inv`` maps each item to its distinct vector; ``fine(query, distinct_ids)`` scores distinct
    vectors once, so copies of one vector get the same score (a tie, not float noise).
    """
    keys = sims.clone()
    for i in range(sims.shape[0]):
        c = cand[i].nonzero().squeeze(1)
        distinct, back = torch.unique(item_inv[c], return_inverse=True)
        keys[i, c] = fine(i, distinct).to(keys.dtype)[back]
    return keys


def score(emb: Embeddings, recall_k: int, params: RerankParams, device: torch.device | str = "cpu") -> Scores:
    """Coarse and FTF metrics of both directions (expected over tie orders, and strict), the recall
    ceiling at K, and the t2i search time.

    Similarities, candidates and the rerank run on ``device`` (the model's, so ``eval --device cuda``
    times the GPU rerank); the tie-aware counting runs on the CPU in float64, which every device's
    scores convert to exactly.

    Identical text vectors (identical captions) and identical images are scored once, so their
    scores tie exactly. FTF ranks the candidates (:func:`_candidates`) by the BTI score above the
    rest by coarse score; ties in either part are scored by :func:`hit_chances` alike.
    """
    n = emb.coarse.shape[0]
    owner = emb.owner
    coarse, regions, text = (t.to(device) for t in (emb.coarse, emb.regions, emb.text))
    img_first, img_inv = _unique_rows(torch.cat([coarse.unsqueeze(1), regions], dim=1))
    txt_first, txt_inv = _unique_rows(text)
    coarse_u, regions_u, text_u = coarse[img_first], regions[img_first], text[txt_first]
    sims_u = text_u @ coarse_u.T  # [distinct texts, distinct images]
    tau, alpha, balanced = params.tau, params.alpha, params.balanced

    # text -> image (queries: distinct texts; items: every image)
    t0 = time.perf_counter()
    sims_t2i = sims_u[:, img_inv]
    cand = _candidates(sims_t2i, recall_k)
    keys = _rerank_keys(sims_t2i, cand, img_inv, lambda i, u: bti(
        text_u[i], coarse_u[u], regions_u[u], tau, alpha, balanced).scores[0])
    _synchronize(keys.device)
    t2i_seconds = time.perf_counter() - t0
    sims_t2i, cand, keys, img_inv, txt_inv = (t.cpu() for t in (sims_t2i, cand, keys, img_inv, txt_inv))
    pos = owner.unsqueeze(1) == torch.arange(n).unsqueeze(0)  # [captions, images]
    q_rows = txt_inv  # each caption is a query; its row of scores is its distinct text's
    coarse_t2i = hit_chances(sims_t2i[q_rows], pos)
    ftf_t2i = hit_chances(keys[q_rows], pos, tier=cand[q_rows])
    ceiling_t2i = _pct((cand[q_rows] & pos).any(dim=1))

    # image -> text (queries: distinct images; items: every caption)
    txt_inv_d = txt_inv.to(sims_u.device)
    sims_i2t = sims_u.T[:, txt_inv_d]
    cand_t = _candidates(sims_i2t, recall_k)
    keys_t = _rerank_keys(sims_i2t, cand_t, txt_inv_d, lambda j, u: bti(
        text_u[u], coarse_u[j:j + 1], regions_u[j:j + 1], tau, alpha, balanced).scores[:, 0])
    sims_i2t, cand_t, keys_t = (t.cpu() for t in (sims_i2t, cand_t, keys_t))
    pos_t = pos.T  # [images, captions]
    coarse_i2t = hit_chances(sims_i2t[img_inv], pos_t)
    ftf_i2t = hit_chances(keys_t[img_inv], pos_t, tier=cand_t[img_inv])
    ceiling_i2t = _pct((cand_t[img_inv] & pos_t).any(dim=1))

    def metrics(t2i: torch.Tensor, i2t: torch.Tensor) -> RetrievalMetrics:
        return RetrievalMetrics(_recalls(t2i), _recalls(i2t))

    return Scores(
        coarse=metrics(coarse_t2i[0], coarse_i2t[0]),
        ftf=metrics(ftf_t2i[0], ftf_i2t[0]),
        recall_ceiling={"t2i": ceiling_t2i, "i2t": ceiling_i2t},
        search_seconds=t2i_seconds,
        strict_coarse=metrics(coarse_t2i[1], coarse_i2t[1]),
        strict_ftf=metrics(ftf_t2i[1], ftf_i2t[1]),
    )


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
    scores = score(emb, recall_k, params, encoder.device)
    n, q = len(part), emb.text.shape[0]
    variants: dict[str, RetrievalMetrics] = {}
    if ablation:
        unbalanced = RerankParams(tau=params.tau, alpha=params.alpha, balanced=False)
        variants[f"FTF no balance, K={recall_k}"] = score(emb, recall_k, unbalanced, encoder.device).ftf
        for k in (20, 50, 100):
            if k != recall_k:
                variants[f"FTF K={k}"] = score(emb, k, params, encoder.device).ftf
    return EvalReport(
        dataset=part.name, split=part.split, model_id=encoder.id, num_images=n, num_captions=q,
        recall_k=recall_k, rerank=params, coarse=scores.coarse, ftf=scores.ftf, recall_ceiling=scores.recall_ceiling,
        strict_coarse=scores.strict_coarse, strict_ftf=scores.strict_ftf,
        images_per_s=n / max(emb.image_seconds, 1e-9),
        queries_per_s=q / max(emb.text_seconds + scores.search_seconds, 1e-9), ablation=variants,
        device=device_label(encoder.device),
    )


def evaluate_files(model: str | None, device: str, data: list[Path], images: list[Path] | None, split: str,
                   recall_k: int | None, cache_dir: Path, ablation: bool) -> list[EvalReport]:
    """``ftfsearch eval``: every caption set checked before the model loads, then each scored on its
    own at ``recall_k`` (default: the K the model chose on validation)."""
    from ftfsearch.model.loading import load_encoder
    from ftfsearch.training.datasets import load_datasets

    datasets = load_datasets(data, images)  # bad input before the model loads
    encoder = load_encoder(model, device=device)
    k = recall_k if recall_k is not None else encoder.rerank_params.k
    return [evaluate(encoder, ds, split, k, cache_dir=cache_dir, ablation=ablation) for ds in datasets]


def format_report(report: EvalReport) -> str:
    """A fixed-width table: coarse and FTF rows, R@1/5/10 both directions, mR."""
    head = (f"{report.dataset} {report.split}: {report.num_images} images, {report.num_captions} captions, "
            f"model {report.model_id}{f' on {report.device}' if report.device else ''}, K={report.recall_k}, tau={report.rerank.tau:g}, "
            f"alpha={report.rerank.alpha:g}{'' if report.rerank.balanced else ', unbalanced'}")
    rows = [("coarse", report.coarse), ("FTF", report.ftf), ("coarse, strict", report.strict_coarse),
            ("FTF, strict", report.strict_ftf), *report.ablation.items()]
    width = max(len(name) for name, _ in rows)
    cols = f"{'':{width}} | {'t2i R@1':>7} {'R@5':>6} {'R@10':>6} | {'i2t R@1':>7} {'R@5':>6} {'R@10':>6} | {'mR':>6}"
    lines = [head, cols, "-" * len(cols)]
    for name, m in rows:
        lines.append(
            f"{name:{width}} | {m.t2i.r1:7.2f} {m.t2i.r5:6.2f} {m.t2i.r10:6.2f} | "
            f"{m.i2t.r1:7.2f} {m.i2t.r5:6.2f} {m.i2t.r10:6.2f} | {m.mR:6.2f}"
        )
    lines.append("R@K: expected over a random order of tied scores; strict: no tie counted against the positive")
    lines.append(
        f"recall ceiling at K: t2i {report.recall_ceiling['t2i']:.1f}%, i2t {report.recall_ceiling['i2t']:.1f}%; "
        f"throughput: {report.images_per_s:.0f} images/s, {report.queries_per_s:.0f} queries/s"
    )
    return "\n".join(lines)
