"""The server backend: a Qdrant server (single node or cluster) through qdrant-client.

Every client call goes through ``_run``, which turns transport and HTTP failures into the
named errors (StoreUnavailable, PermissionDenied, CollectionNotFound) with a message that
names the URL without credentials; the API key never appears in a message or a log line.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import numpy as np
from pydantic import BaseModel
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ftfsearch.errors import (
    BadInput,
    CollectionNotFound,
    FtfError,
    PermissionDenied,
    StoreUnavailable,
)
from ftfsearch.net import LOOPBACK_HOSTS
from ftfsearch.store import schema
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
    public_url,
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
    check_meta,
)
from ftfsearch.store.rest import RestError, RestTransport, qdrant_headers

log = logging.getLogger(__name__)

T = TypeVar("T")

_INDEX_TYPES = {
    "keyword": qm.PayloadSchemaType.KEYWORD,
    "integer": qm.PayloadSchemaType.INTEGER,
    "float": qm.PayloadSchemaType.FLOAT,
    "geo": qm.PayloadSchemaType.GEO,
    "datetime": qm.PayloadSchemaType.DATETIME,
}

# Floats per upsert request: about 20 MB of JSON, under the server's max_request_size_mb.
_FLOATS_PER_REQUEST = 1_000_000

# Writes are idempotent (fixed point ids), so a transient failure (connection lost, timeout, 5xx
# while a cluster node fails over) is retried this many times, waiting 0.5, 1, 2 ... s between.
WRITE_ATTEMPTS = 4
WRITE_BACKOFF_S = 0.5

# Payload of a tile without its packed vectors (what callers that do not rerank read).
_WITHOUT_PACKED = qm.PayloadSelectorExclude(exclude=[VECTORS_FIELD])
_ONLY_PACKED = qm.PayloadSelectorInclude(include=[VECTORS_FIELD])
_NAMED_VECTORS = [schema.COARSE, schema.REGIONS]

def _json(selector: Any) -> Any:
    """A payload selector as the REST body wants it (the raw-REST paths skip qdrant-client's models)."""
    return selector.model_dump(mode="json") if isinstance(selector, BaseModel) else selector


class _Missing(Exception):
    """Internal: the collection (or point) the call addressed does not exist."""


def _error_detail(exc: UnexpectedResponse) -> str:
    """What the server said was wrong (its JSON ``status.error``, else the start of the body)."""
    try:
        detail = str(exc.structured().get("status", {}).get("error", ""))
    except Exception:
        detail = (exc.content or b"")[:200].decode("utf-8", "replace")
    return detail[:300]


def _client_filter(conds: list[Condition]) -> qm.Filter | None:
    if not conds:
        return None
    must: list[Any] = []
    must_not: list[Any] = []
    for c in conds:
        if isinstance(c, RangeCond):
            must.append(qm.FieldCondition(key=c.key, range=qm.Range(gte=c.gte, lte=c.lte)))
        elif isinstance(c, TimeCond):
            must.append(qm.FieldCondition(key=c.key, range=qm.DatetimeRange(gte=_datetime(c.gte), lt=_datetime(c.lt))))
        elif isinstance(c, AnyCond):
            must.append(qm.FieldCondition(key=c.key, match=qm.MatchAny(any=list(c.values))))
        elif isinstance(c, ExcludeIds) and c.ids:
            must_not.append(qm.HasIdCondition(has_id=list(c.ids)))
        elif isinstance(c, GeoCond):
            must.append(qm.Filter(should=[qm.FieldCondition(key=c.key, geo_polygon=_geo_polygon(rings))
                                          for rings in c.polygons]))
    return qm.Filter(must=must or None, must_not=must_not or None)


def _geo_polygon(rings: tuple[tuple[tuple[float, float], ...], ...]) -> qm.GeoPolygon:
    def line(ring: tuple[tuple[float, float], ...]) -> qm.GeoLineString:
        return qm.GeoLineString(points=[qm.GeoPoint(lon=x, lat=y) for x, y in ring])

    return qm.GeoPolygon(exterior=line(rings[0]), interiors=[line(r) for r in rings[1:]] or None)


def _datetime(rfc3339: str | None) -> datetime | None:
    return None if rfc3339 is None else datetime.fromisoformat(rfc3339)


def _vector_inputs(vectors: list[list[float]]) -> list[qm.VectorInput]:
    """Dense vectors as qdrant-client's models type them (a list is invariant)."""
    return list(vectors)


def _scene_filter(scene_id: str) -> qm.Filter:
    return qm.Filter(must=[qm.FieldCondition(key="scene_id", match=qm.MatchValue(value=scene_id))])


def _kind_filter(kind: str, match: dict[str, Any] | None = None) -> qm.Filter:
    return qm.Filter(must=[qm.FieldCondition(key=k, match=qm.MatchValue(value=v))
                           for k, v in {"kind": kind, **(match or {})}.items()])


class ServerStore:
    """A tiles collection and its scenes registry on a Qdrant server."""

    backend = "server"

    def __init__(
        self,
        url: str,
        collection: str = "tiles",
        api_key: str | None = None,
        timeout: float = 30.0,
        read_only: bool = False,
        payload_vectors: bool = True,
        use_httpx: bool | None = None,
    ) -> None:
        """``payload_vectors``: read the rerank's vectors from their packed payload copy (fast);
        False asks Qdrant for the named vectors as JSON float lists through qdrant-client (the
        plain path, kept as a reference for the benchmark and the tests). ``use_httpx``: what the
        query path's own REST requests go through (:class:`~ftfsearch.store.rest.RestTransport`'s
        setting: None is http.client, or httpx where the environment names a proxy for the URL;
        the benchmark forces either).

        Everything goes over REST: the query path through its own connections, the rest through
        qdrant-client's. (qdrant-client's gRPC was measured slower than its REST for the query,
        which is the one call whose speed matters, and no setting selected it, so it is gone.)
        """
        self.collection = check_collection_name(collection)
        self.scenes_collection = schema.scenes_collection(collection)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadInput(f"QDRANT_URL {public_url(url)!r}: give a URL like http://host:6333")
        if parts.username or parts.password:
            raise BadInput(
                f"QDRANT_URL {public_url(url)!r}: put credentials in QDRANT_API_KEY, not in the URL"
            )
        if timeout <= 0:
            raise BadInput(f"timeout {timeout}: must be positive")
        self.url = public_url(url)
        self.read_only = read_only
        self.payload_vectors = payload_vectors
        self.timeout = timeout
        self._secrets = [s for s in (api_key,) if s]
        self._has_key = bool(api_key)
        self._meta: CollectionMeta | None = None
        self._closed = False
        with warnings.catch_warnings():
            if parts.hostname in LOOPBACK_HOSTS:
                # Plain HTTP on loopback never leaves the machine; elsewhere the warning stands.
                warnings.filterwarnings("ignore", message="Api key is used with an insecure connection")
            self._client = QdrantClient(
                url=self.url,
                api_key=api_key or None,
                timeout=max(1, math.ceil(timeout)),
                check_compatibility=False,
                # REST headers. httpx asks for gzip by default: Qdrant then compresses every
                # response and the client inflates it, ~15 ms of CPU per 100 tiles' vectors
                # (1.1 MB that barely compresses) against ~1 ms to move them over loopback.
                metadata={"accept-encoding": "identity"},
            )
        # The query path's own REST connections (see ``_raw_post``).
        self._http = RestTransport(self.url, qdrant_headers(api_key), timeout, use_httpx=use_httpx)

    # -- error mapping ---------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def _unreachable(self, what: str, reason: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"cannot reach Qdrant at {self.url} to {what} ({self._redact(reason)}): check QDRANT_URL "
            "and that the server runs"
        )

    def _refused(self, what: str, status: int) -> PermissionDenied:
        if status == 403:
            return PermissionDenied(
                f"Qdrant at {self.url} refused to {what}: the API key is read-only: ingest and drop "
                "need a read-write key"
            )
        hint = "the API key was not accepted: check QDRANT_API_KEY" if self._has_key else (
            "the server needs an API key: set QDRANT_API_KEY"
        )
        return PermissionDenied(f"Qdrant at {self.url} refused to {what}: {hint}")

    def _from_status(self, what: str, status: int, detail: str) -> FtfError:
        if status in (401, 403):
            return self._refused(what, status)
        if status in (400, 422):
            return BadInput(f"Qdrant at {self.url} rejected the request to {what}: {self._redact(detail)}")
        failed = StoreUnavailable(
            f"Qdrant at {self.url} failed to {what} (HTTP {status}: {self._redact(detail)}); "
            "check the server's log"
        )
        failed.http_status = status  # type: ignore[attr-defined]  # answered: worth a retry on a cluster
        return failed

    def _run(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn`` and map its failures; raises ``_Missing`` on a not-found answer."""
        if self._closed:
            raise StoreUnavailable(f"the connection to Qdrant at {self.url} is closed")
        try:
            return fn()
        except UnexpectedResponse as exc:
            status = int(exc.status_code or 0)
            if status == 404:
                raise _Missing() from None
            raise self._from_status(what, status, _error_detail(exc)) from exc
        except ResponseHandlingException as exc:
            source = exc.source if isinstance(exc.source, BaseException) else exc
            reason = (
                f"no answer within {self.timeout:g} s"
                if isinstance(source, httpx.TimeoutException)
                else str(source) or type(source).__name__
            )
            raise self._unreachable(what, reason) from exc
        except httpx.TransportError as exc:
            raise self._unreachable(what, str(exc) or type(exc).__name__) from exc
        except RestError as exc:
            reason = f"no answer within {self.timeout:g} s" if exc.timed_out else str(exc)
            raise self._unreachable(what, reason) from exc

    def _retried(self, what: str, fn: Callable[[], T], answered_only: bool = False) -> T:
        """``_run`` with bounded retries and exponential backoff on transient failures.

        Only for idempotent calls: reads, and writes whose retry rewrites the same points (a
        cluster that just lost a node answers some of both with a 500 until its replicas take over).
        ``answered_only``: retry only failures the server answered (an error status), so a server
        that cannot be reached at all is reported at once. A refusal
        (PermissionDenied, BadInput) is not transient and is raised at once; after the last
        attempt the StoreUnavailable says how many were made.
        """
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return self._run(what, fn)
            except StoreUnavailable as exc:
                if answered_only and getattr(exc, "http_status", None) is None:
                    raise
                if self._closed or attempt == WRITE_ATTEMPTS:
                    raise StoreUnavailable(f"{exc} (gave up after {attempt} attempts)") from exc
                delay = WRITE_BACKOFF_S * 2 ** (attempt - 1)
                log.warning("%s failed (attempt %d of %d), retrying in %.1f s: %s",
                            what, attempt, WRITE_ATTEMPTS, delay, exc)
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _missing_collection(self) -> CollectionNotFound:
        return CollectionNotFound(
            f"collection {self.collection!r} does not exist on Qdrant at {self.url}: ingest a scene "
            "first, or check `collection`"
        )

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise PermissionDenied(f"cannot {what}: the store was opened read-only")

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._http.close()
            self._client.close()
        except Exception:  # closing never fails the caller
            log.debug("closing the qdrant client failed", exc_info=True)

    def __enter__(self) -> "ServerStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self) -> None:
        """Nothing to do: every write waits for the server's acknowledgement."""

    def optimize(self) -> bool:
        """Nothing to do: the server's optimizers index in the background."""
        return False

    # -- collection -----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        meta = self.meta()
        try:
            info = self._run("describe the collection", lambda: self._client.get_collection(self.collection))
            points = int(info.points_count or 0)
            status = str(info.status.value) if info.status is not None else None
        except _Missing:
            points, status = 0, None
        return {
            "backend": self.backend,
            "location": self.url,
            "collection": self.collection,
            "exists": meta is not None,
            "points": points,
            "status": status,
            "meta": meta.to_payload() if meta is not None else None,
        }

    def meta(self) -> CollectionMeta | None:
        if self._meta is not None:
            return self._meta
        try:
            recs = self._retried(
                "read the collection's model record",
                lambda: self._client.retrieve(
                    self.scenes_collection, [schema.META_POINT_ID], with_payload=True, with_vectors=False
                ),
                answered_only=True,
            )
        except _Missing:
            return None
        if not recs or not recs[0].payload:
            return None
        self._meta = CollectionMeta.from_payload(recs[0].payload)
        return self._meta

    def _exists(self, name: str) -> bool:
        return self._retried(
            f"look up collection {name!r}", lambda: self._client.collection_exists(name), answered_only=True
        )

    def _create(self, what: str, fn: Callable[[], Any]) -> None:
        """Create something that a concurrent process may be creating too ("exists" is fine)."""

        def tolerant() -> Any:
            try:
                return fn()
            except UnexpectedResponse as exc:
                if exc.status_code == 409 or b"already exists" in (exc.content or b""):
                    return None
                raise

        self._retried(what, tolerant)

    def ensure_collection(
        self, meta: CollectionMeta, shards: int | None = None, replication_factor: int | None = None
    ) -> None:
        """Create both collections and the indexes, or check ``meta`` against the recorded one.

        ``shards`` / ``replication_factor`` apply on creation only (a cluster spreads the tiles
        over shards and keeps replicas); writes then need one replica's acknowledgement.
        """
        existing = self.meta()
        if existing is not None:
            check_meta(existing, meta, self.collection, self.url)
            if self._exists(self.collection):
                self._add_missing_indexes()
                return
        self._check_writable(f"create collection {self.collection!r}")
        if existing is None and self._exists(self.collection):
            self._check_orphan(meta)
        rf = replication_factor
        wcf = 1 if rf is not None and rf > 1 else None
        self._create(
            f"create collection {self.collection!r}",
            lambda: self._client.create_collection(
                self.collection,
                vectors_config={
                    schema.COARSE: qm.VectorParams(size=meta.dim, distance=qm.Distance.COSINE),
                    schema.REGIONS: qm.VectorParams(
                        size=meta.dim,
                        distance=qm.Distance.COSINE,
                        multivector_config=qm.MultiVectorConfig(comparator=qm.MultiVectorComparator.MAX_SIM),
                        datatype=qm.Datatype.FLOAT16,
                        hnsw_config=qm.HnswConfigDiff(m=0),
                    ),
                },
                shard_number=shards,
                replication_factor=rf,
                write_consistency_factor=wcf,
            ),
        )
        self._add_missing_indexes(set())
        self._create(
            f"create collection {self.scenes_collection!r}",
            lambda: self._client.create_collection(
                self.scenes_collection,
                vectors_config={},  # scene records and the meta point carry no vector
                shard_number=1,
                replication_factor=rf,
                write_consistency_factor=wcf,
            ),
        )
        self._retried(
            "index payload field 'kind'",
            lambda: self._client.create_payload_index(
                self.scenes_collection, "kind", field_schema=qm.PayloadSchemaType.KEYWORD, wait=True
            ),
        )
        if existing is None:
            payload = {"kind": KIND_META, **meta.to_payload()}
            self._retried(
                "record the collection's model",
                lambda: self._client.upsert(
                    self.scenes_collection,
                    [qm.PointStruct(id=schema.META_POINT_ID, vector={}, payload=payload)],
                    wait=True,
                ),
            )
            self._meta = meta

    def _add_missing_indexes(self, have: set[str] | None = None) -> None:
        """The tile indexes the collection lacks (all on creation; ``center`` on a collection made
        before it was indexed, at its next write)."""
        if have is None:
            info = self._retried("read collection", lambda: self._client.get_collection(self.collection))
            have = set(info.payload_schema or {})
            if set(schema.TILE_INDEXES) <= have or self.read_only:
                return
        for field, kind in schema.TILE_INDEXES.items():
            if field in have:
                continue
            self._retried(
                f"index payload field {field!r}",
                lambda f=field, k=kind: self._client.create_payload_index(  # type: ignore[misc]
                    self.collection, f, field_schema=_INDEX_TYPES[k], wait=True
                ),
            )

    def _check_orphan(self, meta: CollectionMeta) -> None:
        """Tiles collection without a model record: accept it only if its vectors fit ``meta``."""
        info = self._retried(
            "describe the collection", lambda: self._client.get_collection(self.collection), answered_only=True
        )
        vectors = info.config.params.vectors
        sizes = {name: p.size for name, p in vectors.items()} if isinstance(vectors, dict) else {}
        if sizes.get(schema.COARSE) != meta.dim or sizes.get(schema.REGIONS) != meta.dim:
            raise StoreUnavailable(
                f"collection {self.collection!r} on {self.url} exists without a model record and with "
                f"vectors {sizes}, which do not fit D={meta.dim}: pass another `collection`"
            )

    def drop_collection(self) -> None:
        """Delete the tiles and scenes collections."""
        self._check_writable(f"drop collection {self.collection!r}")
        for name in (self.collection, self.scenes_collection):
            try:
                self._run(f"drop collection {name!r}", lambda n=name: self._client.delete_collection(n))  # type: ignore[misc]
            except _Missing:
                pass
        self._meta = None

    # -- tiles ----------------------------------------------------------------------------

    def upsert_tiles(self, batch: TileBatch) -> None:
        self._check_writable("write tiles")
        coarse, regions = check_batch(batch, self.meta())
        if len(batch) == 0:
            return
        per_point = (regions.shape[1] + 1) * regions.shape[2]
        for sl in chunks(len(batch), _FLOATS_PER_REQUEST // per_point):
            points = qm.Batch(
                ids=list(batch.ids[sl]),
                vectors={schema.COARSE: coarse[sl].tolist(), schema.REGIONS: regions[sl].tolist()},
                payloads=with_packed_vectors(batch.payloads[sl], coarse[sl], regions[sl]),
            )
            try:
                self._retried("write tiles", lambda p=points: self._client.upsert(self.collection, p, wait=True))  # type: ignore[misc]
            except _Missing:
                raise self._missing_collection() from None

    def _retrieve(self, what: str, ids: list[str], with_payload: Any) -> list[Any]:
        """Records of ``ids`` in pages, without vectors; none when the collection is missing.

        Over REST the request goes through the store's own connection (``_raw_post``):
        qdrant-client opened a new TCP connection for every retrieve (measured: 307 connects
        for 307 calls), which cost more than the answer for the few tiles a query reads."""
        recs: list[Any] = []
        for sl in chunks(len(ids), PAGE):
            body = {"ids": ids[sl], "with_payload": _json(with_payload), "with_vector": False}
            try:
                recs += [
                    SimpleNamespace(id=p["id"], payload=p.get("payload"), vector=None)
                    for p in self._raw_post(what, f"/collections/{self.collection}/points", body)
                ]
            except _Missing:
                return []
        return recs

    def existing_ids(self, ids: list[str]) -> set[str]:
        return {str(r.id) for r in self._retrieve("look up stored tiles", ids, False)}

    def get_tiles(self, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        wanted = valid_point_ids(ids)
        found = {str(r.id): r.payload or {} for r in self._retrieve("read tiles", wanted, _WITHOUT_PACKED)}
        return [(i, found[i]) for i in wanted if i in found]

    def _read_named(self, ids: list[str]) -> list[Any]:
        """Qdrant's named vectors of ``ids``, in their order (tiles without a packed copy)."""
        recs = self._run(
            "read tile vectors",
            lambda: self._client.retrieve(self.collection, ids, with_payload=False, with_vectors=_NAMED_VECTORS),
        )
        by_id = {str(r.id): r.vector for r in recs}
        return [by_id[i] for i in ids]

    def _candidates(self, points: list[Any], with_vectors: bool) -> Candidates:
        return candidates_of(points, with_vectors, self.meta(), self.payload_vectors, self._read_named)

    def get_vectors(
        self, ids: list[str], with_payload: bool = False
    ) -> tuple[list[str], np.ndarray, np.ndarray, list[dict[str, Any]]]:
        meta = self.meta()
        if meta is None:
            raise self._missing_collection()
        wanted = valid_point_ids(ids)
        selector = payload_selector(self.payload_vectors, with_payload, _ONLY_PACKED, _WITHOUT_PACKED)
        recs = {str(r.id): r for r in self._retrieve("read tile vectors", wanted, selector)}
        found = [i for i in wanted if i in recs]
        payloads, coarse, regions = stored_vectors(
            found, [recs[i].payload for i in found], meta, self.payload_vectors, self._read_named
        )
        return found, coarse, regions, payloads

    def scan_tiles(self, scene_id: str, page: int = PAGE) -> Iterator[TileBatch]:
        return self.scan(QueryFilter(scene_ids=(scene_id,)), page)

    def scan(self, flt: QueryFilter | None, page: int = PAGE) -> Iterator[TileBatch]:
        return self._scroll(flt, page, True, scanned_batch)

    def scan_coarse(self, flt: QueryFilter | None, fields: Sequence[str], page: int = PAGE) -> Iterator[CoarseBatch]:
        selector = qm.PayloadSelectorInclude(include=list(fields) + ([VECTORS_FIELD] if self.payload_vectors else []))
        return self._scroll(flt, page, selector, coarse_batch)

    def _scroll(self, flt: QueryFilter | None, page: int, with_payload: Any, build: Callable[..., ScanBatch]) -> Iterator[ScanBatch]:
        """Every tile ``flt`` lets through, a page of points at a time, each page made a batch by ``build``."""
        meta = self.meta()
        if meta is None:
            raise self._missing_collection()
        limit = check_k(page, "page")
        scroll_filter = _client_filter(filter_conditions(flt))
        offset: Any = None
        while True:
            try:
                recs, offset = self._retried(
                    "read the tiles",
                    lambda o=offset: self._client.scroll(  # type: ignore[misc]
                        self.collection, scroll_filter=scroll_filter, limit=limit, offset=o,
                        with_payload=with_payload, with_vectors=False,
                    ),
                )
            except _Missing:
                raise self._missing_collection() from None
            if recs:
                yield build(recs, meta, self.payload_vectors, self._read_named)
            if offset is None:
                return

    def _query(self, what: str, fn: Callable[[], qm.QueryResponse]) -> list[Any]:
        try:
            return list(self._run(what, fn).points)
        except _Missing:
            raise self._missing_collection() from None

    def _raw_post(self, what: str, path: str, body: dict[str, Any]) -> Any:
        """POST over the store's own REST connections (:class:`RestTransport`), the JSON parsed
        here: qdrant-client's models cost ~5 ms more per 100 candidates' payloads (measured at
        100k tiles), for the same answer. Failures map like every other call (``_Missing`` on 404)."""

        def call() -> Any:
            status, content = self._http.post(path, json.dumps(body).encode())
            if status != 200:
                raise UnexpectedResponse(status, "", content, httpx.Headers())
            return json.loads(content)["result"]

        return self._run(what, call)

    def _raw_points(self, what: str, body: dict[str, Any]) -> list[Any]:
        """A points query over REST (see ``_raw_post``)."""
        try:
            points = self._raw_post(what, f"/collections/{self.collection}/points/query", body)["points"]
        except _Missing:
            raise self._missing_collection() from None
        return [
            SimpleNamespace(id=p["id"], score=p["score"], payload=p.get("payload"), vector=None, version=p.get("version"))
            for p in points
        ]

    def recall(
        self,
        text: np.ndarray,
        k: int,
        flt: QueryFilter | None = None,
        with_vectors: bool = True,
        with_payload: bool = True,
    ) -> Candidates:
        meta = self.meta()
        if meta is None:
            raise self._missing_collection()
        vec = check_text(text, meta).tolist()
        return self._query_coarse("recall tiles", vec, vec, k, flt, with_vectors, with_payload)

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
        meta = self.meta()
        if meta is None:
            raise self._missing_collection()
        pos, neg = check_examples(positives, negatives, meta, strategy)
        query = qm.RecommendQuery(
            recommend=qm.RecommendInput(
                positive=_vector_inputs(pos), negative=_vector_inputs(neg), strategy=qm.RecommendStrategy(strategy)
            )
        )
        as_json = {"recommend": {"positive": pos, "negative": neg, "strategy": strategy}}
        return self._query_coarse("recommend tiles", as_json, query, k, flt, with_vectors, with_payload)

    def _query_coarse(
        self, what: str, as_json: Any, query: Any, k: int, flt: QueryFilter | None,
        with_vectors: bool, with_payload: bool,
    ) -> Candidates:
        """A query on the coarse vectors: ``as_json`` over the fast REST path, ``query`` (the
        same in qdrant-client's models) otherwise."""
        limit = check_k(k)
        query_filter = _client_filter(filter_conditions(flt))
        if self.payload_vectors:
            body: dict[str, Any] = {
                "query": as_json,
                "using": schema.COARSE,
                "limit": limit,
                "with_payload": _json(payload_selector(with_vectors, with_payload, _ONLY_PACKED, _WITHOUT_PACKED)),
                "with_vector": False,
            }
            if query_filter is not None:
                body["filter"] = query_filter.model_dump(mode="json", exclude_none=True)
            return self._candidates(self._raw_points(what, body), with_vectors)
        points = self._query(
            what,
            lambda: self._client.query_points(
                self.collection,
                query=query,
                using=schema.COARSE,
                query_filter=query_filter,
                limit=limit,
                with_payload=payload_selector(False, with_payload, _ONLY_PACKED, _WITHOUT_PACKED),
                with_vectors=_NAMED_VECTORS if with_vectors else False,
            ),
        )
        return self._candidates(points, with_vectors)

    def above(self, query: np.ndarray, threshold: float, flt: QueryFilter | None = None, limit: int = 16384,
              offset: int = 0) -> Candidates:
        vec = check_text(query, self.meta()).tolist()
        body: dict[str, Any] = {
            "query": vec, "using": schema.COARSE, "limit": check_k(limit, "limit"), "offset": max(int(offset), 0),
            "score_threshold": float(threshold), "params": {"exact": True}, "with_payload": False,
            "with_vector": False,
        }
        query_filter = _client_filter(filter_conditions(flt))
        if query_filter is not None:
            body["filter"] = query_filter.model_dump(mode="json", exclude_none=True)
        points = self._raw_points("find tiles above a score", body)
        return Candidates(ids=[str(p.id) for p in points], scores=np.array([p.score for p in points], dtype=np.float32),
                          payloads=[{} for _ in points])

    def find_tiles(self, flt: QueryFilter, limit: int = 256) -> list[tuple[str, dict[str, Any]]]:
        try:
            points, _ = self._run(
                "find tiles",
                lambda: self._client.scroll(
                    self.collection,
                    scroll_filter=_client_filter(filter_conditions(flt)),
                    limit=check_k(limit, "limit"),
                    with_payload=_WITHOUT_PACKED,
                    with_vectors=False,
                ),
            )
        except _Missing:
            return []
        return [(str(p.id), p.payload or {}) for p in points]

    def count_tiles(self, scene_id: str | None = None, within: QueryFilter | None = None) -> int:
        flt = _scene_filter(scene_id) if scene_id is not None else _client_filter(filter_conditions(within))
        try:
            res = self._run(
                "count tiles", lambda: self._client.count(self.collection, count_filter=flt, exact=True)
            )
        except _Missing:
            return 0
        return int(res.count)

    def delete_scene(self, scene_id: str) -> int:
        """Remove the scene's tiles, then its record; the count of tiles removed (0 if none)."""
        self._check_writable(f"delete scene {scene_id!r}")
        removed = self.count_tiles(scene_id)
        try:
            self._run(
                f"delete the tiles of scene {scene_id!r}",
                lambda: self._client.delete(
                    self.collection, qm.FilterSelector(filter=_scene_filter(scene_id)), wait=True
                ),
            )
        except _Missing:
            pass
        try:
            self._run(
                f"delete scene record {scene_id!r}",
                lambda: self._client.delete(
                    self.scenes_collection,
                    qm.PointIdsList(points=[schema.scene_point_id(scene_id)]),
                    wait=True,
                ),
            )
        except _Missing:
            pass
        return removed

    # -- scenes ---------------------------------------------------------------------------

    def put_scene(self, scene: SceneRecord) -> None:
        self._check_writable(f"record scene {scene.scene_id!r}")
        point = qm.PointStruct(id=schema.scene_point_id(scene.scene_id), vector={}, payload=scene.to_payload())
        try:
            self._retried(
                f"record scene {scene.scene_id!r}",
                lambda: self._client.upsert(self.scenes_collection, [point], wait=True),
            )
        except _Missing:
            raise self._missing_collection() from None

    def get_scene(self, scene_id: str) -> SceneRecord | None:
        try:
            recs = self._run(
                f"read scene {scene_id!r}",
                lambda: self._client.retrieve(
                    self.scenes_collection, [schema.scene_point_id(scene_id)], with_payload=True
                ),
            )
        except _Missing:
            return None
        if not recs or not recs[0].payload or recs[0].payload.get("kind") != KIND_SCENE:
            return None
        return SceneRecord.from_payload(recs[0].payload)

    def list_scenes(self) -> list[SceneRecord]:
        return sorted((SceneRecord.from_payload(p) for p in self._scroll_kind(KIND_SCENE, "list scenes")),
                      key=lambda s: s.scene_id)

    def _scroll_kind(self, kind: str, what: str, match: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Payloads of every point of one ``kind`` in the scenes collection (whose fields equal
        ``match``'s; none when it is missing)."""
        flt = _kind_filter(kind, match)
        out: list[dict[str, Any]] = []
        offset: Any = None
        while True:
            try:
                recs, offset = self._run(
                    what,
                    lambda o=offset: self._client.scroll(  # type: ignore[misc]
                        self.scenes_collection, scroll_filter=flt, limit=PAGE, offset=o,
                        with_payload=True, with_vectors=False,
                    ),
                )
            except _Missing:
                return []
            out.extend(r.payload for r in recs if r.payload)
            if offset is None:
                break
        return out

    # -- batch source failures ------------------------------------------------------------

    def put_failure(self, failure: SourceFailure) -> None:
        what = f"record the failure of {failure.source!r}"
        self._check_writable(what)
        point = qm.PointStruct(id=schema.failure_point_id(failure.source), vector={}, payload=failure.to_payload())
        try:
            self._retried(what, lambda: self._client.upsert(self.scenes_collection, [point], wait=True))
        except _Missing:
            raise self._missing_collection() from None

    def delete_failure(self, source: str) -> None:
        what = f"clear the failure of {source!r}"
        self._check_writable(what)
        try:
            self._retried(
                what,
                lambda: self._client.delete(
                    self.scenes_collection, qm.PointIdsList(points=[schema.failure_point_id(source)]), wait=True
                ),
            )
        except _Missing:
            pass

    def list_failures(self) -> list[SourceFailure]:
        return sorted((SourceFailure.from_payload(p) for p in self._scroll_kind(KIND_FAILURE, "list failures")),
                      key=lambda f: f.source)

    # -- records (watches, their hits) ----------------------------------------------------

    def put_records(self, kind: str, records: list[tuple[str, dict[str, Any]]]) -> None:
        what = f"record {kind}"
        self._check_writable(what)
        for sl in chunks(len(records), 256):
            part = records[sl]
            points = [qm.PointStruct(id=schema.record_point_id(kind, key), vector={},
                                     payload={**payload, "kind": kind, "key": key}) for key, payload in part]
            try:
                self._retried(what, lambda p=points: self._client.upsert(  # type: ignore[misc]
                    self.scenes_collection, p, wait=True))
            except _Missing:
                raise self._missing_collection() from None

    def list_records(self, kind: str, match: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self._scroll_kind(kind, f"list {kind}", match)

    def delete_records(self, kind: str, match: dict[str, Any] | None = None) -> None:
        what = f"delete {kind}"
        self._check_writable(what)
        flt = _kind_filter(kind, match)
        try:
            self._retried(what, lambda: self._client.delete(self.scenes_collection, qm.FilterSelector(filter=flt),
                                                            wait=True))
        except _Missing:
            pass
