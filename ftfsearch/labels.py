"""Labels: the tiles an analyst marked as hits and misses, as a GeoJSON FeatureCollection.

One feature per marked tile: its WGS84 footprint (null geometry for a raster without CRS), and
properties ``id`` (the tile id), ``label`` (``positive`` or ``negative``), ``region`` (the marked
region index, or null for the whole tile), the scene, level and pixel window. The collection
carries the ``query`` and the ``model_id`` of the session. Tile ids do not depend on the model
(they name a scene window), so labels reload into any collection holding the same scenes; they
feed a downstream detector or a QGIS project as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftfsearch.errors import BadInput, TileNotFound
from ftfsearch.examples import TILE_ID, ExampleRef
from ftfsearch.export import polygon_ring
from ftfsearch.store.base import Store

LABEL_VALUES = ("positive", "negative")
MAX_LABELS = 10_000
LABELS_FORMAT = "ftfsearch-labels/1"
"""Written into every labels file (``format``): what reads it back checks it is ours."""


@dataclass(frozen=True)
class Label:
    """One mark: a tile (or one of its regions) is what the analyst wants, or not."""

    tile_id: str
    label: str
    """``positive`` or ``negative``."""
    region: int | None = None

    def ref(self) -> ExampleRef:
        """The search example this mark stands for."""
        param = ("like" if self.label == "positive" else "unlike") + ("_region" if self.region is not None else "")
        text = self.tile_id if self.region is None else f"{self.tile_id}:{self.region}"
        return ExampleRef(param, text, tile_id=self.tile_id, region=self.region)


@dataclass
class LabelSet:
    labels: list[Label]
    query: str | None = None
    model_id: str | None = None

    def refs(self) -> list[ExampleRef]:
        return [m.ref() for m in self.labels]


def labels_from_refs(refs: list[ExampleRef]) -> list[Label]:
    """The marks of stored-tile examples (tile ids; resolve points first), in the order given."""
    out = []
    for r in refs:
        if r.tile_id is None:
            raise BadInput(f"{r.where()}: labels name stored tiles; give a tile id (or a point)")
        out.append(Label(r.tile_id, "positive" if r.positive else "negative", r.region))
    return out


def labels_to_geojson(labels: LabelSet, store: Store) -> dict[str, Any]:
    """The FeatureCollection of ``labels``, footprints read from the store (TileNotFound for an
    unknown tile). A mark given twice is written once; a tile (or region) marked both positive
    and negative is refused."""
    seen: dict[tuple[str, int | None], Label] = {}
    for m in labels.labels:
        other = seen.setdefault((m.tile_id, m.region), m)
        if other.label != m.label:
            what = f"tile {m.tile_id}" + ("" if m.region is None else f" region {m.region}")
            raise BadInput(f"`labels`: {what} is marked both positive and negative; keep one of the two")
    marks = list(seen.values())
    found = dict(store.get_tiles(sorted({m.tile_id for m in marks})))
    features = []
    for m in marks:
        p = found.get(m.tile_id)
        if p is None:
            raise TileNotFound(f"`labels`: tile {m.tile_id} is not in collection {store.collection!r}")
        ring = polygon_ring(p.get("footprint"), p.get("bbox"))
        features.append(
            {
                "type": "Feature",
                "id": m.tile_id,
                "bbox": p.get("bbox"),
                "geometry": None if ring is None else {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "id": m.tile_id,
                    "label": m.label,
                    "region": m.region,
                    "scene_id": p.get("scene_id"),
                    "path": p.get("path"),
                    "level": p.get("level"),
                    "window": json.dumps(p.get("window") or {}),
                },
            }
        )
    return {
        "type": "FeatureCollection",
        "format": LABELS_FORMAT,
        "query": labels.query,
        "model_id": labels.model_id,
        "features": features,
    }


def parse_labels(data: Any, source: str = "labels") -> LabelSet:
    """Marks from a parsed labels FeatureCollection; BadInput naming ``source`` and the feature."""
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection" or not isinstance(data.get("features"), list):
        raise BadInput(f"{source}: not a GeoJSON FeatureCollection of labels (as 'labels export' writes)")
    if data.get("format", LABELS_FORMAT) != LABELS_FORMAT:
        raise BadInput(f"{source}: format {str(data.get('format'))[:60]!r} is not {LABELS_FORMAT!r}")
    features = data["features"]
    if len(features) > MAX_LABELS:
        raise BadInput(f"{source}: {len(features)} features; at most {MAX_LABELS} labels per file")
    labels = []
    for i, f in enumerate(features):
        props = f.get("properties") if isinstance(f, dict) else None
        if not isinstance(props, dict):
            raise BadInput(f"{source}: feature {i} has no properties; each label needs 'id' and 'label'")
        tile_id, label, region = props.get("id", f.get("id")), props.get("label"), props.get("region")
        if not isinstance(tile_id, str) or not TILE_ID.match(tile_id):
            raise BadInput(f"{source}: feature {i}: 'id' {str(tile_id)[:80]!r} is not a tile id")
        if label not in LABEL_VALUES:
            raise BadInput(f"{source}: feature {i}: 'label' {str(label)[:40]!r} must be positive or negative")
        if region is not None and (not isinstance(region, int) or isinstance(region, bool) or region < 0):
            raise BadInput(f"{source}: feature {i}: 'region' must be a region index (0 or more) or null")
        labels.append(Label(tile_id.lower(), label, region))
    query = data.get("query")
    model_id = data.get("model_id")
    return LabelSet(
        labels=labels,
        query=query if isinstance(query, str) and query.strip() else None,
        model_id=model_id if isinstance(model_id, str) else None,
    )


def read_labels(path: Path, param: str = "labels") -> LabelSet:
    """A labels file (BadInput naming ``param`` and the file when it cannot be used)."""
    where = f"`{param}` {str(path)!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"{where}: cannot be read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise BadInput(f"{where}: is not a UTF-8 GeoJSON file") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{where}: is not JSON ({exc.msg} at line {exc.lineno}); give a labels GeoJSON file") from exc
    return parse_labels(data, where)


def write_labels(path: Path, collection: dict[str, Any], param: str = "output") -> None:
    """Write a labels FeatureCollection (atomically: a failed write leaves no half file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(collection, indent=1), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise BadInput(f"`{param}` {str(path)!r}: cannot write ({exc.strerror or exc}); choose a writable path") from exc
