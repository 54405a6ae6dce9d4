"""One request model per command, and the typed results they answer with.

Each request is declared once, with its defaults, and validated when it is built: a refused
argument (a bad ``k``, bbox, time or example, a bad tiling) is a :class:`~ftfsearch.errors.BadInput`
naming the parameter before any model loads or store opens. The same models cross the holder (as
JSON, :meth:`pydantic.BaseModel.model_dump_json`), so the local and the remote implementation of
:class:`~ftfsearch.commands.base.Commands` read exactly what the caller built.

Validators raise :class:`BadInput` itself (pydantic passes exceptions other than ``ValueError``
through), so the messages are the library's, with the parameter named in backticks.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from pathlib import Path
from dataclasses import replace
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ftfsearch.area import Area, check_bbox, parse_bbox
from ftfsearch.errors import BadInput
from ftfsearch.records import FIND_PAGE, MAX_HITS, MAX_K, MAX_RECALL_K, ChangeHit, ExampleRef, Result, WatchHit
from ftfsearch.times import TimeRange, check_range, check_ranges, parse_range, parse_time

__all__ = [  # what ftfsearch.commands re-exports: a new command's request and result are named here, once
    "Answer", "ChangeOutcome", "ChangeRequest", "ClassifyPage", "ClassifyPlan", "ClassifyRequest", "Detection",
    "DropOutcome", "DropRequest", "ExportOutcome", "ExportRequest", "FindPage", "FindPlan", "FindRequest", "INFO_COUNTS",
    "InfoRequest",
    "MarksRequest",
    "PushRequest", "QueryScope", "Request", "SceneRow", "ScenesRequest", "Scope", "SearchOutcome", "SearchRequest",
    "CountEstimate", "ReviewAnswer", "ReviewItem", "ReviewOutcome", "ReviewRequest", "StratumRow",
    "WatchAddRequest", "WatchDeliverOutcome", "WatchDeliverRequest", "WatchHitsOutcome", "WatchHitsRequest",
    "WatchListRequest", "WatchRmOutcome", "WatchRmRequest", "WatchRow",
]

DEFAULT_K = 10
DEFAULT_RECALL_K = 100

def checked_aoi(value: Any) -> dict[str, Any] | None:
    """An ``aoi`` as given (GeoJSON, as an object or as JSON text) -> the checked MultiPolygon."""
    if value is None:
        return None
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise BadInput(f"`aoi`: not GeoJSON ({exc})") from exc
    return Area.from_geojson(value).to_geojson()


class Answer(BaseModel):
    """What a command answers with. Its validator is built on first use (``defer_build``): a
    process builds the few models it uses, not all of them (about 0.1 s of every CLI call)."""

    model_config = ConfigDict(defer_build=True)


class Request(BaseModel):
    """A command's arguments: checked once, when built; plain data that crosses the holder."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64",
                              defer_build=True)

    runs_model: ClassVar[bool] = False
    """The command encodes (text or images) with the model, on the device of whoever runs it."""

    def for_another_process(self) -> Self:
        """This request as a process in another working directory reads it (the holder): its paths,
        and its examples' images, absolute."""
        update: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Path):
                update[name] = value.absolute()
            elif isinstance(value, tuple) and any(isinstance(v, ExampleRef) and v.image is not None for v in value):
                update[name] = tuple(replace(v, image=v.image.absolute())
                                     if isinstance(v, ExampleRef) and v.image is not None else v for v in value)
        return self.model_copy(update=update) if update else self


class Scope(Request):
    """Where a command looks: a box, an area, scenes, a time range (all optional)."""

    bbox: tuple[float, float, float, float] | None = None
    aoi: dict[str, Any] | None = None
    """A GeoJSON Polygon, MultiPolygon, Feature or FeatureCollection (WGS84): tiles whose footprint
    intersects it. Kept as the checked MultiPolygon (:mod:`ftfsearch.area`)."""
    scenes: tuple[str, ...] = ()
    after: datetime | None = None
    before: datetime | None = None

    @field_validator("bbox", mode="before")
    @classmethod
    def _bbox(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return parse_bbox(value)
        box = tuple(float(v) for v in value)
        if len(box) != 4:
            raise BadInput(f"`bbox` {list(value)!r}: expected four numbers minlon,minlat,maxlon,maxlat")
        return check_bbox((box[0], box[1], box[2], box[3]), shown=",".join(str(v) for v in box))

    @field_validator("aoi", mode="before")
    @classmethod
    def _aoi(cls, value: Any) -> Any:
        return checked_aoi(value)

    @field_validator("after", "before", mode="before")
    @classmethod
    def _time(cls, value: Any, info: Any) -> Any:
        return parse_time(value or None, info.field_name)

    def area(self) -> Area | None:
        return None if self.aoi is None else Area.from_geojson(self.aoi)

    @model_validator(mode="after")
    def _check_scope(self) -> "Scope":
        check_range(self.after, self.before)
        return self


class QueryScope(Scope):
    """What a query looks for and where: text, examples (like / unlike), or both, and the scope
    (shared by ``query`` and ``find``)."""

    runs_model: ClassVar[bool] = True
    text: str | None = None
    examples: tuple[ExampleRef, ...] = ()

    @model_validator(mode="after")
    def _check_query(self) -> "QueryScope":
        if self.text is None and not self.examples:
            raise BadInput("give a TEXT to look for, or an example with `like`")
        if self.text is not None and not self.examples:
            cleaned = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in self.text)
            if not cleaned.strip():
                raise BadInput("`query`: is empty; give a description such as 'ships near a harbor'")
        has_text = self.text is not None and bool(self.text.strip())
        if self.examples and not has_text and not any(e.positive for e in self.examples):
            raise BadInput("`unlike`: needs a text or at least one `like` example beside it (misses alone find nothing)")
        return self


class SearchRequest(QueryScope):
    """``query`` / ``GET /api/search``: the top ``k`` of a query in its scope."""

    k: int = DEFAULT_K
    recall_k: int = DEFAULT_RECALL_K
    rerank: bool = True
    with_bands: bool = False
    """Also answer each result scene's recorded bands (what ``--chips`` draws with)."""

    @model_validator(mode="after")
    def _check(self) -> "SearchRequest":
        if not 1 <= self.k <= MAX_K:
            raise BadInput(f"`k` {self.k}: must be between 1 and {MAX_K}")
        if not 1 <= self.recall_k <= MAX_RECALL_K:
            raise BadInput(f"`recall_k` {self.recall_k}: must be between 1 and {MAX_RECALL_K}")
        return self


class FindRequest(QueryScope):
    """``find`` / ``POST /api/find``: every tile of the scope scoring at least ``min_score``
    (default: chosen from a sample of the scope's scores, :func:`ftfsearch.find.default_threshold`)."""

    min_score: float | None = Field(None, ge=-1.0, le=1.0)
    max_hits: int = Field(MAX_HITS, ge=1)
    """A find estimated to return more is refused before it runs."""
    page: int = Field(FIND_PAGE, ge=1, le=MAX_RECALL_K)


class ClassifyRequest(Scope):
    """``classify`` / ``POST /api/classify``: train on the marks in ``labels`` (a labels
    FeatureCollection, as ``labels export`` writes), then score every tile of the scope."""

    labels: dict[str, Any]
    min_probability: float = Field(0.5, gt=0.0, lt=1.0)
    """Detections: the tiles the model gives at least this probability."""
    estimate: bool = False
    """Also the estimated number of hits in the review's scope, from the review answers in ``labels``
    (:mod:`ftfsearch.review`)."""

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, Any]) -> dict[str, Any]:
        from ftfsearch.labels import parse_labels

        parse_labels(value, "`labels`")
        return value


class ClassifyPlan(Answer):
    """The trained model's cross-validated quality on the marks, and the scope scored."""

    precision: float
    recall: float
    folds: int
    positives: int
    negatives: int
    background: int
    train_ms: float
    scope: int
    estimate: "CountEstimate | None" = None
    """With ``estimate``: the number of hits in the scope, from the review answers."""
    validated_marks: int | None = None
    """In a review: how many tiles were marked when ``precision`` and ``recall`` were cross-validated
    (a review refits on every answer but cross-validates every few marks; now there are
    ``positives + negatives``)."""


class CountEstimate(Answer):
    """An estimated count with its 95% interval (:class:`ftfsearch.estimate.Estimate`)."""

    count: float
    low: float
    high: float
    reviewed: int
    text: str
    """As printed: ``≈ 412 (95% CI 371–455) from 60 reviewed``."""

    @classmethod
    def of(cls, est: Any) -> "CountEstimate":
        return cls(count=est.count, low=est.low, high=est.high, reviewed=est.reviewed, text=str(est))


class ReviewAnswer(Request):
    """A reviewer's answer for a tile: a hit (``true``), a miss (``false``), or skipped (``null``)."""

    id: str
    hit: bool | None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        from ftfsearch.examples import TILE_ID

        if not TILE_ID.match(value.strip()):
            raise BadInput(f"`answer` {value[:80]!r}: not a tile id (a review item's id)")
        return value.strip().lower()


class ReviewRequest(Scope):
    """``review`` / ``POST /api/review``: apply ``answers`` to the review in ``labels`` (a labels
    FeatureCollection; one without a ``review`` member starts one in the scope given), retrain,
    and propose the next tile to check. The scope of a started review is its own."""

    labels: dict[str, Any]
    answers: tuple[ReviewAnswer, ...] = ()
    seed: int | None = None
    """The random draws' seed when a review starts (default: a random one, recorded in the file)."""
    cross_validate: bool = False
    """Cross-validate the retrained classifier now (otherwise every few marks: ``validated_marks``)."""

    _labels = field_validator("labels")(ClassifyRequest._labels.__func__)  # type: ignore[attr-defined]

    def scope_json(self) -> dict[str, Any]:
        """The scope as the review records it."""
        return self.model_dump(mode="json", include={"bbox", "aoi", "scenes", "after", "before"})


class ReviewItem(Answer):
    """A tile to check: ``estimate`` (a random draw of stratum ``stratum``) or ``learn`` (the tile
    the classifier is least sure of), with the current classifier's probability."""

    id: str
    kind: str
    stratum: int
    probability: float
    scene_id: str
    level: int
    window: dict[str, int]
    bbox: list[float] | None
    footprint: list[list[float]] | None


class StratumRow(Answer):
    low: float
    high: float
    size: int
    reviewed: int
    positive: int


class ReviewOutcome(Answer):
    """The review file as it is now (write it back), the next tile to check (None: nothing left),
    the running estimate, each stratum's counts and the retrained classifier's quality."""

    labels: dict[str, Any]
    item: ReviewItem | None
    estimate: CountEstimate
    strata: list[StratumRow]
    quality: ClassifyPlan
    timings_ms: dict[str, float]


ClassifyPlan.model_rebuild()


class Detection(Answer):
    id: str
    probability: float
    scene_id: str
    level: int
    window: dict[str, int]
    bbox: list[float] | None
    footprint: list[list[float]] | None


class ClassifyPage(Answer):
    detections: list[Detection]


class FindPlan(Answer):
    """A find's threshold, how it was chosen, its scope and the hits it expects."""

    threshold: float
    threshold_source: str
    scope: int
    sampled: int
    estimated: int
    warnings: list[str] = Field(default_factory=list)


class FindPage(Answer):
    """One page of a find's hits (best first within each page of 16,384 hit ids; ``rank`` counts them)."""

    results: list[Result]


class SearchOutcome(Answer):
    """The ranked results (whole, payload too: chips and GeoJSON are drawn from them), the
    stage timings and warnings, and the result scenes' bands when asked."""

    results: list[Result]
    timings_ms: dict[str, float]
    warnings: list[str]
    bands: dict[str, tuple[int, ...] | None] = Field(default_factory=dict)
    device: str = ""
    """Where the text was encoded and the rerank scored (``cpu``, ``cuda:0``)."""


class ChangeRequest(Request):
    """``change`` / ``GET /api/change``: what rose (or fell) between two time ranges, by a query
    (text, examples) or, with none, by how far the vectors moved (:mod:`ftfsearch.change`)."""

    runs_model: ClassVar[bool] = True
    before: str
    """ISO 8601 range START/END (either end ``..``); kept in its canonical form once checked."""
    after: str
    text: str | None = None
    examples: tuple[ExampleRef, ...] = ()
    k: int = DEFAULT_K
    bbox: tuple[float, float, float, float] | None = None
    disappeared: bool = False
    """Rank by how much the score fell (what disappeared) rather than rose."""
    aoi: dict[str, Any] | None = None
    """Only places whose tiles intersect this area (GeoJSON, checked as ``Scope.aoi``)."""

    _bbox = field_validator("bbox", mode="before")(SearchRequest._bbox.__func__)  # type: ignore[attr-defined]
    _aoi = field_validator("aoi", mode="before")(Scope._aoi.__func__)  # type: ignore[attr-defined]

    def area(self) -> Area | None:
        return None if self.aoi is None else Area.from_geojson(self.aoi)

    @field_validator("before", "after", mode="before")
    @classmethod
    def _range(cls, value: Any, info: Any) -> Any:
        return str(parse_range(value, info.field_name))

    @model_validator(mode="after")
    def _check(self) -> "ChangeRequest":
        if not 1 <= self.k <= MAX_K:
            raise BadInput(f"`k` {self.k}: must be between 1 and {MAX_K}")
        check_ranges(*self.ranges())
        if self.text is not None and not self.text.strip() and not self.examples:
            raise BadInput("`query`: is empty; give a description, or none to rank by how much the place changed")
        if self.examples and not (self.text or "").strip() and not any(e.positive for e in self.examples):
            raise BadInput("`unlike`: needs a text or at least one `like` example beside it (misses alone find nothing)")
        return self

    def ranges(self) -> tuple[TimeRange, TimeRange]:
        """``(before, after)`` as ranges."""
        return parse_range(self.before, "before"), parse_range(self.after, "after")


class ChangeOutcome(Answer):
    """The ranked places (both tiles each, whole: chips and GeoJSON are drawn from them), timings
    and warnings."""

    hits: list[ChangeHit]
    timings_ms: dict[str, float]
    warnings: list[str]


class ScenesRequest(Request):
    """``scenes``: every scene of the collection."""


class SceneRow(Answer):
    """A row of ``ftfsearch scenes``; ``acquired`` and ``stac`` only where the scene has them."""

    scene_id: str
    path: str
    tiles: int
    state: str
    acquired: str | None = None
    stac: dict[str, Any] | None = None
    crs: str | None = None
    bbox: list[float] | None = None
    footprint: list[list[float]] | None = None
    """Where the scene lies (WGS84 ring; None without a CRS): the page's map draws it, the table does not."""

    def to_dict(self) -> dict[str, Any]:
        """As ``scenes --json`` prints it: without the geometry (``crs``, ``bbox``, ``footprint``)."""
        return self.model_dump(exclude_none=True, exclude={"crs", "bbox", "footprint"})


class InfoRequest(Request):
    """``info``: the store, the collection, its model and counts."""


INFO_COUNTS = ("tiles", "scenes", "scenes_complete", "device")
"""What ``info`` answers beside the store's own description (:meth:`~ftfsearch.store.base.Store.describe`)."""


class DropRequest(Request):
    scene_id: str = Field(min_length=1)


class DropOutcome(Answer):
    scene_id: str
    removed: int


class PushRequest(Request):
    """``push``: copy this store's collection into ``to``: a Qdrant server URL or an embedded store directory."""

    to: str = Field(min_length=1)
    collection: str | None = None
    """On the target; default: the source collection's name."""
    api_key: str | None = None
    timeout: float | None = None
    shards: int | None = None
    replication_factor: int | None = None


# -- watches (standing queries, :mod:`ftfsearch.watch`) --------------------------------------------


class WatchAddRequest(Request):
    """``watch add`` / ``POST /api/watches``: a standing query scored on every tile an ingest writes."""

    runs_model: ClassVar[bool] = True
    name: str
    text: str | None = None
    examples: tuple[ExampleRef, ...] = ()
    aoi: dict[str, Any] | None = None
    """Only tiles whose footprint intersects this area (GeoJSON, checked as ``Scope.aoi``)."""
    min_score: float | None = Field(None, ge=-1.0, le=1.0)
    """The two-stage score (BTI, as a search ranks) a tile must reach to be a hit. None: just above
    the best score of a sample of the stored tiles in ``aoi`` (:func:`ftfsearch.watch.default_threshold`;
    some must be stored), so the watch fires on what matches better than anything stored."""
    webhook: str | None = None
    """An http(s) URL that new hits are POSTed to as GeoJSON."""

    _aoi = field_validator("aoi", mode="before")(Scope._aoi.__func__)  # type: ignore[attr-defined]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        from ftfsearch.watch import check_name

        return check_name(value)

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        from ftfsearch.watch import check_webhook

        return check_webhook(value)

    @model_validator(mode="after")
    def _check(self) -> "WatchAddRequest":
        QueryScope.model_validate({"text": self.text, "examples": self.examples})  # the query's own checks
        return self

    def area(self) -> Area | None:
        return None if self.aoi is None else Area.from_geojson(self.aoi)

    def described(self) -> str:
        """What the watch looks for, in a line."""
        likes = [e.text for e in self.examples if e.positive]
        unlikes = [e.text for e in self.examples if not e.positive]
        return " ".join([repr(self.text)] * bool(self.text) + [f"like {', '.join(likes)}"] * bool(likes)
                        + [f"unlike {', '.join(unlikes)}"] * bool(unlikes))


class WatchRow(Answer):
    """A watch as ``watch list`` shows it (its query vector stays in the store)."""

    name: str
    query: str
    min_score: float
    threshold_source: str
    model_id: str
    aoi: dict[str, Any] | None = None
    webhook: str | None = None
    created: str
    hits: int = 0
    pending: int = 0
    """Hits its webhook is still owed."""


class WatchListRequest(Request):
    """``watch list`` / ``GET /api/watches``."""


class WatchRmRequest(Request):
    """``watch rm`` / ``DELETE /api/watches/{name}``: the watch and its hits."""

    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        from ftfsearch.watch import check_name

        return check_name(value)


class WatchRmOutcome(Answer):
    name: str
    hits_removed: int


class WatchHitsRequest(WatchRmRequest):
    """``watch hits`` / ``GET /api/watches/{name}/hits``: hits found at or after ``since``, newest first."""

    since: datetime | None = None

    @field_validator("since", mode="before")
    @classmethod
    def _since(cls, value: Any) -> Any:
        return parse_time(value or None, "since")


class WatchHitsOutcome(Answer):
    watch: WatchRow
    hits: list[WatchHit]


class WatchDeliverRequest(Request):
    """``watch deliver``: POST the pending hits (of one watch, or all) to their webhooks now."""

    name: str | None = None
    timeout: float = Field(5.0, gt=0.0, le=120.0)
    tries: int = Field(3, ge=1, le=20)


class WatchDeliverOutcome(Answer):
    delivered: int
    failed: int
    errors: dict[str, str]


class MarksRequest(Request):
    """``labels export`` / ``labels import`` / ``POST /api/labels/*``: marks (stored tiles, their
    regions or points, as like / unlike examples), checked against the store and answered as the
    labels FeatureCollection (:func:`ftfsearch.labels.labels_to_geojson`) with the collection's model id."""

    examples: tuple[ExampleRef, ...]
    query: str | None = None


class ExportRequest(Request):
    """``export-embeddings``: every complete scene's tiles, vectors and footprints to a GeoParquet
    file (:mod:`ftfsearch.embeddings_export`), written by whoever holds the store."""

    out: Path


class ExportOutcome(Answer):
    out: Path
    tiles: int
