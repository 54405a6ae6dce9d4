"""The embedded backend: Qdrant Edge (qdrant-edge-py) in-process, one shard per collection.

Layout of a store directory::

    <store_dir>/<collection>/            tiles shard (coarse + regions vectors, payload indexes)
    <store_dir>/<collection>_scenes/     scenes shard (scene records + the collection meta point)
    <store_dir>/.<collection>.lock       flock held while a process has the collection open; it
                                         records that process (pid and start time)
    <store_dir>/.<collection>.holder.json  where ``serve`` holding the store listens (0600)

An Edge shard has no server to arbitrate writers, so one process at a time opens a collection
(``StoreLocked`` otherwise). Edge builds HNSW only when asked: ``optimize()`` after bulk ingest.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import qdrant_edge as qe

from ftfsearch.errors import (
    CollectionNotFound,
    PermissionDenied,
    StoreLocked,
    StoreUnavailable,
)
from ftfsearch.store import schema
from ftfsearch.store.holder_record import (
    alive,
    holder_path,
    identity,
    parse_lock_record,
    read_holder,
    remove_holder,
)
from ftfsearch.store._common import (
    ScanBatch,
    KIND_FAILURE,
    KIND_META,
    KIND_SCENE,
    PAGE,
    VECTORS_FIELD,
    AnyCond,
    Condition,
    ExcludeIds,
    GeoCond,
    RangeCond,
    TimeCond,
    candidates_of,
    check_batch,
    check_collection_name,
    check_examples,
    check_k,
    check_text,
    chunks,
    coarse_batch,
    filter_conditions,
    payload_selector,
    scanned_batch,
    stored_vectors,
    valid_point_ids,
    with_packed_vectors,
)
from ftfsearch.store.base import (
    Candidates,
    CoarseBatch,
    CollectionMeta,
    QueryFilter,
    SceneRecord,
    SourceFailure,
    TileBatch,
    average_vector,
    check_meta,
)

log = logging.getLogger(__name__)

_INDEX_TYPES = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "geo": qe.PayloadSchemaType.Geo,
    "datetime": qe.PayloadSchemaType.Datetime,
}

# Edge needs at least one vector in a shard's config; scene points carry none of this one.
_SCENES_PLACEHOLDER_VECTOR = "_none"

# Payload of a tile without its packed vectors (what callers that do not rerank read).
_WITHOUT_PACKED = qe.PayloadSelector.Exclude([VECTORS_FIELD])
_ONLY_PACKED = qe.PayloadSelector.Include([VECTORS_FIELD])
_NAMED_VECTORS = [schema.COARSE, schema.REGIONS]


# Points per upsert call: bounds the Python -> Rust conversion held at once.
_UPSERT_CHUNK = 256


def _tiles_config(meta: CollectionMeta) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors={
            schema.COARSE: qe.EdgeVectorParams(size=meta.dim, distance=qe.Distance.Cosine),
            schema.REGIONS: qe.EdgeVectorParams(
                size=meta.dim,
                distance=qe.Distance.Cosine,
                multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
                datatype=qe.VectorStorageDatatype.Float16,
                # No graph over region vectors: they are read by id, or scored after a prefetch.
                hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10000),
            ),
        },
        hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10000),
    )


def _scenes_config() -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors={_SCENES_PLACEHOLDER_VECTOR: qe.EdgeVectorParams(size=1, distance=qe.Distance.Dot)}
    )


def _edge_filter(conds: list[Condition]) -> qe.Filter | None:
    if not conds:
        return None
    must: list[Any] = []
    must_not: list[Any] = []
    for c in conds:
        if isinstance(c, RangeCond):
            must.append(qe.FieldCondition(c.key, range=qe.RangeFloat(gte=c.gte, lte=c.lte)))
        elif isinstance(c, TimeCond):
            must.append(qe.FieldCondition(c.key, range=qe.RangeDateTime(gte=c.gte, lt=c.lt)))
        elif isinstance(c, AnyCond):
            must.append(qe.FieldCondition(c.key, match=qe.MatchAny(list(c.values))))
        elif isinstance(c, ExcludeIds) and c.ids:
            must_not.append(qe.HasIdCondition(set(c.ids)))
        elif isinstance(c, GeoCond):
            must.append(qe.Filter(should=[
                qe.FieldCondition(c.key, geo_polygon=qe.GeoPolygon(
                    [qe.GeoPoint(x, y) for x, y in rings[0]], [[qe.GeoPoint(x, y) for x, y in r] for r in rings[1:]]
                    or None)) for rings in c.polygons]))
    return qe.Filter(must=must or None, must_not=must_not or None)


def _point_ids(ids: Sequence[str]) -> list[qe.PointId]:
    """Ids as the binding types them (a list is invariant: ``list[str]`` is no ``list[PointId]``)."""
    return list(ids)


def _dense(vectors: list[list[float]]) -> list[qe.NamedVector]:
    """Dense vectors as the binding's recommend query types them (see ``_point_ids``)."""
    return list(vectors)


def _scene_filter(scene_id: str) -> qe.Filter:
    return qe.Filter(must=[qe.FieldCondition("scene_id", match=qe.MatchValue(scene_id))])


def _kind_filter(kind: str, match: dict[str, Any] | None = None) -> qe.Filter:
    return qe.Filter(must=[qe.FieldCondition(k, match=qe.MatchValue(v))
                           for k, v in {"kind": kind, **(match or {})}.items()])


class EdgeStore:
    """A tiles collection and its scenes registry in a local directory (Qdrant Edge)."""

    backend = "edge"

    def __init__(
        self, store_dir: Path, collection: str = "tiles", read_only: bool = False, payload_vectors: bool = True
    ) -> None:
        """``payload_vectors``: read the rerank's vectors from their packed payload copy (fast);
        False reads Qdrant's named vectors through the binding, which builds Python lists (the
        plain path, kept as a reference for the benchmark and the tests)."""
        self.collection = check_collection_name(collection)
        self.store_dir = Path(store_dir).expanduser().absolute()
        self.read_only = read_only
        self.payload_vectors = payload_vectors
        self._tiles_path = self.store_dir / collection
        self._scenes_path = self.store_dir / schema.scenes_collection(collection)
        self._lock_path = self.store_dir / f".{collection}.lock"
        self._lock_file: IO[str] | None = None
        self._tiles: qe.EdgeShard | None = None
        self._scenes: qe.EdgeShard | None = None
        self._meta: CollectionMeta | None = None
        self._closed = False
        self._guard = threading.Lock()
        if self.store_dir.exists() and not self.store_dir.is_dir():
            raise StoreUnavailable(f"`store` {self.store_dir}: exists and is not a directory")
        if not read_only:
            try:
                self.store_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(f"`store` {self.store_dir}: cannot create it ({exc.strerror})") from exc
        if self.store_dir.is_dir():
            self._acquire_lock()
            try:
                self._open_existing()
            except BaseException:
                self._release_lock()
                raise

    # -- lifecycle ------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        try:
            fh = open(self._lock_path, "a+", encoding="utf-8")
        except OSError as exc:
            raise StoreUnavailable(
                f"`store` {self.store_dir}: cannot open lock file {self._lock_path.name} ({exc.strerror})"
            ) from exc
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            try:
                fh.seek(0)
                pid, _ = parse_lock_record(fh.read())
                holder = f" (pid {pid})" if pid else ""
            except OSError:
                pass
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StoreLocked(
                    f"embedded store {self.store_dir} (collection {self.collection!r}) is in use by another "
                    f"process{holder}: wait for it to finish, run 'ftfsearch serve' on it (the other commands "
                    "then go through it), or serve the data from a Qdrant server (QDRANT_URL)"
                ) from None
            raise StoreUnavailable(f"`store` {self.store_dir}: cannot lock it ({exc.strerror})") from exc
        # The flock is ours: the kernel freed it when its last holder exited. A record left in the
        # file is that of a holder that died without closing (a clean close empties it).
        try:
            fh.seek(0)
            pid, start = parse_lock_record(fh.read())
        except (OSError, UnicodeDecodeError):
            pid, start = None, None
        if pid is not None and pid != os.getpid() and not alive(pid, start):
            log.warning(
                "took over the store %s (collection %r) from pid %d, which is gone; its acknowledged writes "
                "are replayed from the write-ahead log", self.store_dir, self.collection, pid,
            )
        stale = holder_path(self.store_dir, self.collection)
        if stale.exists() and read_holder(stale) is None:
            remove_holder(stale)  # a dead holder's address: nobody listens there any more
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(identity()))
        fh.flush()
        self._lock_file = fh

    def _release_lock(self) -> None:
        fh, self._lock_file = self._lock_file, None
        if fh is not None:
            try:
                fh.seek(0)
                fh.truncate()
                fh.flush()
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            finally:
                fh.close()

    def _load(self, path: Path) -> qe.EdgeShard:
        try:
            return qe.EdgeShard.load(str(path))
        except Exception as exc:  # the binding raises plain Exception / ValueError
            raise StoreUnavailable(
                f"`store` {self.store_dir}: cannot load {path.name} ({exc}); the directory may be damaged "
                "or written by another Qdrant Edge version"
            ) from exc

    def _open_existing(self) -> None:
        if self._scenes_path.is_dir():
            self._scenes = self._load(self._scenes_path)
        if self._tiles_path.is_dir():
            self._tiles = self._load(self._tiles_path)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"embedded store {self.store_dir} is closed")

    def _check_writable(self, what: str) -> None:
        self._check_open()
        if self.read_only:
            raise PermissionDenied(f"{what}: the embedded store {self.store_dir} was opened read-only")

    def _need_tiles(self) -> qe.EdgeShard:
        self._check_open()
        if self._tiles is None:
            raise CollectionNotFound(
                f"collection {self.collection!r} does not exist in {self.store_dir}: ingest a scene first, "
                "or check `collection` and `store`"
            )
        return self._tiles

    def _need_scenes(self) -> qe.EdgeShard:
        self._check_open()
        if self._scenes is None:
            raise CollectionNotFound(
                f"collection {self.collection!r} does not exist in {self.store_dir}: ingest a scene first, "
                "or check `collection` and `store`"
            )
        return self._scenes

    def flush(self) -> None:
        """Make every write so far durable in the segment files (the WAL already has them)."""
        self._check_open()
        for shard in (self._tiles, self._scenes):
            if shard is not None:
                shard.flush()

    def optimize(self) -> bool:
        """Build the HNSW index and merge segments; Edge does this only when asked (slow)."""
        self._check_writable("optimize")
        return bool(self._tiles.optimize()) if self._tiles is not None else False

    def close(self) -> None:
        """Flush and release the shards and the lock; safe to call twice."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            try:
                for shard in (self._tiles, self._scenes):
                    if shard is not None:
                        try:
                            if not self.read_only:
                                shard.flush()
                        finally:
                            shard.close()
            finally:
                self._tiles = self._scenes = None
                self._release_lock()

    def __enter__(self) -> "EdgeStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- collection -----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        meta = self.meta()
        return {
            "backend": self.backend,
            "location": str(self.store_dir),
            "collection": self.collection,
            "exists": meta is not None,
            "points": self._tiles.info().points_count if self._tiles is not None else 0,
            "meta": meta.to_payload() if meta is not None else None,
        }

    def meta(self) -> CollectionMeta | None:
        self._check_open()
        if self._meta is not None:
            return self._meta
        if self._scenes is None:
            return None
        recs = self._scenes.retrieve([schema.META_POINT_ID], True, False)
        if not recs or not recs[0].payload:
            return None
        self._meta = CollectionMeta.from_payload(recs[0].payload)
        return self._meta

    def ensure_collection(
        self, meta: CollectionMeta, shards: int | None = None, replication_factor: int | None = None
    ) -> None:
        """Create the shards and indexes, or check ``meta`` against the recorded one.

        ``shards`` and ``replication_factor`` concern a server cluster; an Edge store is one shard.
        """
        existing = self.meta()
        if existing is not None:
            check_meta(existing, meta, self.collection, str(self.store_dir))
            if self._tiles is not None:
                self._add_missing_indexes()
                return
        self._check_writable(f"create collection {self.collection!r}")
        if shards not in (None, 1) or replication_factor not in (None, 1):
            log.info("embedded store: shards=%s replication_factor=%s ignored", shards, replication_factor)
        if existing is None and self._tiles is not None:
            # Tiles without a model record: a creation that died half-way (empty: start again)
            # or a scenes shard removed by hand (data nobody can vouch for: refuse).
            if self._tiles.count(qe.CountRequest(exact=True)) > 0:
                raise StoreUnavailable(
                    f"collection {self.collection!r} in {self.store_dir} holds tiles but no model record "
                    f"({self._scenes_path.name} is missing or empty): delete {self._tiles_path} or pass "
                    "another `collection`"
                )
            self._tiles.close()
            self._tiles = None
        if self._tiles is None:
            if self._tiles_path.exists():
                shutil.rmtree(self._tiles_path)
            self._tiles = qe.EdgeShard.create(str(self._tiles_path), _tiles_config(meta))
            for field, kind in schema.TILE_INDEXES.items():
                self._tiles.update(qe.UpdateOperation.create_field_index(field, _INDEX_TYPES[kind]))
            self._tiles.flush()
        if self._scenes is None:
            self._scenes = qe.EdgeShard.create(str(self._scenes_path), _scenes_config())
            self._scenes.update(qe.UpdateOperation.create_field_index("kind", qe.PayloadSchemaType.Keyword))
        if existing is None:
            payload = {"kind": KIND_META, **meta.to_payload()}
            self._scenes.update(
                qe.UpdateOperation.upsert_points([qe.Point(schema.META_POINT_ID, {}, payload)])
            )
            self._scenes.flush()
            self._meta = meta

    def _add_missing_indexes(self) -> None:
        """A store made before an index was added (``center``, say) gets it at its next write."""
        assert self._tiles is not None
        have = set(self._tiles.info().payload_schema)
        missing = [(f, k) for f, k in schema.TILE_INDEXES.items() if f not in have]
        for field, kind in missing:
            self._tiles.update(qe.UpdateOperation.create_field_index(field, _INDEX_TYPES[kind]))
        if missing:
            self._tiles.flush()

    def drop_collection(self) -> None:
        """Delete the collection and its scenes registry from disk (the lock stays held)."""
        self._check_writable(f"drop collection {self.collection!r}")
        for shard in (self._tiles, self._scenes):
            if shard is not None:
                shard.close()
        self._tiles = self._scenes = None
        self._meta = None
        for path in (self._tiles_path, self._scenes_path):
            shutil.rmtree(path, ignore_errors=True)

    # -- tiles ----------------------------------------------------------------------------

    def upsert_tiles(self, batch: TileBatch) -> None:
        self._check_writable("upsert tiles")
        tiles = self._need_tiles()
        coarse, regions = check_batch(batch, self.meta())
        for sl in chunks(len(batch), _UPSERT_CHUNK):
            payloads = with_packed_vectors(batch.payloads[sl], coarse[sl], regions[sl])
            points = [
                qe.Point(pid, {schema.COARSE: c, schema.REGIONS: r}, payload)
                for pid, c, r, payload in zip(batch.ids[sl], coarse[sl], regions[sl], payloads)
            ]
            tiles.update(qe.UpdateOperation.upsert_points(points))

    def existing_ids(self, ids: list[str]) -> set[str]:
        self._check_open()
        if self._tiles is None or not ids:
            return set()
        found: set[str] = set()
        for sl in chunks(len(ids), PAGE):
            found.update(str(r.id) for r in self._tiles.retrieve(_point_ids(ids[sl]), False, False))
        return found

    def scan_tiles(self, scene_id: str, page: int = PAGE) -> Iterator[TileBatch]:
        return self.scan(QueryFilter(scene_ids=(scene_id,)), page)

    def scan(self, flt: QueryFilter | None, page: int = PAGE) -> Iterator[TileBatch]:
        return self._scroll(flt, page, True, scanned_batch)

    def scan_coarse(self, flt: QueryFilter | None, fields: Sequence[str], page: int = PAGE) -> Iterator[CoarseBatch]:
        selector = qe.PayloadSelector.Include(list(fields) + ([VECTORS_FIELD] if self.payload_vectors else []))
        return self._scroll(flt, page, selector, coarse_batch)

    def _scroll(self, flt: QueryFilter | None, page: int, with_payload: Any, build: Callable[..., ScanBatch]) -> Iterator[ScanBatch]:
        """Every tile ``flt`` lets through, a page of points at a time, each page made a batch by ``build``."""
        meta = self.meta()
        tiles = self._need_tiles()
        assert meta is not None
        scroll_filter = _edge_filter(filter_conditions(flt))
        offset: Any = None
        while True:
            recs, offset = tiles.scroll(
                qe.ScrollRequest(offset=offset, limit=check_k(page, "page"), filter=scroll_filter,
                                 with_payload=with_payload, with_vector=False)
            )
            if recs:
                yield build(recs, meta, self.payload_vectors, self._read_named)
            if offset is None:
                return

    def get_tiles(self, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        self._check_open()
        wanted = valid_point_ids(ids)
        if self._tiles is None or not wanted:
            return []
        found: dict[str, dict[str, Any]] = {}
        for sl in chunks(len(wanted), PAGE):
            for r in self._tiles.retrieve(_point_ids(wanted[sl]), _WITHOUT_PACKED, False):
                found[str(r.id)] = r.payload or {}
        return [(i, found[i]) for i in wanted if i in found]

    def _read_named(self, ids: list[str]) -> list[Any]:
        """Qdrant's named vectors of ``ids``, in their order (tiles without a packed copy)."""
        found = self._need_tiles().retrieve(_point_ids(ids), False, _NAMED_VECTORS)
        by_id = {str(p.id): p.vector for p in found}
        return [by_id[i] for i in ids]

    def _candidates(self, points: Iterable[Any], with_vectors: bool) -> Candidates:
        return candidates_of(list(points), with_vectors, self.meta(), self.payload_vectors, self._read_named)

    def _query(self, query: Any, k: int, flt: QueryFilter | None, with_vectors: bool, with_payload: bool) -> Candidates:
        """``query`` on the coarse vectors, with what the caller asked for of each tile."""
        packed = with_vectors and self.payload_vectors
        request = qe.QueryRequest(
            limit=check_k(k),
            query=query,
            filter=_edge_filter(filter_conditions(flt)),
            with_payload=payload_selector(packed, with_payload, _ONLY_PACKED, _WITHOUT_PACKED),
            with_vector=_NAMED_VECTORS if with_vectors and not self.payload_vectors else False,
        )
        return self._candidates(self._need_tiles().query(request), with_vectors)

    def get_vectors(
        self, ids: list[str], with_payload: bool = False
    ) -> tuple[list[str], np.ndarray, np.ndarray, list[dict[str, Any]]]:
        tiles = self._need_tiles()
        meta = self.meta()
        assert meta is not None
        wanted = valid_point_ids(ids)
        selector = payload_selector(self.payload_vectors, with_payload, _ONLY_PACKED, _WITHOUT_PACKED)
        recs: dict[str, Any] = {}
        for sl in chunks(len(wanted), PAGE):
            recs.update((str(r.id), r) for r in tiles.retrieve(_point_ids(wanted[sl]), selector, False))
        found = [i for i in wanted if i in recs]
        payloads, coarse, regions = stored_vectors(
            found, [recs[i].payload for i in found], meta, self.payload_vectors, self._read_named
        )
        return found, coarse, regions, payloads

    def recall(
        self,
        text: np.ndarray,
        k: int,
        flt: QueryFilter | None = None,
        with_vectors: bool = True,
        with_payload: bool = True,
    ) -> Candidates:
        self._need_tiles()
        vec = check_text(text, self.meta())
        query = qe.Query.Nearest(vec.tolist(), using=schema.COARSE)
        return self._query(query, k, flt, with_vectors, with_payload)

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
        self._need_tiles()
        pos, neg = check_examples(positives, negatives, self.meta(), strategy)
        if strategy == "average_vector":  # not in the binding: Qdrant's arithmetic, then nearest
            query = qe.Query.Nearest(average_vector(np.array(pos), np.array(neg)).tolist(), using=schema.COARSE)
        else:
            kind = qe.Query.RecommendSumScores if strategy == "sum_scores" else qe.Query.RecommendBestScore
            query = kind(qe.RecommendQuery(_dense(pos), _dense(neg)), using=schema.COARSE)
        return self._query(query, k, flt, with_vectors, with_payload)

    def above(self, query: np.ndarray, threshold: float, flt: QueryFilter | None = None, limit: int = 16384,
              offset: int = 0) -> Candidates:
        tiles = self._need_tiles()
        vec = check_text(query, self.meta())
        points = tiles.query(qe.QueryRequest(
            limit=check_k(limit, "limit"), offset=max(int(offset), 0),
            query=qe.Query.Nearest(vec.tolist(), using=schema.COARSE), filter=_edge_filter(filter_conditions(flt)),
            score_threshold=float(threshold), params=qe.SearchParams(exact=True), with_payload=False,
            with_vector=False,
        ))
        return Candidates(ids=[str(p.id) for p in points], scores=np.array([p.score for p in points], dtype=np.float32),
                          payloads=[{} for _ in points])

    def find_tiles(self, flt: QueryFilter, limit: int = 256) -> list[tuple[str, dict[str, Any]]]:
        self._check_open()
        if self._tiles is None:
            return []
        recs, _ = self._tiles.scroll(
            qe.ScrollRequest(
                limit=check_k(limit, "limit"), filter=_edge_filter(filter_conditions(flt)),
                with_payload=_WITHOUT_PACKED, with_vector=False,
            )
        )
        return [(str(r.id), r.payload or {}) for r in recs]

    def count_tiles(self, scene_id: str | None = None, within: QueryFilter | None = None) -> int:
        self._check_open()
        if self._tiles is None:
            return 0
        flt = _scene_filter(scene_id) if scene_id is not None else _edge_filter(filter_conditions(within))
        return int(self._tiles.count(qe.CountRequest(exact=True, filter=flt)))

    def delete_scene(self, scene_id: str) -> int:
        """Remove the scene's tiles, then its record; the count of tiles removed (0 if none)."""
        self._check_writable(f"delete scene {scene_id!r}")
        removed = self.count_tiles(scene_id)
        if self._tiles is not None and removed:
            self._tiles.update(qe.UpdateOperation.delete_points_by_filter(_scene_filter(scene_id)))
        if self._scenes is not None:
            self._scenes.update(qe.UpdateOperation.delete_points([schema.scene_point_id(scene_id)]))
        return removed

    # -- scenes ---------------------------------------------------------------------------

    def put_scene(self, scene: SceneRecord) -> None:
        self._check_writable(f"record scene {scene.scene_id!r}")
        scenes = self._need_scenes()
        point = qe.Point(schema.scene_point_id(scene.scene_id), {}, scene.to_payload())
        scenes.update(qe.UpdateOperation.upsert_points([point]))

    def get_scene(self, scene_id: str) -> SceneRecord | None:
        self._check_open()
        if self._scenes is None:
            return None
        recs = self._scenes.retrieve([schema.scene_point_id(scene_id)], True, False)
        if not recs or not recs[0].payload or recs[0].payload.get("kind") != KIND_SCENE:
            return None
        return SceneRecord.from_payload(recs[0].payload)

    def list_scenes(self) -> list[SceneRecord]:
        return sorted((SceneRecord.from_payload(p) for p in self._scroll_kind(KIND_SCENE)), key=lambda s: s.scene_id)

    def _scroll_kind(self, kind: str, match: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Payloads of every point of one ``kind`` in the scenes shard (whose fields equal ``match``'s)."""
        self._check_open()
        if self._scenes is None:
            return []
        flt = _kind_filter(kind, match)
        out: list[dict[str, Any]] = []
        offset: Any = None
        while True:
            recs, offset = self._scenes.scroll(
                qe.ScrollRequest(offset=offset, limit=PAGE, filter=flt, with_payload=True, with_vector=False)
            )
            out.extend(r.payload for r in recs if r.payload)
            if offset is None:
                break
        return out

    # -- batch source failures ------------------------------------------------------------

    def put_failure(self, failure: SourceFailure) -> None:
        self._check_writable(f"record the failure of {failure.source!r}")
        point = qe.Point(schema.failure_point_id(failure.source), {}, failure.to_payload())
        self._need_scenes().update(qe.UpdateOperation.upsert_points([point]))

    def delete_failure(self, source: str) -> None:
        self._check_writable(f"clear the failure of {source!r}")
        if self._scenes is not None:
            self._scenes.update(qe.UpdateOperation.delete_points([schema.failure_point_id(source)]))

    def list_failures(self) -> list[SourceFailure]:
        return sorted((SourceFailure.from_payload(p) for p in self._scroll_kind(KIND_FAILURE)), key=lambda f: f.source)

    # -- records (watches, their hits) ----------------------------------------------------

    def put_records(self, kind: str, records: list[tuple[str, dict[str, Any]]]) -> None:
        self._check_writable(f"record {kind}")
        scenes = self._need_scenes()
        for sl in chunks(len(records), _UPSERT_CHUNK):
            part = records[sl]
            points = [qe.Point(schema.record_point_id(kind, key), {}, {**payload, "kind": kind, "key": key})
                      for key, payload in part]
            scenes.update(qe.UpdateOperation.upsert_points(points))

    def list_records(self, kind: str, match: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self._scroll_kind(kind, match)

    def delete_records(self, kind: str, match: dict[str, Any] | None = None) -> None:
        self._check_writable(f"delete {kind}")
        if self._scenes is not None:
            self._scenes.update(qe.UpdateOperation.delete_points_by_filter(_kind_filter(kind, match)))
