"""ftfsearch.raster on its own: the band, stretch and mask decisions that tiles and chips share,
for the cases the SceneReader and chip tests do not reach (descriptions, 2 bands, alpha only,
mixed types, the validity check, overview statistics, warped masks)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from _data import SHARED_DATA
from ftfsearch.errors import BadInput
from ftfsearch.raster import (
    STATS_LONG_SIDE,
    STATS_MIN_OVERVIEW,
    STRETCH_PERCENTILES,
    choose_style,
    stats_shape,
)

FIXTURE = Path(__file__).resolve().parent / "data" / "RGB.byte.tif"
GEOTIFFS = SHARED_DATA / "geotiffs"


def _rgb() -> tuple[np.ndarray, dict]:
    with rasterio.open(FIXTURE) as src:
        return src.read(), src.profile


def _write(path: Path, data: np.ndarray, profile: dict, **extra: object) -> Path:
    profile = {k: v for k, v in profile.items() if k != "photometric"}
    profile = {**profile, "count": data.shape[0], "dtype": data.dtype.name, "nodata": None, **extra}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _vrt_band(path: Path, band: int, dtype: str, interp: str = "Undefined") -> str:
    return (
        f'<VRTRasterBand dataType="{dtype}" band="{band}"><ColorInterp>{interp}</ColorInterp>'
        f'<SimpleSource><SourceFilename relativeToVRT="0">{path}</SourceFilename>'
        "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>"
    )


def _vrt(tmp_path: Path, name: str, bands: list[str], width: int, height: int) -> Path:
    vrt = tmp_path / name
    vrt.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>EPSG:32618</SRS>'
        "<GeoTransform>300000, 10, 0, 4000000, 0, -10</GeoTransform>"
        + "".join(bands)
        + "</VRTDataset>"
    )
    return vrt


def test_band_descriptions_name_the_colours(tmp_path: Path) -> None:
    """Bands stored blue, green, red, nir without colour interpretation but with descriptions."""
    rgb, profile = _rgb()
    nir = (rgb.astype(np.uint16).sum(axis=0) // 3).astype(np.uint8)[None]
    path = _write(tmp_path / "bgrn.tif", np.concatenate([rgb[::-1], nir]), profile, photometric="minisblack")
    with rasterio.open(path, "r+") as ds:
        for i, name in enumerate(["Blue", "green", " RED ", "nir"], start=1):
            ds.set_band_description(i, name)
    with rasterio.open(path) as ds:
        style = choose_style(ds)
        assert style.band_indexes == (3, 2, 1) and style.warnings == ()
        assert style.low is None and style.dtype == "uint8"
        data, valid = style.read(ds, Window(100, 200, 64, 32), (32, 64))
    assert valid.all()
    assert np.array_equal(style.to_rgb(data, valid), rgb[:, 200:232, 100:164].transpose(1, 2, 0))


def test_two_bands_show_the_first_as_grey_with_a_warning(tmp_path: Path) -> None:
    rgb, profile = _rgb()
    path = _write(tmp_path / "two.tif", rgb[1:], profile, photometric="minisblack")
    with rasterio.open(path) as ds:
        style = choose_style(ds)
    assert style.band_indexes == (1, 1, 1) and style.read_indexes == (1,) and style.channels == (0, 0, 0)
    assert len(style.warnings) == 1 and "pass `bands`" in style.warnings[0]


def test_only_alpha_and_out_of_range_bands_are_refused_naming_the_source(tmp_path: Path) -> None:
    rgb, profile = _rgb()
    grey = _write(tmp_path / "grey.tif", rgb[:1], profile)
    vrt = _vrt(tmp_path, "alpha.vrt", [_vrt_band(grey, 1, "Byte", "Alpha")], rgb.shape[2], rgb.shape[1])
    with rasterio.open(vrt) as ds, pytest.raises(BadInput, match="only alpha bands"):
        choose_style(ds, source="my-scene")
    with rasterio.open(FIXTURE) as ds:
        with pytest.raises(BadInput, match=r"^bands 1,2,9: my-scene has 3 bands \(1\.\.3\)"):
            choose_style(ds, (1, 2, 9), source="my-scene")
        # an explicit choice is used as given, even without colour interpretation
        assert choose_style(ds, (2,)).band_indexes == (2, 2, 2)


def test_mixed_types_are_read_as_float64_and_stretched(tmp_path: Path) -> None:
    """A VRT of a uint8 band and a uint16 band: one stretch per band, on float64 reads (rasterio
    cannot read mixed types in one call: this crashed with a ValueError before ftfsearch.raster)."""
    rgb, profile = _rgb()
    red = _write(tmp_path / "red.tif", rgb[:1], profile)
    wide = _write(tmp_path / "wide.tif", (rgb[1:2].astype(np.uint16) * 200 + 7), profile)
    vrt = _vrt(
        tmp_path, "mixed.vrt",
        [_vrt_band(red, 1, "Byte", "Red"), _vrt_band(wide, 2, "UInt16", "Green"),
         _vrt_band(red, 3, "Byte", "Blue")],
        rgb.shape[2], rgb.shape[1],
    )
    with rasterio.open(vrt) as ds:
        style = choose_style(ds)
        assert style.mixed and style.dtype == "float64" and style.floating
        assert style.band_indexes == (1, 2, 3)
        assert style.low is not None and style.high is not None and len(style.low) == 3
        h, w = stats_shape(ds, 1)
        sample = [ds.read(b, out_shape=(h, w), out_dtype="float64") for b in (1, 2, 3)]
        for i in range(3):
            lo, hi = np.percentile(sample[i], STRETCH_PERCENTILES)
            assert (style.low[i], style.high[i]) == (pytest.approx(lo), pytest.approx(hi))
        assert style.high[1] > 10 * style.high[0]  # the uint16 band has its own range
        data, valid = style.read(ds, Window(300, 300, 64, 64), (64, 64))
    assert data.dtype == np.float64 and valid.all()
    pixels = style.to_rgb(data, valid)
    # red and blue are the same source band, so the same stretch gives the same channel
    assert np.array_equal(pixels[..., 0], pixels[..., 2])
    assert pixels[..., 1].min() < 50 and pixels[..., 1].max() > 200


def test_validity_is_checked_only_when_required(tmp_path: Path) -> None:
    """Ingest refuses a raster without a valid pixel; a chip only needs a style."""
    _, profile = _rgb()
    blank8 = _write(tmp_path / "blank8.tif", np.zeros((1, 64, 64), np.uint8), profile, nodata=0)
    blank16 = _write(tmp_path / "blank16.tif", np.zeros((1, 64, 64), np.uint16), profile, nodata=0)
    with rasterio.open(blank8) as ds:
        assert choose_style(ds).low is None
        with pytest.raises(BadInput, match="blank8.tif: contains no valid pixels"):
            choose_style(ds, require_valid=True)
    with rasterio.open(blank16) as ds:
        style = choose_style(ds)
        assert (style.low, style.high) == ((0.0,), (1.0,))  # nothing to measure: a neutral map
        with pytest.raises(BadInput, match="no valid pixels"):
            choose_style(ds, require_valid=True)


@pytest.mark.usefixtures("shared_data")
def test_stretch_sample_comes_from_an_overview_or_a_decimated_read(tmp_path: Path) -> None:
    with rasterio.open(GEOTIFFS / "rio-tiler" / "cog.tif") as ds:
        factors = ds.overviews(1)
        h, w = stats_shape(ds, 1)
        assert factors and max(h, w) >= STATS_MIN_OVERVIEW and max(h, w) < max(ds.width, ds.height)
        assert any((h, w) == (math.ceil(ds.height / f), math.ceil(ds.width / f)) for f in factors)
    with rasterio.open(FIXTURE) as ds:  # small, no overviews: every pixel
        assert stats_shape(ds, 1) == (ds.height, ds.width)
    rgb, profile = _rgb()
    wide = np.tile(rgb[:1], (1, 1, 3))  # 2373 pixels wide, no overviews
    path = _write(tmp_path / "wide.tif", wide, {**profile, "width": wide.shape[2]})
    with rasterio.open(path) as ds:
        h, w = stats_shape(ds, 1)
    assert w == STATS_LONG_SIDE and h == round(wide.shape[1] * STATS_LONG_SIDE / wide.shape[2])


def test_resampling_and_warped_masks(tmp_path: Path) -> None:
    rgb, profile = _rgb()
    classes = _write(tmp_path / "classes.tif", (rgb[:1] // 64).astype(np.uint8), profile, photometric="palette")
    colours = {0: (0, 0, 0, 255), 1: (255, 0, 0, 255), 2: (0, 255, 0, 255), 3: (0, 0, 255, 255)}
    with rasterio.open(classes, "r+") as ds:
        ds.write_colormap(1, colours)
    with rasterio.open(classes) as ds:
        palette = choose_style(ds)
        assert palette.palette is not None and palette.low is None
        assert palette.resampling(False) == Resampling.nearest
        assert palette.resampling(True) == Resampling.mode  # class indexes are never averaged
        data, valid = palette.read(ds, None, (ds.height, ds.width))
    assert valid.all()  # (transparent entries: VRT palettes, tested with SceneReader)
    pixels = palette.to_rgb(data, valid)
    for index, rgba in colours.items():
        assert (pixels[rgb[0] // 64 == index] == rgba[:3]).all()

    # no nodata in the source: no mask to read, but a warp with a nodata value has empty corners
    plain = _write(tmp_path / "plain.tif", rgb, profile)
    with rasterio.open(plain) as ds:
        style = choose_style(ds)
        assert style.all_valid and style.resampling(True) == Resampling.average
        with WarpedVRT(ds, crs="EPSG:4326", nodata=0) as vrt:
            shape = (vrt.height // 4, vrt.width // 4)
            data, valid = style.read(vrt, None, shape)
    assert 0.5 < valid.mean() < 1.0 and not valid[[0, 0, -1, -1], [0, -1, 0, -1]].any()
    assert (style.to_rgb(data, valid)[~valid] == 0).all()
