"""Result exports: JSON records and RFC 7946 GeoJSON (WGS84) that opens in QGIS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ftfsearch.errors import BadInput
from ftfsearch.records import Result, ResultRecord


def results_to_json(results: Iterable[Result]) -> list[ResultRecord]:
    return [r.to_dict() for r in results]


def polygon_ring(footprint: list[list[float]] | None, bbox: list[float] | None) -> list[list[float]] | None:
    """A tile's WGS84 ring as RFC 7946 wants it (closed, counter-clockwise); None without CRS."""
    if footprint:
        ring = [[float(x), float(y)] for x, y in footprint]
    elif bbox:
        w, s, e, n = bbox
        ring = [[w, s], [e, s], [e, n], [w, n]]
    else:
        return None
    if ring[0] != ring[-1]:
        ring.append(ring[0])
    # RFC 7946 3.1.6: exterior rings are counter-clockwise.
    area2 = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:]))
    if area2 < 0:
        ring.reverse()
    return ring


def results_to_geojson(results: Iterable[Result], query: str | None = None) -> dict[str, Any]:
    """A FeatureCollection of result footprints with scores; tiles without a CRS are left out."""
    features = []
    for r in results:
        ring = polygon_ring(r.footprint, r.bbox)
        if ring is None:
            continue
        props: dict[str, Any] = dict(r.to_dict())
        # The geometry and the feature's bbox already say where the tile is.
        props.pop("bbox", None)
        props.pop("footprint", None)
        props["window"] = json.dumps(r.window)
        props["region"] = None if r.region is None else json.dumps(r.region)
        props["region_window"] = None if r.region is None else json.dumps(r.region_window())
        features.append(
            {
                "type": "Feature",
                "id": r.id,
                "bbox": r.bbox,
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": props,
            }
        )
    collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if query is not None:
        collection["query"] = query
    return collection


def write_geojson(results: list[Result], path: Path, query: str | None = None) -> int:
    """Write the GeoJSON file; returns the number of features written."""
    data = results_to_geojson(results, query)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise BadInput(f"`geojson` {path}: cannot write ({exc.strerror}); choose a writable path") from exc
    return len(data["features"])
