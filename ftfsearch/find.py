"""Every tile above a threshold (``ftfsearch find``): a scan of the tiles in scope, scored page by
page, so memory holds one page whatever the number of hits, and no ``k`` caps the answer.

A tile's score is the cosine of its coarse vector with the query vector (the text's, or the
examples' ``2 avg(like) - avg(unlike)``, as recall uses); its matched region is the region whose
vector is closest to the query. Without ``min_score`` the threshold comes from the scores of a
sample of the tiles in scope (:func:`default_threshold`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ftfsearch.area import Area
from ftfsearch.errors import BadInput
from ftfsearch.store.base import QueryFilter, Store, TileBatch

PAGE = 1024
SAMPLE = 4096
"""Tiles scored to choose the default threshold and to estimate the number of hits."""
ROBUST_Z = 4.0
"""The default threshold: this many robust standard deviations above the sample's median."""
MAX_HITS = 1_000_000
"""A find estimated to return more tiles than this is refused: narrow it or raise the threshold."""


@dataclass(frozen=True)
class Hit:
    """A found tile: its score, its matched region, and its payload fields."""

    id: str
    score: float
    region_index: int
    payload: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """What a find will do: its threshold, how it was chosen, and the size of its scope."""

    threshold: float
    threshold_source: str
    scope: int
    sampled: int
    estimated: int


def default_threshold(scores: np.ndarray) -> float:
    """``median + 4 x 1.4826 x MAD`` of the sampled scores: a tile must stand out from the typical
    tile in scope by four robust standard deviations (about 3 in 100,000 of a normal spread)."""
    median = float(np.median(scores))
    mad = float(np.median(np.abs(scores - median))) * 1.4826
    return median + ROBUST_Z * max(mad, 1e-6)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def score_batch(batch: TileBatch, query: np.ndarray) -> np.ndarray:
    return unit(batch.coarse) @ query


def in_area(batch: TileBatch, area: Area | None) -> np.ndarray:
    if area is None:
        return np.ones(len(batch), dtype=bool)
    return np.array([area.keeps(p.get("footprint"), p.get("bbox")) for p in batch.payloads], dtype=bool)


def plan(store: Store, query: np.ndarray, flt: QueryFilter | None, area: Area | None, min_score: float | None,
         max_hits: int = MAX_HITS, sample: int = SAMPLE) -> Plan:
    """Score a sample of the scope (the first tiles of the scan: ids are hashes, so a fair draw),
    choose the threshold, estimate the hits, and refuse a find past ``max_hits``."""
    scope = store.count_tiles(within=flt)
    scores: list[np.ndarray] = []
    seen = 0
    for batch in store.scan(flt, page=min(PAGE, sample)):
        keep = in_area(batch, area)
        scores.append(score_batch(batch, query)[keep])
        seen += len(batch)
        if seen >= sample:
            break
    got = np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)
    if min_score is not None:
        threshold, source = float(min_score), "given (--min-score)"
    elif len(got) == 0:
        threshold, source = 1.0, "no tile in scope"
    else:
        threshold = default_threshold(got)
        source = f"median + {ROBUST_Z:g} robust SD of {len(got)} sampled tiles' scores"
    share = float(np.mean(got >= threshold)) if len(got) else 0.0
    in_scope = scope * (len(got) / seen) if seen else 0  # the area drops some of the prefiltered tiles
    estimated = int(round(share * in_scope))
    if estimated > max_hits:
        higher = float(np.quantile(got, 1 - max_hits / max(in_scope, 1))) if len(got) else threshold
        raise BadInput(
            f"`min_score` {threshold:.4f}: would return about {estimated:,} tiles (more than {max_hits:,}); "
            f"raise it (about {higher:.4f} keeps {max_hits:,}) or narrow the search with `aoi`, `bbox`, `scene`, "
            "`after` or `before`"
        )
    return Plan(threshold=threshold, threshold_source=source, scope=int(round(in_scope)), sampled=len(got),
                estimated=estimated)


def find_pages(store: Store, query: np.ndarray, threshold: float, flt: QueryFilter | None,
               area: Area | None, page: int = PAGE) -> Iterator[list[Hit]]:
    """The hits of each scanned page (an empty page is skipped), best region found per hit."""
    for batch in store.scan(flt, page=page):
        scores = score_batch(batch, query)
        keep = np.flatnonzero((scores >= threshold) & in_area(batch, area))
        if len(keep) == 0:
            continue
        regions = unit(np.asarray(batch.regions[keep], dtype=np.float32))
        best = np.argmax(regions @ query, axis=-1)
        yield [Hit(batch.ids[i], float(scores[i]), int(best[j]), batch.payloads[i]) for j, i in enumerate(keep)]


def query_vector(encoder: Any, store: Store, text: str | None, examples: Any) -> tuple[np.ndarray, list[str]]:
    """The unit query vector of a text and/or examples (what recall searches with), and the
    text's warnings."""
    from ftfsearch.examples import resolve
    from ftfsearch.search import clean_query
    from ftfsearch.store.base import average_vector

    warnings: list[str] = []
    positives: list[np.ndarray] = []
    negatives: list[np.ndarray] = []
    if (text is not None and text.strip()) or not examples:
        cleaned, warnings = clean_query(text or "", encoder)
        positives.append(encoder.encode_text([cleaned])[0].float().cpu().numpy())
    for ex in resolve(list(examples), store, encoder) if examples else []:
        (positives if ex.ref.positive else negatives).append(np.asarray(ex.vector, dtype=np.float32))
    if examples:
        neg = np.stack(negatives) if negatives else np.zeros((0, positives[0].shape[0]), dtype=np.float32)
        return unit(average_vector(np.stack(positives), neg)), warnings
    return unit(positives[0]), warnings
