"""``ftfsearch export-embeddings -o FILE.parquet``: every stored tile's coarse vector and WGS84 footprint
as GeoParquet 1.1, so tools of the Major TOM / Earth Index family can read ftfsearch's vectors.

One row per tile (``id``, ``scene_id``, ``path``, ``level``, the window in scene pixels, ``acquired``,
``embedding`` as a fixed-size list of float32, ``geometry`` as WKB); tiles of rasters without a CRS have
no footprint and are left out. The file's footer carries GeoParquet's ``geo`` metadata (WKB, no
``crs``: OGC:CRS84 lon/lat, as GeoParquet defines its absence) and, under ``stac``, the collection
fields of the STAC embeddings extension (geo-embeddings/embeddings-stac-specification v0.0.1):
``emb:type`` ``chip``, ``emb:dimensions``, ``data_type``, ``emb:chip_layout`` (from the scenes'
tiling, when they share one at level 1 alone), ``emb:fit_for_use``, ``processing:datetime``, and ``emb:model`` /
``emb:source-data`` links. Written with pyarrow alone (the ``[geo]`` extra), to a temporary file
then renamed: a cut-short export leaves no half file.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ftfsearch.errors import BadInput
from ftfsearch.store.base import Store

EMBEDDINGS_EXTENSION = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"


def _wkb_polygon(ring: list[list[float]]) -> bytes:
    """A closed ring as little-endian WKB (GeoParquet's encoding; shapely is not needed for it)."""
    import struct

    points = [(float(x), float(y)) for x, y in ring]
    if points[0] != points[-1]:
        points.append(points[0])
    return struct.pack("<BIII", 1, 3, 1, len(points)) + b"".join(struct.pack("<dd", x, y) for x, y in points)


def _stac_metadata(store: Store, dim: int, tilings: list[dict[str, Any]], scenes: list[str]) -> dict[str, Any]:
    meta = store.meta()
    fields: dict[str, Any] = {
        "stac_extensions": [EMBEDDINGS_EXTENSION, PROCESSING_EXTENSION],
        "emb:type": "chip",
        "emb:dimensions": dim,
        "data_type": "float32",
        "emb:fit_for_use": ["retrieval"],
        "processing:datetime": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "links": [{"rel": "emb:model", "href": meta.model_id if meta else "unknown", "title": "ftfsearch model"}]
        + [{"rel": "emb:source-data", "href": s} for s in scenes],
    }
    # One regular grid only when every scene was tiled alike at level 1 alone (a level-L tile reads
    # L * tile_size scene pixels: several levels are several grids, which the layout cannot say).
    distinct = {json.dumps({k: t.get(k) for k in ("tile_size", "overlap", "levels")}, sort_keys=True) for t in tilings}
    if len(distinct) == 1 and tilings[0].get("tile_size") and list(tilings[0].get("levels") or [1]) == [1]:
        size = int(tilings[0]["tile_size"])
        stride = max(1, int(round(size * (1.0 - float(tilings[0].get("overlap") or 0.0)))))
        fields["emb:chip_layout"] = {"layout_type": "regular_grid", "chip_size": size, "stride": stride}
    return fields


def export_embeddings(store: Store, path: Path) -> int:
    """Write the GeoParquet file; returns the number of tiles written."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise BadInput("export-embeddings needs pyarrow: pip install 'ftfsearch[geo]'") from exc
    if path.suffix.lower() not in (".parquet", ".geoparquet"):
        raise BadInput(f"`out` {path}: give a .parquet file")
    meta = store.meta()
    if meta is None:
        raise BadInput("the collection holds no tiles yet: ingest rasters first")
    cols: dict[str, list[Any]] = {k: [] for k in ("id", "scene_id", "path", "level", "col", "row", "width",
                                                  "height", "acquired", "embedding", "geometry")}
    bounds = [180.0, 90.0, -180.0, -90.0]
    scenes = [s for s in store.list_scenes() if s.state == "complete"]
    for scene in scenes:
        for batch in store.scan_tiles(scene.scene_id):
            for tile_id, vector, p in zip(batch.ids, batch.coarse, batch.payloads):
                ring = p.get("footprint")
                if not ring:
                    continue
                w = p["window"]
                for key, value in (("id", tile_id), ("scene_id", p["scene_id"]), ("path", p["path"]),
                                   ("level", int(p["level"])), ("col", w["col"]), ("row", w["row"]),
                                   ("width", w["width"]), ("height", w["height"])):
                    cols[key].append(value)
                cols["acquired"].append(datetime.fromisoformat(p["acquired"].replace("Z", "+00:00"))
                                        if p.get("acquired") else None)
                cols["embedding"].append(vector.astype("float32").tolist())
                cols["geometry"].append(_wkb_polygon(ring))
                xs, ys = [float(x) for x, _ in ring], [float(y) for _, y in ring]
                bounds = [min(bounds[0], *xs), min(bounds[1], *ys), max(bounds[2], *xs), max(bounds[3], *ys)]
    if not cols["id"]:
        raise BadInput("no tile has a footprint (rasters without a CRS): nothing to export")
    table = pa.table({
        **{k: pa.array(cols[k], pa.string()) for k in ("id", "scene_id", "path")},
        **{k: pa.array(cols[k], pa.int32()) for k in ("level", "col", "row", "width", "height")},
        "acquired": pa.array(cols["acquired"], pa.timestamp("ms", tz="UTC")),
        "embedding": pa.array(cols["embedding"], pa.list_(pa.float32(), meta.dim)),
        "geometry": pa.array(cols["geometry"], pa.binary()),
    })
    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"], "bbox": bounds}}}
    stac = _stac_metadata(store, meta.dim, [s.tiling for s in scenes], sorted({s.path for s in scenes}))
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode(), b"stac": json.dumps(stac).encode()})
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BadInput(f"`out` {path}: cannot write ({exc.strerror or exc}); choose a writable path") from exc
    return int(table.num_rows)
