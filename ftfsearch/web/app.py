"""The HTTP API and the web page of ``ftfsearch serve``.

One app holds one store, one encoder, one :class:`~ftfsearch.search.Searcher` and one
:class:`~ftfsearch.chips.ChipRenderer` for its lifetime (opened in the lifespan, or handed in
already open by the CLI so that startup errors are one line). Searches are serialised by a lock:
the embedded store and the fast tokenizers are not made for concurrent calls, and a search is a
few milliseconds; chips and previews render in parallel (rasterio releases the GIL) and are
cached. Every error is a JSON body ``{"error": "..."}`` with a 4xx status (5xx only for an
unreachable store or a bug), never a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ftfsearch.chips import MAX_CHIP_SIDE, PREVIEW_MAX_SIDE, ChipRenderer, ChipSpec, LruCache, region_footprints
from ftfsearch.config import Settings
from ftfsearch.errors import (
    BadInput,
    CollectionNotFound,
    FtfError,
    ModelMismatch,
    ModelNotFound,
    PermissionDenied,
    SceneNotFound,
    SourceUnavailable,
    StoreUnavailable,
    TileNotFound,
)
from ftfsearch.examples import ExampleRef, image_ref, parse_ref
from ftfsearch.labels import MAX_LABELS, LabelSet, labels_to_geojson, parse_labels
from ftfsearch.model.base import Encoder
from ftfsearch.search import (
    DEFAULT_VECTOR_CACHE_BYTES,
    MAX_K,
    MAX_QUERY_CHARS,
    MAX_RECALL_K,
    Result,
    Searcher,
    parse_bbox,
)
from ftfsearch.store.base import Store

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
LEAFLET_JS = STATIC_DIR / "vendor" / "leaflet" / "leaflet.js"
MEMO_SECONDS = 300.0
"""How long tile payloads and scene band choices seen by searches serve chip requests without
asking the store (a dropped and re-ingested scene shows its new bands after this)."""
MAX_IMAGE_BYTES = 32 << 20
"""Largest POSTed image chip or labels file."""
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# Most specific first: StoreLocked is a StoreUnavailable, DatasetError a BadInput.
ERROR_STATUS: tuple[tuple[type[FtfError], int], ...] = (
    (BadInput, 400),
    (PermissionDenied, 403),
    (SceneNotFound, 404),
    (TileNotFound, 404),
    (CollectionNotFound, 404),
    (SourceUnavailable, 404),
    (ModelMismatch, 409),
    (StoreUnavailable, 503),
    (ModelNotFound, 503),
)


AFTER_DOC = "only scenes acquired at or after this time (ISO 8601, e.g. 2024-05-01; UTC if no zone)"
BEFORE_DOC = "only scenes acquired before this time; a time range leaves out scenes without a time"


def status_of(exc: FtfError) -> int:
    """The HTTP status of a library error (500 only for a class nobody mapped: a bug)."""
    for cls, status in ERROR_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


@dataclass(frozen=True)
class ServeOptions:
    """What ``ftfsearch serve`` adds to the Settings."""

    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from other pages; empty: CORS off (same origin only)."""
    basemap_url: str | None = None
    """Leaflet tile URL template (``https://.../{z}/{x}/{y}.png``); None: the scene previews only."""
    basemap_attribution: str | None = None
    chip_cache_bytes: int = 64 << 20
    preview_cache_bytes: int = 64 << 20
    vector_cache_bytes: int = DEFAULT_VECTOR_CACHE_BYTES
    preview_max_side: int = PREVIEW_MAX_SIDE


class Resources:
    """What one app holds: the store, the encoder, the searcher (made on first use, since a
    collection may not exist yet when the server starts) and the chip renderer."""

    def __init__(
        self, store: Store, encoder: Encoder, renderer: ChipRenderer,
        vector_cache_bytes: int = DEFAULT_VECTOR_CACHE_BYTES,
    ) -> None:
        self.store = store
        self.vector_cache_bytes = vector_cache_bytes
        self.encoder = encoder
        self.renderer = renderer
        self.lock = threading.Lock()
        """Serialises store and encoder calls."""
        self._searcher: Searcher | None = None
        self.before_close: list[Any] = []
        """Called first by close() (the holder stops its ingests while the store is still open)."""
        # Chips of the results just returned are what the page asks for next: their payloads are
        # remembered so those chips never wait for the lock behind a running search.
        self._tiles: LruCache[str, tuple[float, dict[str, Any]]] = LruCache(1 << 62, 20_000, lambda v: 1)
        self._bands: LruCache[str, tuple[float, tuple[int, ...] | None]] = LruCache(1 << 62, 10_000, lambda v: 1)

    @classmethod
    def open(cls, settings: Settings, options: ServeOptions | None = None, writable: bool = False) -> "Resources":
        """Open the store (read-only unless ``writable``: the holder of an embedded store ingests
        and drops for the other commands) and load the encoder named by ``settings``."""
        from ftfsearch.model.loading import load_encoder
        from ftfsearch.store import open_store

        options = options or ServeOptions()
        store = open_store(
            collection=settings.collection,
            store_dir=None if settings.qdrant_url else settings.resolved_store_dir,
            qdrant_url=settings.qdrant_url,
            api_key=settings.qdrant_api_key,
            timeout=settings.timeout,
            read_only=not writable,
        )
        try:
            encoder = load_encoder(settings.model, device=settings.device)
        except BaseException:
            store.close()
            raise
        return cls(store, encoder, ChipRenderer(options.chip_cache_bytes, options.preview_cache_bytes),
                   options.vector_cache_bytes)

    def searcher(self) -> Searcher:
        """The searcher; call with ``lock`` held. Raises CollectionNotFound / ModelMismatch."""
        if self._searcher is None:
            self._searcher = Searcher(self.encoder, self.store, self.vector_cache_bytes)
        return self._searcher

    def _scene_bands(self, scene_id: str) -> tuple[int, ...] | None:
        """The scene's ``--bands``; call with ``lock`` held."""
        hit = self._bands.get(scene_id)
        if hit is not None and time.monotonic() - hit[0] < MEMO_SECONDS:
            return hit[1]
        scene = self.store.get_scene(scene_id)
        bands = (scene.tiling or {}).get("bands") if scene is not None else None
        value = tuple(int(b) for b in bands) if bands else None
        self._bands.put(scene_id, (time.monotonic(), value))
        return value

    def remember(self, results: list[Result]) -> None:
        """Keep what the chips of these results need; call with ``lock`` held."""
        now = time.monotonic()
        for r in results:
            self._scene_bands(r.scene_id)
            self._tiles.put(r.id, (now, r.payload))

    def tile(self, tile_id: str) -> tuple[dict[str, Any], tuple[int, ...] | None]:
        """A tile's payload and its scene's bands: remembered, else from the store."""
        hit = self._tiles.get(tile_id)
        bands = self._bands.get(str(hit[1].get("scene_id", ""))) if hit is not None else None
        now = time.monotonic()
        if hit is not None and bands is not None and now - hit[0] < MEMO_SECONDS and now - bands[0] < MEMO_SECONDS:
            return hit[1], bands[1]
        with self.lock:
            found = self.store.get_tiles([tile_id]) if self.store.meta() is not None else []
            if not found:
                raise TileNotFound(f"tile {tile_id}: not in collection {self.store.collection!r}")
            payload = found[0][1]
            self._tiles.put(tile_id, (now, payload))
            return payload, self._scene_bands(str(payload.get("scene_id", "")))

    def close(self) -> None:
        try:
            for hook in self.before_close:
                hook()
        finally:
            self.before_close = []
            self.store.close()


# -- response models (they make /openapi.json describe the API) ----------------------------------


class ErrorBody(BaseModel):
    error: str


class Window(BaseModel):
    col: int
    row: int
    width: int
    height: int


class SearchHit(BaseModel):
    rank: int
    score: float
    coarse_score: float
    fine_score: float | None
    id: str
    scene_id: str
    path: str
    level: int
    window: Window
    bbox: list[float] | None = Field(description="[minlon, minlat, maxlon, maxlat] WGS84; null without CRS")
    acquired: str | None = Field(None, description="acquisition time of the scene, ISO 8601 UTC; null when unknown")
    region: list[float] | None = Field(description="matched region [x0, y0, x1, y1] as fractions of the tile")
    region_window: Window | None = Field(description="matched region in scene pixels")
    region_index: int | None
    footprint: list[list[float]] | None = Field(description="WGS84 ring [[lon, lat], ...] of the tile")
    region_footprint: list[list[float]] | None = Field(description="WGS84 ring of the matched region")
    chip_url: str = Field(description="PNG of the tile with the matched region outlined")


class SearchBody(BaseModel):
    query: str
    like: list[str] = Field(description="the positive examples, as given")
    unlike: list[str] = Field(description="the negative examples, as given")
    results: list[SearchHit]
    timings_ms: dict[str, float]
    warnings: list[str]


class Mark(BaseModel):
    id: str = Field(description="tile id")
    label: str = Field(description="positive or negative")
    region: int | None = Field(None, description="the marked region index; null: the whole tile")


class LabelsRequest(BaseModel):
    query: str | None = None
    marks: list[Mark]


class MarkBody(Mark):
    scene_id: str | None
    level: int | None
    footprint: list[list[float]] | None
    chip_url: str


class LabelsBody(BaseModel):
    query: str | None
    model_id: str | None
    marks: list[MarkBody]


class SceneBody(BaseModel):
    scene_id: str
    path: str
    state: str
    tiles: int
    crs: str | None
    bbox: list[float] | None
    footprint: list[list[float]] | None
    acquired: str | None = Field(None, description="acquisition time, ISO 8601 UTC; null when unknown")
    preview_url: str | None = Field(description="RGBA PNG warped to Web Mercator; null without CRS or source")
    preview_bounds: list[float] | None = Field(description="[west, south, east, north] WGS84 of the preview image")


class ScenesBody(BaseModel):
    scenes: list[SceneBody]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": why}
    for code, why in (
        (400, "bad parameter"),
        (404, "unknown tile, scene or collection; or the source raster is gone"),
        (409, "the collection was built with another model"),
        (422, "parameter missing or out of range"),
        (503, "store unreachable"),
    )
}


# -- the app -------------------------------------------------------------------------------------


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _check_tile_id(tile_id: str) -> str:
    if not _UUID.match(tile_id):
        raise BadInput(f"tile id {tile_id[:80]!r}: not a tile id (tile ids are UUIDs, as in search results)")
    return tile_id.lower()


def _package_version() -> str:
    try:
        return metadata.version("ftfsearch")
    except metadata.PackageNotFoundError:
        return "unknown"


def create_app(
    settings: Settings, options: ServeOptions | None = None, resources: Resources | None = None
) -> FastAPI:
    """The FastAPI app. ``resources`` already open are taken over (closed at shutdown); without
    them the lifespan opens them from ``settings``."""
    options = options or ServeOptions()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        res = resources if resources is not None else await run_in_threadpool(Resources.open, settings, options)
        app.state.resources = res
        try:
            yield
        finally:
            await run_in_threadpool(res.close)

    app = FastAPI(
        title="ftfsearch",
        version=_package_version(),
        description="Text search over remote-sensing scenes: coarse recall, then a text-guided region rerank.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads from a CDN; the page must work offline. /openapi.json stays.
        redoc_url=None,
    )
    if options.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(options.cors_origins), allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    if not LEAFLET_JS.is_file():
        log.warning("Leaflet is not bundled (%s missing): run scripts/get-leaflet.sh; the map stays empty", LEAFLET_JS)

    @app.exception_handler(FtfError)
    async def _ftf_error(request: Request, exc: FtfError) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return _error(status, str(exc))  # str(): parameters by name (bbox), never as flags

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = f"{request.url.path[:200]}: not found; the API is under /api (see /openapi.json)"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    def res_of(request: Request) -> Resources:
        return request.app.state.resources  # type: ignore[no-any-return]

    # -- API -------------------------------------------------------------------------------------

    def run_search(
        request: Request, response: Response, q: str | None, k: int, recall_k: int, bbox: str | None,
        scene: list[str], rerank: bool, examples: list[ExampleRef], after: str | None = None,
        before: str | None = None,
    ) -> dict[str, Any]:
        res = res_of(request)
        box = parse_bbox(bbox)
        if not (q or "").strip() and not examples:
            raise BadInput("q: the query is empty; give a text to look for, or an example with like=")
        with res.lock:
            out = res.searcher().search(q or None, k=k, recall_k=recall_k, rerank=rerank, bbox=box,
                                        scenes=tuple(scene), examples=examples, after=after or None,
                                        before=before or None)
            res.remember(out.results)
        hits = []
        rings = region_footprints(out.results)
        for r, ring in zip(out.results, rings):
            hit = r.to_dict()
            chip = str(request.url_for("tile_chip", tile_id=r.id))
            hit["chip_url"] = chip if r.region_index is None else f"{chip}?region={r.region_index}"
            hit["footprint"] = r.footprint
            hit["region_index"] = r.region_index
            hit["region_footprint"] = ring
            hits.append(hit)
        response.headers["Server-Timing"] = ", ".join(
            f"{name};dur={ms:.1f}" for name, ms in out.timings_ms.items()
        )
        return {
            "query": " ".join((q or "").split()),
            "like": [e.text for e in examples if e.positive],
            "unlike": [e.text for e in examples if not e.positive],
            "results": hits,
            "timings_ms": {k_: round(v, 2) for k_, v in out.timings_ms.items()},
            "warnings": out.warnings,
        }

    def example_refs(like: list[str], unlike: list[str], like_region: list[str], unlike_region: list[str]) -> list[ExampleRef]:
        """Stored tiles and points only: the server reads no file a client names (POST an image)."""
        given = (("like", like), ("unlike", unlike), ("like_region", like_region), ("unlike_region", unlike_region))
        refs = []
        for param, values in given:
            for v in values:
                text = v.strip()
                if param.endswith("_region"):
                    head, sep, tail = text.rpartition(":")
                    if not sep or not tail.strip().isdigit():
                        parse_ref(v, param)  # raises the REF:N message; no file is looked at
                    text = head.strip()
                if not (_UUID.match(text) or "," in text):
                    raise BadInput(f"`{param}` {v[:200]!r}: give a tile id or a point lon,lat (POST an image to search by it)")
                refs.append(parse_ref(v, param))
        return refs

    @app.get("/api/search", response_model=SearchBody, responses=ERROR_RESPONSES, tags=["api"])
    def search(
        request: Request,
        response: Response,
        q: str | None = Query(None, max_length=4 * MAX_QUERY_CHARS, description="what to look for, in plain words"),
        like: list[str] = Query([], description="an example to find more of: tile id or point lon,lat (repeatable)"),
        unlike: list[str] = Query([], description="an example of what not to find (repeatable)"),
        like_region: list[str] = Query([], description="REF:N: region N of a tile as the example (repeatable)"),
        unlike_region: list[str] = Query([], description="REF:N: a region not to find (repeatable)"),
        k: int = Query(10, ge=1, le=MAX_K, description="number of results"),
        recall_k: int = Query(100, ge=1, le=MAX_RECALL_K, description="candidates recalled for the rerank"),
        bbox: str | None = Query(None, description="minlon,minlat,maxlon,maxlat (WGS84)"),
        scene: list[str] = Query([], description="only these scene ids (repeatable)"),
        rerank: bool = Query(True, description="false: the coarse recall order"),
        after: str | None = Query(None, max_length=64, description=AFTER_DOC),
        before: str | None = Query(None, max_length=64, description=BEFORE_DOC),
    ) -> dict[str, Any]:
        """Search the tiles by text, by example, or both: the same result fields as
        ``ftfsearch query --json``, plus a chip URL."""
        examples = example_refs(like, unlike, like_region, unlike_region)
        return run_search(request, response, q, k, recall_k, bbox, scene, rerank, examples, after, before)

    @app.post(
        "/api/search", response_model=SearchBody, responses=ERROR_RESPONSES, tags=["api"],
        openapi_extra={"requestBody": {"required": True, "content": {
            t: {"schema": {"type": "string", "format": "binary"}} for t in ("image/png", "image/jpeg", "image/tiff")
        }}},
    )
    async def search_by_image(
        request: Request,
        response: Response,
        q: str | None = Query(None, max_length=4 * MAX_QUERY_CHARS, description="optional text beside the image"),
        negative: bool = Query(False, description="true: the image is an example of what not to find"),
        region: int | None = Query(None, ge=0, description="use region N of the image instead of the whole image"),
        like: list[str] = Query([]),
        unlike: list[str] = Query([]),
        like_region: list[str] = Query([]),
        unlike_region: list[str] = Query([]),
        k: int = Query(10, ge=1, le=MAX_K),
        recall_k: int = Query(100, ge=1, le=MAX_RECALL_K),
        bbox: str | None = Query(None),
        scene: list[str] = Query([]),
        rerank: bool = Query(True),
        after: str | None = Query(None, max_length=64, description=AFTER_DOC),
        before: str | None = Query(None, max_length=64, description=BEFORE_DOC),
    ) -> dict[str, Any]:
        """Search by a POSTed image chip (PNG, JPEG or GeoTIFF as the request body), with the
        same parameters as GET; the image is encoded with the collection's model."""
        body = await request.body()
        if len(body) > MAX_IMAGE_BYTES:
            raise BadInput(f"image: {len(body)} bytes; send a chip of at most {MAX_IMAGE_BYTES >> 20} MB")
        param = ("unlike" if negative else "like") + ("_region" if region is not None else "")
        examples = [image_ref(body, param, "posted image", region)]
        examples += example_refs(like, unlike, like_region, unlike_region)
        return await run_in_threadpool(
            run_search, request, response, q, k, recall_k, bbox, scene, rerank, examples, after, before
        )

    def marks_body(request: Request, labels: LabelSet, collection: dict[str, Any]) -> dict[str, Any]:
        marks = []
        for f in collection["features"]:
            p = f["properties"]
            chip = str(request.url_for("tile_chip", tile_id=p["id"]))
            ring = (f.get("geometry") or {}).get("coordinates", [None])[0]
            marks.append({"id": p["id"], "label": p["label"], "region": p["region"], "scene_id": p["scene_id"],
                          "level": p["level"], "footprint": ring,
                          "chip_url": chip if p["region"] is None else f"{chip}?region={p['region']}"})
        return {"query": labels.query, "model_id": labels.model_id, "marks": marks}

    @app.post("/api/labels/export", responses=ERROR_RESPONSES, tags=["api"])
    def labels_export(request: Request, body: LabelsRequest) -> JSONResponse:
        """The marks as a labels GeoJSON FeatureCollection (``label: positive|negative``, the
        query, the model id), as ``ftfsearch labels export`` writes it."""
        res = res_of(request)
        if len(body.marks) > MAX_LABELS:
            raise BadInput(f"marks: at most {MAX_LABELS} per file")
        labels = parse_labels({"type": "FeatureCollection", "features": [
            {"properties": m.model_dump()} for m in body.marks
        ]}, "marks")
        with res.lock:
            meta = res.store.meta()
            labels.query, labels.model_id = body.query, None if meta is None else meta.model_id
            collection = labels_to_geojson(labels, res.store)
        return JSONResponse(collection, headers={"Content-Disposition": 'attachment; filename="labels.geojson"'})

    @app.post("/api/labels/import", response_model=LabelsBody, responses=ERROR_RESPONSES, tags=["api"])
    async def labels_import(request: Request) -> dict[str, Any]:
        """Read a labels GeoJSON (the request body) back into marks, checked against the store."""
        raw = await request.body()
        if len(raw) > MAX_IMAGE_BYTES:
            raise BadInput(f"`labels`: {len(raw)} bytes; at most {MAX_IMAGE_BYTES >> 20} MB")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadInput("`labels`: not a JSON document; send a labels GeoJSON file (as export writes)") from exc
        labels = parse_labels(data, "labels")
        res = res_of(request)

        def check() -> dict[str, Any]:
            with res.lock:
                collection = labels_to_geojson(labels, res.store)
            return marks_body(request, labels, collection)

        return await run_in_threadpool(check)

    @app.get("/api/scenes", response_model=ScenesBody, responses=ERROR_RESPONSES, tags=["api"])
    def scenes(request: Request) -> dict[str, Any]:
        """Ingested scenes with footprints, tile counts and where their map previews go."""
        res = res_of(request)
        with res.lock:
            records = res.store.list_scenes() if res.store.meta() is not None else []
            counts = {s.scene_id: res.store.count_tiles(s.scene_id) for s in records}
        rows = []
        for s in records:
            try:
                bounds = res.renderer.preview_bounds(s.path, options.preview_max_side)
            except SourceUnavailable as exc:
                log.warning("%s", exc)
                bounds = None
            rows.append(
                {
                    "scene_id": s.scene_id,
                    "path": s.path,
                    "state": s.state,
                    "tiles": counts[s.scene_id],
                    "crs": s.crs,
                    "bbox": s.bbox,
                    "footprint": s.footprint,
                    "acquired": s.extra.get("acquired"),
                    "preview_url": None if bounds is None else str(
                        request.url_for("scene_preview", scene_id=s.scene_id)
                    ),
                    "preview_bounds": None if bounds is None else list(bounds),
                }
            )
        return {"scenes": rows}

    @app.get("/api/info", responses=ERROR_RESPONSES, tags=["api"])
    def info(request: Request) -> dict[str, Any]:
        """The store, the collection's model, counts, limits and the page's map settings."""
        res = res_of(request)
        with res.lock:
            described = res.store.describe()
            meta = res.store.meta()
            tiles = res.store.count_tiles() if meta is not None else 0
            scene_count = len(res.store.list_scenes()) if meta is not None else 0
        enc = res.encoder
        return {
            "version": _package_version(),
            "store": described,
            "collection": res.store.collection,
            "model": None if meta is None else meta.to_payload(),
            "encoder": {"id": enc.id, "dim": enc.dim, "num_regions": enc.num_regions, "layout": enc.region_layout},
            "tiles": tiles,
            "scenes": scene_count,
            "limits": {"max_k": MAX_K, "max_recall_k": MAX_RECALL_K, "max_query_chars": MAX_QUERY_CHARS,
                       "max_chip_size": MAX_CHIP_SIDE},
            "basemap": None if not options.basemap_url else {
                "url": options.basemap_url, "attribution": options.basemap_attribution or "",
            },
            "cache": res.renderer.stats(),
        }

    @app.get(
        "/api/tiles/{tile_id}/chip.png",
        name="tile_chip",
        responses={200: {"content": {"image/png": {}}, "description": "the chip"}, **ERROR_RESPONSES},
        response_class=Response,
        tags=["api"],
    )
    def tile_chip(
        request: Request,
        tile_id: str,
        region: int | None = Query(None, ge=0, description="region index to outline (region_index of a result)"),
        size: int | None = Query(None, ge=16, le=MAX_CHIP_SIDE, description="long side in pixels; default: the tile's"),
    ) -> Response:
        """The tile as PNG, read from its source raster, with the matched region outlined."""
        res = res_of(request)
        tid = _check_tile_id(tile_id)
        boxes = res.encoder.region_boxes
        if region is not None and region >= len(boxes):
            raise BadInput(f"`region` {region}: this model has {len(boxes)} regions (0..{len(boxes) - 1})")
        payload, bands = res.tile(tid)
        spec = ChipSpec.from_payload(
            payload, bands=bands, region=None if region is None else boxes[region].tolist(), size=size
        )
        png = res.renderer.chip(spec)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get(
        "/api/scenes/{scene_id}/preview.png",
        name="scene_preview",
        responses={200: {"content": {"image/png": {}}, "description": "the preview"}, **ERROR_RESPONSES},
        response_class=Response,
        tags=["api"],
    )
    def scene_preview(request: Request, scene_id: str) -> Response:
        """A low-resolution RGBA image of the scene in Web Mercator, for a map overlay."""
        res = res_of(request)
        with res.lock:
            scene = res.store.get_scene(scene_id) if res.store.meta() is not None else None
        if scene is None:
            raise SceneNotFound(f"scene {scene_id[:200]!r}: not in collection {res.store.collection!r}")
        preview = res.renderer.preview(scene.path, (scene.tiling or {}).get("bands"), options.preview_max_side)
        if preview is None:
            raise SceneNotFound(f"scene {scene_id!r}: has no CRS (or crosses the antimeridian): no map preview")
        return Response(preview.png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    # -- the page --------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
