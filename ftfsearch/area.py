"""An area of interest (``--aoi``, ``aoi=``): a WGS84 polygon or multipolygon, checked once.

The store filters first on what Qdrant indexes: the tile's bbox against the area's envelope, and
the tile's centre inside the area grown by the largest tile's half-diagonal (Qdrant's geo-polygon
condition on the indexed ``center``), so no tile that touches the area is dropped there. Then
:meth:`Area.keeps` keeps the tiles whose footprint intersects the area itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ftfsearch.errors import BadInput

MAX_AREA_BYTES = 20_000_000
"""An area file larger than this is refused (a district's outline is kilobytes)."""

MAX_PREFILTER_VERTICES = 2000
"""Qdrant checks every vertex per point: the grown prefilter polygon is simplified below this."""

Ring = tuple[tuple[float, float], ...]
PolygonRings = tuple[Ring, ...]
"""A polygon as rings: the exterior first, then its holes, each closed (first point repeated)."""


def read_area(path: Path) -> dict[str, Any]:
    """The GeoJSON in ``path`` as parsed JSON; an unreadable or non-JSON file is named."""
    try:
        if path.stat().st_size > MAX_AREA_BYTES:
            raise BadInput(f"`aoi` {str(path)!r}: larger than {MAX_AREA_BYTES // 1_000_000} MB; simplify the outline")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"`aoi` {str(path)!r}: cannot be read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"`aoi` {str(path)!r}: not GeoJSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BadInput(f"`aoi` {str(path)!r}: not a GeoJSON object")
    return data


def _geometries(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The geometries of a Geometry, Feature or FeatureCollection."""
    kind = data.get("type")
    if kind == "FeatureCollection":
        out: list[dict[str, Any]] = []
        for feature in data.get("features") or []:
            if isinstance(feature, dict):
                out += _geometries(feature)
        return out
    if kind == "Feature":
        geom = data.get("geometry")
        return [geom] if isinstance(geom, dict) else []
    return [data]


class Area:
    """A valid, non-empty WGS84 (multi)polygon. Build with :meth:`from_geojson`."""

    def __init__(self, geometry: Any) -> None:
        from shapely.prepared import prep

        self.geometry = geometry
        """A shapely ``MultiPolygon``."""
        self._prepared = prep(geometry)

    @classmethod
    def from_geojson(cls, data: Any) -> "Area":
        """A Polygon, MultiPolygon, Feature or FeatureCollection of them; anything else, an empty,
        self-intersecting or out-of-range one is a :class:`BadInput` naming ``aoi``."""
        from shapely.geometry import MultiPolygon, shape
        from shapely.validation import explain_validity

        if not isinstance(data, dict):
            raise BadInput("`aoi`: expected a GeoJSON object (a Polygon, MultiPolygon, Feature or FeatureCollection)")
        polygons: list[Any] = []
        for geom in _geometries(data):
            kind = geom.get("type")
            if kind not in ("Polygon", "MultiPolygon"):
                raise BadInput(f"`aoi`: a {kind or 'typeless object'} is not an area; give a Polygon or MultiPolygon "
                               "(a point or a line: draw a polygon around it)")
            try:
                g = shape(geom)
            except Exception as exc:  # shapely's errors for malformed coordinates vary by kind
                raise BadInput(f"`aoi`: malformed {kind} coordinates ({exc})") from exc
            why = "" if g.is_valid else explain_validity(g)
            if g.is_empty or (g.area == 0 and "Self-intersection" not in why):
                raise BadInput(f"`aoi`: the {kind} is empty (no area); give at least three distinct corners")
            if why:
                raise BadInput(f"`aoi`: the {kind} is not a valid polygon ({why}); fix the "
                               "outline so that it does not cross itself")
            polygons += list(getattr(g, "geoms", [g]))
        if not polygons:
            raise BadInput("`aoi`: holds no polygon; give a Polygon, MultiPolygon, Feature or FeatureCollection")
        west, south, east, north = MultiPolygon(polygons).bounds
        if not all(math.isfinite(v) for v in (west, south, east, north)):
            raise BadInput("`aoi`: coordinates must be finite numbers")
        if not (-180 <= west and east <= 180 and -90 <= south and north <= 90):
            raise BadInput(f"`aoi`: coordinates {west:g},{south:g},{east:g},{north:g} lie outside WGS84 "
                           "longitude/latitude; give the area in EPSG:4326 (lon, lat)")
        merged = MultiPolygon(polygons) if len(polygons) == 1 else _union(polygons)
        return cls(merged)

    def to_geojson(self) -> dict[str, Any]:
        from shapely.geometry import mapping

        return dict(mapping(self.geometry))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        west, south, east, north = self.geometry.bounds
        return float(west), float(south), float(east), float(north)

    def keeps(self, footprint: Any, bbox: Any = None) -> bool:
        """Whether a tile's WGS84 footprint ring (or, without one, its bbox) intersects the area."""
        from shapely.geometry import Polygon, box

        if footprint:
            try:
                return bool(self._prepared.intersects(Polygon(footprint)))
            except (ValueError, TypeError):
                pass
        if bbox and len(bbox) == 4:
            return bool(self._prepared.intersects(box(*bbox)))
        return False

    def prefilter(self, margin: float) -> tuple[PolygonRings, ...]:
        """The area grown by ``margin`` degrees, as rings for Qdrant's geo-polygon condition on
        the tile centre: a tile whose footprint touches the area has its centre in there."""
        grown = self.geometry.buffer(max(margin, 0.0), join_style="mitre", mitre_limit=2.0) if margin > 0 \
            else self.geometry
        grown = _simplified(grown, margin)
        return tuple(_rings(p) for p in getattr(grown, "geoms", [grown]))

    def check_overlaps(self, footprints: Iterable[tuple[str, Any, Any]]) -> None:
        """Refuse an area outside every scene: ``footprints`` are (scene_id, footprint, bbox)."""
        seen = False
        for _, footprint, bbox in footprints:
            seen = True
            if self.keeps(footprint, bbox):
                return
        if seen:
            w, s, e, n = self.bounds
            raise BadInput(f"`aoi` (bounds {w:.5f},{s:.5f},{e:.5f},{n:.5f}): lies outside every scene of the "
                           "collection; 'ftfsearch scenes' lists them")


def _union(polygons: list[Any]) -> Any:
    from shapely.geometry import MultiPolygon
    from shapely.ops import unary_union

    u = unary_union(polygons)
    return u if isinstance(u, MultiPolygon) else MultiPolygon([u])


def _simplified(geometry: Any, margin: float) -> Any:
    """Fewer vertices for Qdrant, never smaller: simplify a little more than grown, then grow back."""
    count = sum(len(p.exterior.coords) + sum(len(r.coords) for r in p.interiors)
                for p in getattr(geometry, "geoms", [geometry]))
    if count <= MAX_PREFILTER_VERTICES:
        return geometry
    w, s, e, n = geometry.bounds
    tolerance = max(e - w, n - s) / MAX_PREFILTER_VERTICES * 4
    return geometry.simplify(tolerance).buffer(tolerance, join_style="mitre", mitre_limit=2.0)


def _rings(polygon: Any) -> PolygonRings:
    def ring(coords: Any) -> Ring:
        pts = tuple((float(x), float(y)) for x, y, *_ in coords)
        return pts if pts[0] == pts[-1] else pts + (pts[0],)

    return (ring(polygon.exterior.coords), *(ring(r.coords) for r in polygon.interiors))


def tile_margin(scenes: Iterable[Any]) -> float:
    """The largest tile's half-diagonal in degrees over ``scenes`` (:class:`SceneRecord`), with
    room to spare: a tile's extent is its window's share of its scene's bbox, times 1.5 for a
    footprint rotated against the grid."""
    margin = 0.0
    for s in scenes:
        width, height = (s.extra or {}).get("width"), (s.extra or {}).get("height")
        tiling = s.tiling or {}
        if not s.bbox or not width or not height or not tiling.get("tile_size"):
            continue
        window = float(tiling["tile_size"]) * max(int(v) for v in tiling.get("levels") or [1])
        dx = (s.bbox[2] - s.bbox[0]) * min(1.0, window / float(width))
        dy = (s.bbox[3] - s.bbox[1]) * min(1.0, window / float(height))
        margin = max(margin, 0.75 * math.hypot(dx, dy))
    return margin


def store_filter(area: Area, bbox: tuple[float, float, float, float] | None,
                 store: Any) -> tuple[tuple[float, float, float, float], tuple[PolygonRings, ...]]:
    """What the store filters an area by: the bbox (the area's envelope, within ``bbox`` when
    given) and the centre polygons (the area grown by :func:`tile_margin` of the store's
    scenes). An area outside every scene, or outside ``bbox``, is refused."""
    scenes = [s for s in store.list_scenes() if s.bbox]
    area.check_overlaps((s.scene_id, s.footprint, s.bbox) for s in scenes)
    west, south, east, north = area.bounds
    if bbox is not None:
        west, south = max(west, bbox[0]), max(south, bbox[1])
        east, north = min(east, bbox[2]), min(north, bbox[3])
        if west > east or south > north:
            raise BadInput("`aoi` and `bbox` do not overlap: drop one, or give a box that crosses the area")
    return (west, south, east, north), area.prefilter(tile_margin(scenes))


def check_bbox(
    bbox: tuple[float, float, float, float], shown: str | None = None
) -> tuple[float, float, float, float]:
    """A WGS84 (west, south, east, north) box, finite, ordered and in range; a point or a line
    (west == east, south == north) is a box too. ``shown``: the box as the user wrote it."""
    where = f"`bbox` {shown[:200]!r}" if shown is not None else f"`bbox` {bbox!r}"
    if len(bbox) != 4:
        raise BadInput(f"{where}: give four numbers west,south,east,north")
    west, south, east, north = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise BadInput(f"{where}: all four values must be finite numbers")
    if not (-180.0 <= west <= 180.0 and -180.0 <= east <= 180.0):
        raise BadInput(f"{where}: longitudes must lie in [-180, 180]")
    if not (-90.0 <= south <= 90.0 and -90.0 <= north <= 90.0):
        raise BadInput(f"{where}: latitudes must lie in [-90, 90]")
    if south > north:
        raise BadInput(f"{where}: minlat must not be above maxlat (is the box inverted?)")
    if west > east:
        raise BadInput(
            f"{where}: minlon must not be above maxlon (inverted, or crossing the antimeridian: split it "
            "into two queries)"
        )
    return west, south, east, north


def parse_bbox(value: str | None) -> tuple[float, float, float, float] | None:
    """Parse ``minlon,minlat,maxlon,maxlat`` (WGS84); the checks are :func:`check_bbox`'s, the
    stores' own (a point or a line is a box too)."""
    if value is None:
        return None
    parts = [p.strip() for p in str(value).split(",")]
    try:
        if len(parts) != 4:
            raise ValueError(value)
        numbers = (float(parts[0]), float(parts[1]), float(parts[2]), float(parts[3]))
    except ValueError as exc:
        raise BadInput(f"`bbox` {str(value)[:200]!r}: expected four numbers minlon,minlat,maxlon,maxlat") from exc
    return check_bbox(numbers, shown=str(value))
