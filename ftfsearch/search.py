"""The two-stage query: encode the text, recall on coarse vectors, rerank with BTI, build Results."""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from ftfsearch.area import Area
from ftfsearch.errors import BadInput, CollectionNotFound
from ftfsearch.model.base import Encoder
from ftfsearch.rerank import bti_fused
from ftfsearch.collection import collection_meta
from ftfsearch.store.base import Candidates, QueryFilter, Store, average_vector, check_meta
from ftfsearch.records import (  # noqa: F401 - re-exported: search is where callers look for them
    MAX_K, MAX_QUERY_CHARS, MAX_RECALL_K, SCORE_DECIMALS, Result, ResultRecord, WindowRecord, window_record)
from ftfsearch.area import check_bbox, parse_bbox  # noqa: F401 - parse_bbox re-exported
from ftfsearch.vector_cache import VectorCache
from ftfsearch.times import check_range, parse_time

if TYPE_CHECKING:
    from ftfsearch.examples import ExampleRef

log = logging.getLogger(__name__)

DEFAULT_VECTOR_CACHE_BYTES = 256 << 20
"""Tile vectors a long-lived Searcher keeps (about 32k tiles at D=256, R=14)."""


def _kept(payload: dict[str, Any] | None) -> dict[str, Any]:
    """A kept candidate's payload: every kept one has one (the cache or the store gave it), and
    the lists stay aligned with the ids and vectors."""
    assert payload is not None
    return payload


@dataclass
class SearchResponse:
    results: list[Result]
    timings_ms: dict[str, float]
    warnings: list[str]


def clean_query(text: str, encoder: Encoder) -> tuple[str, list[str]]:
    """Validate a query: no empty text, no control characters; over-long text is truncated with a warning."""
    warnings: list[str] = []
    if not isinstance(text, str):
        raise BadInput("`query`: must be text")
    cleaned = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    cleaned = " ".join(cleaned.split())
    if not cleaned:
        raise BadInput("`query`: is empty; give a description such as 'ships near a harbor'")
    if len(cleaned) > MAX_QUERY_CHARS:
        cleaned = cleaned[:MAX_QUERY_CHARS]
        warnings.append(f"query: longer than {MAX_QUERY_CHARS} characters; truncated")
    tokens = encoder.count_text_tokens(cleaned)
    if tokens > encoder.max_text_tokens:
        warnings.append(
            f"query: {tokens} tokens exceed the model's limit of {encoder.max_text_tokens}; "
            "the text was truncated to fit"
        )
    return cleaned, warnings


def check_model(store: Store, encoder: Encoder) -> None:
    """Refuse to query a collection filled by another model: the same rule as ingest's
    (:func:`~ftfsearch.store.base.check_meta`)."""
    meta, wanted = store.meta(), collection_meta(encoder)
    if meta == wanted:
        return  # the common case: no describe() (a request to a server) just for an error message
    location = str(store.describe().get("location"))
    if meta is None:
        raise CollectionNotFound(
            f"collection {store.collection!r} does not exist in {location}: "
            "ingest a scene into it first, or pick another `collection`"
        )
    check_meta(meta, wanted, store.collection, location)


def within_area(cands: Candidates, area: Area) -> Candidates:
    """The candidates whose footprint (in their payloads) intersects ``area``."""
    idx = [i for i, p in enumerate(cands.payloads) if area.keeps(p.get("footprint"), p.get("bbox"))]
    if len(idx) == len(cands):
        return cands

    def rows(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[idx]

    return Candidates(ids=[cands.ids[i] for i in idx], scores=cands.scores[idx],
                      payloads=[cands.payloads[i] for i in idx], coarse=rows(cands.coarse),
                      regions=rows(cands.regions), versions=rows(cands.versions))


class Searcher:
    """Answers text queries over one store with one encoder (checked against the collection once).

    With ``vector_cache_bytes`` > 0 the searcher keeps the vectors and payloads of tiles it has
    seen (:class:`~ftfsearch.vector_cache.VectorCache`): the recall then asks only for ids,
    scores and versions, and unseen tiles are fetched in one more request, with their payloads,
    so the winners need no request of their own. A one-shot query (the CLI) passes 0: candidates
    and vectors in one call, then the k winners' payloads. Both give the same results.
    """

    def __init__(self, encoder: Encoder, store: Store, vector_cache_bytes: int = DEFAULT_VECTOR_CACHE_BYTES) -> None:
        check_model(store, encoder)
        self.encoder = encoder
        self.store = store
        self._boxes = encoder.region_boxes
        self.vector_cache = (
            VectorCache(encoder.dim, encoder.num_regions, vector_cache_bytes) if vector_cache_bytes > 0 else None
        )

    def search(
        self,
        text: str | None = None,
        k: int = 10,
        recall_k: int = 100,
        rerank: bool = True,
        bbox: tuple[float, float, float, float] | None = None,
        scenes: tuple[str, ...] = (),
        examples: Sequence[ExampleRef] = (),
        after: str | datetime | None = None,
        before: str | datetime | None = None,
        area: Area | None = None,
    ) -> SearchResponse:
        """Text, examples (``like``/``unlike`` references), or both: recall, then the rerank.

        ``after``/``before`` keep tiles acquired in ``after <= acquired < before`` (ISO 8601;
        no zone means UTC); scenes without a known time never match a time range.

        With examples, recall is Qdrant's recommend query (``average_vector``) over the coarse
        vectors with the text and liked examples as positives and the unliked as negatives; the
        rerank fuses one BTI per query vector (:func:`~ftfsearch.rerank.bti_fused`). The
        examples' own tiles are never returned.

        ``area`` keeps tiles whose footprint intersects it: Qdrant filters on the tile centre
        first (:func:`~ftfsearch.area.store_filter`), then the candidates' footprints are checked,
        so a few near its edge may leave fewer than ``k``.
        """
        if not 1 <= k <= MAX_K:
            raise BadInput(f"`k` {k}: must be between 1 and {MAX_K}")
        if not 1 <= recall_k <= MAX_RECALL_K:
            raise BadInput(f"`recall_k` {recall_k}: must be between 1 and {MAX_RECALL_K}")
        recall_k = max(recall_k, k)
        after_t, before_t = parse_time(after, "after"), parse_time(before, "before")
        check_range(after_t, before_t)
        timings: dict[str, float] = {}
        pos, neg, exclude, warnings = self.query_vectors(text, examples, timings)
        # What a recalled score is the dot product of: the cache checks its vectors against it.
        score_vec = average_vector(pos, neg) if examples else pos[0]

        t0 = time.perf_counter()
        center_in: tuple[Any, ...] = ()
        if area is not None:
            from ftfsearch.area import store_filter

            bbox, center_in = store_filter(area, bbox, self.store)
        flt = QueryFilter(
            bbox=bbox, scene_ids=tuple(scenes), exclude_ids=exclude, after=after_t, before=before_t,
            center_in=center_in,
        ) if (bbox or scenes or exclude or after_t or before_t or center_in) else None
        # The rerank reads only vectors: payloads come for the k winners, not all K candidates
        # (afterwards, or with the cache misses' vectors on the cached path); an area's footprint
        # check reads every candidate's.
        cached = rerank and self.vector_cache is not None
        limit = recall_k if rerank else k
        with_payload = not rerank or (area is not None and not cached)
        if examples:
            cands = self.store.recommend(pos, neg, limit, flt=flt, with_vectors=rerank and not cached,
                                         with_payload=with_payload)
        else:
            cands = self.store.recall(pos[0], limit, flt=flt, with_vectors=rerank and not cached,
                                      with_payload=with_payload)
        timings["recall"] = (time.perf_counter() - t0) * 1000
        if cached:
            t0 = time.perf_counter()
            cands = self._with_cached_vectors(cands, score_vec)
            timings["vectors"] = (time.perf_counter() - t0) * 1000
        if area is not None:
            cands = within_area(cands, area)

        t0 = time.perf_counter()
        results = self.rank(pos, neg, cands, k, rerank)
        timings["rerank"] = (time.perf_counter() - t0) * 1000
        if rerank and results and not cached:
            t0 = time.perf_counter()
            results = self._attach_payloads(results)
            timings["payloads"] = (time.perf_counter() - t0) * 1000
        return SearchResponse(results=results, timings_ms=timings, warnings=warnings)

    def query_vectors(
        self, text: str | None, examples: Sequence[ExampleRef], timings: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], list[str]]:
        """The query as vectors: positives ``[P, D]`` (the text, liked examples), negatives
        ``[N, D]``, the examples' own tile ids (never results) and the text's warnings. One
        place for every query that scores tiles (search, change search)."""
        warnings: list[str] = []
        has_text = text is not None and bool(str(text).strip()) or not examples
        if not has_text and not any(e.positive for e in examples):
            raise BadInput("`unlike`: needs a text or at least one `like` example beside it (misses alone find nothing)")
        positives: list[np.ndarray] = []
        if has_text:
            cleaned, warnings = clean_query(text if text is not None else "", self.encoder)
            t0 = time.perf_counter()
            # a torch tensor (on the CPU) from the torch encoders, a numpy array from the query one
            positives.append(np.asarray(self.encoder.encode_text([cleaned])[0], dtype=np.float32))
            timings["encode_text"] = (time.perf_counter() - t0) * 1000
        negatives: list[np.ndarray] = []
        exclude: tuple[str, ...] = ()
        if examples:
            from ftfsearch.examples import resolve

            t0 = time.perf_counter()
            resolved = resolve(examples, self.store, self.encoder)
            timings["examples"] = (time.perf_counter() - t0) * 1000
            for ex in resolved:
                (positives if ex.ref.positive else negatives).append(np.asarray(ex.vector, dtype=np.float32))
            exclude = tuple(dict.fromkeys(ex.tile_id for ex in resolved if ex.tile_id is not None))
        pos = np.stack(positives)
        neg = np.stack(negatives) if negatives else np.zeros((0, pos.shape[1]), dtype=np.float32)
        return pos, neg, exclude, warnings

    def _with_cached_vectors(self, cands: Candidates, text: np.ndarray) -> Candidates:
        """The candidates with their vectors and payloads: from the cache where valid, else
        fetched (and cached); a candidate deleted since the recall is left out."""
        assert self.vector_cache is not None
        versions = cands.versions if cands.versions is not None else np.full(len(cands), -1, dtype=np.int64)
        coarse, regions, payloads, found = self.vector_cache.lookup(cands.ids, versions, cands.scores, text)
        keep = found.copy()
        if not found.all():
            miss = np.flatnonzero(~found)
            got_ids, got_c, got_r, got_p = self.store.get_vectors([cands.ids[i] for i in miss], with_payload=True)
            row = {i: j for j, i in enumerate(got_ids)}
            for i in miss:
                j = row.get(cands.ids[i])
                if j is not None:
                    coarse[i], regions[i], payloads[i], keep[i] = got_c[j], got_r[j], got_p[j], True
            # cached as of the recalled version: a write since then has a higher one, so it misses
            fetched = [i for i in miss if keep[i]]
            self.vector_cache.put([cands.ids[i] for i in fetched], versions[fetched], coarse[fetched],
                                  regions[fetched], [_kept(payloads[i]) for i in fetched])
        idx = np.flatnonzero(keep)
        return Candidates(ids=[cands.ids[i] for i in idx], scores=cands.scores[idx],
                          payloads=[_kept(payloads[i]) for i in idx], coarse=coarse[idx], regions=regions[idx],
                          versions=versions[idx])

    def _attach_payloads(self, results: list[Result]) -> list[Result]:
        """Fill the winners' payload fields; a tile deleted since recall is left out."""
        found = dict(self.store.get_tiles([r.id for r in results]))
        kept: list[Result] = []
        for r in results:
            p = found.get(r.id)
            if p is None:
                continue
            r.payload = p
            r.scene_id = p.get("scene_id", "")
            r.path = p.get("path", "")
            r.level = int(p.get("level", 1))
            r.window = dict(p.get("window") or {})
            r.bbox = p.get("bbox")
            r.footprint = p.get("footprint")
            r.rank = len(kept) + 1
            kept.append(r)
        return kept

    def rank(
        self, positives: np.ndarray, negatives: np.ndarray, cands: Candidates, k: int, rerank: bool
    ) -> list[Result]:
        """The top ``k`` of recalled candidates: reranked by the fused BTI of the positive and
        negative query vectors (``[P, D]``, ``[N, D]``), or in recall order."""
        n = len(cands)
        if n == 0:
            return []
        coarse_scores = np.asarray(cands.scores, dtype=np.float32)
        fine: np.ndarray | None = None
        best_region: np.ndarray | None = None
        if rerank:
            assert cands.coarse is not None and cands.regions is not None
            params = self.encoder.rerank_params
            # in numpy on the CPU: K candidates of R regions are a few matrix products, smaller
            # than a round trip to a GPU, and a query process need not import torch for them
            out = bti_fused(
                np.asarray(positives, dtype=np.float32),
                np.asarray(negatives, dtype=np.float32),
                np.asarray(cands.coarse, dtype=np.float32),
                np.asarray(cands.regions, dtype=np.float32),
                tau=params.tau,
                alpha=params.alpha,
                balanced=params.balanced,
            )
            scores = np.asarray(out.scores, dtype=np.float32)
            fine = np.asarray(out.fine, dtype=np.float32)
            best_region = np.asarray(out.attention).argmax(axis=-1)
            order = np.argsort(-scores, kind="stable")[:k]
        else:
            scores = coarse_scores
            order = np.arange(min(k, n))
        results = []
        for rank, i in enumerate(order, start=1):
            p = cands.payloads[i]
            region_index = int(best_region[i]) if best_region is not None else None
            results.append(
                Result(
                    rank=rank,
                    score=float(scores[i]),
                    coarse_score=float(coarse_scores[i]),
                    fine_score=None if fine is None else float(fine[i]),
                    id=cands.ids[i],
                    scene_id=p.get("scene_id", ""),
                    path=p.get("path", ""),
                    level=int(p.get("level", 1)),
                    window=dict(p.get("window") or {}),
                    bbox=p.get("bbox"),
                    footprint=p.get("footprint"),
                    region=None if region_index is None else [float(v) for v in self._boxes[region_index]],
                    region_index=region_index,
                    payload=p,
                )
            )
        return results
