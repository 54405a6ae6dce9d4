"""Tiling of real rasters: windows, band choice, stretch, masks, footprints, bad input."""

from __future__ import annotations

import json
import math
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import CRS as ProjCRS
from pyproj import Geod, Proj, Transformer
from rasterio.control import GroundControlPoint
from rasterio.windows import Window

from _data import SHARED_DATA
from ftfsearch.errors import BadInput
from ingest.tiling import (
    MIN_SCENE_SIDE,
    SceneReader,
    Tile,
    TileWindow,
    TilingSpec,
    plan_windows,
)

GEOTIFFS = SHARED_DATA / "geotiffs"
FIXTURE = Path(__file__).resolve().parent / "data" / "RGB.byte.tif"
SHARED = sorted(GEOTIFFS.glob("*/*.tif")) if GEOTIFFS.is_dir() else []
needs_shared = pytest.mark.usefixtures("shared_data")

# What every shared GeoTIFF must give. All of them tile; none is refused: each is a real
# dtype/CRS/mask case a user will feed in. ``bands`` is what the reader must choose and why,
# ``stretch`` whether the pixels go through the percentile stretch (not uint8), ``masked``
# whether some pixels are nodata/alpha-masked, ``gsd`` the ground metres per pixel (README).
EXPECTED: dict[str, dict] = {
    # 4 bands, no colour interpretation (RGBN): first three, with a warning to use --bands
    "landsat_2020.tif": dict(bands=(1, 2, 3), stretch=False, masked=False, warn=True, gsd=90),
    "naip_m_4709963_se_14_1_20090818.tif": dict(bands=(1, 2, 3), stretch=False, masked=False, warn=True, gsd=5),
    "naip_m_4709963_se_14_1_20200831.tif": dict(bands=(1, 2, 3), stretch=False, masked=False, warn=True, gsd=5),
    # 4-band float64 COG in EPSG:4326: stretched, warned
    "raster_cog.tif": dict(bands=(1, 2, 3), stretch=True, masked=False, warn=True, gsd=None),
    # red/green/blue colour interpretation; nodata 0 at the rotated scene's edges
    "RGB.byte.tif": dict(bands=(1, 2, 3), stretch=False, masked=True, warn=False, gsd=300),
    # RGBA: the alpha band is the mask, never a colour
    "RGBA.byte.tif": dict(bands=(1, 2, 3), stretch=False, masked=True, warn=False, gsd=300),
    # WKT-only CRS (no EPSG code): must still reproject
    "rgb1.tif": dict(bands=(1, 2, 3), stretch=False, masked=True, warn=False, gsd=300),
    # 1 band grey, nodata 255 (88% of it): masked; Web Mercator metres are not ground metres.
    # This copy holds only the values 0 and 255: its valid pixels are all 0 (flat)
    "shade.tif": dict(bands=(1, 1, 1), stretch=False, masked=True, warn=False, gsd=None, flat=True),
    "world.rgb.tif": dict(bands=(1, 2, 3), stretch=False, masked=False, warn=False, gsd=None),
    "201404_13SED190110_201404_0x1500m_CL_1.tif": dict(bands=(1, 2, 3), stretch=False, masked=False, warn=False, gsd=0.15),
    # uint16 grey COG with overviews: stretch statistics come from an overview
    "cog.tif": dict(bands=(1, 1, 1), stretch=True, masked=False, warn=False, gsd=None),
    "cog_rgb.tif": dict(bands=(1, 2, 3), stretch=False, masked=False, warn=False, gsd=0.15),
    "pix4d_alpha_nodata.tif": dict(bands=(1, 2, 3), stretch=False, masked=True, warn=False, gsd=0.35),
    # float64 4-band multispectral: stretched, warned
    "ms1.tif": dict(bands=(1, 2, 3), stretch=True, masked=False, warn=True, gsd=1.0),
    "pan1.tif": dict(bands=(1, 1, 1), stretch=True, masked=False, warn=False, gsd=0.5),
    "sample_geotiff.tif": dict(bands=(1, 1, 1), stretch=True, masked=False, warn=False, gsd=0.5),
    # int16, custom Albers CRS without EPSG code, nodata -9999 (no pixel actually is -9999:
    # masking is tested on a copy with a nodata block below)
    "sample_geotiff_custom_proj.tif": dict(bands=(1, 2, 3), stretch=True, masked=False, warn=True, gsd=30),
}


def ground_gsd(path: Path) -> float:
    """Metres per pixel at the scene centre, computed independently with pyproj's scale factors."""
    with rasterio.open(path) as ds:
        crs = ProjCRS.from_wkt(ds.crs.to_wkt())
        cx, cy = ds.transform @ (ds.width / 2, ds.height / 2)
        xres, yres = ds.res
    to_geo = Transformer.from_crs(crs, 4326, always_xy=True)
    lon, lat = to_geo.transform(cx, cy)
    if crs.is_geographic:
        geod = Geod(ellps="WGS84")
        dx = geod.inv(lon, lat, lon + xres, lat)[2]
        dy = geod.inv(lon, lat, lon, lat + yres)[2]
        return math.sqrt(dx * dy)
    factors = Proj(crs).get_factors(lon, lat)
    unit = crs.axis_info[0].unit_conversion_factor
    return math.sqrt(
        xres * unit / factors.parallel_scale * yres * unit / factors.meridional_scale
    )


def content(tile: Tile) -> np.ndarray:
    """The pixels of a tile that show the scene (not the padding of clipped windows)."""
    level = tile.window.level
    return tile.pixels[: round(tile.window.height / level), : round(tile.window.width / level)]


def covered(width: int, height: int, windows: list[TileWindow]) -> np.ndarray:
    cover = np.zeros((height, width), dtype=bool)
    for w in windows:
        cover[w.row : w.row + w.height, w.col : w.col + w.width] = True
    return cover


def from_origin(west: float, north: float, xres: float, yres: float) -> Affine:
    return Affine(xres, 0.0, west, 0.0, -yres, north)


def write_raster(path: Path, data: np.ndarray, **profile: object) -> Path:
    """A GeoTIFF of ``data [bands, h, w]``; georeferenced in UTM 18N unless told otherwise."""
    base: dict[str, object] = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype.name,
        crs="EPSG:32618",
        transform=from_origin(300000, 4000000, 10, 10),
    )
    base.update(profile)
    with rasterio.open(path, "w", **base) as dst:
        dst.write(data)
    return path


# -- the spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(overlap=1.5), "^overlap "),
        (dict(overlap=1.0), "^overlap "),
        (dict(overlap=-0.1), "^overlap "),
        (dict(tile_size=8), "^tile_size "),
        (dict(tile_size=256.0), "^tile_size "),
        (dict(levels=()), "^levels"),
        (dict(levels=(0, 1)), "^levels"),
        (dict(bands=(1, 2)), "^bands "),
        (dict(bands=(0, 1, 2)), "^bands "),
        (dict(max_nodata=1.5), "^max_nodata "),
    ],
)
def test_spec_rejects_bad_options_naming_them(kwargs: dict, option: str) -> None:
    with pytest.raises(BadInput, match=option):
        TilingSpec(**kwargs)


def test_spec_normalises_and_round_trips_through_json() -> None:
    spec = TilingSpec(tile_size=128, overlap=0.25, levels=(4, 1, 2, 2), bands=(3, 2, 1))
    assert spec.levels == (1, 2, 4)
    d = json.loads(json.dumps(spec.to_dict()))
    assert d == {"tile_size": 128, "overlap": 0.25, "levels": [1, 2, 4], "bands": [3, 2, 1], "max_nodata": 0.5}
    assert TilingSpec.from_dict(d) == spec


# -- window planning --------------------------------------------------------------------------


def test_windows_step_shift_back_and_level_drop() -> None:
    spec = TilingSpec(tile_size=256, overlap=0.5, levels=(1, 2, 4, 8))
    windows = plan_windows(1000, 600, spec)
    level1 = [w for w in windows if w.level == 1]
    cols = sorted({w.col for w in level1})
    rows = sorted({w.row for w in level1})
    assert cols == [0, 128, 256, 384, 512, 640, 744]  # step 128, last shifted back to 1000-256
    assert rows == [0, 128, 256, 344]
    assert all(w.width == w.height == 256 for w in level1)
    level2 = [w for w in windows if w.level == 2]
    assert sorted({w.col for w in level2}) == [0, 256, 488] and {w.row for w in level2} == {0, 88}
    # level 4 (1024 px) covers the 1000x600 scene: one clipped window; level 8 would repeat it
    assert [w for w in windows if w.level == 4] == [TileWindow(4, 0, 0, 1000, 600)]
    assert not [w for w in windows if w.level == 8]
    assert plan_windows(1000, 600, spec) == windows


@settings(max_examples=100, deadline=None)
@given(
    width=st.integers(8, 3000),
    height=st.integers(8, 3000),
    tile=st.sampled_from([32, 100, 256]),
    overlap=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75]),
    levels=st.lists(st.integers(1, 16), min_size=1, max_size=4, unique=True),
)
def test_windows_cover_the_scene_inside_it(
    width: int, height: int, tile: int, overlap: float, levels: list[int]
) -> None:
    spec = TilingSpec(tile_size=tile, overlap=overlap, levels=tuple(levels))
    windows = plan_windows(width, height, spec)
    seen_whole = False
    for level in spec.levels:
        mine = [w for w in windows if w.level == level]
        size = tile * level
        if seen_whole:
            assert not mine, "a level after the first whole-scene level must be dropped"
            continue
        assert mine
        # the windows are the product of column and row intervals that each cover their axis
        col_spans = sorted({(w.col, w.width) for w in mine})
        row_spans = sorted({(w.row, w.height) for w in mine})
        assert len(mine) == len(col_spans) * len(row_spans)
        for spans, length in ((col_spans, width), (row_spans, height)):
            reach = 0
            for start, extent in spans:
                assert start <= reach
                reach = max(reach, start + extent)
            assert reach == length
        for w in mine:
            assert 0 <= w.col and w.col + w.width <= width
            assert 0 <= w.row and w.row + w.height <= height
            assert w.width == min(size, width) and w.height == min(size, height)
        step = max(1, round(size * (1 - overlap)))
        cols = sorted({w.col for w in mine})
        assert all(b - a <= step for a, b in zip(cols, cols[1:]))
        assert len(mine) == len(set(mine))
        seen_whole = size >= width and size >= height


# -- every shared GeoTIFF ---------------------------------------------------------------------


@needs_shared
def test_expectations_name_every_shared_geotiff() -> None:
    assert {p.name for p in SHARED} == set(EXPECTED)


@needs_shared
@pytest.mark.parametrize("path", SHARED, ids=[p.name for p in SHARED])
def test_every_shared_geotiff_tiles(path: Path) -> None:
    expected = EXPECTED[path.name]
    spec = TilingSpec(tile_size=256, overlap=0.25, levels=(1, 2), max_nodata=1.0)
    with SceneReader(path, spec) as reader, rasterio.open(path) as ds:
        assert (reader.width, reader.height) == (ds.width, ds.height)
        assert reader.band_indexes == expected["bands"]
        assert reader.dtype == ds.dtypes[0]
        assert any("pass `bands`" in w for w in reader.warnings) == expected["warn"]
        windows = reader.windows()
        assert windows == reader.windows()
        for level in spec.levels:
            mine = [w for w in windows if w.level == level]
            if mine:
                assert covered(ds.width, ds.height, mine).all()

        # every window of small scenes; an even sample of big ones (cog.tif has ~250)
        sample = windows[:: max(1, len(windows) // 60)]
        tiles = [t for t in (reader.read(w) for w in sample) if t is not None]
        assert tiles, "with max_nodata=1 every window with a valid pixel is a tile"
        for tile in tiles:
            assert tile.pixels.dtype == np.uint8 and tile.pixels.shape == (256, 256, 3)
            assert 0.0 < tile.valid_fraction <= 1.0
        fractions = [t.valid_fraction for t in tiles]
        assert (min(fractions) < 1.0) == expected["masked"]

        full_tiles = [t for t in tiles if t.valid_fraction > 0.9] or tiles
        values = np.concatenate([content(t).reshape(-1, 3) for t in full_tiles])
        if not expected.get("flat"):
            assert len(np.unique(values)) > 50, "pixels must carry detail, not a few flat values"
        if expected["stretch"]:
            assert values.std() > 20
            # a 2-98 % stretch clips only the raw values beyond the percentiles to 0 and 255
            # (cog.tif: ~45 % of it is the fill value 1, its 2nd percentile, so it goes to 0)
            bands = list(dict.fromkeys(reader.band_indexes))
            raw = ds.read(bands).astype(np.float64)
            level1 = np.concatenate([content(t).reshape(-1, 3) for t in tiles if t.window.level == 1])
            for channel, band in enumerate(reader.band_indexes):
                band_raw = raw[bands.index(band)]
                lo, hi = np.percentile(band_raw, [2, 98])
                assert (level1[:, channel] == 0).mean() <= (band_raw <= lo).mean() + 0.1
                assert (level1[:, channel] == 255).mean() <= (band_raw >= hi).mean() + 0.1

        # geometry: native bounds inside the scene, WGS84 ring closed and inside the globe
        left, bottom, right, top = ds.bounds
        for tile in tiles:
            minx, miny, maxx, maxy = tile.native_bounds
            assert left - 1e-6 <= minx < maxx <= right + 1e-6
            assert bottom - 1e-6 <= miny < maxy <= top + 1e-6
            assert tile.footprint is not None and tile.bbox is not None and tile.center is not None
            assert tile.footprint[0] == tile.footprint[-1] and len(tile.footprint) >= 5
            west, south, east, north = tile.bbox
            assert -180 <= west < east <= 180 and -90 <= south < north <= 90
            # inside the scene's bbox, up to what 21 points per scene edge miss of its curvature
            sw, ss, se, sn = reader.bbox
            assert sw - 1e-4 <= west and east <= se + 1e-4 and ss - 1e-4 <= south and north <= sn + 1e-4
            lon, lat = tile.center
            assert west <= lon <= east and south <= lat <= north
            assert tile.gsd == pytest.approx(reader.gsd * tile.window.level)

        assert reader.gsd == pytest.approx(ground_gsd(path), rel=1e-3)
        if expected["gsd"] is not None:
            assert reader.gsd == pytest.approx(expected["gsd"], rel=0.02)


@needs_shared
@pytest.mark.parametrize("name", ["pan1.tif", "sample_geotiff_custom_proj.tif", "ms1.tif"])
def test_stretch_is_the_2_98_percentile_map(name: str) -> None:
    """Scenes <= 1024 px are sampled at full resolution: pixels must equal the formula."""
    path = next(p for p in SHARED if p.name == name)
    with SceneReader(path, TilingSpec()) as reader, rasterio.open(path) as ds:
        bands = list(dict.fromkeys(reader.band_indexes))
        full = ds.read(bands).astype(np.float64)
        window = reader.windows()[0]
        tile = reader.read(window)
        assert tile is not None
        raw = ds.read(bands, window=Window(window.col, window.row, window.width, window.height))
        for channel, band in enumerate(reader.band_indexes):
            i = bands.index(band)
            lo, hi = np.percentile(full[i], [2, 98])
            want = np.clip(np.rint((raw[i] - lo) * 255.0 / (hi - lo)), 0, 255)
            got = tile.pixels[: window.height, : window.width, channel].astype(np.float64)
            assert np.abs(got - want).max() <= 1


@needs_shared
@pytest.mark.parametrize("name", ["RGBA.byte.tif", "pix4d_alpha_nodata.tif", "shade.tif"])
def test_masked_pixels_are_zero_and_valid_pixels_untouched(name: str) -> None:
    path = next(p for p in SHARED if p.name == name)
    with SceneReader(path, TilingSpec(max_nodata=1.0)) as reader, rasterio.open(path) as ds:
        masked_seen = 0
        for window in reader.windows():
            tile = reader.read(window)
            if tile is None:
                continue
            win = Window(window.col, window.row, window.width, window.height)
            mask = ds.dataset_mask(window=win) > 0
            raw = ds.read(list(reader.band_indexes), window=win).transpose(1, 2, 0)
            px = tile.pixels[: window.height, : window.width]
            assert (px[~mask] == 0).all()
            assert (px[mask] == raw[mask]).all()
            assert tile.valid_fraction == pytest.approx(mask.mean())
            masked_seen += int((~mask).sum())
        assert masked_seen > 0


@needs_shared
def test_mostly_nodata_tiles_are_skipped() -> None:
    # shade.tif is 88 % nodata (255): no 256-px window of it is half valid
    shade = next(p for p in SHARED if p.name == "shade.tif")
    with SceneReader(shade, TilingSpec()) as reader:
        assert [reader.read(w) for w in reader.windows()] == [None] * len(reader.windows())
    with SceneReader(shade, TilingSpec(max_nodata=0.9)) as reader:
        kept = [t for t in map(reader.read, reader.windows()) if t is not None]
        assert kept and all(t.valid_fraction >= 0.1 for t in kept)
    # pix4d: alpha-transparent areas; a strict max_nodata skips the partly transparent tiles
    pix4d = next(p for p in SHARED if p.name == "pix4d_alpha_nodata.tif")
    with SceneReader(pix4d, TilingSpec(max_nodata=0.05)) as strict:
        kept = [t for t in map(strict.read, strict.windows()) if t is not None]
        assert 0 < len(kept) < len(strict.windows())
        assert all(t.valid_fraction >= 0.95 for t in kept)


@needs_shared
def test_int16_nodata_minus_9999_is_masked(tmp_path: Path) -> None:
    src = next(p for p in SHARED if p.name == "sample_geotiff_custom_proj.tif")
    with rasterio.open(src) as ds:
        data, profile = ds.read(), ds.profile
    data[:, :150, :150] = -9999  # the original has no nodata pixel; give it a corner of them
    path = tmp_path / "holes.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    with SceneReader(path, TilingSpec(tile_size=256)) as reader:
        first = reader.read(TileWindow(1, 0, 0, 256, 256))
        assert first is not None  # 150*150/256**2: 34 % nodata, under the default 50 %
        assert first.valid_fraction == pytest.approx(1 - 150 * 150 / 256**2)
        assert (first.pixels[:150, :150] == 0).all()
        assert (first.pixels[150:, 150:] > 0).mean() > 0.9
    with SceneReader(path, TilingSpec(tile_size=256, max_nodata=0.3)) as reader:
        assert reader.read(TileWindow(1, 0, 0, 256, 256)) is None


# -- footprints and CRS cases -----------------------------------------------------------------


def test_rgb_byte_footprint_matches_pyproj_corners() -> None:
    """RGB.byte.tif (UTM 18N) lies around the Bahamas/Cuba, lon -79..-76.5, lat 23.5..25.6."""
    with SceneReader(FIXTURE, TilingSpec()) as reader, rasterio.open(FIXTURE) as ds:
        to_wgs84 = Transformer.from_crs(ProjCRS.from_epsg(32618), 4326, always_xy=True)
        corners = [ds.transform @ (c, r) for c, r in [(0, 0), (ds.width, 0), (ds.width, ds.height), (0, ds.height)]]
        lonlat = np.array([to_wgs84.transform(x, y) for x, y in corners])
        assert reader.crs == "EPSG:32618"
        ring = np.array(reader.footprint)
        for corner in lonlat:
            assert np.hypot(*(ring - corner).T).min() < 1e-6
        west, south, east, north = reader.bbox
        assert west <= lonlat[:, 0].min() and east >= lonlat[:, 0].max()
        assert south <= lonlat[:, 1].min() and north >= lonlat[:, 1].max()
        assert -79.0 < west < east < -76.5 and 23.5 < south < north < 25.6
        # the densified edges bulge past the corners; pyproj's own densified bounds agree
        dense = to_wgs84.transform_bounds(*ds.bounds, densify_pts=21)
        assert np.allclose(reader.bbox, dense, atol=1e-6)
        tile = reader.read(TileWindow(1, 256, 256, 256, 256))
        assert tile is not None
        x0, y0 = ds.transform @ (256, 256)
        x1, y1 = ds.transform @ (512, 512)
        assert tile.native_bounds == pytest.approx((x0, y1, x1, y0))
        cx, cy = to_wgs84.transform((x0 + x1) / 2, (y0 + y1) / 2)
        assert tile.center == pytest.approx((cx, cy), abs=1e-7)


@needs_shared
def test_world_scene_bbox_stays_on_the_globe() -> None:
    path = next(p for p in SHARED if p.name == "world.rgb.tif")
    with SceneReader(path, TilingSpec(tile_size=128)) as reader:
        assert reader.bbox == (-180.0, -90.0, 180.0, 90.0)
        tiles = [reader.read(w) for w in reader.windows()]
        assert all(t is not None for t in tiles)
        lons = [p[0] for t in tiles for p in t.footprint]
        assert -180 <= min(lons) and max(lons) <= 180
        wests = sorted(t.bbox[0] for t in tiles)
        assert wests[0] == -180.0 and max(t.bbox[2] for t in tiles) == 180.0


@needs_shared
def test_wkt_only_crs_reprojects() -> None:
    rgb1 = next(p for p in SHARED if p.name == "rgb1.tif")
    spec = TilingSpec(max_nodata=1.0)
    with SceneReader(rgb1, spec) as cut, SceneReader(FIXTURE, spec) as whole:
        assert cut.crs is not None and cut.crs.startswith("PROJCS")  # no EPSG code
        w, s, e, n = cut.bbox
        W, S, E, N = whole.bbox
        assert W - 1e-6 <= w < e <= E + 1e-6 and S - 1e-6 <= s < n <= N + 1e-6
        # the same pixels on the same ground: rgb1 is the top-left 400x400 of RGB.byte
        a = cut.read(TileWindow(1, 0, 0, 256, 256))
        b = whole.read(TileWindow(1, 0, 0, 256, 256))
        assert a is not None and b is not None
        assert np.array_equal(a.pixels, b.pixels)
        assert np.allclose(a.footprint, b.footprint, atol=1e-6)


def test_antimeridian_crossing_tile_gets_a_wrapped_bbox(tmp_path: Path) -> None:
    # UTM 60N (central meridian 177E); 400 km east of it passes 180 at latitude 60
    data = np.random.default_rng(0).integers(1, 255, (3, 64, 64), dtype=np.uint8)
    path = write_raster(
        tmp_path / "dateline.tif", data, crs="EPSG:32660", transform=from_origin(500000, 6700000, 5000, 5000)
    )
    with SceneReader(path, TilingSpec(tile_size=64)) as reader:
        west, south, east, north = reader.bbox
        assert west > 170 and east < -170, "RFC 7946: west > east across the antimeridian"
        lons = np.array([p[0] for p in reader.footprint])
        assert np.abs(np.diff(lons)).max() < 90, "the ring stays continuous"
        tile = reader.read(reader.windows()[0])
        assert tile is not None and tile.bbox[0] > tile.bbox[2]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_no_crs_tiles_in_pixel_coordinates(tmp_path: Path) -> None:
    with rasterio.open(FIXTURE) as ds:
        data = ds.read(window=Window(100, 100, 300, 200))
    path = tmp_path / "plain.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=300, height=200, count=3, dtype="uint8"
    ) as dst:
        dst.write(data)
    with SceneReader(path, TilingSpec(tile_size=128)) as reader:
        assert reader.crs is None and reader.footprint is None and reader.bbox is None
        assert reader.gsd is None
        assert any("no CRS" in w for w in reader.warnings)
        tile = reader.read(TileWindow(1, 128, 64, 128, 128))
        assert tile is not None
        assert tile.native_bounds == (128.0, 64.0, 256.0, 192.0)
        assert tile.footprint is None and tile.bbox is None and tile.center is None and tile.gsd is None


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_gcp_only_raster_is_treated_as_without_crs(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(1, 255, (1, 64, 64), dtype=np.uint8)
    gcps = [
        GroundControlPoint(row=0, col=0, x=-78.0, y=25.0),
        GroundControlPoint(row=0, col=64, x=-77.9, y=25.0),
        GroundControlPoint(row=64, col=0, x=-78.0, y=24.9),
    ]
    path = tmp_path / "gcps.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8") as dst:
        dst.write(data)
        dst.gcps = (gcps, "EPSG:4326")
    with SceneReader(path, TilingSpec(tile_size=64)) as reader:
        assert reader.crs is None
        assert any("ground control points" in w for w in reader.warnings)
        tile = reader.read(reader.windows()[0])
        assert tile is not None and tile.footprint is None


# -- band choice, stretch corner cases, small scenes ------------------------------------------


def test_explicit_bands_win_and_are_validated() -> None:
    with SceneReader(FIXTURE, TilingSpec()) as rgb, SceneReader(FIXTURE, TilingSpec(bands=(3, 2, 1))) as bgr:
        window = TileWindow(1, 256, 256, 256, 256)
        a, b = rgb.read(window), bgr.read(window)
        assert a is not None and b is not None
        assert bgr.band_indexes == (3, 2, 1)
        assert np.array_equal(a.pixels[..., ::-1], b.pixels)
    with SceneReader(FIXTURE, TilingSpec(bands=(2,))) as grey:
        assert grey.band_indexes == (2, 2, 2)
        t = grey.read(TileWindow(1, 256, 256, 256, 256))
        assert t is not None and np.array_equal(t.pixels[..., 0], t.pixels[..., 2])
    with pytest.raises(BadInput, match=r"^bands 4,2,1: .*RGB.byte.tif has 3 bands"):
        SceneReader(FIXTURE, TilingSpec(bands=(4, 2, 1)))


def test_palette_raster_shows_its_colours(tmp_path: Path) -> None:
    classes = np.random.default_rng(2).integers(0, 3, (1, 64, 64), dtype=np.uint8)
    path = tmp_path / "landcover.tif"
    colours = {0: (200, 180, 20, 255), 1: (20, 200, 40, 255), 2: (30, 60, 220, 255)}
    with rasterio.open(path, "w", **{**_profile(classes), "photometric": "palette"}) as dst:
        dst.write(classes)
        dst.write_colormap(1, colours)
    with SceneReader(path, TilingSpec(tile_size=64, max_nodata=1.0)) as reader:
        tile = reader.read(reader.windows()[0])
        assert tile is not None
        for index, rgba in colours.items():
            assert (tile.pixels[classes[0] == index] == rgba[:3]).all()
        assert tile.valid_fraction == 1.0 and reader.band_indexes == (1, 1, 1)
    # a VRT palette can make an entry transparent: those pixels are masked
    entries = "".join(
        f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="{0 if i == 0 else 255}"/>'
        for i, (r, g, b, _) in colours.items()
    )
    vrt = tmp_path / "landcover.vrt"
    vrt.write_text(
        f"""<VRTDataset rasterXSize="64" rasterYSize="64"><SRS>EPSG:32618</SRS>
        <GeoTransform>300000, 10, 0, 4000000, 0, -10</GeoTransform>
        <VRTRasterBand dataType="Byte" band="1"><ColorInterp>Palette</ColorInterp>
        <ColorTable>{entries}</ColorTable><SimpleSource>
        <SourceFilename relativeToVRT="0">{path}</SourceFilename><SourceBand>1</SourceBand>
        </SimpleSource></VRTRasterBand></VRTDataset>"""
    )
    with SceneReader(vrt, TilingSpec(tile_size=64, max_nodata=1.0)) as reader:
        tile = reader.read(reader.windows()[0])
        assert tile is not None
        assert tile.valid_fraction == pytest.approx((classes != 0).mean())
        assert (tile.pixels[classes[0] == 0] == 0).all()
        assert (tile.pixels[classes[0] == 2] == colours[2][:3]).all()


def _profile(data: np.ndarray) -> dict:
    return dict(
        driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
        dtype=data.dtype.name, crs="EPSG:32618", transform=from_origin(300000, 4000000, 10, 10),
    )


def test_constant_and_nan_float_bands(tmp_path: Path) -> None:
    data = np.full((3, 64, 64), 5.0, dtype=np.float32)
    data[1] = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    data[:, :8, :] = np.nan  # NaN without a nodata value: masked all the same
    path = write_raster(tmp_path / "flat.tif", data)
    with SceneReader(path, TilingSpec(tile_size=64)) as reader:
        tile = reader.read(reader.windows()[0])
        assert tile is not None
        assert tile.valid_fraction == pytest.approx(56 / 64)
        assert (tile.pixels[:8] == 0).all()
        assert (tile.pixels[8:, :, 0] == 128).all()  # a constant band sits mid-grey
        assert tile.pixels[8:, :, 1].min() == 0 and tile.pixels[8:, :, 1].max() == 255


def test_scene_smaller_than_a_window_is_padded_not_stretched(tmp_path: Path) -> None:
    with rasterio.open(FIXTURE) as ds:
        data = ds.read(window=Window(300, 300, 100, 60))
    path = write_raster(tmp_path / "small.tif", data)
    with SceneReader(path, TilingSpec(tile_size=256, levels=(1, 2))) as reader:
        assert reader.windows() == [TileWindow(1, 0, 0, 100, 60)]
        tile = reader.read(reader.windows()[0])
        assert tile is not None and tile.valid_fraction == 1.0
        assert np.array_equal(tile.pixels[:60, :100], data.transpose(1, 2, 0))
        assert not tile.pixels[60:].any() and not tile.pixels[:, 100:].any()


def test_levels_resample_the_window_to_the_tile_size() -> None:
    with SceneReader(FIXTURE, TilingSpec(tile_size=128, levels=(1, 4))) as reader:
        level4 = [w for w in reader.windows() if w.level == 4]
        assert {(w.width, w.height) for w in level4} == {(512, 512)}
        tile = reader.read(TileWindow(4, 256, 200, 512, 512))
        assert tile is not None and tile.pixels.shape == (128, 128, 3)
        assert tile.gsd == pytest.approx(4 * reader.gsd)
        # average of each 4x4 block of valid pixels (GDAL averages ignore nodata)
        with rasterio.open(FIXTURE) as ds:
            raw = ds.read(1, window=Window(256, 200, 512, 512)).astype(np.float64)
        blocks = raw.reshape(128, 4, 128, 4)
        full = (blocks > 0).all(axis=(1, 3))
        means = blocks.mean(axis=(1, 3))
        assert np.abs(tile.pixels[..., 0][full] - means[full]).max() <= 1


def test_acquisition_time_from_tiff_tag(tmp_path: Path) -> None:
    data = np.random.default_rng(3).integers(1, 255, (3, 32, 32), dtype=np.uint8)
    path = tmp_path / "dated.tif"
    with rasterio.open(path, "w", **_profile(data)) as dst:
        dst.write(data)
        dst.update_tags(TIFFTAG_DATETIME="2020:05:01 10:20:30")
    with SceneReader(path, TilingSpec(tile_size=32)) as reader:
        assert reader.acquired == "2020-05-01T10:20:30Z"  # ISO 8601 UTC: a TIFF date has no zone
    with SceneReader(FIXTURE, TilingSpec()) as reader:
        assert reader.acquired is None


# -- threads and memory -----------------------------------------------------------------------


def test_reads_are_thread_safe() -> None:
    with SceneReader(FIXTURE, TilingSpec(tile_size=128, levels=(1, 2))) as reader:
        windows = [w for w in reader.windows()]
        sequential = {w: reader.read(w) for w in windows}
        target = TileWindow(1, 256, 256, 128, 128)
        barrier = threading.Barrier(4)
        results: dict[int, list[Tile | None]] = {}

        def work(i: int) -> None:
            barrier.wait()
            mine = [reader.read(target)]
            mine += [reader.read(w) for w in windows[i::4]]
            results[i] = mine

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reference = reader.read(target)
        assert reference is not None
        for i in range(4):
            assert results[i][0] is not None
            assert np.array_equal(results[i][0].pixels, reference.pixels)
            for w, tile in zip(windows[i::4], results[i][1:]):
                want = sequential[w]
                assert (tile is None) == (want is None)
                if tile is not None:
                    assert np.array_equal(tile.pixels, want.pixels)
                    assert tile.footprint == want.footprint


def test_huge_vrt_is_read_lazily(tmp_path: Path) -> None:
    """A 24000x24000 scene (1.7 GB of RGB) must tile within a few MB and a few seconds."""
    size = 24000
    with rasterio.open(FIXTURE) as ds:
        w, h, t = ds.width, ds.height, ds.transform
    res_x, res_y = t.a * w / size, t.e * h / size
    bands = "".join(
        f"""<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue>
        <ColorInterp>{name}</ColorInterp><SimpleSource>
        <SourceFilename relativeToVRT="0">{FIXTURE}</SourceFilename><SourceBand>{b}</SourceBand>
        <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>
        <DstRect xOff="0" yOff="0" xSize="{size}" ySize="{size}"/></SimpleSource></VRTRasterBand>"""
        for b, name in [(1, "Red"), (2, "Green"), (3, "Blue")]
    )
    vrt = tmp_path / "huge.vrt"
    vrt.write_text(
        f"""<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>EPSG:32618</SRS>
        <GeoTransform>{t.c}, {res_x}, 0, {t.f}, 0, {res_y}</GeoTransform>{bands}</VRTDataset>"""
    )
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with SceneReader(vrt, TilingSpec(tile_size=256, levels=(1, 8))) as reader:
            windows = reader.windows()
            assert len(windows) == 94 * 94 + 12 * 12
            tile = reader.read(TileWindow(1, 12000, 12000, 256, 256))
            coarse = reader.read(TileWindow(8, 10240, 10240, 2048, 2048))
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tile is not None and coarse is not None
    assert tile.pixels.std() > 0 and coarse.pixels.std() > 0
    assert reader.width == reader.height == size
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB: the scene was read whole"
    assert elapsed < 10


# -- bad input --------------------------------------------------------------------------------


def _truncated(tmp_path: Path) -> Path:
    data = np.random.default_rng(4).integers(0, 60000, (1, 512, 512), dtype=np.uint16)
    full = write_raster(tmp_path / "full.tif", data, tiled=True, blockxsize=128, blockysize=128)
    blob = full.read_bytes()
    path = tmp_path / "truncated.tif"
    path.write_bytes(blob[: len(blob) * 2 // 3])
    return path


def _complex(tmp_path: Path) -> Path:
    data = (np.ones((1, 32, 32)) + 1j).astype(np.complex64)
    return write_raster(tmp_path / "complex.tif", data)


def _all_nodata(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "blank.tif", np.zeros((1, 64, 64), np.uint16), nodata=0)


def _all_nan(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "nan.tif", np.full((3, 64, 64), np.nan, np.float32))


def _one_pixel(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "dot.tif", np.full((3, 1, 1), 9, np.uint8))


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "notes.tif"
    path.write_text("this is not a raster\n")
    return path


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.tif"
    path.touch()
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.tif", "no such file"),
        (_empty, "empty"),
        (_text, "not a readable raster"),
        (lambda p: p, "is a directory"),
        (_complex, "complex"),
        (_all_nodata, "contains no valid pixels"),
        (_all_nan, "contains no valid pixels"),
        # a 1-pixel scene is refused: padded to a tile it would be 1/65536 content
        (_one_pixel, f"at least {MIN_SCENE_SIDE} pixels"),
    ],
    ids=["missing", "empty", "text", "directory", "complex", "all-nodata", "all-nan", "one-pixel"],
)
def test_bad_input_is_refused_naming_the_file(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(BadInput, match=message) as info:
        SceneReader(path, TilingSpec())
    assert str(path) in str(info.value)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    """Damage shows when opening or, for data past the cut, when sampling or reading it."""
    path = _truncated(tmp_path)
    with pytest.raises(BadInput, match="truncated.tif") as info:
        with SceneReader(path, TilingSpec(tile_size=128)) as reader:
            for w in reader.windows():
                reader.read(w)
    assert "damaged" in str(info.value) or "not a readable raster" in str(info.value)


def test_read_after_close_is_an_error() -> None:
    reader = SceneReader(FIXTURE, TilingSpec())
    reader.close()
    with pytest.raises(RuntimeError, match="closed"):
        reader.read(reader.windows()[0])
