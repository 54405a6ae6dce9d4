"""How a raster's bands become 8-bit RGB: band choice, stretch, masks.

One implementation for the write path (``ingest.tiling`` feeds tiles to the model) and the read
path (``ftfsearch.chips`` draws chips and previews for people): both must show the same pixels,
and ``ftfsearch`` may not import ``ingest``, so the decisions live here.

:func:`choose_style` decides once per raster and returns a :class:`RasterStyle`:

- bands: the scene's ``--bands`` if given (1 band is grey), else the red/green/blue colour
  interpretation, else band descriptions named red/green/blue, else one band as grey (through
  its colour map when it is palette-indexed), else the first three data bands (with a warning);
  alpha bands are never colours;
- stretch: 8-bit and palette data are shown as they are; other types map the 2nd and 98th
  percentile of each band to 0 and 255, from a small-but-not-tiny overview or a decimated read,
  ignoring masked and non-finite pixels;
- masks: GDAL's per-band masks (nodata, alpha, ``.msk``) OR-ed over the read bands as GDAL's
  dataset mask does, minus NaN/infinite floats and transparent palette entries.

Errors are :class:`BadInput` naming ``source``; callers for whom the file was fine before (chips)
translate them.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence, TypeAlias

import numpy as np
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pyproj.exceptions import ProjError
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioError, TransformError
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ftfsearch.errors import BadInput

log = logging.getLogger(__name__)

WGS84 = "EPSG:4326"
"""Longitude/latitude: the CRS of every bbox, footprint and ring the store and the API hold."""
STATS_LONG_SIDE = 1024
"""Long side of the decimated read that the 8-bit stretch percentiles are computed from."""
STATS_MIN_OVERVIEW = 256
"""Smallest overview long side trusted for stretch statistics (tinier ones are too coarse)."""
STRETCH_PERCENTILES = (2.0, 98.0)
"""Non-8-bit bands map these percentiles to 0 and 255."""

_RGB_NAMES = {"red": ColorInterp.red, "green": ColorInterp.green, "blue": ColorInterp.blue}

Dataset: TypeAlias = DatasetReader | WarpedVRT
"""What a read takes: a file as it is, or warped (the chips and previews of the read path)."""

# -- rasters over HTTP ---------------------------------------------------------------------------
# Timeouts (s) and retries of GDAL's /vsicurl/ reads: a stalled server fails a read after 30 s
# without an answer, and transient failures (429, 5xx) are retried 3 times, 1 s apart and more.
_URL = re.compile(r"^https?://", re.IGNORECASE)

GDAL_HTTP_OPTIONS: dict[str, Any] = {
    "GDAL_HTTP_TIMEOUT": 30,
    "GDAL_HTTP_CONNECTTIMEOUT": 10,
    "GDAL_HTTP_MAX_RETRY": 3,
    "GDAL_HTTP_RETRY_DELAY": 1,
    # a COG has no .ovr/.aux.xml/.msk beside it and no directory to list: do not ask for them
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.vrt,.jp2,.img,.jpg,.jpeg,.png,.webp",
    # the header and IFDs in the first request rather than several small ones
    "GDAL_INGESTED_BYTES_AT_OPEN": 32768,
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
}
"""GDAL configuration for every read of a remote raster (``rasterio.Env(**GDAL_HTTP_OPTIONS)``)."""


def is_url(source: object) -> bool:
    """An ``http://`` or ``https://`` address (read through ``/vsicurl/``)."""
    return isinstance(source, str) and bool(_URL.match(source))


def gdal_options(source: object) -> dict[str, Any]:
    """The GDAL configuration for reading ``source``: :data:`GDAL_HTTP_OPTIONS` for a URL, and
    for a VRT whose bands are URLs (a STAC item's band assets, :mod:`ingest.stack`)."""
    return GDAL_HTTP_OPTIONS if is_url(source) or _reads_urls(source) else {}


def _reads_urls(source: object) -> bool:
    """A local VRT naming a ``/vsicurl/`` source (a VRT is a small XML file)."""
    if not isinstance(source, (str, Path)) or not str(source).lower().endswith(".vrt"):
        return False
    try:
        with open(source, "rb") as f:
            return b"/vsicurl/" in f.read(1 << 20)
    except OSError:
        return False


@dataclass(frozen=True)
class RasterStyle:
    """Which bands are read and how they become 8-bit RGB; decided once per raster."""

    band_indexes: tuple[int, int, int]
    """1-based bands shown as red, green, blue (one band three times for grey)."""
    read_indexes: tuple[int, ...]
    """1-based bands read, each once."""
    channels: tuple[int, int, int]
    """Position in ``read_indexes`` of red, green and blue."""
    dtype: str
    """Type of the read bands; ``float64`` when they differ (then they are read as float64)."""
    all_valid: bool
    """No mask, nodata or alpha on the read bands: masks need not be read."""
    mixed: bool = False
    """Bands of different types: read as float64."""
    low: tuple[float, ...] | None = None
    """Per read band, the value mapped to 0; None for 8-bit and palette data (shown as is)."""
    high: tuple[float, ...] | None = None
    """Per read band, the value mapped to 255."""
    palette: np.ndarray | None = field(default=None, compare=False, hash=False)
    """``uint8 [N, 4]`` RGBA per index when the band is palette-indexed; alpha 0 is nodata."""
    warnings: tuple[str, ...] = ()
    """What the user should know about the choice (no path: the caller names the file)."""

    @property
    def floating(self) -> bool:
        """Float (or mixed) data: NaN and infinities are masked."""
        return np.dtype(self.dtype).kind == "f"

    def resampling(self, downsampled: bool) -> Resampling:
        """Resampling for a read: palette indexes are classes (mode), values average."""
        if not downsampled:
            return Resampling.nearest
        return Resampling.mode if self.palette is not None else Resampling.average

    def read(
        self,
        ds: Dataset,
        window: Window | None,
        shape: tuple[int, int],
        resampling: Resampling = Resampling.nearest,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(data [n, h, w], valid bool [h, w])`` of a window resampled to ``shape``.

        Raises :class:`rasterio.errors.RasterioError` on damaged data: callers name the file.
        """
        data = _read_bands(ds, self.read_indexes, self.mixed, window, shape, resampling)
        return data, self.valid_mask(ds, data, window, shape)

    def valid_mask(
        self, ds: Dataset, data: np.ndarray, window: Window | None, shape: tuple[int, int]
    ) -> np.ndarray:
        """Valid pixels of read ``data``: masks, finite values, opaque palette entries."""
        valid = self._mask_valid(ds, data, window, shape)
        if self.palette is not None:  # palette entries may be transparent (PNG, VRT)
            valid &= self.palette[_palette_index(data, self.palette), 3] > 0
        return valid

    def _mask_valid(
        self, ds: Dataset, data: np.ndarray, window: Window | None, shape: tuple[int, int]
    ) -> np.ndarray:
        """GDAL masks OR-ed over the read bands, as GDAL's dataset mask does, minus non-finite
        floats. A warped VRT's masks are read even for an all-valid source: a warp with a
        nodata value leaves the pixels outside the scene empty."""
        if self.all_valid and not isinstance(ds, WarpedVRT):
            valid = np.ones(shape, dtype=bool)
        else:
            masks = ds.read_masks(
                self.read_indexes,
                window=window,
                out_shape=(len(self.read_indexes), *shape),
                resampling=Resampling.nearest,
            )
            valid = (masks > 0).any(axis=0)
        if self.floating:
            valid &= np.isfinite(data).all(axis=0)
        return valid

    def to_rgb(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """``[n, h, w]`` read bands -> ``uint8 [h, w, 3]``, invalid pixels black."""
        if self.palette is not None:
            rgb = self.palette[_palette_index(data, self.palette)][..., :3]
        else:
            if self.low is not None and self.high is not None:
                low = np.asarray(self.low, dtype=np.float64)[:, None, None]
                high = np.asarray(self.high, dtype=np.float64)[:, None, None]
                scaled = (data.astype(np.float32) - low) * (255.0 / (high - low))
                scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
                data = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
            rgb = data[list(self.channels)].transpose(1, 2, 0)
        return np.where(valid[..., None], rgb, 0).astype(np.uint8)


def _palette_index(data: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Band-1 values as palette rows (values past the table show its last entry)."""
    return np.clip(data[0].astype(np.int64), 0, len(palette) - 1)


def _read_bands(
    ds: Dataset,
    indexes: tuple[int, ...],
    mixed: bool,
    window: Window | None,
    shape: tuple[int, int],
    resampling: Resampling,
) -> np.ndarray:
    """``[n, h, w]`` of the bands; bands of different types as float64, one band per read
    (rasterio refuses a multi-band read of mixed types, even with ``out_dtype``)."""
    if not mixed:
        return ds.read(indexes, window=window, out_shape=(len(indexes), *shape), resampling=resampling)
    return np.stack([
        ds.read(b, window=window, out_shape=shape, resampling=resampling, out_dtype="float64")
        for b in indexes
    ])


@functools.lru_cache(maxsize=64)
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(ProjCRS.from_user_input(src), ProjCRS.from_user_input(dst), always_xy=True)


def transform_xy(src_crs: Any, dst_crs: Any, xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    """Points from one CRS into another (x, y order, as ``rasterio.warp.transform``), through PROJ.

    Fails with :class:`rasterio.errors.TransformError`, a public ``RasterioError``: GDAL's own
    transform raises a class of rasterio's private ``_err`` module instead (e.g. for a point
    outside the projection's domain), which no caller can name."""
    names = [c.to_wkt() if hasattr(c, "to_wkt") else str(c) for c in (src_crs, dst_crs)]
    try:
        x, y = _transformer(names[0], names[1]).transform(list(xs), list(ys), errcheck=True)
    except ProjError as exc:
        raise TransformError(str(exc)) from exc
    return [float(v) for v in np.atleast_1d(x)], [float(v) for v in np.atleast_1d(y)]


def require_bands(ds: DatasetReader, source: str | Path | None = None) -> None:
    """Refuses a dataset without raster bands (a container of subdatasets, say)."""
    if ds.count == 0:
        subs = ", ".join(ds.subdatasets[:3])
        hint = f" (it holds subdatasets: {subs}; pass one of those)" if subs else ""
        raise BadInput(f"{source or ds.name}: has no raster bands{hint}")


def choose_bands(
    ds: DatasetReader, bands: Sequence[int] | None = None, source: str | Path | None = None
) -> tuple[tuple[int, int, int], np.ndarray | None, tuple[str, ...]]:
    """The bands shown as red, green, blue; the palette LUT when band 1 is palette-indexed;
    warnings about guesses. ``bands``: the user's ``--bands`` (1 or 3 indexes)."""
    name = source or ds.name
    count = ds.count
    interp = list(ds.colorinterp)
    if bands:
        if max(bands) > count:
            raise BadInput(
                f"`bands` {','.join(map(str, bands))}: {name} has "
                f"{count} band{'s' if count > 1 else ''} (1..{count})"
            )
        rgb = (bands[0], bands[0], bands[0]) if len(bands) == 1 else (bands[0], bands[1], bands[2])
        return rgb, None, ()
    data = [i + 1 for i, ci in enumerate(interp) if ci != ColorInterp.alpha]
    if not data:
        raise BadInput(f"{name}: has only alpha bands, no usable band")
    named = _named_rgb(ds, interp, data)
    if named is not None:
        return named, None, ()
    if len(data) == 1:
        band = data[0]
        return (band, band, band), _palette_lut(ds, band, interp[band - 1]), ()
    if len(data) == 2:
        return (data[0], data[0], data[0]), None, (
            f"2 bands without colour interpretation: showing band {data[0]} "
            "as grey; pass `bands` to choose another",
        )
    first = (data[0], data[1], data[2])
    return first, None, (
        f"{len(data)} bands without red/green/blue colour interpretation: "
        f"reading bands {first[0]},{first[1]},{first[2]} as red,green,blue; pass `bands` "
        "(e.g. 3,2,1) if that is wrong",
    )


def _named_rgb(ds: DatasetReader, interp: list[ColorInterp], data: list[int]) -> tuple[int, int, int] | None:
    """The red, green and blue ``data`` bands by colour interpretation, else by band description
    (``red``, ``green``, ``blue``); None when either names fewer than all three."""
    by_interp = {i: interp[i - 1] for i in data}
    by_description = {i: _RGB_NAMES.get((ds.descriptions[i - 1] or "").strip().lower()) for i in data}
    for colours in (by_interp, by_description):
        found: dict[ColorInterp, int] = {}
        for i, colour in colours.items():
            if colour in _RGB_NAMES.values():
                found.setdefault(colour, i)
        if len(found) == 3:
            return found[ColorInterp.red], found[ColorInterp.green], found[ColorInterp.blue]
    return None


def _palette_lut(ds: DatasetReader, band: int, interp: ColorInterp) -> np.ndarray | None:
    """``uint8 [n, 4]`` RGBA rows of a palette-indexed integer band's colour map; None for
    any other band, or a palette band without a readable colour map."""
    if interp != ColorInterp.palette or "int" not in ds.dtypes[band - 1]:
        return None
    try:
        colormap = ds.colormap(band)
    except ValueError:
        return None
    if not colormap:
        return None
    lut = np.zeros((max(colormap) + 1, 4), dtype=np.uint8)
    for index, rgba in colormap.items():
        lut[index] = rgba
    return lut


def stats_shape(ds: DatasetReader, band: int) -> tuple[int, int]:
    """(height, width) of the stretch sample: a small-but-not-tiny overview, or a decimated
    read about STATS_LONG_SIDE pixels on the long side."""
    for factor in sorted(ds.overviews(band), reverse=True):
        ow, oh = math.ceil(ds.width / factor), math.ceil(ds.height / factor)
        if max(ow, oh) >= STATS_MIN_OVERVIEW:
            return oh, ow
    long_side = max(ds.width, ds.height)
    if long_side <= STATS_LONG_SIDE:
        return ds.height, ds.width
    scale = STATS_LONG_SIDE / long_side
    return max(1, round(ds.height * scale)), max(1, round(ds.width * scale))


def choose_style(
    ds: DatasetReader,
    bands: Sequence[int] | None = None,
    *,
    source: str | Path | None = None,
    require_valid: bool = False,
) -> RasterStyle:
    """Decide bands, palette and stretch for one raster.

    ``bands`` is the scene's ``--bands``; ``source`` names the file in errors (default: the
    dataset's name). With ``require_valid`` a raster without any valid pixel in the statistics
    sample is refused (ingest: nothing to tile); 8-bit rasters with masks are then sampled too.
    Raises :class:`BadInput` for no bands, complex pixels, bands out of range, only alpha
    bands, damaged pixels and (with ``require_valid``) no valid pixel.
    """
    name = source or ds.name
    require_bands(ds, name)
    complex_bands = [i + 1 for i, dt in enumerate(ds.dtypes) if "complex" in dt]
    if complex_bands:
        raise BadInput(
            f"{name}: complex pixels ({ds.dtypes[complex_bands[0] - 1]}) are not "
            "supported; convert to amplitude first (e.g. gdal_calc.py or gdal_translate)"
        )
    rgb, lut, warnings = choose_bands(ds, bands, name)
    read_indexes = tuple(dict.fromkeys(rgb))
    read_dtypes = tuple(ds.dtypes[b - 1] for b in read_indexes)
    style = RasterStyle(
        band_indexes=rgb,
        read_indexes=read_indexes,
        channels=(read_indexes.index(rgb[0]), read_indexes.index(rgb[1]), read_indexes.index(rgb[2])),
        dtype=read_dtypes[0] if len(set(read_dtypes)) == 1 else "float64",
        mixed=len(set(read_dtypes)) > 1,
        all_valid=all(ds.mask_flag_enums[b - 1] == [MaskFlags.all_valid] for b in read_indexes),
        palette=lut,
        warnings=warnings,
    )
    as_is = lut is not None or style.dtype == "uint8"
    if as_is and (style.all_valid or not require_valid):
        return style  # nothing to stretch, and no validity to check
    h, w = stats_shape(ds, read_indexes[0])
    try:
        sample = _read_bands(ds, read_indexes, style.mixed, None, (h, w), Resampling.nearest)
        valid = style._mask_valid(ds, sample, None, (h, w))
    except RasterioError as exc:
        raise BadInput(f"{name}: cannot read pixels ({exc}); the file may be damaged") from exc
    if require_valid and not valid.any():
        raise BadInput(f"{name}: contains no valid pixels (all nodata, masked or NaN); nothing to tile")
    if as_is:
        return style
    low: list[float] = []
    high: list[float] = []
    for i in range(len(read_indexes)):
        values = sample[i][valid].astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            lo, hi = 0.0, 1.0
        else:
            lo, hi = (float(v) for v in np.percentile(values, STRETCH_PERCENTILES))
            if not hi > lo:  # a constant band: centre it instead of dividing by zero
                lo, hi = lo - 0.5, lo + 0.5
        low.append(lo)
        high.append(hi)
    log.debug("%s: stretch %s..%s", name, low, high)
    return replace(style, low=tuple(low), high=tuple(high))
