"""The watch endpoints under ``/api/watches``: list a collection's standing queries and their hits
(read), add and remove them (writes: :mod:`ftfsearch.web.auth` gives them the write role)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from ftfsearch.commands.requests import WatchHitsRequest, WatchListRequest, WatchRmRequest
from ftfsearch.web.api import MAX_JSON_BYTES, Res, example_refs, json_body
from ftfsearch.web.auth import record_change
from ftfsearch.web.schemas import ERROR_RESPONSES, WatchBody

router = APIRouter(prefix="/api/watches", tags=["watches"], responses=ERROR_RESPONSES)


@router.get("")
def list_watches(res: Res) -> list[dict[str, Any]]:
    """Every watch of the collection, with its count of hits and of hits its webhook is owed."""
    return [row.model_dump(mode="json") for row in res.commands.watch_list(WatchListRequest())]


@router.post("", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": WatchBody.model_json_schema()}}}})
async def add_watch(request: Request, res: Res) -> dict[str, Any]:
    """Add a standing query (``ftfsearch watch add``): every tile an ingest writes from now on is
    scored against it (write role)."""
    body = WatchBody.model_validate(await json_body(request, MAX_JSON_BYTES))
    watch = body.to_request(example_refs(body))
    row = await run_in_threadpool(res.commands.watch_add, watch)
    record_change(request, f"watch {row.name!r} added")
    return row.model_dump(mode="json")


@router.delete("/{name}")
async def remove_watch(request: Request, res: Res, name: str) -> dict[str, Any]:
    """Remove a watch and its hits (write role)."""
    out = await run_in_threadpool(res.commands.watch_rm, WatchRmRequest(name=name))
    record_change(request, f"watch {name[:64]!r} removed with {out.hits_removed} hits")
    return out.model_dump(mode="json")


@router.get("/{name}/hits")
def watch_hits(res: Res, name: str, since: str | None = Query(None, max_length=100, description=(
        "only hits found at or after this time (ISO 8601; UTC if no zone)")),
        geojson: bool = Query(False, description="answer a GeoJSON FeatureCollection")) -> dict[str, Any]:
    """A watch's hits, newest first, as ``ftfsearch watch hits --json`` prints them."""
    from ftfsearch.watch import hits_geojson

    out = res.commands.watch_hits(WatchHitsRequest.model_validate({"name": name, "since": since}))
    if geojson:
        return hits_geojson(out.hits)
    return out.model_dump(mode="json")
