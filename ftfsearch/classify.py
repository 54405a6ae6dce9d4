"""A classifier from marks (``ftfsearch classify``): a logistic regression on the marked tiles'
stored vectors, background negatives drawn from the collection, every tile in scope scored.

Features are a tile's coarse vector and the mean of its region vectors (both unit length), so a
mark costs no encoding: the vectors are the store's. Background tiles are the first tiles of a
scan of the scope (ids are hashes, so a fair draw), unmarked; a few hits among them only soften
the model. Cross-validated precision and recall on the marks say how far to trust it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ftfsearch.area import Area
from ftfsearch.errors import BadInput, ModelMismatch
from ftfsearch.find import in_area, unit
from ftfsearch.labels import LabelSet
from ftfsearch.store.base import QueryFilter, Store, TileBatch

MIN_POSITIVES = 3
"""Fewer hits than this cannot be cross-validated (and a line through two points fits anything)."""
BACKGROUND_PER_POSITIVE = 10
MIN_BACKGROUND = 100
PAGE = 1024


@dataclass(frozen=True)
class Quality:
    """Cross-validated on the training rows (marks and background): how the model does on tiles it
    did not see."""

    precision: float
    recall: float
    folds: int
    positives: int
    negatives: int
    background: int
    train_ms: float


@dataclass
class Model:
    """``p(hit) = sigmoid(w . features + b)``, features from :func:`features`."""

    weights: np.ndarray
    bias: float
    quality: Quality

    def probability(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(x @ self.weights + self.bias)))


def features(coarse: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """``[coarse, mean of regions]``, each unit length: ``[N, 2D]``."""
    pooled = unit(np.asarray(regions, dtype=np.float32).mean(axis=1))
    return np.concatenate([unit(coarse), pooled], axis=1)


def batch_features(batch: TileBatch) -> np.ndarray:
    return features(batch.coarse, batch.regions)


def check_labels(labels: LabelSet, store: Store) -> tuple[list[str], list[str]]:
    """The marked hits and misses (tile ids); refused: another model's labels, one class only, too few."""
    meta = store.meta()
    if labels.model_id and meta is not None and labels.model_id != meta.model_id:
        raise ModelMismatch(f"`labels`: marked with model {labels.model_id!r}, but collection {store.collection!r} "
                            f"was built with {meta.model_id!r}; mark tiles of this collection")
    hits = list(dict.fromkeys(m.tile_id for m in labels.labels if m.label == "positive"))
    misses = list(dict.fromkeys(m.tile_id for m in labels.labels if m.label == "negative"))
    if not hits:
        raise BadInput(f"`labels`: {len(misses)} misses and no hit (one class only); mark at least "
                       f"{MIN_POSITIVES} tiles that show what you look for")
    if len(hits) < MIN_POSITIVES:
        raise BadInput(f"`labels`: {len(hits)} hit(s); a classifier needs at least {MIN_POSITIVES} marked hits "
                       "(more is better: 10 to 20 give a usable detector)")
    return hits, misses


def background(store: Store, flt: QueryFilter | None, area: Area | None, exclude: set[str],
               n: int) -> tuple[list[str], np.ndarray]:
    """Up to ``n`` unmarked tiles of the scope and their features."""
    ids: list[str] = []
    rows: list[np.ndarray] = []
    for batch in store.scan(flt, page=min(PAGE, max(n, 1))):
        keep = [i for i in np.flatnonzero(in_area(batch, area)) if batch.ids[i] not in exclude]
        if keep:
            ids += [batch.ids[i] for i in keep]
            rows.append(batch_features(batch)[keep])
        if len(ids) >= n:
            break
    x = np.concatenate(rows)[:n] if rows else np.zeros((0, 0), dtype=np.float32)
    return ids[:n], x


def marked_features(store: Store, ids: list[str]) -> np.ndarray:
    from ftfsearch.errors import TileNotFound

    got_ids, coarse, regions, _ = store.get_vectors(ids, with_payload=False)
    missing = set(ids) - set(got_ids)
    if missing:
        raise TileNotFound(f"`labels`: tile {sorted(missing)[0]!r} (and {len(missing) - 1} more) not in collection "
                           f"{store.collection!r}; mark tiles of this collection")
    order = {t: i for i, t in enumerate(got_ids)}
    x = features(coarse, regions)
    return x[[order[t] for t in ids]]


def train(x: np.ndarray, y: np.ndarray, positives: int, negatives: int, n_background: int,
          seed: int = 0, cross_validate: bool = True) -> Model:
    """Fit the logistic regression (classes balanced) and, when asked, cross-validate it (five
    more fits: a review refits on every answer but cross-validates less often).

    One BLAS thread: the rows are few (hundreds to a few thousand), and OpenBLAS's threads spin
    waiting for each other on a busy machine: 1.2-2.2 s per fit with two threads, 0.06-0.2 s with one
    (1,200 rows of 512 features, a loaded 2-core machine; BENCHMARKS.md, issue 24)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import precision_score, recall_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    make = lambda: LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000)  # noqa: E731
    with threadpool_limits(1, user_api="blas"):
        t0 = time.perf_counter()
        model = make().fit(x, y)
        train_ms = (time.perf_counter() - t0) * 1000
        folds = int(min(5, y.sum(), len(y) - y.sum())) if cross_validate else 0
        precision = recall = float("nan")
        if folds:
            predicted = cross_val_predict(make(), x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
            precision = float(precision_score(y, predicted, zero_division=0))
            recall = float(recall_score(y, predicted, zero_division=0))
    quality = Quality(precision=precision, recall=recall, folds=folds, positives=positives, negatives=negatives,
                      background=n_background, train_ms=train_ms)
    return Model(weights=model.coef_[0].astype(np.float32), bias=float(model.intercept_[0]), quality=quality)


def fit(store: Store, labels: LabelSet, flt: QueryFilter | None, area: Area | None,
        cross_validate: bool = True) -> Model:
    """The model of ``labels`` over the store's vectors, with background negatives from the scope
    (cross-validated unless ``cross_validate`` is False: then ``quality`` has no precision/recall)."""
    hits, misses = check_labels(labels, store)
    x_pos, x_neg = marked_features(store, hits), marked_features(store, misses) if misses else None
    n_bg = max(MIN_BACKGROUND, BACKGROUND_PER_POSITIVE * len(hits))
    _, x_bg = background(store, flt, area, set(hits) | set(misses), n_bg)
    parts = [x_pos] + ([x_neg] if x_neg is not None else []) + ([x_bg] if len(x_bg) else [])
    x = np.concatenate(parts)
    y = np.zeros(len(x), dtype=np.int64)
    y[:len(hits)] = 1
    if len(x) - len(hits) < MIN_POSITIVES:
        raise BadInput(f"`labels`: {len(x) - len(hits)} negatives (marked misses and background tiles); the "
                       f"collection has too few tiles in scope to train on; mark at least {MIN_POSITIVES} misses")
    return train(x, y, len(hits), len(misses), len(x_bg), cross_validate=cross_validate)


@dataclass(frozen=True)
class Detection:
    id: str
    probability: float
    payload: dict[str, Any]


def scored_batches(store: Store, model: Model, flt: QueryFilter | None, area: Area | None,
                   page: int = PAGE) -> Iterator[tuple[TileBatch, np.ndarray, np.ndarray]]:
    """Scroll and score: each page of the scope, its tiles' probabilities and which lie in the area."""
    for batch in store.scan(flt, page=page):
        yield batch, model.probability(batch_features(batch)), in_area(batch, area)


def score_pages(store: Store, model: Model, flt: QueryFilter | None, area: Area | None,
                min_probability: float = 0.5, page: int = PAGE) -> Iterator[list[Detection]]:
    """Every tile of the scope, a page at a time; those at ``min_probability``."""
    for batch, p, inside in scored_batches(store, model, flt, area, page):
        keep = np.flatnonzero((p >= min_probability) & inside)
        if len(keep):
            yield [Detection(batch.ids[i], float(p[i]), batch.payloads[i]) for i in keep]


def merge_footprints(footprints: list[Any]) -> list[tuple[Any, float, int]]:
    """Touching detections merged: (WGS84 polygon, area in m2 in its local UTM zone, tiles in it)."""
    from shapely.ops import unary_union

    if not footprints:
        return []
    union = unary_union(footprints)
    out = []
    for part in getattr(union, "geoms", [union]):
        tiles = sum(1 for f in footprints if f.intersects(part))
        out.append((part, area_m2(part), tiles))
    return out


def area_m2(polygon: Any) -> float:
    """A WGS84 polygon's area in m2, projected to the UTM zone of its centroid."""
    from pyproj import CRS, Transformer
    from shapely.ops import transform

    c = polygon.centroid
    zone = int((c.x + 180) // 6) + 1
    utm = CRS.from_epsg((32600 if c.y >= 0 else 32700) + min(max(zone, 1), 60))
    to_utm = Transformer.from_crs("EPSG:4326", utm, always_xy=True).transform
    return float(transform(to_utm, polygon).area)
