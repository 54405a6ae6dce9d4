"""The Store protocol and the values that cross it.

Two backends implement it (``edge`` in-process, ``server`` over qdrant-client) and pass one
shared test suite. Vectors cross as numpy arrays so a backend can decode responses without
building Python lists.
"""

from __future__ import annotations

from datetime import datetime
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ftfsearch.area import check_bbox  # noqa: F401 - re-exported: the stores check boxes with it
from ftfsearch.errors import REINGEST_HINT, ModelMismatch

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CollectionMeta:
    """What a collection records about the model that filled it."""

    model_id: str
    dim: int
    num_regions: int
    region_layout: str
    schema_version: int = SCHEMA_VERSION

    def to_payload(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "dim": self.dim,
            "num_regions": self.num_regions,
            "region_layout": self.region_layout,
            "schema_version": self.schema_version,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "CollectionMeta":
        return cls(
            model_id=str(payload["model_id"]),
            dim=int(payload["dim"]),
            num_regions=int(payload["num_regions"]),
            region_layout=str(payload["region_layout"]),
            schema_version=int(payload["schema_version"]),
        )


@dataclass
class TileBatch:
    """Tiles to write: ids, vectors and payloads, aligned."""

    ids: list[str]
    coarse: np.ndarray
    """``[B, D]`` float32."""
    regions: np.ndarray
    """``[B, R, D]`` float32 or float16."""
    payloads: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class CoarseBatch:
    """Tiles read for a coarse pass over many (change search's first stage): ids, unit coarse
    vectors and only the payload fields asked for, no region vectors."""

    ids: list[str]
    coarse: np.ndarray
    """``[B, D]`` float32."""
    payloads: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class QueryFilter:
    """Restricts recall: tiles whose WGS84 bbox intersects ``bbox``, and/or of given scenes,
    and/or acquired in ``after <= acquired < before`` (aware datetimes, either bound optional),
    and never the tiles in ``exclude_ids`` (the examples of a search by example), and/or whose
    centre lies in one of the ``center_in`` polygons (an area's prefilter, :mod:`ftfsearch.area`:
    rings ``((lon, lat), ...)``, the exterior first, then holes)."""

    bbox: tuple[float, float, float, float] | None = None
    scene_ids: tuple[str, ...] = ()
    exclude_ids: tuple[str, ...] = ()
    after: datetime | None = None
    before: datetime | None = None
    center_in: tuple[tuple[tuple[tuple[float, float], ...], ...], ...] = ()


RECOMMEND_STRATEGIES = ("average_vector", "sum_scores", "best_score")
"""Qdrant's recommend strategies over raw vectors. ``average_vector`` (Qdrant's default) searches
the nearest tiles to ``avg(p) + avg(p) - avg(n)``; ``sum_scores`` scores a tile by
``sum cos(p, g) - sum cos(n, g)``; ``best_score`` by its best positive unless a negative is
closer. Qdrant Edge's binding offers the last two only: there ``average_vector`` is that nearest
query, the same arithmetic."""


def average_vector(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """The query of Qdrant's ``average_vector`` strategy, unit length: ``2 avg(p) - avg(n)``."""
    pos = np.atleast_2d(np.asarray(positives, dtype=np.float32))
    neg = np.asarray(negatives, dtype=np.float32).reshape(-1, pos.shape[1])
    q = pos.mean(axis=0) + (pos.mean(axis=0) - neg.mean(axis=0) if len(neg) else 0.0)
    return q / max(float(np.linalg.norm(q)), 1e-12)


@dataclass
class Candidates:
    """Recalled tiles, best coarse score first, with what the rerank needs."""

    ids: list[str]
    scores: np.ndarray
    """``[K]`` coarse scores from recall."""
    payloads: list[dict[str, Any]]
    coarse: np.ndarray | None = None
    """``[K, D]`` float32, when asked for."""
    regions: np.ndarray | None = None
    """``[K, R, D]`` (float16 as stored), when asked for."""
    versions: np.ndarray | None = None
    """``[K]`` int64: Qdrant's version of each point, the number of the operation that last
    wrote it (-1 where the store gave none). A point written again gets a higher version, so
    (id, version) names one state of a tile: what the searcher's cache is keyed by."""

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class SceneRecord:
    """One ingested (or ingesting) scene in the scenes collection."""

    scene_id: str
    path: str
    fingerprint: str
    state: str
    """``ingesting`` or ``complete``."""
    model_id: str
    tiling: dict[str, Any]
    expected_tiles: int = 0
    footprint: list[list[float]] | None = None
    """WGS84 ring ``[[lon, lat], ...]`` or None when the raster has no CRS."""
    bbox: list[float] | None = None
    crs: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    last_error: str | None = None
    """Why the last ingest of this scene stopped before it was complete (None once it completes,
    or while a run is writing it): what ``ftfsearch batch status`` reports as ``failed``."""

    def to_payload(self) -> dict[str, Any]:
        return {
            "kind": "scene",
            "scene_id": self.scene_id,
            "path": self.path,
            "fingerprint": self.fingerprint,
            "state": self.state,
            "model_id": self.model_id,
            "tiling": self.tiling,
            "expected_tiles": self.expected_tiles,
            "footprint": self.footprint,
            "bbox": self.bbox,
            "crs": self.crs,
            "extra": self.extra,
            "last_error": self.last_error,
        }

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> "SceneRecord":
        return cls(
            scene_id=p["scene_id"],
            path=p["path"],
            fingerprint=p["fingerprint"],
            state=p["state"],
            model_id=p["model_id"],
            tiling=p.get("tiling") or {},
            expected_tiles=int(p.get("expected_tiles") or 0),
            footprint=p.get("footprint"),
            bbox=p.get("bbox"),
            crs=p.get("crs"),
            extra=p.get("extra") or {},
            last_error=p.get("last_error"),
        )


@dataclass
class SourceFailure:
    """A batch source that failed before it had a scene record (missing, not a raster, a glob that
    matches nothing, a scene id held by another file): kept in the scenes collection, keyed by the
    source, so a batch's state can be read from the store alone."""

    source: str
    """The source as the batch names it: an absolute path, a glob or a URL."""
    message: str
    scene_id: str | None = None
    recorded_at: str = ""
    """UTC time, ISO 8601."""

    def to_payload(self) -> dict[str, Any]:
        return {
            "kind": "failure",
            "source": self.source,
            "message": self.message,
            "scene_id": self.scene_id,
            "recorded_at": self.recorded_at,
        }

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> "SourceFailure":
        return cls(
            source=str(p["source"]),
            message=str(p.get("message") or ""),
            scene_id=p.get("scene_id"),
            recorded_at=str(p.get("recorded_at") or ""),
        )


@runtime_checkable
class Store(Protocol):
    """A tiles collection and its scenes registry, on one backend."""

    backend: str
    """``edge`` or ``server``."""
    collection: str

    def describe(self) -> dict[str, Any]:
        """Where the store is (path or URL without secrets) and what it holds."""
        ...

    def meta(self) -> CollectionMeta | None:
        """The recorded model of the collection, or None when it does not exist yet."""
        ...

    def ensure_collection(
        self, meta: CollectionMeta, shards: int | None = None, replication_factor: int | None = None
    ) -> None:
        """Create the collections and payload indexes, or check that ``meta`` matches (ModelMismatch)."""
        ...

    def upsert_tiles(self, batch: TileBatch) -> None: ...

    def existing_ids(self, ids: list[str]) -> set[str]:
        """Which of these point ids are already stored (for resume)."""
        ...

    def recall(
        self,
        text: np.ndarray,
        k: int,
        flt: QueryFilter | None = None,
        with_vectors: bool = True,
        with_payload: bool = True,
    ) -> Candidates:
        """Top ``k`` tiles by coarse cosine; with coarse and region vectors when asked.

        ``with_payload=False`` returns empty payloads: the rerank needs only vectors, and the
        payloads of the few winners are cheaper to fetch afterwards (``get_tiles``).
        """
        ...

    def recommend(
        self,
        positives: np.ndarray,
        negatives: np.ndarray,
        k: int,
        flt: QueryFilter | None = None,
        with_vectors: bool = True,
        with_payload: bool = True,
        strategy: str = "average_vector",
    ) -> Candidates:
        """Top ``k`` tiles by Qdrant's recommend query on the coarse vectors: ``positives [P, D]``
        (P >= 1) and ``negatives [N, D]`` (N >= 0) as raw vectors, scored by ``strategy`` (one of
        ``RECOMMEND_STRATEGIES``); otherwise as ``recall``."""
        ...

    def above(self, query: np.ndarray, threshold: float, flt: QueryFilter | None = None, limit: int = 16384,
              offset: int = 0) -> Candidates:
        """Tiles whose coarse cosine with ``query`` is at least ``threshold``, best first, ranks
        ``offset`` to ``offset + limit``: ids and scores only (empty payloads, no vectors). Qdrant's
        own search with a score threshold, exact (every tile ``flt`` admits is compared, no HNSW
        approximation), so ``find`` reads the vectors of the hits only, not of every tile."""
        ...

    def find_tiles(self, flt: QueryFilter, limit: int = 256) -> list[tuple[str, dict[str, Any]]]:
        """``(id, payload)`` of up to ``limit`` tiles matching ``flt``, in id order, without
        vectors (the tiles under a point, say: a zero-size ``bbox``)."""
        ...

    def get_tiles(self, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        """``(id, payload)`` of the stored tiles among ``ids``, in the order given; unknown ids
        are left out (the web server fetches a tile this way to render its chip)."""
        ...

    def get_vectors(
        self, ids: list[str], with_payload: bool = False
    ) -> tuple[list[str], np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """``(ids, coarse [N, D] float32, regions [N, R, D] float16, payloads)`` of the stored
        tiles among ``ids``, in the order given; unknown ids are left out (a tile deleted since
        its recall). Payloads are empty dicts unless ``with_payload``."""
        ...

    def scan_tiles(self, scene_id: str, page: int = 1024) -> Iterator[TileBatch]:
        """Every tile of one scene with its vectors, in batches of up to ``page`` (a bulk read:
        ``push`` copies a store into another this way, from any backend to any other)."""
        ...

    def scan(self, flt: QueryFilter | None, page: int = 1024) -> Iterator[TileBatch]:
        """Every tile ``flt`` admits, with vectors and payloads, a page at a time, in id order
        (ids are hashes: any prefix of the scan is a fair sample of the tiles)."""
        ...

    def scan_coarse(self, flt: QueryFilter | None, fields: Sequence[str], page: int = 1024) -> Iterator[CoarseBatch]:
        """Every tile ``flt`` admits with its coarse vector and the payload ``fields`` only, a page
        at a time: what a pass over every tile of an area needs, without decoding (or holding) the
        region vectors, which are 14 times the bytes (fetch the few that need them by id)."""
        ...

    def count_tiles(self, scene_id: str | None = None, within: QueryFilter | None = None) -> int:
        """Exact count of tiles, in one scene, or in all that ``within`` admits."""
        ...

    def delete_scene(self, scene_id: str) -> int:
        """Remove a scene's tiles and its record; returns the number of tiles removed."""
        ...

    def put_scene(self, scene: SceneRecord) -> None: ...

    def get_scene(self, scene_id: str) -> SceneRecord | None: ...

    def list_scenes(self) -> list[SceneRecord]: ...

    def put_failure(self, failure: SourceFailure) -> None:
        """Record (or replace) the failure of one batch source; the collection must exist."""
        ...

    def delete_failure(self, source: str) -> None:
        """Forget the failure of ``source`` (nothing happens when none is recorded)."""
        ...

    def list_failures(self) -> list[SourceFailure]:
        """Every recorded source failure, by source; empty when the collection does not exist."""
        ...

    def put_records(self, kind: str, records: list[tuple[str, dict[str, Any]]]) -> None:
        """Write (or replace) small records of one ``kind`` (watches and their hits) beside the scene
        records, each ``(key, payload)``; the payload is stored with ``kind`` and ``key`` added.
        The collection must exist. Kept in the store so every process using it sees the same ones."""
        ...

    def list_records(self, kind: str, match: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Payloads of every record of ``kind`` whose fields equal ``match``'s (keywords, integers,
        booleans), in no particular order; empty when the collection does not exist."""
        ...

    def delete_records(self, kind: str, match: dict[str, Any] | None = None) -> None:
        """Delete the records of ``kind`` whose fields equal ``match``'s (all of the kind without)."""
        ...

    def optimize(self) -> bool:
        """Build indexes now (Edge builds HNSW only when asked; a server does it by itself)."""
        ...

    def drop_collection(self) -> None:
        """Delete the tiles collection and its scenes registry."""
        ...

    def close(self) -> None: ...


# The rules of the protocol's inputs, public: the query side checks them too before it asks.
def check_meta(recorded: CollectionMeta, wanted: CollectionMeta, collection: str, location: str) -> None:
    """Refuse to mix models in one collection (ModelMismatch naming both)."""
    if recorded == wanted:
        return
    raise ModelMismatch(
        f"collection {collection!r} in {location} was built with model {recorded.model_id} "
        f"(D={recorded.dim}, R={recorded.num_regions}, layout {recorded.region_layout}, "
        f"schema v{recorded.schema_version}), not {wanted.model_id} (D={wanted.dim}, "
        f"R={wanted.num_regions}, layout {wanted.region_layout}, schema v{wanted.schema_version}); "
        + REINGEST_HINT
    )
