"""What both backends share: argument checks, the filter semantics, the meta check, decoding.

Each backend translates the neutral conditions built here into its own filter classes, so the
meaning of a ``QueryFilter`` (bbox intersection, scene match) is written down once.
"""

from __future__ import annotations

import base64
import itertools
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ftfsearch.errors import BadInput, ModelMismatch
from ftfsearch.store import schema
from ftfsearch.store.schema import VECTORS_FIELD
from ftfsearch.times import check_range, iso_utc, parse_time
from ftfsearch.store.base import (
    RECOMMEND_STRATEGIES,
    Candidates,
    CoarseBatch,
    CollectionMeta,
    QueryFilter,
    TileBatch,
    check_bbox,
)

# Qdrant collection names become directory names in the embedded store: keep them plain.
_COLLECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

# Meta point and scene points are told apart by this payload field.
KIND_META = "meta"
KIND_SCENE = "scene"
KIND_FAILURE = "failure"

# Page size for scroll / retrieve round trips.
PAGE = 1024


S = TypeVar("S")
ScanBatch = TypeVar("ScanBatch", TileBatch, CoarseBatch)
"""What a scroll over the tiles yields a page at a time (:func:`scanned_batch`, :func:`coarse_batch`)."""


@dataclass(frozen=True)
class RangeCond:
    """``gte <= payload[key] <= lte`` on a numeric field (either bound optional)."""

    key: str
    gte: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class TimeCond:
    """``gte <= payload[key] < lt`` on a datetime field (RFC 3339 strings, either bound optional)."""

    key: str
    gte: str | None = None
    lt: str | None = None


@dataclass(frozen=True)
class AnyCond:
    """``payload[key]`` is one of ``values`` (keyword match)."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class ExcludeIds:
    """The point is none of ``ids`` (a must-not condition)."""

    ids: tuple[str, ...]


@dataclass(frozen=True)
class GeoCond:
    """``payload[key]`` (a ``{lon, lat}`` point) lies in one of ``polygons`` (rings, exterior first)."""

    key: str
    polygons: tuple[tuple[tuple[tuple[float, float], ...], ...], ...]


Condition = RangeCond | TimeCond | AnyCond | ExcludeIds | GeoCond


def check_collection_name(name: str) -> str:
    """Refuse names that would be unsafe as a directory or a URL path segment."""
    if not isinstance(name, str) or not _COLLECTION_RE.match(name):
        raise BadInput(
            f"`collection` {name!r}: use 1 to 63 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit"
        )
    if name.endswith(schema.SCENES_SUFFIX):
        raise BadInput(
            f"`collection` {name!r}: names ending in {schema.SCENES_SUFFIX!r} are reserved for the "
            "scene registries; pick another name"
        )
    return name


def filter_conditions(flt: QueryFilter | None) -> list[Condition]:
    """The conditions (all must hold) that implement ``flt``.

    bbox: tiles whose WGS84 bbox intersects the query box, i.e. ``west_t <= east_q``,
    ``east_t >= west_q``, ``south_t <= north_q`` and ``north_t >= south_q`` (edges touching
    count). A range condition fails on a missing field, so tiles without a bbox (rasters
    without a CRS) never match a bbox query, and tiles without an acquisition time never match
    a time range (``after <= acquired < before``: consecutive ranges do not overlap).
    """
    if flt is None:
        return []
    conds: list[Condition] = []
    if flt.bbox is not None:
        west, south, east, north = check_bbox(flt.bbox)
        conds += [
            RangeCond("west", lte=east),
            RangeCond("east", gte=west),
            RangeCond("south", lte=north),
            RangeCond("north", gte=south),
        ]
    if flt.after is not None or flt.before is not None:
        after, before = parse_time(flt.after, "after"), parse_time(flt.before, "before")
        check_range(after, before)
        conds.append(TimeCond(
            "acquired",
            gte=iso_utc(after) if after is not None else None,
            lt=iso_utc(before) if before is not None else None,
        ))
    if flt.center_in:
        conds.append(GeoCond("center", flt.center_in))
    if flt.scene_ids:
        conds.append(AnyCond("scene_id", tuple(str(s) for s in flt.scene_ids)))
    if flt.exclude_ids:
        conds.append(ExcludeIds(tuple(valid_point_ids(flt.exclude_ids))))
    return conds


def check_examples(
    positives: np.ndarray, negatives: np.ndarray, meta: CollectionMeta | None, strategy: str
) -> tuple[list[list[float]], list[list[float]]]:
    """Recommend vectors as lists: at least one positive, each finite and of the collection's D."""
    if strategy not in RECOMMEND_STRATEGIES:
        raise BadInput(f"strategy {strategy!r}: use one of {', '.join(RECOMMEND_STRATEGIES)}")
    pos = [check_text(v, meta).tolist() for v in np.atleast_2d(np.asarray(positives, dtype=np.float32)) if v.size]
    neg = [check_text(v, meta).tolist() for v in np.atleast_2d(np.asarray(negatives, dtype=np.float32)) if v.size]
    if not pos:
        raise BadInput("positives: a recommend query needs at least one positive vector")
    return pos, neg


def check_batch(batch: TileBatch, meta: CollectionMeta | None) -> tuple[np.ndarray, np.ndarray]:
    """Aligned, finite ``coarse [B, D]`` float32 and ``regions [B, R, D]`` of the collection's shape."""
    n = len(batch.ids)
    coarse = np.asarray(batch.coarse)
    regions = np.asarray(batch.regions)
    if coarse.ndim != 2 or regions.ndim != 3:
        raise BadInput(
            f"TileBatch: coarse must be [B, D] and regions [B, R, D], got {coarse.shape} and {regions.shape}"
        )
    if not (coarse.shape[0] == regions.shape[0] == len(batch.payloads) == n):
        raise BadInput(
            f"TileBatch: {n} ids, {len(batch.payloads)} payloads, {coarse.shape[0]} coarse and "
            f"{regions.shape[0]} region vectors must be aligned"
        )
    if coarse.shape[1] != regions.shape[2]:
        raise BadInput(f"TileBatch: coarse D={coarse.shape[1]} differs from regions D={regions.shape[2]}")
    if meta is not None and (coarse.shape[1] != meta.dim or regions.shape[1] != meta.num_regions):
        raise ModelMismatch(
            f"TileBatch: vectors of D={coarse.shape[1]}, R={regions.shape[1]} do not fit the collection "
            f"(model {meta.model_id}: D={meta.dim}, R={meta.num_regions}); use that model or another `collection`"
        )
    if len(set(batch.ids)) != n:
        raise BadInput("TileBatch: point ids must be unique within a batch")
    return coarse.astype(np.float32, copy=False), regions


def check_text(text: np.ndarray, meta: CollectionMeta | None) -> np.ndarray:
    """The query vector as float32 ``[D]`` matching the collection's D."""
    vec = np.asarray(text, dtype=np.float32).reshape(-1)
    if vec.size == 0 or not np.all(np.isfinite(vec)):
        raise BadInput("query vector: must be a non-empty finite vector")
    if meta is not None and vec.size != meta.dim:
        raise ModelMismatch(
            f"query vector of D={vec.size} does not fit the collection (model {meta.model_id}, "
            f"D={meta.dim}): query with the model the collection was built with"
        )
    return vec


def check_k(k: int, name: str = "k") -> int:
    if int(k) < 1:
        raise BadInput(f"{name}={k}: must be at least 1")
    return int(k)


def valid_point_ids(ids: Sequence[str]) -> list[str]:
    """The ids that can name a tile (canonical UUID strings); others cannot be stored, so skip them."""
    out: list[str] = []
    for i in ids:
        try:
            out.append(str(uuid.UUID(str(i))))
        except ValueError:
            continue
    return out


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)`` of at most ``size`` items."""
    for start in range(0, n, max(1, size)):
        yield slice(start, min(n, start + size))


def decode_vectors(
    vectors: Sequence[dict[str, Any]], dim: int, num_regions: int
) -> tuple[np.ndarray, np.ndarray]:
    """``coarse [K, D]`` float32 and ``regions [K, R, D]`` float16 from per-point vector dicts.

    One flat ``fromiter`` per array avoids building K intermediate arrays.
    """
    k = len(vectors)
    chain = itertools.chain.from_iterable
    coarse = np.fromiter(chain(v["coarse"] for v in vectors), dtype=np.float32, count=k * dim)
    regions = np.fromiter(
        chain(chain(v["regions"] for v in vectors)), dtype=np.float32, count=k * num_regions * dim
    )
    return coarse.reshape(k, dim), regions.reshape(k, num_regions, dim).astype(np.float16)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float32, as Qdrant stores vectors of a cosine space."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.sqrt(np.einsum("...d,...d->...", x, x, dtype=np.float32))[..., None]
    return x / np.where(norm > 0, norm, np.float32(1.0))


def pack_vectors(coarse: np.ndarray, regions: np.ndarray) -> list[str]:
    """One base64 string per tile: its unit coarse vector (float32) then its unit regions (float16).

    Both are stored as Qdrant stores the named vectors (cosine: normalised; regions: float16), so
    decoding the copy gives the same values as asking Qdrant for the vectors.
    """
    c = unit_rows(coarse)
    r = unit_rows(regions).astype(np.float16)
    b64 = base64.b64encode
    return [b64(ci.tobytes() + ri.tobytes()).decode("ascii") for ci, ri in zip(c, r)]


def unpack_vectors(blobs: Sequence[str], dim: int, num_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """``coarse [K, D]`` float32 and ``regions [K, R, D]`` float16 from ``pack_vectors`` strings."""
    k = len(blobs)
    per = dim * 4 + num_regions * dim * 2
    raw = b"".join(base64.b64decode(b) for b in blobs)
    if len(raw) != k * per:
        raise ValueError(f"{VECTORS_FIELD}: {len(raw)} bytes for {k} tiles of D={dim}, R={num_regions}")
    buf = np.frombuffer(raw, dtype=np.uint8).reshape(k, per)
    coarse = buf[:, : dim * 4].copy().view(np.float32)
    regions = buf[:, dim * 4 :].copy().view(np.float16).reshape(k, num_regions, dim)
    return coarse, regions


def unpack_coarse(blobs: Sequence[str], dim: int) -> np.ndarray:
    """``coarse [K, D]`` float32 from ``pack_vectors`` strings, decoding only each string's head:
    the coarse vector comes first, so its bytes are the first ``ceil(4 D / 3)`` base64 groups."""
    chars = -(-dim * 4 // 3) * 4
    per = chars // 4 * 3
    raw = base64.b64decode("".join(b[:chars] for b in blobs))
    if len(raw) != len(blobs) * per:
        raise ValueError(f"{VECTORS_FIELD}: {len(raw)} bytes of heads for {len(blobs)} tiles of D={dim}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(blobs), per)[:, : dim * 4].copy().view(np.float32)


def with_packed_vectors(
    payloads: Sequence[dict[str, Any]], coarse: np.ndarray, regions: np.ndarray
) -> list[dict[str, Any]]:
    """Copies of ``payloads`` carrying the tiles' packed vectors (the caller's dicts stay untouched)."""
    return [{**p, VECTORS_FIELD: b} for p, b in zip(payloads, pack_vectors(coarse, regions))]


def split_packed(payloads: Sequence[dict[str, Any] | None]) -> tuple[list[dict[str, Any]], list[str] | None]:
    """Payloads without the packed vectors, and the packed strings (None when any tile lacks them,
    e.g. a collection written before the field existed)."""
    clean: list[dict[str, Any]] = []
    blobs: list[str] = []
    complete = True
    for p in payloads:
        p = dict(p or {})
        b = p.pop(VECTORS_FIELD, None)
        if isinstance(b, str):
            blobs.append(b)
        else:
            complete = False
        clean.append(p)
    return clean, (blobs if complete else None)


def public_url(url: str) -> str:
    """The URL without user info, query or fragment: safe to show and log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def payload_selector(use_packed: bool, with_payload: bool, only_packed: S, without_packed: S) -> bool | S:
    """The payload to ask a backend for: the packed vectors when the rerank reads them from the
    payload (``use_packed``), the rest of the payload when ``with_payload``. ``only_packed`` and
    ``without_packed`` are the backend's own selectors of the packed field and of everything else."""
    if use_packed:
        return True if with_payload else only_packed
    return without_packed if with_payload else False


ReadNamed = Callable[[list[str]], list[Any]]
"""Qdrant's named vectors (``{"coarse": [...], "regions": [[...], ...]}``) of ``ids``, in their order."""


def tile_vectors(
    ids: list[str], packed: list[str] | None, meta: CollectionMeta, read_named: ReadNamed
) -> tuple[np.ndarray, np.ndarray]:
    """``coarse`` and ``regions`` of ``ids``: from their packed copies when every tile has one
    (``packed``), else from Qdrant's named vectors (tiles written before the packed copy existed)."""
    if packed is not None:
        return unpack_vectors(packed, meta.dim, meta.num_regions)
    return decode_vectors(read_named(ids), meta.dim, meta.num_regions)


def candidates_of(
    points: Sequence[Any],
    with_vectors: bool,
    meta: CollectionMeta | None,
    use_packed: bool,
    read_named: ReadNamed,
) -> Candidates:
    """Candidates from scored points (``id``, ``score``, ``payload``, ``vector``, ``version``).

    The vectors, when asked for, come from the packed payload copy (``use_packed``, the points
    were asked for it) or from the points' named vectors (``use_packed`` False: the points carry
    them); ``read_named`` reads those of tiles that lack a packed copy."""
    ids = [str(p.id) for p in points]
    scores = np.fromiter((p.score for p in points), dtype=np.float32, count=len(points))
    versions = np.fromiter((_version(p) for p in points), dtype=np.int64, count=len(points))
    payloads, packed = split_packed([p.payload for p in points])
    if not with_vectors:
        return Candidates(ids=ids, scores=scores, payloads=payloads, versions=versions)
    assert meta is not None, "vectors of a collection without a model record"
    if use_packed:
        coarse, regions = tile_vectors(ids, packed, meta, read_named)
    else:
        # Edge builds p.vector's Python lists on each access: read it once per point.
        coarse, regions = decode_vectors([p.vector for p in points], meta.dim, meta.num_regions)
    return Candidates(ids=ids, scores=scores, payloads=payloads, coarse=coarse, regions=regions, versions=versions)


def stored_vectors(
    ids: list[str],
    payloads: Sequence[dict[str, Any] | None],
    meta: CollectionMeta,
    use_packed: bool,
    read_named: ReadNamed,
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """``(payloads without the packed field, coarse, regions)`` of tiles read by id with the
    payload ``payload_selector`` chose: from the packed copies when ``use_packed`` and every tile
    has one, else from Qdrant's named vectors (``read_named``)."""
    clean, packed = split_packed(payloads)
    coarse, regions = tile_vectors(ids, packed if use_packed else None, meta, read_named)
    return clean, coarse, regions


def scanned_batch(recs: Sequence[Any], meta: CollectionMeta, use_packed: bool, read_named: ReadNamed) -> TileBatch:
    """A page of scrolled points (either client's records: ``.id``, ``.payload``) as a batch with
    its vectors, for ``scan_tiles`` of both backends."""
    ids = [str(r.id) for r in recs]
    payloads, coarse, regions = stored_vectors(ids, [r.payload for r in recs], meta, use_packed, read_named)
    return TileBatch(ids=ids, coarse=coarse.astype(np.float32), regions=regions, payloads=payloads)


def coarse_batch(
    recs: Sequence[Any], meta: CollectionMeta, use_packed: bool, read_named: ReadNamed
) -> CoarseBatch:
    """A page of scrolled points (``.id``, ``.payload`` with the asked fields and, when
    ``use_packed``, the packed vectors) as ids, coarse vectors and payloads, for ``scan_coarse``
    of both backends. Tiles without a packed copy read Qdrant's named vectors."""
    ids = [str(r.id) for r in recs]
    payloads = [dict(r.payload or {}) for r in recs]
    blobs = [p.pop(VECTORS_FIELD, None) for p in payloads]
    if use_packed and all(isinstance(b, str) for b in blobs):
        coarse = unpack_coarse(blobs, meta.dim)
    else:
        coarse = tile_vectors(ids, None, meta, read_named)[0]
    return CoarseBatch(ids=ids, coarse=np.asarray(coarse, dtype=np.float32), payloads=payloads)


def _version(point: Any) -> int:
    v = getattr(point, "version", None)
    return -1 if v is None else int(v)
