"""Result files by extension: GeoParquet (the ``geo`` metadata and WKB as the spec has them),
GeoJSON and CSV written page by page; an error or an unwritable path leaves no file behind."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import shapely
from shapely.geometry import Polygon, box

from ftfsearch.errors import BadInput
from ftfsearch.writers import Row, open_writer

COLUMNS = {"id": "str", "score": "float", "level": "int", "window": "str"}


def pages(n_pages: int = 3, per_page: int = 4) -> list[list[Row]]:
    return [[Row(box(10 + i, 50 + p, 10.5 + i, 50.5 + p),
                 {"id": f"t{p}-{i}", "score": 0.1 * i, "level": p + 1, "window": json.dumps({"col": i})})
             for i in range(per_page)] for p in range(n_pages)]


def write(path: Path) -> int:
    with open_writer(path, COLUMNS, members={"query": "a river"}) as w:
        for page in pages():
            w.write(page)
    return w.count


def test_geoparquet_has_the_geo_metadata_and_wkb_geometry(tmp_path: Path) -> None:
    path = tmp_path / "hits.parquet"
    assert write(path) == 12
    table = pq.read_table(path)
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert geo["version"] == "1.1.0" and geo["columns"]["geometry"]["geometry_types"] == ["Polygon"]
    assert table.num_rows == 12 and pq.ParquetFile(path).num_row_groups == 3  # a row group per page
    first = shapely.from_wkb(table.column("geometry")[0].as_py())
    assert first.equals(box(10, 50, 10.5, 50.5)) and table.column("level").to_pylist()[-1] == 3


def test_geojson_and_csv(tmp_path: Path) -> None:
    write(tmp_path / "hits.geojson")
    data = json.loads((tmp_path / "hits.geojson").read_text())
    assert data["query"] == "a river" and len(data["features"]) == 12
    assert Polygon(data["features"][5]["geometry"]["coordinates"][0]).equals(box(11, 51, 11.5, 51.5))
    assert data["features"][5]["id"] == "t1-1" and data["features"][5]["properties"]["score"] == pytest.approx(0.1)
    write(tmp_path / "hits.csv")
    rows = list(csv.DictReader((tmp_path / "hits.csv").open()))
    assert len(rows) == 12 and rows[0]["id"] == "t0-0"
    assert shapely.from_wkt(rows[0]["geometry_wkt"]).equals(box(10, 50, 10.5, 50.5))


@pytest.mark.parametrize("name", ["hits.parquet", "hits.geojson", "hits.csv"])
def test_an_error_midway_leaves_nothing(tmp_path: Path, name: str) -> None:
    with pytest.raises(RuntimeError):
        with open_writer(tmp_path / name, COLUMNS) as w:
            w.write(pages()[0])
            raise RuntimeError("the store went away")
    assert list(tmp_path.iterdir()) == []


def test_bad_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"^out '.*hits.txt': unknown extension; end the name in \.geojson"):
        with open_writer(tmp_path / "hits.txt", COLUMNS):
            pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInput, match="cannot write"):
        with open_writer(tmp_path / "file" / "hits.csv", COLUMNS):
            pass
