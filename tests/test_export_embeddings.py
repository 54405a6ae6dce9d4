"""``export-embeddings -o FILE.parquet``: a real raster ingested (rasterio's RGB.byte.tif, the tiny
model), its tiles written as GeoParquet and read back by geopandas and pyarrow: one row per tile
with its vector, footprint and window, and the STAC embeddings extension's fields in the footer."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from _cli import assert_one_line_error, run
from _data import SHARED_DATA

gpd = pytest.importorskip("geopandas")
pq = pytest.importorskip("pyarrow.parquet")

pytestmark = pytest.mark.usefixtures("shared_data")

RGB = SHARED_DATA / "geotiffs" / "rasterio" / "RGB.byte.tif"
RGB_TILES = 27
"""RGB.byte.tif at 128 px, level 1: 27 tiles with data (its nodata border skipped)."""


def test_export_embeddings_is_geoparquet_with_the_embeddings_extension(tmp_path: Path, tiny_clip_dir: Path) -> None:
    env = {"FTF_MODEL": str(tiny_clip_dir), "FTF_CONFIG": str(tmp_path / "none.toml"),
           "FTF_STORE": str(tmp_path / "store")}
    proc = run("ingest", str(RGB), "--levels", "1", "--tile-size", "128", "--overlap", "0.5", env=env)
    assert proc.returncode == 0, proc.stderr
    tiles = json.loads(run("info", "--json", env=env).stdout)["tiles"]
    out = tmp_path / "out" / "tiles.parquet"
    done = run("export-embeddings", "-o", str(out), env=env)
    assert done.returncode == 0, done.stderr
    assert f"{tiles} tiles" in done.stderr
    frame = gpd.read_parquet(out)
    assert len(frame) == tiles and frame.crs.to_string() in ("OGC:CRS84", "EPSG:4326")
    assert set(frame.geom_type) == {"Polygon"} and frame.geometry.is_valid.all()
    vectors = np.stack(frame["embedding"].to_numpy())
    dim = vectors.shape[1]
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    # RGB.byte.tif is in Virginia/North Carolina (EPSG:32618): every footprint lies there
    minx, miny, maxx, maxy = frame.total_bounds
    assert -79 < minx < maxx < -76 and 23 < miny < maxy < 26
    assert set(frame["scene_id"]) == {"RGB.byte"} and (frame["width"] == 128).all()
    stac = json.loads(pq.read_schema(out).metadata[b"stac"])
    assert stac["emb:type"] == "chip" and stac["emb:dimensions"] == dim and stac["data_type"] == "float32"
    assert stac["emb:chip_layout"] == {"layout_type": "regular_grid", "chip_size": 128, "stride": 64}
    assert {link["rel"] for link in stac["links"]} == {"emb:model", "emb:source-data"}
    assert any(e.startswith("https://stac-extensions.github.io/embeddings/") for e in stac["stac_extensions"])
    if shutil.which("ogrinfo"):  # GDAL's own reader, where its Parquet driver is installed
        info = subprocess.run(["ogrinfo", "-so", "-al", str(out)], capture_output=True, text=True)
        if "Parquet" in subprocess.run(["ogrinfo", "--formats"], capture_output=True, text=True).stdout:
            assert info.returncode == 0 and f"Feature Count: {tiles}" in info.stdout, info.stderr

    bad = run("export-embeddings", "-o", str(tmp_path / "tiles.csv"), env=env)
    assert_one_line_error(bad, "--out", "tiles.csv", ".parquet")
