"""Every tile above a threshold (``ftfsearch find``): Qdrant's own exact search with a score
threshold names the hits (ids only, a page of ids at a time), then only the hits' vectors are read
and scored here, page by page, so memory holds one page whatever the number of hits, no ``k`` caps
the answer, and the tiles below the threshold are never read (a scroll of every tile's regions was
43x slower for the same set: BENCHMARKS.md, issue 24).

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
from ftfsearch.records import FIND_PAGE as PAGE
from ftfsearch.records import MAX_HITS
from ftfsearch.store.base import QueryFilter, Store, TileBatch

SAMPLE = 4096
"""Tiles scored to choose the default threshold and to estimate the number of hits."""
ROBUST_Z = 4.0
"""The default threshold: this many robust standard deviations above the sample's median."""
ID_PAGE = 16384
"""Hit ids named per threshold search (ids and scores only: about 2 MB); each further page is one
more exact pass over the scope (Qdrant pages a search by offset)."""
MARGIN = 1e-3
"""The search asks for ``threshold - MARGIN`` and every hit is scored again here from its stored
vectors, so Qdrant's rounding (it scores its own normalised copy) can neither add nor drop a tile at
the threshold: the set is exactly what scoring every tile here would keep."""


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
    """Cosines, row by row (einsum, not a BLAS product whose rounding can depend on how many tiles a
    page holds), so a tile's score is the same whichever page reads it."""
    return np.einsum("ij,j->i", unit(batch.coarse), np.asarray(query, dtype=np.float32))


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


def above_ids(store: Store, query: np.ndarray, threshold: float, flt: QueryFilter | None,
              id_page: int = ID_PAGE) -> Iterator[list[str]]:
    """The ids of the tiles scoring at least ``threshold - MARGIN``, best first, ``id_page`` at a time."""
    offset = 0
    while True:
        got = store.above(query, threshold - MARGIN, flt, limit=id_page, offset=offset)
        if len(got):
            yield got.ids
        if len(got) < id_page:
            return
        offset += len(got)


def find_pages(store: Store, query: np.ndarray, threshold: float, flt: QueryFilter | None,
               area: Area | None, page: int = PAGE, id_page: int = ID_PAGE) -> Iterator[list[Hit]]:
    """The hits, ``page`` tiles read at a time (a page left empty is skipped), best region found
    per hit; best first within each ``id_page``."""
    for ids in above_ids(store, query, threshold, flt, id_page):
        for at in range(0, len(ids), page):
            got, coarse, regions, payloads = store.get_vectors(ids[at:at + page], with_payload=True)
            batch = TileBatch(got, np.asarray(coarse, dtype=np.float32), regions, payloads)
            scores = score_batch(batch, query)
            keep = np.flatnonzero((scores >= threshold) & in_area(batch, area))
            if len(keep) == 0:
                continue
            best = np.argmax(unit(np.asarray(batch.regions[keep], dtype=np.float32)) @ query, axis=-1)
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
