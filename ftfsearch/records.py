"""What the commands answer with (a ranked tile, a changed place, a watch's hit, an example
reference) and the limits their requests check, apart from the code that computes them: nothing
here imports numpy, so a request can be built, and a bad argument refused, in a process that has
loaded nothing heavy (``ftfsearch query ""`` answers before numpy, the model or the store load)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from typing_extensions import TypedDict

from ftfsearch.errors import BadInput

MAX_K = 1000
MAX_RECALL_K = 10000
MAX_QUERY_CHARS = 2000
SCORE_DECIMALS = 4
"""Scores and tile fractions in JSON: what they mean (a float32's 1/3 is 0.3333333432674408)."""
FIND_PAGE = 1024
"""Tiles a find reads and answers per page."""
MAX_HITS = 1_000_000
"""A find estimated to return more tiles than this is refused: narrow it or raise the threshold."""


TILE_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_POINT = re.compile(rf"^\s*({_NUMBER})\s*,\s*({_NUMBER})\s*$")


@dataclass(frozen=True)
class ExampleRef:
    """One parsed reference; exactly one of ``tile_id``, ``point``, ``image``, ``data`` is set."""

    param: str
    """The parameter it came from (``like``, ``unlike``, ``like_region``, ``unlike_region``)."""
    text: str
    """As the user gave it (for messages)."""
    tile_id: str | None = None
    point: tuple[float, float] | None = None
    image: Path | None = None
    data: bytes | None = None
    region: int | None = None

    @property
    def positive(self) -> bool:
        return not self.param.startswith("unlike")

    def where(self) -> str:
        return f"`{self.param}` {self.text[:200]!r}"


def parse_ref(value: str, param: str = "like") -> ExampleRef:
    """Parse a REF (``*_region`` parameters: ``REF:N``). Raises BadInput naming ``param``."""
    text = str(value).strip()
    region: int | None = None
    where = f"`{param}` {text[:200]!r}"
    if param.endswith("_region"):
        head, sep, tail = text.rpartition(":")
        if not sep or not tail.strip().isdigit():
            raise BadInput(f"{where}: give REF:N, a tile id, point lon,lat or image file and a region index N")
        text, region = head.strip(), int(tail)
    if not text:
        raise BadInput(f"{where}: is empty; give a tile id, a point lon,lat or an image file")
    if TILE_ID.match(text):
        return ExampleRef(param, str(value), tile_id=text.lower(), region=region)
    m = _POINT.match(text)
    if m:
        lon, lat = float(m.group(1)), float(m.group(2))
        if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
            raise BadInput(f"{where}: a point is lon,lat in WGS84 degrees (lon in [-180, 180], lat in [-90, 90])")
        return ExampleRef(param, str(value), point=(lon, lat), region=region)
    path = Path(text).expanduser()
    if not path.is_file():
        raise BadInput(
            f"{where}: not a tile id, a point lon,lat or an image file that exists; tile ids are the "
            "'id' of search results"
        )
    return ExampleRef(param, str(value), image=path, region=region)


def image_ref(data: bytes, param: str = "like", name: str = "uploaded image", region: int | None = None) -> ExampleRef:
    """A reference to image bytes (the API's POSTed image)."""
    return ExampleRef(param, name, data=bytes(data), region=region)


class WindowRecord(TypedDict):
    """A pixel window of a scene."""

    col: int
    row: int
    width: int
    height: int


class ResultRecord(TypedDict):
    """A result as ``query --json`` prints it, GeoJSON properties hold it and the API's hits
    extend it: the one description of a result outside Python. (typing_extensions' TypedDict:
    pydantic wants it on Python 3.11, for the API's schema.)"""

    rank: int
    score: float
    coarse_score: float
    fine_score: float | None
    """the rerank score; null without rerank"""
    id: str
    """tile id"""
    scene_id: str
    path: str
    """the scene's source raster"""
    level: int
    """scene pixels per tile pixel"""
    window: WindowRecord
    """the tile in scene pixels"""
    bbox: list[float] | None
    """[minlon, minlat, maxlon, maxlat] WGS84; null without CRS"""
    acquired: str | None
    """acquisition time of the scene, ISO 8601 UTC; null when unknown"""
    region: list[float] | None
    """matched region [x0, y0, x1, y1] as fractions of the tile; null without rerank"""
    region_window: WindowRecord | None
    """matched region in scene pixels"""
    region_index: int | None
    """the matched region's index (REF:N of like_region); null without rerank"""
    footprint: list[list[float]] | None
    """WGS84 ring [[lon, lat], ...] of the tile; null without CRS"""


# The attribute docstrings above become the API schema's descriptions (pydantic's hook; a class
# attribute set after the body, since in it mypy would take it for a key).
ResultRecord.__pydantic_config__ = {"use_attribute_docstrings": True}  # type: ignore[attr-defined]


def window_record(window: dict[str, int]) -> WindowRecord:
    return WindowRecord(col=int(window["col"]), row=int(window["row"]),
                        width=int(window["width"]), height=int(window["height"]))


def region_in_window(
    region: tuple[float, float, float, float] | list[float], width: int, height: int, tile_size: int | None, level: int
) -> tuple[float, float, float, float]:
    """A region (fractions of the tile) as ``(x0, y0, x1, y1)`` scene pixels from the window's
    origin, clipped to the window. Fractions are of the square the model saw, ``tile_size`` pixels
    a side, each ``level`` scene pixels: a window clipped at a scene's edge was padded to it, so
    it is that square, not the window, that they scale. Without a recorded tile size (stores from
    before it was), the window is taken as the square."""
    span_x = tile_size * level if tile_size else width
    span_y = tile_size * level if tile_size else height
    x0, y0, x1, y1 = (float(v) for v in region[:4])
    return (min(x0 * span_x, width), min(y0 * span_y, height), min(x1 * span_x, width), min(y1 * span_y, height))


@dataclass
class Result:
    """One ranked tile: where it is in its scene and on Earth, and which region matched."""

    rank: int
    score: float
    coarse_score: float
    id: str
    scene_id: str
    path: str
    level: int
    window: dict[str, int]
    """``{col, row, width, height}`` in scene pixels."""
    bbox: list[float] | None
    """``[minlon, minlat, maxlon, maxlat]`` WGS84; None for rasters without CRS."""
    footprint: list[list[float]] | None
    region: list[float] | None
    """Best-matching region ``[x0, y0, x1, y1]`` as fractions of the tile; None without rerank."""
    region_index: int | None = None
    fine_score: float | None = None
    payload: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def acquired(self) -> str | None:
        """The scene's acquisition time, ISO 8601 UTC; None when unknown."""
        return self.payload.get("acquired")

    def to_dict(self) -> ResultRecord:
        """Stable field names for ``--json``, GeoJSON and the HTTP API."""
        return ResultRecord(
            rank=self.rank,
            score=round(self.score, SCORE_DECIMALS),
            coarse_score=round(self.coarse_score, SCORE_DECIMALS),
            fine_score=None if self.fine_score is None else round(self.fine_score, SCORE_DECIMALS),
            id=self.id,
            scene_id=self.scene_id,
            path=self.path,
            level=self.level,
            window=window_record(self.window),
            bbox=self.bbox,
            acquired=self.acquired,
            region=None if self.region is None else [round(v, SCORE_DECIMALS) for v in self.region],
            region_window=self.region_window(),
            region_index=self.region_index,
            footprint=self.footprint,
        )

    def region_window(self) -> WindowRecord | None:
        """The matched region in scene pixels."""
        if self.region is None:
            return None
        w, h = self.window["width"], self.window["height"]
        x0, y0, x1, y1 = region_in_window(self.region, w, h, self.payload.get("tile_size"), self.level)
        c0, r0 = self.window["col"], self.window["row"]
        col, row = c0 + min(int(round(x0)), w - 1), r0 + min(int(round(y0)), h - 1)
        return WindowRecord(
            col=col, row=row, width=max(1, c0 + int(round(x1)) - col), height=max(1, r0 + int(round(y1)) - row)
        )


@dataclass
class ChangeHit:
    """One place: its tile in each range, and how much it changed."""

    rank: int
    change: float
    """The rise of the query's score (``after - before``; the fall with ``disappeared``), or the
    vectors' movement without a query."""
    before: Result
    after: Result
    scored: bool = True
    """False without a query: the tiles' ``score`` fields are then not a query's score."""

    def to_dict(self) -> dict[str, Any]:
        def side(r: Result) -> dict[str, Any]:
            d: dict[str, Any] = dict(r.to_dict())
            d.pop("rank")
            if not self.scored:
                d.update(score=None, coarse_score=None, fine_score=None)
            return d

        return {"rank": self.rank, "change": round(self.change, 4), "before": side(self.before),
                "after": side(self.after)}


@dataclass
class WatchHit:
    """A tile a watch fired on, with its scene and time, and the state of its delivery."""

    watch: str
    tile_id: str
    score: float
    scene_id: str
    path: str
    level: int
    window: dict[str, int]
    bbox: list[float] | None
    footprint: list[list[float]] | None
    region: list[float] | None
    """The matched region ``[x0, y0, x1, y1]`` as fractions of the tile."""
    region_index: int
    acquired: str | None
    found_at: str
    pending: bool = False
    """A webhook is owed this hit (the outbox)."""
    tries: int = 0
    last_error: str | None = None
    delivered_at: str | None = None

    @property
    def key(self) -> str:
        return f"{self.watch}/{self.tile_id}"

    def to_payload(self) -> dict[str, Any]:
        """The record; ``delivery`` (a keyword: stores match booleans unevenly) is what the outbox is read by."""
        return {**asdict(self), "delivery": "pending" if self.pending else "done" if self.delivered_at else "none"}

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> "WatchHit":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in p.items() if k in names})

    def feature(self) -> dict[str, Any]:
        """The hit as a GeoJSON Feature (what a webhook receives, and ``watch hits -o``)."""
        ring = self.footprint or (None if self.bbox is None else [
            [self.bbox[0], self.bbox[1]], [self.bbox[2], self.bbox[1]], [self.bbox[2], self.bbox[3]],
            [self.bbox[0], self.bbox[3]], [self.bbox[0], self.bbox[1]]])
        props = {k: v for k, v in asdict(self).items() if k != "footprint"}
        return {"type": "Feature", "id": self.key, "geometry": None if ring is None else {
            "type": "Polygon", "coordinates": [ring]}, "properties": {"hit_id": self.key, **props}}
