"""Change search: the places covered in two time ranges, ranked by how much a query's score rose
(or fell) between them, or, without a query, by how far their vectors moved.

Matching on the ground: tiles of different scenes do not share windows, so each place of the
``after`` range is paired with the ``before`` tile of the same level whose WGS84 box overlaps it
most (intersection over union at least :data:`MIN_OVERLAP`). This needs no second index and no
resampling of vectors: a ground grid per level would have to average or pick the tiles falling
in each cell, which blurs a small change over its neighbours; the best match at the same level
compares two tiles of the same size that show (almost) the same ground, which is what a tile's
vectors describe.

Several scenes covering a place in one range: the **latest** one is kept (the most recent view of
the place in that range; a mean would blend what the change is about, a best would pick a
different scene per query). Ties of time go to the larger overlap.

Fast then fine, as a search is: the first stage reads only what every tile in scope needs for
pairing and a coarse change (coarse vectors, boxes, levels, scenes: ``Store.scan_coarse``, no
region vectors), pairs places with a sorted ground grid (no loop per tile) and ranks them by the
coarse change (the rise of the query's coarse score; without a query, ``(1 - cos(g_before,
g_after)) / 2``). The second stage reads the regions and payloads of the :func:`shortlist` only
(``max(4 k, 200)`` places) and ranks them by the change of the two-stage score of
:meth:`~ftfsearch.search.Searcher.rank` (BTI); without a query, by the movement
``(1 - cos(g_before, g_after)) / 2 + (1 - min_j cos(r_before_j, r_after_j)) / 2``: the whole tile's
shift and its most-changed region, so a change filling one region ranks as it should. A place
whose change shows in its regions but hardly in its coarse vectors can fall outside the
shortlist; ``exhaustive=True`` scores every pair (what the fast path is tested against).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftfsearch.area import Area
from ftfsearch.errors import BadInput
from ftfsearch.examples import ExampleRef
from ftfsearch.records import ChangeHit, Result
from ftfsearch.search import Searcher
from ftfsearch.store.base import Candidates, QueryFilter, SceneRecord, Store, average_vector
from ftfsearch.times import TimeRange, iso_utc, read_time

MIN_OVERLAP = 0.5
"""Two tiles show the same place when their boxes' intersection over union is at least this."""


@dataclass
class ChangeResponse:
    hits: list[ChangeHit]
    timings_ms: dict[str, float]
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Side:
    """The tiles of one range in the area, one per place (the latest scene's): what the first
    stage reads of every tile (no region vectors, no full payload)."""

    ids: list[str]
    coarse: np.ndarray
    """``[N, D]`` float32 unit coarse vectors."""
    boxes: np.ndarray
    """``[N, 4]`` WGS84 boxes."""
    levels: np.ndarray
    times: np.ndarray
    """``[N]`` acquisition times as POSIX seconds."""

    def take(self, keep: np.ndarray) -> "_Side":
        return _Side([self.ids[i] for i in keep], self.coarse[keep], self.boxes[keep], self.levels[keep],
                      self.times[keep])


def _scene_time(scene: SceneRecord) -> float | None:
    when = read_time(str(scene.extra.get("acquired") or ""))
    return None if when is None else when.timestamp()


def _intersects(box: Sequence[float], bbox: tuple[float, float, float, float] | None) -> bool:
    return bbox is None or not (box[2] < bbox[0] or box[0] > bbox[2] or box[3] < bbox[1] or box[1] > bbox[3])


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of the boxes ``a[i]`` and ``b[i]``, row by row."""
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.asarray(inter / np.maximum(union, 1e-30))


def _overlapping(a: _Side, b: _Side) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i in a, j in b, IoU)`` of every pair of tiles of the same level whose IoU is at least
    :data:`MIN_OVERLAP`, without an N x M matrix or a loop per tile: the tiles' centres are binned
    in a ground grid of cells as large as the level's largest tile side (two tiles that overlap
    have centres at most one such side apart, so in the same or a neighbouring cell), ``b``'s cells
    are sorted once and each of the 9 neighbouring cells of every ``a`` tile is one
    ``searchsorted``."""
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for level in np.intersect1d(a.levels, b.levels):
        ia, ib = np.flatnonzero(a.levels == level), np.flatnonzero(b.levels == level)
        ba, bb = a.boxes[ia], b.boxes[ib]
        both = np.concatenate([ba, bb])
        size = float(max(np.max(both[:, 2] - both[:, 0]), np.max(both[:, 3] - both[:, 1]), 1e-12))
        ca = np.floor(np.c_[ba[:, 0] + ba[:, 2], ba[:, 1] + ba[:, 3]] / (2 * size)).astype(np.int64)
        cb = np.floor(np.c_[bb[:, 0] + bb[:, 2], bb[:, 1] + bb[:, 3]] / (2 * size)).astype(np.int64)
        low = np.minimum(ca.min(axis=0), cb.min(axis=0)) - 1
        rows = int(max(ca[:, 1].max(), cb[:, 1].max()) - low[1] + 3)
        key_b = (cb[:, 0] - low[0]) * rows + (cb[:, 1] - low[1])
        order = np.argsort(key_b, kind="stable")
        sorted_b = key_b[order]
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                key = (ca[:, 0] + dx - low[0]) * rows + (ca[:, 1] + dy - low[1])
                lo, hi = np.searchsorted(sorted_b, key, "left"), np.searchsorted(sorted_b, key, "right")
                count = hi - lo
                if not count.any():
                    continue
                ra = np.repeat(np.arange(len(ia)), count)
                first = np.repeat(lo - (np.cumsum(count) - count), count)
                rb = order[first + np.arange(len(ra))]
                iou = _pair_iou(ba[ra], bb[rb])
                ok = iou >= MIN_OVERLAP
                out.append((ia[ra[ok]], ib[rb[ok]], iou[ok]))
    if not out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return (np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out]),
            np.concatenate([o[2] for o in out]))


def _load_side(store: Store, scenes: list[tuple[SceneRecord, float]], bbox: tuple[float, float, float, float] | None,
               dim: int, area: Area | None = None) -> _Side:
    """Every tile of ``scenes`` in the area (coarse vectors, boxes, levels, times: no regions),
    then one per place: a tile is dropped where a later scene's tile of the same level covers the
    same place (the *latest* rule)."""
    when = {s.scene_id: t for s, t in scenes}
    fields = ["scene_id", "bbox", "level"] + (["footprint"] if area is not None else [])
    ids: list[str] = []
    coarse: list[np.ndarray] = []
    boxes: list[list[float]] = []
    levels: list[int] = []
    times: list[float] = []
    for batch in store.scan_coarse(QueryFilter(bbox=bbox, scene_ids=tuple(when)), fields):
        keep = [i for i, p in enumerate(batch.payloads) if p.get("bbox") and _intersects(p["bbox"], bbox)
                and (area is None or area.keeps(p.get("footprint"), p["bbox"]))]
        if not keep:
            continue
        ids += [batch.ids[i] for i in keep]
        coarse.append(batch.coarse[keep])
        boxes += [batch.payloads[i]["bbox"] for i in keep]
        levels += [int(batch.payloads[i].get("level", 1)) for i in keep]
        times += [when[batch.payloads[i]["scene_id"]] for i in keep]
    side = _Side(ids, np.concatenate(coarse) if coarse else np.zeros((0, dim), np.float32),
                 np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(levels, dtype=np.int64),
                 np.asarray(times, dtype=np.float64))
    if len(scenes) < 2:
        return side
    i, j, _ = _overlapping(side, side)
    hidden = np.unique(i[side.times[j] > side.times[i]])
    return side.take(np.setdiff1d(np.arange(len(side.ids)), hidden))


def match_places(before: _Side, after: _Side) -> tuple[np.ndarray, np.ndarray]:
    """``(before indices, after indices)`` of each place covered in both: every ``after`` tile and
    the ``before`` tile of its level overlapping it most (IoU >= :data:`MIN_OVERLAP`)."""
    ia, ib, iou = _overlapping(after, before)
    order = np.lexsort((-iou, ia))  # by after tile, the best overlap first
    ia, ib = ia[order], ib[order]
    first = np.r_[True, ia[1:] != ia[:-1]] if len(ia) else np.zeros(0, bool)
    return ib[first], ia[first]


def _scenes_in(scenes: list[tuple[SceneRecord, float]], rng: TimeRange) -> list[tuple[SceneRecord, float]]:
    return [(s, t) for s, t in scenes if rng.holds(read_time(str(s.extra["acquired"])))]  # type: ignore[arg-type]


def _nothing_to_compare(before: TimeRange, after: TimeRange, dated: list[tuple[SceneRecord, float]],
                        why: str) -> BadInput:
    dates = sorted({iso_utc(read_time(str(s.extra["acquired"]))) for s, _ in dated})  # type: ignore[arg-type]
    has = ", ".join(dates[:12]) + (f" and {len(dates) - 12} more" if len(dates) > 12 else "") if dates else "none"
    return BadInput(f"`before` {before} and `after` {after}: {why}; the area's dated scenes were acquired: {has}")


def change_search(searcher: Searcher, before: TimeRange, after: TimeRange, text: str | None = None,
                  examples: Sequence[ExampleRef] = (), k: int = 10,
                  bbox: tuple[float, float, float, float] | None = None, disappeared: bool = False,
                  area: Area | None = None, exhaustive: bool = False) -> ChangeResponse:
    """The ``k`` places covered in both ranges that changed most (see the module docstring), in
    ``bbox`` and ``area`` (tiles whose footprint intersects it) when given. ``exhaustive`` scores
    every pair with the second stage instead of the :func:`shortlist` (what the fast path is
    checked against). Raises :class:`BadInput` naming the dates the area has when no place is
    covered in both."""
    store = searcher.store
    if area is not None:
        west, south, east, north = area.bounds
        bbox = (west, south, east, north) if bbox is None else (
            max(west, bbox[0]), max(south, bbox[1]), min(east, bbox[2]), min(north, bbox[3]))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    dated = [(s, t) for s in store.list_scenes() if s.state == "complete" and (t := _scene_time(s)) is not None
             and (s.bbox is None or _intersects(s.bbox, bbox))]
    in_before, in_after = _scenes_in(dated, before), _scenes_in(dated, after)
    if not in_before or not in_after:
        missing = "`before`" if not in_before else "`after`"
        raise _nothing_to_compare(before, after, dated, f"no scene of the area was acquired in {missing}")
    dim = searcher.encoder.dim
    side_b = _load_side(store, in_before, bbox, dim, area)
    side_a = _load_side(store, in_after, bbox, dim, area)
    timings["load"] = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    bi, ai = match_places(side_b, side_a)
    timings["match"] = (time.perf_counter() - t0) * 1000
    if not len(bi):
        raise _nothing_to_compare(before, after, dated, "no place is covered in both (the scenes do not overlap)")
    warnings: list[str] = []
    scored = text is not None or bool(examples)
    pos = neg = np.zeros((0, dim), np.float32)
    if scored:
        pos, neg, _, warnings = searcher.query_vectors(text, examples, timings)
    t0 = time.perf_counter()
    if scored:  # the coarse stage's score: the query's coarse vector, as recall ranks tiles
        q = average_vector(pos, neg)
        coarse_change = side_a.coarse[ai] @ q - side_b.coarse[bi] @ q
        coarse_change = -coarse_change if disappeared else coarse_change
    else:
        coarse_change = (1 - np.einsum("nd,nd->n", side_b.coarse[bi], side_a.coarse[ai])) / 2
    top = np.arange(len(bi)) if exhaustive else shortlist(coarse_change, k)
    bi, ai = bi[top], ai[top]
    timings["coarse"] = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    fine_b, fine_a = _fetch(store, [side_b.ids[i] for i in bi], [side_a.ids[i] for i in ai])
    timings["fetch"] = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    if scored:
        results_b = _ranked(searcher, pos, neg, fine_b)
        results_a = _ranked(searcher, pos, neg, fine_a)
        change = np.asarray([ra.score - rb.score for rb, ra in zip(results_b, results_a)])
        change = -change if disappeared else change
    else:
        coarse_cos = np.einsum("nd,nd->n", fine_b.coarse, fine_a.coarse)
        region_cos = np.einsum("nrd,nrd->nr", fine_b.regions.astype(np.float32), fine_a.regions.astype(np.float32))
        worst = region_cos.argmin(axis=1)
        change = (1 - coarse_cos) / 2 + (1 - region_cos[np.arange(len(worst)), worst]) / 2
        boxes = searcher.encoder.region_boxes
        results_b = [_unscored(fine_b, n, int(w), boxes) for n, w in enumerate(worst)]
        results_a = [_unscored(fine_a, n, int(w), boxes) for n, w in enumerate(worst)]
    order = np.argsort(-change, kind="stable")[:k]
    timings["score"] = (time.perf_counter() - t0) * 1000
    hits = [ChangeHit(rank=r, change=float(change[i]), before=results_b[i], after=results_a[i], scored=scored)
            for r, i in enumerate(order, start=1)]
    return ChangeResponse(hits=hits, timings_ms=timings, warnings=warnings)


OVERFETCH = 4
"""The second stage scores ``max(OVERFETCH * k, MIN_SHORTLIST)`` places, the most changed by
the coarse vectors (as a search reranks the top of its recall, not every tile)."""
MIN_SHORTLIST = 200


def shortlist(coarse_change: np.ndarray, k: int) -> np.ndarray:
    """Indices of the places the second stage scores: the ``max(OVERFETCH k, MIN_SHORTLIST)``
    largest coarse changes, in no particular order (all of them when there are fewer)."""
    m = max(OVERFETCH * k, MIN_SHORTLIST)
    if m >= len(coarse_change):
        return np.arange(len(coarse_change))
    return np.argpartition(-coarse_change, m - 1)[:m]


@dataclass
class _Tiles:
    """Tiles with everything the second stage and the results need, aligned to the places."""

    ids: list[str]
    coarse: np.ndarray
    regions: np.ndarray
    payloads: list[dict[str, Any]]


def _fetch(store: Store, before_ids: list[str], after_ids: list[str]) -> tuple[_Tiles, _Tiles]:
    """Both tiles of each place with regions and payloads, read by id (one read for both sides;
    a tile shared by two places is read once). Places whose tile was deleted since the scan are
    dropped."""
    found, coarse, regions, payloads = store.get_vectors(list(dict.fromkeys(before_ids + after_ids)),
                                                         with_payload=True)
    at = {i: n for n, i in enumerate(found)}
    keep = [n for n, (b, a) in enumerate(zip(before_ids, after_ids)) if b in at and a in at]

    def side(ids: list[str]) -> _Tiles:
        rows = np.asarray([at[ids[n]] for n in keep], dtype=np.int64)
        return _Tiles([ids[n] for n in keep], coarse[rows], regions[rows], [payloads[r] for r in rows])

    return side(before_ids), side(after_ids)


def _ranked(searcher: Searcher, pos: np.ndarray, neg: np.ndarray, tiles: _Tiles) -> list[Result]:
    """The two-stage score of ``tiles``, in their order (the search's own rank)."""
    cands = Candidates(ids=tiles.ids, scores=tiles.coarse @ pos[0], payloads=tiles.payloads, coarse=tiles.coarse,
                       regions=tiles.regions)
    ranked = searcher.rank(pos, neg, cands, len(cands), rerank=True)
    by_id = {r.id: r for r in ranked}
    return [by_id[i] for i in tiles.ids]


def _unscored(tiles: _Tiles, i: int, region: int, boxes: Any) -> Result:
    """A tile of a change without a query: where it is and which region moved most."""
    p = tiles.payloads[i]
    return Result(rank=0, score=0.0, coarse_score=0.0, id=tiles.ids[i], scene_id=p.get("scene_id", ""),
                  path=p.get("path", ""), level=int(p.get("level", 1)), window=dict(p.get("window") or {}),
                  bbox=p.get("bbox"), footprint=p.get("footprint"), region=[float(v) for v in boxes[region]],
                  region_index=region, payload=p)
