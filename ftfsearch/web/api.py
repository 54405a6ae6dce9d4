"""The endpoints under ``/api``: search (by text, example or a POSTed image), labels, scenes,
info, chips and previews, and dropping a scene (a write: :mod:`ftfsearch.web.auth` says who may).
Each takes the app's :class:`~ftfsearch.web.resources.Resources` as a dependency; searches and store
reads hold its lock, chips and previews render outside it."""

from __future__ import annotations

import json
import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ftfsearch import __version__
from ftfsearch.commands.requests import ClassifyRequest, ReviewOutcome, ReviewRequest
from ftfsearch.chips import MAX_CHIP_SIDE, ChipSpec, recorded_bands, region_footprints
from ftfsearch.commands.requests import INFO_COUNTS, DropRequest, InfoRequest, MarksRequest, ScenesRequest
from ftfsearch.errors import BadInput, SceneNotFound, SourceUnavailable
from ftfsearch.examples import ExampleRef, image_ref, parse_ref
from ftfsearch.labels import MAX_LABELS, LabelSet, parse_labels
from ftfsearch.search import MAX_K, MAX_QUERY_CHARS, MAX_RECALL_K
from ftfsearch.web.auth import record_change
from ftfsearch.web.find_stream import find_response
from ftfsearch.web.resources import Resources, ServeOptions
from ftfsearch.web.schemas import (
    ChangeParams,
    ERROR_RESPONSES,
    LabelsBody,
    LabelsRequest,
    SceneBody,
    ScenesBody,
    SearchBody,
    FindParams,
    QueryParams,
    SearchHit,
    SearchParams,
    WatchBody,
)

log = logging.getLogger(__name__)

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
PNG_CACHE_HEADERS = {"Cache-Control": "private, max-age=3600"}

router = APIRouter(prefix="/api", tags=["api"], responses=ERROR_RESPONSES)


def resources_of(request: Request) -> Resources:
    return request.app.state.resources


def options_of(request: Request) -> ServeOptions:
    return request.app.state.options


Res = Annotated[Resources, Depends(resources_of)]
Options = Annotated[ServeOptions, Depends(options_of)]
Search = Annotated[SearchParams, Query()]
Change = Annotated[ChangeParams, Query()]


def package_version() -> str:
    """The one version string (pyproject reads it from here too), installed or not."""
    return __version__


def check_tile_id(tile_id: str) -> str:
    if not _UUID.match(tile_id):
        raise BadInput(f"tile id {tile_id[:80]!r}: not a tile id (tile ids are UUIDs, as in search results)")
    return tile_id.lower()


def path_for(request: Request, name: str, **params: str) -> str:
    """A route's URL as a path with this server's root path and no host: right behind a reverse
    proxy that serves it under a prefix (``serve --root-path``), whatever Host the proxy sends."""
    return request.url_for(name, **params).path


def chip_url(request: Request, tile_id: str, region: int | None) -> str:
    """Where the page gets a tile's chip, with region ``region`` outlined when one is given."""
    chip = path_for(request, "tile_chip", tile_id=tile_id)
    return chip if region is None else f"{chip}?region={region}"


# -- search --------------------------------------------------------------------------------------


def example_refs(params: QueryParams | ChangeParams | WatchBody) -> list[ExampleRef]:
    """Stored tiles and points only: the server reads no file a client names (POST an image)."""
    given = (("like", params.like), ("unlike", params.unlike), ("like_region", params.like_region),
             ("unlike_region", params.unlike_region))
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


MAX_JSON_BYTES = 20 << 20
"""A JSON body's limit (an area's outline, a find's labels)."""


async def json_body(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, refused past ``limit`` bytes or when not an object."""
    raw = await request.body()
    if len(raw) > limit:
        raise BadInput(f"body: {len(raw)} bytes; send at most {limit >> 20} MB")
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"body: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BadInput("body: expected a JSON object")
    return data


def run_search(
    request: Request, response: Response, res: Resources, params: SearchParams, examples: list[ExampleRef],
    aoi: Any = None,
) -> dict[str, Any]:
    """One search (the search command, over the app's store); the hits are the results' records
    plus chip URLs and region rings."""
    q = params.q
    if not (q or "").strip() and not examples:
        raise BadInput("q: the query is empty; give a text to look for, or an example with like=")
    out = res.commands.search(params.to_request(examples, aoi))
    with res.lock:
        res.remember(out.results)
    hits = [
        SearchHit(**r.to_dict(), region_footprint=ring, chip_url=chip_url(request, r.id, r.region_index))
        for r, ring in zip(out.results, region_footprints(out.results))
    ]
    response.headers["Server-Timing"] = ", ".join(f"{name};dur={ms:.1f}" for name, ms in out.timings_ms.items())
    return {
        "query": " ".join((q or "").split()),
        "like": [e.text for e in examples if e.positive],
        "unlike": [e.text for e in examples if not e.positive],
        "results": hits,
        "timings_ms": {k_: round(v, 2) for k_, v in out.timings_ms.items()},
        "warnings": out.warnings,
    }


@router.get("/change")
def change(response: Response, res: Res, params: Change) -> dict[str, Any]:
    """What changed between two time ranges: the places covered in both, ranked by the rise of the
    query's score (or, with no query, by how far their vectors moved); each with both tiles, dates,
    scores and matched regions, as ``ftfsearch change --json`` prints them."""
    out = res.commands.change(params.to_request(example_refs(params)))
    response.headers["Server-Timing"] = ", ".join(f"{name};dur={ms:.1f}" for name, ms in out.timings_ms.items())
    return {"places": [h.to_dict() for h in out.hits], "timings_ms": {n: round(v, 2) for n, v in out.timings_ms.items()},
            "warnings": out.warnings}


@router.get("/search", response_model=SearchBody)
def search(request: Request, response: Response, res: Res, params: Search) -> dict[str, Any]:
    """Search the tiles by text, by example, or both: the same result fields as
    ``ftfsearch query --json``, plus the matched region's ring and a chip URL."""
    return run_search(request, response, res, params, example_refs(params))


@router.post(
    "/search", response_model=SearchBody,
    openapi_extra={"requestBody": {"required": True, "content": {
        **{t: {"schema": {"type": "string", "format": "binary"}} for t in ("image/png", "image/jpeg", "image/tiff")},
        "application/json": {"schema": {"type": "object", "description": (
            "the GET parameters as an object, with `aoi` as a GeoJSON object (an area too long for a URL)")}},
    }}},
)
async def search_by_image(
    request: Request,
    response: Response,
    res: Res,
    params: Search,
    negative: bool = Query(False, description="true: the image is an example of what not to find"),
    region: int | None = Query(None, ge=0, description="use region N of the image instead of the whole image"),
) -> dict[str, Any]:
    """Search by a POSTed image chip (PNG, JPEG or GeoTIFF as the request body), with the
    same parameters as GET; the image is encoded with the collection's model. A JSON body is
    the GET parameters as an object instead, ``aoi`` a GeoJSON object."""
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        data = await json_body(request, MAX_JSON_BYTES)
        aoi = data.pop("aoi", None)
        posted = SearchParams.model_validate({**params.model_dump(exclude_unset=True), **data})
        return await run_in_threadpool(run_search, request, response, res, posted, example_refs(posted), aoi)
    body = await request.body()  # at most auth.MAX_BODY_BYTES: the guard answers 413 past it
    param = ("unlike" if negative else "like") + ("_region" if region is not None else "")
    examples = [image_ref(body, param, "posted image", region)] + example_refs(params)
    return await run_in_threadpool(run_search, request, response, res, params, examples)


# -- find ----------------------------------------------------------------------------------------


@router.post("/find", responses={200: {"content": {"application/x-ndjson": {}}, "description": (
    "NDJSON: a `plan` line (threshold, how it was chosen, scope, estimated hits), a `page` line of results "
    "per scanned page, then `done` (or an `error` line)")}})
async def find(request: Request, res: Res) -> Response:
    """Every tile of the scope scoring at least ``min_score``, streamed page by page (no ``k``).
    The body is a JSON object: the search's parameters (``aoi`` a GeoJSON object) plus
    ``min_score`` and ``max_hits``. A find estimated past ``max_hits`` answers 400."""
    params = FindParams.model_validate(await json_body(request, MAX_JSON_BYTES))
    find_request = params.to_request(example_refs(params))
    return await run_in_threadpool(find_response, res.commands.find(find_request))


@router.post("/classify", responses={200: {"content": {"application/x-ndjson": {}}, "description": (
    "NDJSON: a `plan` line (cross-validated precision and recall on the marks), a `page` line of detections "
    "per scanned page, then `done` (or an `error` line)")}})
async def classify(request: Request, res: Res) -> Response:
    """Train a classifier on the marks of ``labels`` (a labels FeatureCollection) and score every tile
    of the scope (``aoi``, ``bbox``, ``scenes``, ``after``, ``before``); ``min_probability`` (0.5)
    makes a detection. Unusable labels answer 400. With ``format`` (``geojson``, ``parquet`` or
    ``csv``) the detections come as that file instead (the page's export)."""
    body = await json_body(request, MAX_JSON_BYTES)
    fmt = body.pop("format", None)
    classify_request = ClassifyRequest.model_validate(body)
    if fmt is None:
        return await run_in_threadpool(find_response, res.commands.classify(classify_request))
    return await run_in_threadpool(detections_file, res.commands.classify(classify_request), fmt)


EXPORT_TYPES = {"geojson": "application/geo+json", "parquet": "application/vnd.apache.parquet", "csv": "text/csv"}


def detections_file(items: Any, fmt: Any) -> Response:
    """A classify's detections as one file (:mod:`ftfsearch.writers`), built in a temporary directory."""
    import tempfile
    from pathlib import Path

    from ftfsearch.writers import DETECTION_COLUMNS, detection_rows, open_writer

    if fmt not in EXPORT_TYPES:
        raise BadInput(f"`format` {str(fmt)[:40]!r}: give geojson, parquet or csv")
    with tempfile.TemporaryDirectory(prefix="ftf-export-") as tmp:
        path = Path(tmp) / f"detections.{fmt}"
        plan = next(items)
        with open_writer(path, DETECTION_COLUMNS, param="format") as writer:
            for page in items:
                writer.write(detection_rows(page.detections))
        data = path.read_bytes()
    headers = {"Content-Disposition": f'attachment; filename="detections.{fmt}"',
               "X-Detections": str(writer.count), "X-Scope": str(plan.scope)}
    return Response(content=data, media_type=EXPORT_TYPES[fmt], headers=headers)


@router.post("/review", response_model=ReviewOutcome)
async def review(request: Request, res: Res) -> dict[str, Any]:
    """One step of a review: the body is ``labels`` (the review file: a labels FeatureCollection,
    its ``review`` member once started), ``answers`` (``[{"id": TILE, "hit": true|false|null}]``)
    and, to start one, the scope (``aoi``, ``bbox``, ``scenes``, ``after``, ``before``) and an
    optional ``seed``. The answer is the updated file (keep it: the server stores nothing), the next
    tile to check, the running estimate, the strata and the retrained classifier's quality."""
    review_request = ReviewRequest.model_validate(await json_body(request, MAX_JSON_BYTES))
    out = await run_in_threadpool(res.commands.review, review_request)
    return out.model_dump(mode="json")


# -- labels --------------------------------------------------------------------------------------


def marks_body(request: Request, labels: LabelSet, collection: dict[str, Any]) -> dict[str, Any]:
    marks = []
    for f in collection["features"]:
        p = f["properties"]
        ring = (f.get("geometry") or {}).get("coordinates", [None])[0]
        marks.append({"id": p["id"], "label": p["label"], "region": p["region"], "scene_id": p["scene_id"],
                      "level": p["level"], "footprint": ring, "chip_url": chip_url(request, p["id"], p["region"])})
    return {"query": labels.query, "model_id": labels.model_id, "marks": marks}


@router.post("/labels/export")
def labels_export(res: Res, body: LabelsRequest) -> JSONResponse:
    """The marks as a labels GeoJSON FeatureCollection (``label: positive|negative``, the
    query, the model id), as ``ftfsearch labels export`` writes it."""
    if len(body.marks) > MAX_LABELS:
        raise BadInput(f"marks: at most {MAX_LABELS} per file")
    labels = parse_labels({"type": "FeatureCollection", "features": [
        {"properties": m.model_dump()} for m in body.marks
    ]}, "marks")
    collection = res.commands.labels(MarksRequest(examples=tuple(labels.refs()), query=body.query))
    return JSONResponse(collection, headers={"Content-Disposition": 'attachment; filename="labels.geojson"'})


@router.post("/labels/import", response_model=LabelsBody)
async def labels_import(request: Request, res: Res) -> dict[str, Any]:
    """Read a labels GeoJSON (the request body) back into marks, checked against the store."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput("`labels`: not a JSON document; send a labels GeoJSON file (as export writes)") from exc
    labels = parse_labels(data, "labels")

    def check() -> dict[str, Any]:
        collection = res.commands.labels(MarksRequest(examples=tuple(labels.refs()), query=labels.query))
        return marks_body(request, labels, collection)

    return await run_in_threadpool(check)


# -- scenes and info -----------------------------------------------------------------------------


def _preview_bounds(res: Resources, path: str, max_side: int) -> tuple[float, float, float, float] | None:
    """Where a scene's preview goes; None without one (no CRS, or the source is gone: logged)."""
    try:
        return res.renderer.preview_bounds(path, max_side)
    except SourceUnavailable as exc:
        log.warning("%s", exc)
        return None


@router.get("/scenes", response_model=ScenesBody)
def scenes(request: Request, res: Res, options: Options) -> dict[str, Any]:
    """Ingested scenes with footprints, tile counts and where their map previews go: the scenes
    command's rows, each with its preview."""
    rows = []
    for s in res.commands.scenes(ScenesRequest()):
        bounds = _preview_bounds(res, s.path, options.preview_max_side)
        rows.append(SceneBody(
            **s.model_dump(),
            preview_url=None if bounds is None else path_for(request, "scene_preview", scene_id=s.scene_id),
            preview_bounds=None if bounds is None else list(bounds),
        ))
    return {"scenes": rows}


@router.get("/info")
def info(res: Res, options: Options) -> dict[str, Any]:
    """The store, the collection's model, counts (the info command's), limits and the page's map settings."""
    answered = res.commands.info(InfoRequest())
    described = {k: v for k, v in answered.items() if k not in INFO_COUNTS}
    enc = res.encoder
    return {
        "version": package_version(),
        "store": described,
        "collection": described["collection"],
        "model": described["meta"],
        "encoder": {"id": enc.id, "dim": enc.dim, "num_regions": enc.num_regions, "layout": enc.region_layout},
        "device": answered["device"],
        "tiles": answered["tiles"],
        "scenes": answered["scenes"],
        "limits": {"max_k": MAX_K, "max_recall_k": MAX_RECALL_K, "max_query_chars": MAX_QUERY_CHARS,
                   "max_chip_size": MAX_CHIP_SIDE},
        "basemap": None if not options.basemap_url else {
            "url": options.basemap_url, "attribution": options.basemap_attribution or "",
        },
        "cache": res.renderer.stats(),
    }


# -- chips and previews --------------------------------------------------------------------------


@router.get(
    "/tiles/{tile_id}/chip.png",
    name="tile_chip",
    responses={200: {"content": {"image/png": {}}, "description": "the chip"}},
    response_class=Response,
)
def tile_chip(
    res: Res,
    tile_id: str,
    region: int | None = Query(None, ge=0, description="region index to outline (region_index of a result)"),
    size: int | None = Query(None, ge=16, le=MAX_CHIP_SIDE, description="long side in pixels; default: the tile's"),
) -> Response:
    """The tile as PNG, read from its source raster, with the matched region outlined."""
    tid = check_tile_id(tile_id)
    boxes = res.encoder.region_boxes
    if region is not None and region >= len(boxes):
        raise BadInput(f"`region` {region}: this model has {len(boxes)} regions (0..{len(boxes) - 1})")
    payload, bands = res.tile(tid)
    spec = ChipSpec.from_payload(
        payload, bands=bands, region=None if region is None else boxes[region].tolist(), size=size
    )
    return Response(res.renderer.chip(spec), media_type="image/png", headers=PNG_CACHE_HEADERS)


@router.get(
    "/scenes/{scene_id}/preview.png",
    name="scene_preview",
    responses={200: {"content": {"image/png": {}}, "description": "the preview"}},
    response_class=Response,
)
def scene_preview(res: Res, options: Options, scene_id: str) -> Response:
    """A low-resolution RGBA image of the scene in Web Mercator, for a map overlay."""
    with res.lock:
        scene = res.store.get_scene(scene_id) if res.store.meta() is not None else None
    if scene is None:
        raise SceneNotFound(f"scene {scene_id[:200]!r}: not in collection {res.store.collection!r}")
    preview = res.renderer.preview(scene.path, recorded_bands(scene), options.preview_max_side)
    if preview is None:
        raise SceneNotFound(f"scene {scene_id!r}: has no CRS (or crosses the antimeridian): no map preview")
    return Response(preview.png, media_type="image/png", headers=PNG_CACHE_HEADERS)


# -- writes --------------------------------------------------------------------------------------


@router.delete("/scenes/{scene_id}")
async def drop_scene_route(request: Request, res: Res, scene_id: str) -> dict[str, Any]:
    """Remove a scene and its tiles from the collection, as ``ftfsearch drop`` does (write role)."""
    drop = DropRequest(scene_id=scene_id)
    # the holder (an embedded store) refuses a scene its ingest is writing; the commands do the drop
    out = await run_in_threadpool(res.holder.drop if res.holder is not None else res.commands.drop, drop)
    record_change(request, f"scene {scene_id[:200]!r} dropped, {out.removed} tiles removed")
    return out.model_dump(mode="json")
