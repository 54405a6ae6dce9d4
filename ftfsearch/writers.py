"""Result files by extension (``-o/--out``): GeoJSON, GeoParquet or CSV, written page by page.

One writer for every command that writes features (``query -o``, ``find``, ``classify``): the
caller declares the columns once, then hands pages of rows; memory holds one page. The file is
written beside its target under a temporary name and renamed when complete, so an error leaves
nothing half-written. GeoParquet follows the 1.1 spec (WKB ``geometry``, the ``geo`` metadata,
WGS84 lon/lat, i.e. OGC:CRS84), which geopandas and GDAL read.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from ftfsearch.errors import BadInput

ColumnType = Literal["str", "float", "int", "bool"]
FORMATS = {".geojson": "geojson", ".json": "geojson", ".parquet": "parquet", ".geoparquet": "parquet",
           ".csv": "csv"}


@dataclass(frozen=True)
class Row:
    """One feature: its WGS84 geometry (a shapely geometry, or None) and flat properties."""

    geometry: Any
    properties: dict[str, Any]


def output_format(path: Path, param: str = "out") -> str:
    """``geojson``, ``parquet`` or ``csv`` from the file's extension; another is refused."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BadInput(f"`{param}` {str(path)!r}: unknown extension; end the name in .geojson, .parquet or .csv")
    return fmt


class _Writer:
    def __init__(self, handle: IO[Any], columns: dict[str, ColumnType]) -> None:
        self.handle = handle
        self.columns = columns
        self.count = 0

    def write(self, rows: Sequence[Row]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Whatever closes the format (a footer)."""

    def abort(self) -> None:
        """Let go of the file after an error (it is deleted; nothing more is written)."""


class _GeoJson(_Writer):
    def __init__(self, handle: IO[Any], columns: dict[str, ColumnType], members: dict[str, Any]) -> None:
        super().__init__(handle, columns)
        head = json.dumps({"type": "FeatureCollection", **members})
        handle.write(head[:-1] + ', "features": [\n')  # the object, left open for the features

    def write(self, rows: Sequence[Row]) -> None:
        from shapely.geometry import mapping

        for row in rows:
            feature = {"type": "Feature", "geometry": None if row.geometry is None else mapping(row.geometry),
                       "properties": {k: row.properties.get(k) for k in self.columns}}
            if "id" in row.properties:
                feature["id"] = row.properties["id"]
            self.handle.write((",\n" if self.count else "") + json.dumps(feature))
            self.count += 1

    def finish(self) -> None:
        self.handle.write("\n]}\n")


class _Csv(_Writer):
    def __init__(self, handle: IO[Any], columns: dict[str, ColumnType]) -> None:
        super().__init__(handle, columns)
        self.csv = csv.writer(handle)
        self.csv.writerow([*columns, "geometry_wkt"])

    def write(self, rows: Sequence[Row]) -> None:
        for row in rows:
            self.csv.writerow([_cell(row.properties.get(k)) for k in self.columns]
                              + ["" if row.geometry is None else row.geometry.wkt])
            self.count += 1


def _cell(value: Any) -> Any:
    return "" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else value


_ARROW_TYPES = {"str": "string", "float": "float64", "int": "int64", "bool": "bool_"}


class _Parquet(_Writer):
    def __init__(self, handle: IO[Any], columns: dict[str, ColumnType], geometry_types: Sequence[str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(handle, columns)
        fields = [pa.field(k, getattr(pa, _ARROW_TYPES[t])()) for k, t in columns.items()]
        geo = {"version": "1.1.0", "primary_column": "geometry",
               "columns": {"geometry": {"encoding": "WKB", "geometry_types": list(geometry_types)}}}
        self.schema = pa.schema([*fields, pa.field("geometry", pa.binary())],
                                metadata={b"geo": json.dumps(geo).encode()})
        self.writer = pq.ParquetWriter(handle, self.schema)

    def write(self, rows: Sequence[Row]) -> None:
        import pyarrow as pa
        import shapely

        if not rows:
            return
        data: dict[str, list[Any]] = {k: [_arrow_value(r.properties.get(k)) for r in rows] for k in self.columns}
        data["geometry"] = [None if r.geometry is None else shapely.to_wkb(r.geometry) for r in rows]
        self.writer.write_table(pa.Table.from_pydict(data, schema=self.schema))
        self.count += len(rows)

    def finish(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        try:
            self.writer.close()
        except Exception:  # the file is being deleted: only its handle matters
            pass


def _arrow_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


@contextmanager
def open_writer(path: Path, columns: dict[str, ColumnType], geometry_types: Sequence[str] = ("Polygon",),
                members: dict[str, Any] | None = None, param: str = "out") -> Iterator[_Writer]:
    """A writer for ``path`` by its extension; the file appears only when the block ends without
    an error (``members``: extra top-level members of a GeoJSON FeatureCollection)."""
    fmt = output_format(path, param)
    target = path.expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise BadInput(f"`{param}` {str(path)!r}: cannot write ({exc.strerror or exc}); choose a writable path") \
            from exc
    tmp = Path(tmp_name)
    try:
        opened: IO[Any] = os.fdopen(fd, "wb") if fmt == "parquet" else os.fdopen(fd, "w", encoding="utf-8", newline="")
        with opened as handle:
            writer: _Writer
            if fmt == "geojson":
                writer = _GeoJson(handle, columns, members or {})
            elif fmt == "csv":
                writer = _Csv(handle, columns)
            else:
                writer = _Parquet(handle, columns, geometry_types)
            try:
                yield writer
            except BaseException:
                writer.abort()
                raise
            writer.finish()
        tmp.replace(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BadInput(f"`{param}` {str(path)!r}: cannot write ({exc.strerror or exc}); choose a writable path") \
            from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


RESULT_COLUMNS: dict[str, ColumnType] = {
    "id": "str", "rank": "int", "score": "float", "coarse_score": "float", "fine_score": "float",
    "scene_id": "str", "path": "str", "level": "int", "window": "str", "region": "str", "region_window": "str",
    "acquired": "str",
}
"""The columns of a search result or a found tile (``query -o``, ``find``)."""


def result_rows(results: Sequence[Any]) -> list[Row]:
    """Search results (:class:`~ftfsearch.search.Result`) as rows: the tile footprint as geometry."""
    from shapely.geometry import Polygon, box

    rows = []
    for r in results:
        geometry = Polygon(r.footprint) if r.footprint else box(*r.bbox) if r.bbox else None
        region = None if r.region is None else json.dumps(r.region)
        rows.append(Row(geometry, {
            "id": r.id, "rank": r.rank, "score": r.score, "coarse_score": r.coarse_score, "fine_score": r.fine_score,
            "scene_id": r.scene_id, "path": r.path, "level": r.level, "window": json.dumps(r.window),
            "region": region, "region_window": None if r.region is None else json.dumps(r.region_window()),
            "acquired": r.acquired,
        }))
    return rows


DETECTION_COLUMNS: dict[str, ColumnType] = {"id": "str", "probability": "float", "scene_id": "str", "level": "int",
                                            "window": "str"}
"""The columns of a classifier's detection (``classify -o``, the page's export)."""


def detection_rows(detections: Sequence[Any]) -> list[Row]:
    """Detections (:class:`~ftfsearch.commands.requests.Detection`) as rows: the tile footprint as geometry."""
    from shapely.geometry import Polygon, box

    return [Row(Polygon(d.footprint) if d.footprint else box(*d.bbox) if d.bbox else None,
                {"id": d.id, "probability": d.probability, "scene_id": d.scene_id, "level": d.level,
                 "window": json.dumps(d.window)}) for d in detections]
