"""Band-per-file products as one scene: ``ingest --stack`` through a VRT, on the real Sentinel-2
bands in ``../shared/data/sentinel2`` and on stacks split from a real GeoTIFF (mixed resolutions,
and the files a stack must refuse)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.enums import Resampling

from _data import SHARED_DATA
from ftfsearch.chips import ChipRenderer
from ftfsearch.errors import BadInput
from ingest.stack import build_stack, stack_scene_id
from ingest.tiling import SceneReader, TilingSpec
from _cli import assert_one_line_error, run
from _scenes import s2_bands, split_bands

RGB = SHARED_DATA / "geotiffs" / "rasterio" / "RGB.byte.tif"


def env_for(tmp_path: Path, tiny_clip_dir: Path) -> dict[str, str]:
    return {"FTF_MODEL": str(tiny_clip_dir), "FTF_CONFIG": str(tmp_path / "none.toml"),
            "FTF_STORE": str(tmp_path / "store"), "FTF_STACK_DIR": str(tmp_path / "stacks")}


@pytest.mark.usefixtures("shared_data")
def test_sentinel2_bands_ingest_as_one_scene_each(tmp_path: Path, tiny_clip_dir: Path) -> None:
    env = env_for(tmp_path, tiny_clip_dir)
    casablanca = ",".join(map(str, s2_bands("casablanca", "B04", "B03", "B02")))
    honolulu = ",".join(map(str, s2_bands("honolulu", "B04", "B03", "B02")))
    proc = run("ingest", "--stack", casablanca, "--stack", honolulu, "--levels", "1", "--tile-size", "128",
               "--acquired", "2023-04-26", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    summaries = json.loads(proc.stdout)["scenes"]
    assert [s["scene_id"] for s in summaries] == [
        "2023-04-26-00_00_2023-04-26-23_59_Sentinel-2_L2A", "2023-01-08-00_00_2023-01-08-23_59_Sentinel-2_L2A"
    ]
    scenes = json.loads(run("scenes", "--json", env=env).stdout)
    assert len(scenes) == 2 and all(s["state"] == "complete" for s in scenes)
    assert all(s["path"].endswith(".vrt") and s["path"].startswith(env["FTF_STACK_DIR"]) for s in scenes)
    # 511 x 339 at 128 px: 4 x 3 windows; 424 x 316: 4 x 3
    assert sorted(s["tiles"] for s in scenes) == [12, 12]

    again = run("ingest", "--stack", casablanca, "--levels", "1", "--tile-size", "128",
                "--acquired", "2023-04-26", "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["scenes"][0]["written"] == 0  # the same stack is the same scene

    chips = tmp_path / "chips"
    q = run("query", "a port with ships", "--k", "4", "--json", "--chips", str(chips),
            "--scene", summaries[0]["scene_id"], env=env)
    assert q.returncode == 0, q.stderr
    results = json.loads(q.stdout)
    assert len(results) == 4 and all(r["path"].endswith(".vrt") for r in results)
    assert all(-7.7 < (r["bbox"][0] + r["bbox"][2]) / 2 < -7.5 for r in results)  # Casablanca, lon ~ -7.6
    pngs = sorted(chips.glob("*.png"))
    assert len(pngs) == 4
    pixels = np.asarray(Image.open(pngs[0]).convert("RGB"))
    assert pixels.std() > 10  # a stretched 16-bit scene, not a black or flat chip

    preview = ChipRenderer().preview(results[0]["path"], None, 256)
    assert preview is not None and preview.png.startswith(b"\x89PNG")


@pytest.mark.usefixtures("shared_data")
def test_the_stack_reads_the_bands_in_the_order_given(tmp_path: Path) -> None:
    b04, b03, b02 = s2_bands("honolulu", "B04", "B03", "B02")
    vrt = build_stack(f"{b04},{b03},{b02}", tmp_path)
    with rasterio.open(vrt) as ds, rasterio.open(b04) as red, rasterio.open(b02) as blue:
        assert ds.count == 3 and (ds.width, ds.height) == (red.width, red.height)
        assert ds.crs == red.crs and ds.transform.almost_equals(red.transform)
        assert np.array_equal(ds.read(1), red.read(1)) and np.array_equal(ds.read(3), blue.read(1))
    with SceneReader(vrt, TilingSpec()) as reader:
        assert reader.band_indexes == (1, 2, 3) and reader.dtype == "uint16" and not reader.warnings
        assert 9 < reader.gsd < 10  # 10 m Web Mercator pixels at 21 deg N
    assert build_stack(f"{b04},{b03},{b02}", tmp_path) == vrt  # written once per stack
    assert build_stack(f"{b02},{b03},{b04}", tmp_path) != vrt


@pytest.mark.usefixtures("shared_data")
def test_mixed_resolutions_are_resampled_to_the_finest(tmp_path: Path) -> None:
    bands = split_bands(RGB, tmp_path / "bands", coarse={2: 2})
    with rasterio.open(bands[1]) as coarse, rasterio.open(RGB) as src:
        assert coarse.width == src.width // 2
        full = src.read()
        upsampled = coarse.read(1, out_shape=full.shape[1:], resampling=Resampling.bilinear).astype(np.float64)
    vrt = build_stack(",".join(map(str, [bands[1], bands[0], bands[2]])), tmp_path / "stacks")
    with rasterio.open(vrt) as ds:
        assert (ds.width, ds.height) == (full.shape[2], full.shape[1])  # the finest grid, not the first file's
        assert np.array_equal(ds.read(2), full[0])
        green = ds.read(1).astype(np.float64)
    inside = (full[1] > 0) & (green > 0)
    assert inside.mean() > 0.5
    assert np.abs(green - upsampled)[inside].max() <= 1  # GDAL's bilinear upsampling of the coarse band
    # on the same ground: the original band matches better here than one pixel off either way
    err = {dx: np.abs(np.roll(green, dx, axis=1) - full[1])[inside].mean() for dx in (-1, 0, 1)}
    assert err[0] < min(err[-1], err[1])


@pytest.mark.usefixtures("shared_data")
def test_stack_refusals(tmp_path: Path, tiny_clip_dir: Path) -> None:
    bands = split_bands(RGB, tmp_path / "bands")
    other_crs = tmp_path / "bands" / "other_crs.tif"
    with rasterio.open(bands[0]) as src:
        profile, data = {**src.profile, "crs": "EPSG:32619"}, src.read()
    with rasterio.open(other_crs, "w", **profile) as dst:
        dst.write(data)
    cropped = tmp_path / "bands" / "cropped.tif"
    with rasterio.open(bands[0]) as src:
        window = rasterio.windows.Window(0, 0, src.width - 40, src.height)
        profile = {**src.profile, "width": src.width - 40, "transform": src.window_transform(window)}
        with rasterio.open(cropped, "w", **profile) as dst:
            dst.write(src.read(window=window))
    b1, b2, b3 = map(str, bands)
    cases = [
        (f"{b1},{other_crs},{b3}", "is in EPSG:32619, scene_B1.tif in EPSG:32618"),
        (f"{b1},{cropped},{b3}", "must cover the same extent"),
        (f"{b1},{tmp_path / 'missing.tif'},{b3}", "missing.tif: no such file"),
        (f"{b1},{RGB},{b3}", "RGB.byte.tif has 3 bands; each file of a stack is one band"),
        (f"{b1},,{b3}", "give band files separated by commas"),
        (f"{b1},{b1},{b3}", "a file is named twice"),
    ]
    for value, needle in cases:
        with pytest.raises(BadInput, match=r"^stack .*" + needle.replace(".", r"\.")):
            build_stack(value, tmp_path / "stacks")
    env = env_for(tmp_path, tiny_clip_dir)
    for value, needle in cases[:3]:
        assert_one_line_error(run("ingest", "--stack", value, env=env), "error: --stack", needle)
    assert not (tmp_path / "store").exists()  # nothing was opened, let alone written
    assert_one_line_error(run("ingest", "--stack", b1, "--from", str(tmp_path / "list.txt"), env=env), "not both")


def test_stack_scene_ids() -> None:
    assert stack_scene_id([Path("/x/T31_20230426_B04.tif"), Path("/x/T31_20230426_B03.tif")]) == "T31_20230426"
    assert stack_scene_id([Path("/x/red.tif"), Path("/x/green.tif")]) == "red_stack"
