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

The scores are the two-stage score of :meth:`~ftfsearch.search.Searcher.rank` (BTI rerank over
every tile of both ranges in the area); without a query, the movement of a pair is
``(1 - cos(g_before, g_after)) / 2 + (1 - min_j cos(r_before_j, r_after_j)) / 2``: the whole tile's
shift and its most-changed region, so a change filling one region ranks as it should.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftfsearch.area import Area
from ftfsearch.errors import BadInput
from ftfsearch.examples import ExampleRef
from ftfsearch.records import ChangeHit, Result
from ftfsearch.search import Searcher
from ftfsearch.store.base import Candidates, SceneRecord, Store
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
    """The tiles of one range in the area, one per place (the latest scene's)."""

    ids: list[str]
    coarse: np.ndarray
    regions: np.ndarray
    payloads: list[dict[str, Any]]
    boxes: np.ndarray
    """``[N, 4]`` WGS84 boxes."""
    levels: np.ndarray
    times: np.ndarray
    """``[N]`` acquisition times as POSIX seconds."""


def _scene_time(scene: SceneRecord) -> float | None:
    when = read_time(str(scene.extra.get("acquired") or ""))
    return None if when is None else when.timestamp()


def _intersects(box: Sequence[float], bbox: tuple[float, float, float, float] | None) -> bool:
    return bbox is None or not (box[2] < bbox[0] or box[0] > bbox[2] or box[3] < bbox[1] or box[1] > bbox[3])


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-30))


class _Grid:
    """Boxes bucketed by a cell of about a tile's size: the boxes near a box without an N x M matrix."""

    def __init__(self, boxes: np.ndarray) -> None:
        self.boxes = boxes
        widths = np.r_[boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]]
        self.size = float(np.median(widths)) if len(widths) else 1.0
        self.size = self.size if self.size > 0 else 1e-9
        self.cells: dict[tuple[int, int], list[int]] = defaultdict(list)
        for j, box in enumerate(boxes):
            for cell in self._cells(box):
                self.cells[cell].append(j)

    def _cells(self, box: np.ndarray) -> list[tuple[int, int]]:
        s = self.size
        return [(x, y) for x in range(int(box[0] // s), int(box[2] // s) + 1)
                for y in range(int(box[1] // s), int(box[3] // s) + 1)]

    def near(self, box: np.ndarray) -> np.ndarray:
        found: set[int] = set()
        for cell in self._cells(box):
            found.update(self.cells.get(cell, ()))
        return np.fromiter(found, dtype=np.int64, count=len(found))


def _load_side(store: Store, scenes: list[tuple[SceneRecord, float]], bbox: tuple[float, float, float, float] | None,
               dim: int, num_regions: int, area: Area | None = None) -> _Side:
    """Every tile of ``scenes`` in the area, then one per place: a tile is dropped where a later
    scene's tile of the same level covers the same place (the *latest* rule)."""
    ids: list[str] = []
    coarse: list[np.ndarray] = []
    regions: list[np.ndarray] = []
    payloads: list[dict[str, Any]] = []
    boxes: list[list[float]] = []
    levels: list[int] = []
    times: list[float] = []
    for scene, when in scenes:
        for batch in store.scan_tiles(scene.scene_id):
            keep = [i for i, p in enumerate(batch.payloads) if p.get("bbox") and _intersects(p["bbox"], bbox)
                    and (area is None or area.keeps(p.get("footprint"), p["bbox"]))]
            if not keep:
                continue
            ids += [batch.ids[i] for i in keep]
            coarse.append(np.asarray(batch.coarse[keep], dtype=np.float32))
            regions.append(np.asarray(batch.regions[keep]))
            payloads += [batch.payloads[i] for i in keep]
            boxes += [[float(v) for v in batch.payloads[i]["bbox"]] for i in keep]
            levels += [int(batch.payloads[i].get("level", 1)) for i in keep]
            times += [when] * len(keep)
    side = _Side(ids, np.concatenate(coarse) if coarse else np.zeros((0, dim), np.float32),
                 np.concatenate(regions) if regions else np.zeros((0, num_regions, dim), np.float16),
                 payloads, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(levels, dtype=np.int64),
                 np.asarray(times, dtype=np.float64))
    if len(scenes) < 2:
        return side
    keep_mask = np.ones(len(side.ids), dtype=bool)
    for level in np.unique(side.levels):
        idx = np.flatnonzero(side.levels == level)
        grid = _Grid(side.boxes[idx])
        for n, i in enumerate(idx):
            near = grid.near(side.boxes[i])
            near = near[near != n]
            later = near[side.times[idx[near]] > side.times[i]]
            if len(later) and (_iou(side.boxes[i], side.boxes[idx[later]]) >= MIN_OVERLAP).any():
                keep_mask[i] = False
    k = np.flatnonzero(keep_mask)
    return _Side([side.ids[i] for i in k], side.coarse[k], side.regions[k], [side.payloads[i] for i in k],
                 side.boxes[k], side.levels[k], side.times[k])


def match_places(before: _Side, after: _Side) -> list[tuple[int, int]]:
    """``(before index, after index)`` of each place covered in both: every ``after`` tile and the
    ``before`` tile of its level overlapping it most (IoU >= :data:`MIN_OVERLAP`)."""
    pairs: list[tuple[int, int]] = []
    for level in np.unique(after.levels):
        b_idx = np.flatnonzero(before.levels == level)
        if not len(b_idx):
            continue
        grid = _Grid(before.boxes[b_idx])
        for a in np.flatnonzero(after.levels == level):
            near = grid.near(after.boxes[a])
            if not len(near):
                continue
            iou = _iou(after.boxes[a], before.boxes[b_idx[near]])
            best = int(np.argmax(iou))
            if iou[best] >= MIN_OVERLAP:
                pairs.append((int(b_idx[near[best]]), int(a)))
    return pairs


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
                  area: Area | None = None) -> ChangeResponse:
    """The ``k`` places covered in both ranges that changed most (see the module docstring), in
    ``bbox`` and ``area`` (tiles whose footprint intersects it) when given.
    Raises :class:`BadInput` naming the dates the area has when no place is covered in both."""
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
    dim, num_regions = searcher.encoder.dim, searcher.encoder.num_regions
    side_b = _load_side(store, in_before, bbox, dim, num_regions, area)
    side_a = _load_side(store, in_after, bbox, dim, num_regions, area)
    timings["load"] = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    pairs = match_places(side_b, side_a)
    timings["match"] = (time.perf_counter() - t0) * 1000
    if not pairs:
        raise _nothing_to_compare(before, after, dated, "no place is covered in both (the scenes do not overlap)")
    bi = np.asarray([p[0] for p in pairs])
    ai = np.asarray([p[1] for p in pairs])
    warnings: list[str] = []
    t0 = time.perf_counter()
    scored = text is not None or bool(examples)
    if scored:
        pos, neg, _, warnings = searcher.query_vectors(text, examples, timings)
        results_b = _ranked(searcher, pos, neg, side_b, bi)
        results_a = _ranked(searcher, pos, neg, side_a, ai)
        change = np.asarray([ra.score - rb.score for rb, ra in zip(results_b, results_a)])
    else:
        coarse_cos = np.einsum("nd,nd->n", side_b.coarse[bi], side_a.coarse[ai])
        region_cos = np.einsum("nrd,nrd->nr", side_b.regions[bi].astype(np.float32),
                               side_a.regions[ai].astype(np.float32))
        worst = region_cos.argmin(axis=1)
        change = (1 - coarse_cos) / 2 + (1 - region_cos[np.arange(len(pairs)), worst]) / 2
        boxes = searcher.encoder.region_boxes
        results_b = [_unscored(side_b, int(i), int(w), boxes) for i, w in zip(bi, worst)]
        results_a = [_unscored(side_a, int(i), int(w), boxes) for i, w in zip(ai, worst)]
    if disappeared and scored:
        change = -change
    order = np.argsort(-change, kind="stable")[:k]
    timings["score"] = (time.perf_counter() - t0) * 1000
    hits = [ChangeHit(rank=r, change=float(change[i]), before=results_b[i], after=results_a[i], scored=scored)
            for r, i in enumerate(order, start=1)]
    return ChangeResponse(hits=hits, timings_ms=timings, warnings=warnings)


def _ranked(searcher: Searcher, pos: np.ndarray, neg: np.ndarray, side: _Side, idx: np.ndarray) -> list[Result]:
    """The two-stage score of the tiles ``idx`` of ``side``, in that order (the search's own rank)."""
    coarse = side.coarse[idx]
    cands = Candidates(ids=[side.ids[i] for i in idx], scores=coarse @ pos[0],
                       payloads=[side.payloads[i] for i in idx], coarse=coarse, regions=side.regions[idx])
    by_id = {r.id: r for r in searcher.rank(pos, neg, cands, len(cands), rerank=True)}
    return [by_id[i] for i in cands.ids]


def _unscored(side: _Side, i: int, region: int, boxes: Any) -> Result:
    """A tile of a change without a query: where it is and which region moved most."""
    p = side.payloads[i]
    return Result(rank=0, score=0.0, coarse_score=0.0, id=side.ids[i], scene_id=p.get("scene_id", ""),
                  path=p.get("path", ""), level=int(p.get("level", 1)), window=dict(p.get("window") or {}),
                  bbox=p.get("bbox"), footprint=p.get("footprint"), region=[float(v) for v in boxes[region]],
                  region_index=region, payload=p)
