"""What the API takes and answers, as models: they check requests and make /openapi.json
describe the API. A search hit is :class:`~ftfsearch.search.ResultRecord` (what ``query --json``
prints) plus what only the page needs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, with_config

from ftfsearch.commands.requests import DEFAULT_K, DEFAULT_RECALL_K, ChangeRequest, FindRequest, SearchRequest
from ftfsearch.commands.requests import WatchAddRequest
from ftfsearch.find import MAX_HITS
from ftfsearch.examples import ExampleRef
from ftfsearch.search import MAX_K, MAX_QUERY_CHARS, MAX_RECALL_K, ResultRecord

AFTER_DOC = "only scenes acquired at or after this time (ISO 8601, e.g. 2024-05-01; UTC if no zone)"
BEFORE_DOC = "only scenes acquired before this time; a time range leaves out scenes without a time"


MAX_AOI_QUERY_CHARS = 8000
"""An area in a URL (GET) stays short; a district's outline goes in a POST body."""


class QueryParams(BaseModel):
    """What a query looks for and where, the same for a search and a find."""

    q: str | None = Field(None, max_length=4 * MAX_QUERY_CHARS, description="what to look for, in plain words")
    like: list[str] = Field([], description="an example to find more of: tile id or point lon,lat (repeatable)")
    unlike: list[str] = Field([], description="an example of what not to find (repeatable)")
    like_region: list[str] = Field([], description="REF:N: region N of a tile as the example (repeatable)")
    unlike_region: list[str] = Field([], description="REF:N: a region not to find (repeatable)")
    bbox: str | None = Field(None, description="minlon,minlat,maxlon,maxlat (WGS84)")
    aoi: str | None = Field(None, max_length=MAX_AOI_QUERY_CHARS, description=(
        "only tiles intersecting this area: GeoJSON (Polygon, MultiPolygon, Feature or FeatureCollection, WGS84) "
        "as text; a large one goes as the `aoi` object of a JSON POST body"))
    scene: list[str] = Field([], description="only these scene ids (repeatable)")
    after: str | None = Field(None, max_length=64, description=AFTER_DOC)
    before: str | None = Field(None, max_length=64, description=BEFORE_DOC)

    def scope(self, examples: list[ExampleRef], aoi: Any) -> dict[str, Any]:
        """The scope fields of a command's request; ``aoi``: a POST body's GeoJSON object, else
        this query's text."""
        return {"text": self.q or None, "examples": tuple(examples), "bbox": self.bbox,
                "aoi": aoi if aoi is not None else self.aoi, "scenes": tuple(self.scene), "after": self.after,
                "before": self.before}


class SearchParams(QueryParams):
    """The query parameters of a search, the same for GET and for POST (an image in the body): the
    HTTP spelling of :class:`~ftfsearch.commands.requests.SearchRequest`, with its defaults, whose
    bounds FastAPI reports as 422 and /openapi.json describes."""

    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, description="number of results")
    recall_k: int = Field(DEFAULT_RECALL_K, ge=1, le=MAX_RECALL_K, description="candidates recalled for the rerank")
    rerank: bool = Field(True, description="false: the coarse recall order")

    def to_request(self, examples: list[ExampleRef], aoi: Any = None) -> SearchRequest:
        """The search command's request (checked there: bbox, area, times, examples)."""
        return SearchRequest.model_validate({**self.scope(examples, aoi), "k": self.k, "recall_k": self.recall_k,
                                             "rerank": self.rerank})


class FindParams(QueryParams):
    """``POST /api/find``'s JSON body: :class:`~ftfsearch.commands.requests.FindRequest` in HTTP words."""

    model_config = ConfigDict(extra="forbid")

    aoi: Any = Field(None, description="only tiles intersecting this area: a GeoJSON object (WGS84)")
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description=(
        "the threshold; default: median + 4 robust SD of a sample of the scope's scores"))
    max_hits: int = Field(MAX_HITS, ge=1, description="refuse a find estimated to return more tiles")

    def to_request(self, examples: list[ExampleRef]) -> FindRequest:
        return FindRequest.model_validate({**self.scope(examples, None), "min_score": self.min_score,
                                           "max_hits": self.max_hits})


class ChangeParams(BaseModel):
    """The query parameters of ``GET /api/change``: the HTTP spelling of
    :class:`~ftfsearch.commands.requests.ChangeRequest` (checked there: ranges, bbox, examples)."""

    before: str = Field(..., max_length=100, description="the earlier range, ISO 8601 START/END, either end '..'")
    after: str = Field(..., max_length=100, description="the later range, START/END")
    q: str | None = Field(None, max_length=4 * MAX_QUERY_CHARS,
                          description="what appeared, in plain words; none: rank by how far the vectors moved")
    like: list[str] = Field([], description="an example of what appeared: tile id or point lon,lat (repeatable)")
    unlike: list[str] = Field([], description="an example of what not to find (repeatable)")
    like_region: list[str] = Field([], description="REF:N: region N of a tile as the example (repeatable)")
    unlike_region: list[str] = Field([], description="REF:N: a region not to find (repeatable)")
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, description="number of places")
    bbox: str | None = Field(None, description="minlon,minlat,maxlon,maxlat (WGS84)")
    disappeared: bool = Field(False, description="rank by how much the score fell, not rose")
    aoi: str | None = Field(None, max_length=MAX_AOI_QUERY_CHARS,
                            description="only places intersecting this area: GeoJSON text (WGS84)")

    def to_request(self, examples: list[ExampleRef]) -> ChangeRequest:
        return ChangeRequest.model_validate({
            "text": self.q or None, "examples": tuple(examples), "k": self.k, "bbox": self.bbox,
            "before": self.before, "after": self.after, "disappeared": self.disappeared, "aoi": self.aoi,
        })


class WatchBody(BaseModel):
    """``POST /api/watches``'s JSON body: :class:`~ftfsearch.commands.requests.WatchAddRequest` in
    HTTP words (examples are stored tiles or points: the server reads no file a client names)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., max_length=64, description="the watch's name (letters, digits, '.', '_', '-')")
    q: str | None = Field(None, max_length=4 * MAX_QUERY_CHARS, description="what to watch for, in plain words")
    like: list[str] = Field([], description="an example: tile id or point lon,lat (repeatable)")
    unlike: list[str] = Field([], description="an example of what not to find (repeatable)")
    like_region: list[str] = Field([], description="REF:N: region N of a tile as the example")
    unlike_region: list[str] = Field([], description="REF:N: a region not to find")
    aoi: Any = Field(None, description="only tiles intersecting this area: a GeoJSON object (WGS84)")
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description=(
        "the threshold; default: median + 4 robust SD of a sample of the stored tiles' scores"))
    webhook: str | None = Field(None, max_length=2000, description="an http(s) URL new hits are POSTed to as GeoJSON")

    def to_request(self, examples: list[ExampleRef]) -> WatchAddRequest:
        return WatchAddRequest.model_validate({"name": self.name, "text": self.q or None, "examples": tuple(examples),
                                               "aoi": self.aoi, "min_score": self.min_score, "webhook": self.webhook})


class ErrorBody(BaseModel):
    error: str


def _record_descriptions(schema: dict[str, Any]) -> None:
    """Pydantic reads a TypedDict's attribute docstrings from its own body only: the fields a
    SearchHit takes from ResultRecord take their descriptions from ResultRecord's schema."""
    described = TypeAdapter(ResultRecord).json_schema()["properties"]
    for name, prop in schema.get("properties", {}).items():
        if "description" in described.get(name, {}):
            prop.setdefault("description", described[name]["description"])


@with_config(ConfigDict(use_attribute_docstrings=True, json_schema_extra=_record_descriptions))
class SearchHit(ResultRecord):
    """A result as ``query --json`` prints it, plus where the page finds its chip and region."""

    region_footprint: list[list[float]] | None
    """WGS84 ring of the matched region"""
    chip_url: str
    """PNG of the tile with the matched region outlined"""


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
    stac: dict[str, Any] | None = Field(
        None, description="the STAC item it came from (item, collection, href, assets, cloud_cover, gsd, platform, "
        "constellation, instruments where the item says); null for a plain raster")
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
