"""Query-time fusions of the coarse and fine scores, scored on validation splits (the model card's table).

Why: before training for a better rerank, check whether the shipped regions already hold
information that another way of mixing the two scores would use. Each variant reranks the
same K coarse candidates of the same embeddings; the mean mR over the given splits is printed
for coarse recall and for the variant. Variants:
- ``bti``: the project's rerank, (1 - a) s_c + a <t, normalize(g + v)>;
- ``z``: z-scored s_c plus w times z-scored BTI fine score, z over each query's K candidates
  (removes the different spread of the two scores, which a fixed alpha cannot);
- ``max``: (1 - a) s_c + a max_j <t, r_j> (the best single region, no balancing);
- ``zmax``: z-scored s_c plus w times z-scored best-region score.

    python experiments/rerank_variants.py --model ftfsearch/model/default \
        --data ../shared/data/rsicd/dataset_rsicd.json --data ../shared/data/ucm/dataset_ucm.json
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ftfsearch.training.evaluate import Embeddings

Fuse = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def pair_scores(text: torch.Tensor, coarse: torch.Tensor, regions: torch.Tensor, tau: float) -> tuple[torch.Tensor, ...]:
    """``(s_c, s_f, s_max)``, each ``[T, N]``: coarse and balanced fine scores of the project's
    :func:`~ftfsearch.rerank.bti`, and the best single region's score."""
    from ftfsearch.rerank import bti

    out = []
    for s in range(0, text.shape[0], 512):  # bounds the [T, N, R] and [T, N, D] intermediates
        t = text[s:s + 512]
        o = bti(t, coarse, regions, tau=tau, alpha=1.0, balanced=True)
        out.append((o.coarse, o.fine, torch.einsum("td,nrd->tnr", t, regions).amax(-1)))
    return tuple(torch.cat([o[i] for o in out]) for i in range(3))


def _z(s: torch.Tensor) -> torch.Tensor:
    return (s - s.mean(1, keepdim=True)) / (s.std(1, keepdim=True) + 1e-6)


def mean_recall(ranked_hits: torch.Tensor) -> float:
    """Mean of R@1, R@5, R@10 of ``[Q, >=10]`` rank hits, as ``ftfsearch eval`` counts them."""
    from ftfsearch.training.evaluate import recalls

    r = recalls(ranked_hits)
    return (r.r1 + r.r5 + r.r10) / 3


def m_r(scores: tuple[torch.Tensor, ...], owner: torch.Tensor, k: int, fuse: Fuse) -> tuple[float, float]:
    """(coarse mR, fused mR) over both directions, reranking the top ``k`` by coarse score."""
    result = []
    for direction in ("t2i", "i2t"):
        s = scores if direction == "t2i" else tuple(x.T for x in scores)
        ranked = s[0].topk(max(k, 10), dim=1).indices
        cand = ranked[:, :k]
        fused = fuse(*(torch.gather(x, 1, cand) for x in s))
        reranked = ranked.clone()
        reranked[:, :k] = torch.gather(cand, 1, fused.argsort(1, descending=True))
        if direction == "t2i":
            hit = lambda r: r == owner.unsqueeze(1)  # noqa: E731
        else:
            hit = lambda r: owner[r] == torch.arange(r.shape[0]).unsqueeze(1)  # noqa: E731
        result.append((mean_recall(hit(ranked)), mean_recall(hit(reranked))))
    return (result[0][0] + result[1][0]) / 2, (result[0][1] + result[1][1]) / 2


def _linear(a: float, best_region: bool) -> Fuse:
    """``(1 - a) s_c + a s``, with ``s`` the balanced fine score or the best single region's."""

    def fuse(c: torch.Tensor, f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return (1 - a) * c + a * (m if best_region else f)

    return fuse


def _z_sum(w: float, best_region: bool) -> Fuse:
    """``z(s_c) + w z(s)``, z over each query's candidates, ``s`` as in :func:`_linear`."""

    def fuse(c: torch.Tensor, f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return _z(c) + w * _z(m if best_region else f)

    return fuse


def variants() -> dict[str, tuple[float, Fuse]]:
    out: dict[str, tuple[float, Fuse]] = {}
    for tau in (0.05, 0.1, 0.2):
        for a in (0.1, 0.25, 0.5, 1.0):
            out[f"bti tau={tau} a={a}"] = (tau, _linear(a, best_region=False))
        for w in (0.25, 0.5, 1.0):
            out[f"z tau={tau} w={w}"] = (tau, _z_sum(w, best_region=False))
    for a in (0.1, 0.25):
        out[f"max a={a}"] = (0.1, _linear(a, best_region=True))
    for w in (0.25, 0.5, 1.0):
        out[f"zmax w={w}"] = (0.1, _z_sum(w, best_region=True))
    return out


def main() -> int:
    from ftfsearch.training.datasets import load_dataset, load_pixels
    from ftfsearch.training.evaluate import EVAL_PIXELS, encode_split
    from ftfsearch.model.loading import load_encoder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", type=Path, action="append", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--recall-k", type=int, default=50)
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/pixels"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    encoder = load_encoder(args.model, device="cpu")
    splits: list[tuple[str, torch.Tensor, dict[float, tuple[torch.Tensor, ...]], Embeddings]] = []
    for path in args.data:
        part = load_dataset(path).split(args.split)
        emb = encode_split(encoder, part, load_pixels(part, EVAL_PIXELS, args.cache_dir))
        splits.append((part.name, emb.owner, {}, emb))
    print(f"{encoder.id}, {args.split} splits, K={args.recall_k}; mean mR over {', '.join(n for n, *_ in splits)}")
    print("| variant | coarse mR | fused mR | fused - coarse |\n|---|---|---|---|")
    for name, (tau, fuse) in variants().items():
        got = []
        for _, owner, cache, emb in splits:
            if tau not in cache:
                cache[tau] = pair_scores(emb.text, emb.coarse, emb.regions, tau)
            got.append(m_r(cache[tau], owner, args.recall_k, fuse))
        c = sum(g[0] for g in got) / len(got)
        f = sum(g[1] for g in got) / len(got)
        print(f"| {name} | {c:.2f} | {f:.2f} | {f - c:+.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
