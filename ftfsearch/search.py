"""The two-stage query: encode the text, recall on coarse vectors, rerank with BTI, build Results."""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from typing_extensions import TypedDict

from ftfsearch.area import Area
from ftfsearch.errors import BadInput, CollectionNotFound
from ftfsearch.model.base import Encoder
from ftfsearch.model.regions import region_in_window
from ftfsearch.rerank import bti_fused
from ftfsearch.collection import collection_meta
from ftfsearch.store.base import Candidates, QueryFilter, Store, average_vector, check_bbox, check_meta
from ftfsearch.vector_cache import VectorCache
from ftfsearch.times import check_range, parse_time

if TYPE_CHECKING:
    from ftfsearch.examples import ExampleRef

log = logging.getLogger(__name__)

MAX_K = 1000
MAX_RECALL_K = 10000
MAX_QUERY_CHARS = 2000
SCORE_DECIMALS = 4
"""Scores and tile fractions in JSON: what they mean (a float32's 1/3 is 0.3333333432674408)."""
DEFAULT_VECTOR_CACHE_BYTES = 256 << 20
"""Tile vectors a long-lived Searcher keeps (about 32k tiles at D=256, R=14)."""


class WindowRecord(TypedDict):
    """A pixel window of a scene."""

    col: int
    row: int
    width: int
    height: int


class ResultRecord(TypedDict):
    """A result as ``query --json`` prints it, GeoJSON properties hold it and the API's hits
    extend it: the one description of a result outside Python. (typing_extensions' TypedDict:
    pydantic wants it on Python 3.11, for the API's schema.)"""

    rank: int
    score: float
    coarse_score: float
    fine_score: float | None
    """the rerank score; null without rerank"""
    id: str
    """tile id"""
    scene_id: str
    path: str
    """the scene's source raster"""
    level: int
    """scene pixels per tile pixel"""
    window: WindowRecord
    """the tile in scene pixels"""
    bbox: list[float] | None
    """[minlon, minlat, maxlon, maxlat] WGS84; null without CRS"""
    acquired: str | None
    """acquisition time of the scene, ISO 8601 UTC; null when unknown"""
    region: list[float] | None
    """matched region [x0, y0, x1, y1] as fractions of the tile; null without rerank"""
    region_window: WindowRecord | None
    """matched region in scene pixels"""
    region_index: int | None
    """the matched region's index (REF:N of like_region); null without rerank"""
    footprint: list[list[float]] | None
    """WGS84 ring [[lon, lat], ...] of the tile; null without CRS"""


# The attribute docstrings above become the API schema's descriptions (pydantic's hook; a class
# attribute set after the body, since in it mypy would take it for a key).
ResultRecord.__pydantic_config__ = {"use_attribute_docstrings": True}  # type: ignore[attr-defined]


def _kept(payload: dict[str, Any] | None) -> dict[str, Any]:
    """A kept candidate's payload: every kept one has one (the cache or the store gave it), and
    the lists stay aligned with the ids and vectors."""
    assert payload is not None
    return payload


def window_record(window: dict[str, int]) -> WindowRecord:
    return WindowRecord(col=int(window["col"]), row=int(window["row"]),
                        width=int(window["width"]), height=int(window["height"]))


@dataclass
class Result:
    """One ranked tile: where it is in its scene and on Earth, and which region matched."""

    rank: int
    score: float
    coarse_score: float
    id: str
    scene_id: str
    path: str
    level: int
    window: dict[str, int]
    """``{col, row, width, height}`` in scene pixels."""
    bbox: list[float] | None
    """``[minlon, minlat, maxlon, maxlat]`` WGS84; None for rasters without CRS."""
    footprint: list[list[float]] | None
    region: list[float] | None
    """Best-matching region ``[x0, y0, x1, y1]`` as fractions of the tile; None without rerank."""
    region_index: int | None = None
    fine_score: float | None = None
    payload: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def acquired(self) -> str | None:
        """The scene's acquisition time, ISO 8601 UTC; None when unknown."""
        return self.payload.get("acquired")

    def to_dict(self) -> ResultRecord:
        """Stable field names for ``--json``, GeoJSON and the HTTP API."""
        return ResultRecord(
            rank=self.rank,
            score=round(self.score, SCORE_DECIMALS),
            coarse_score=round(self.coarse_score, SCORE_DECIMALS),
            fine_score=None if self.fine_score is None else round(self.fine_score, SCORE_DECIMALS),
            id=self.id,
            scene_id=self.scene_id,
            path=self.path,
            level=self.level,
            window=window_record(self.window),
            bbox=self.bbox,
            acquired=self.acquired,
            region=None if self.region is None else [round(v, SCORE_DECIMALS) for v in self.region],
            region_window=self.region_window(),
            region_index=self.region_index,
            footprint=self.footprint,
        )

    def region_window(self) -> WindowRecord | None:
        """The matched region in scene pixels."""
        if self.region is None:
            return None
        w, h = self.window["width"], self.window["height"]
        x0, y0, x1, y1 = region_in_window(self.region, w, h, self.payload.get("tile_size"), self.level)
        c0, r0 = self.window["col"], self.window["row"]
        col, row = c0 + min(int(round(x0)), w - 1), r0 + min(int(round(y0)), h - 1)
        return WindowRecord(
            col=col, row=row, width=max(1, c0 + int(round(x1)) - col), height=max(1, r0 + int(round(y1)) - row)
        )


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


def parse_bbox(value: str | None) -> tuple[float, float, float, float] | None:
    """Parse ``minlon,minlat,maxlon,maxlat`` (WGS84); the checks are the store's
    (:func:`~ftfsearch.store.base.check_bbox`: a point or a line is a box too)."""
    if value is None:
        return None
    parts = [p.strip() for p in str(value).split(",")]
    try:
        if len(parts) != 4:
            raise ValueError(value)
        numbers = (float(parts[0]), float(parts[1]), float(parts[2]), float(parts[3]))
    except ValueError as exc:
        raise BadInput(f"`bbox` {str(value)[:200]!r}: expected four numbers minlon,minlat,maxlon,maxlat") from exc
    return check_bbox(numbers, shown=str(value))


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
