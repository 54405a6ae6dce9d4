"""Cut a raster scene into square RGB tiles with WGS84 footprints.

Reads are windowed (memory is bounded by one tile, never the scene) and resampled by GDAL with
``out_shape``, so overviews are used where a file has them. Everything a scene needs once
(band choice, the 8-bit stretch, the scene footprint) is decided when the reader opens; every
tile read after that is independent and thread-safe (one dataset handle per thread). Band
choice, stretch and masks are :mod:`ftfsearch.raster`'s, shared with the chips people see.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from ftfsearch.errors import BadInput
from ftfsearch.raster import WGS84, RasterStyle, choose_style, gdal_options, is_url, require_bands, transform_xy
from ftfsearch.times import iso_utc, read_time

log = logging.getLogger(__name__)

EDGE_POINTS = 21
"""Points per window edge when reprojecting footprints: projected edges are curves in WGS84."""
MIN_SCENE_SIDE = 8
"""Scenes narrower than this (either side, pixels) carry no searchable content: refused."""
FOOTPRINT_TOLERANCE_DEG = 1e-7
"""Densified footprint points closer than this to the straight edge are dropped (~1 cm)."""
COORD_DECIMALS = 8

_GEOD = Geod(ellps="WGS84")


@dataclass(frozen=True)
class TilingSpec:
    """How scenes are cut; recorded with every scene so resume and re-ingest cut the same way."""

    tile_size: int = 256
    """Output pixels per side; also the window size at level 1."""
    overlap: float = 0.0
    """Fraction of the window shared by neighbours, ``0 <= overlap < 1``."""
    levels: tuple[int, ...] = (1,)
    """Level L reads windows of ``tile_size * L`` scene pixels, resampled to ``tile_size``."""
    bands: tuple[int, ...] | None = None
    """1-based band indexes (1 = grey, 3 = RGB); None chooses from the colour interpretation."""
    max_nodata: float = 0.5
    """Tiles with more than this fraction of nodata/masked pixels are skipped."""

    def step(self, level: int) -> int:
        """Scene pixels between neighbouring windows at ``level`` (the window less the overlap)."""
        return max(1, int(round(self.tile_size * level * (1.0 - self.overlap))))

    def __post_init__(self) -> None:
        if isinstance(self.tile_size, bool) or not isinstance(self.tile_size, int):
            raise BadInput(f"`tile_size` {self.tile_size!r}: must be an integer")
        if not 16 <= self.tile_size <= 4096:
            raise BadInput(f"`tile_size` {self.tile_size}: must be between 16 and 4096 pixels")
        overlap = float(self.overlap)
        if not (0.0 <= overlap < 1.0) or math.isnan(overlap):
            raise BadInput(f"`overlap` {self.overlap}: must be in [0, 1)")
        object.__setattr__(self, "overlap", overlap)
        levels = tuple(self.levels)
        if not levels:
            raise BadInput("`levels`: give at least one level, e.g. 1,2,4")
        for level in levels:
            if isinstance(level, bool) or not isinstance(level, int) or level < 1:
                raise BadInput(f"`levels` {level!r}: each level must be an integer >= 1")
        object.__setattr__(self, "levels", tuple(sorted(set(levels))))
        if self.bands is not None:
            bands = tuple(self.bands)
            if len(bands) not in (1, 3):
                raise BadInput(
                    f"`bands` {','.join(map(str, bands))}: give 1 band (grey) or 3 (red,green,blue)"
                )
            for band in bands:
                if isinstance(band, bool) or not isinstance(band, int) or band < 1:
                    raise BadInput(f"`bands` {band!r}: band indexes are integers from 1")
            object.__setattr__(self, "bands", bands)
        max_nodata = float(self.max_nodata)
        if not (0.0 <= max_nodata <= 1.0):
            raise BadInput(f"`max_nodata` {self.max_nodata}: the largest nodata fraction of a kept tile must be in [0, 1]")
        object.__setattr__(self, "max_nodata", max_nodata)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, stored with the scene."""
        d = asdict(self)
        d["levels"] = list(self.levels)
        d["bands"] = list(self.bands) if self.bands is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TilingSpec":
        """Inverse of :meth:`to_dict` (for resuming a scene with the spec it started with)."""
        bands = d.get("bands")
        return cls(
            tile_size=int(d["tile_size"]),
            overlap=float(d["overlap"]),
            levels=tuple(int(x) for x in d["levels"]),
            bands=tuple(int(x) for x in bands) if bands is not None else None,
            max_nodata=float(d["max_nodata"]),
        )


@dataclass(frozen=True)
class TileWindow:
    """A window in full-resolution scene pixels, at a level."""

    level: int
    col: int
    row: int
    width: int
    height: int


@dataclass
class Tile:
    """One tile's pixels and where it is on the ground."""

    window: TileWindow
    pixels: np.ndarray
    """``uint8 [tile_size, tile_size, 3]``; masked and padding pixels are 0."""
    valid_fraction: float
    """Valid share of the window's scene pixels (padding outside the scene is not counted)."""
    native_bounds: tuple[float, float, float, float]
    """``(minx, miny, maxx, maxy)`` in the scene CRS, or pixel coordinates without a CRS."""
    footprint: list[list[float]] | None
    """Closed WGS84 ring ``[[lon, lat], ...]``; None without a CRS."""
    bbox: tuple[float, float, float, float] | None
    """``(west, south, east, north)``; west > east when it crosses the antimeridian (RFC 7946)."""
    center: tuple[float, float] | None
    """``(lon, lat)`` of the window centre."""
    gsd: float | None
    """Metres per tile pixel (scene GSD times level), None when unknown."""


@dataclass
class _Geo:
    """WGS84 geometry of one window."""

    native_bounds: tuple[float, float, float, float]
    footprint: list[list[float]] | None = None
    bbox: tuple[float, float, float, float] | None = None
    center: tuple[float, float] | None = None


class _Local(threading.local):
    """Per-thread state: the thread's own dataset handle."""

    dataset: DatasetReader | None = None


def _axis_offsets(length: int, window: int, step: int) -> list[tuple[int, int]]:
    """(offset, size) of windows along one axis: regular steps, the last one shifted back inside."""
    if length <= window:
        return [(0, length)]
    offsets = list(range(0, length - window + 1, step))
    if offsets[-1] != length - window:
        offsets.append(length - window)
    return [(off, window) for off in offsets]


def plan_windows(width: int, height: int, spec: TilingSpec) -> list[TileWindow]:
    """All windows of a ``width x height`` scene, level by level, row-major.

    Levels whose window already covers the whole scene after a first such level are dropped:
    they would repeat the same whole-scene tile.
    """
    out: list[TileWindow] = []
    for level in spec.levels:
        size = spec.tile_size * level
        step = spec.step(level)
        for row, h in _axis_offsets(height, size, step):
            for col, w in _axis_offsets(width, size, step):
                out.append(TileWindow(level=level, col=col, row=row, width=w, height=h))
        if size >= width and size >= height:
            break
    return out


def _simplify(points: np.ndarray, tol: float) -> np.ndarray:
    """Douglas-Peucker on one densified edge: keep only the points that carry curvature."""
    if len(points) <= 2:
        return points
    a, b = points[0], points[-1]
    ab = b - a
    norm = float(np.hypot(*ab))
    rel = points[1:-1] - a
    if norm == 0.0:
        dist = np.hypot(rel[:, 0], rel[:, 1])
    else:
        dist = np.abs(ab[0] * rel[:, 1] - ab[1] * rel[:, 0]) / norm
    i = int(np.argmax(dist))
    if dist[i] <= tol:
        return np.stack([a, b])
    left = _simplify(points[: i + 2], tol)
    right = _simplify(points[i + 1 :], tol)
    return np.concatenate([left[:-1], right])


def _crs_string(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()


class SceneReader:
    """Reads the tiles of one scene; a context manager.

    Raises :class:`BadInput` naming the file when it cannot be tiled: missing, not a raster,
    empty or too small, complex pixels, no usable bands, or no valid pixel at all.

    Scene attributes, set on opening: ``path, width, height, crs`` (``EPSG:n`` or WKT, None
    without one), ``dtype``, ``band_indexes`` (the 3 bands shown as RGB), ``gsd`` (ground
    metres per pixel), ``acquired`` (ISO time or None), ``footprint``/``bbox`` (WGS84, None
    without a CRS), ``style`` (the :class:`~ftfsearch.raster.RasterStyle` every tile is read
    with: bands, 8-bit stretch, masks) and ``warnings`` (what the user should know, without the
    path: the caller names the file).
    """

    def __init__(self, path: str | Path, spec: TilingSpec) -> None:
        # a URL stays a string (a Path would fold its '//'); rasterio reads it through /vsicurl/
        self.path: str | Path = path if is_url(path) else Path(path)
        self._env = gdal_options(self.path)
        self.spec = spec
        self.warnings: list[str] = []
        self._local = _Local()
        self._handles: list[DatasetReader] = []
        self._lock = threading.Lock()
        self._closed = False
        self._windows: list[TileWindow] | None = None
        if isinstance(self.path, Path):
            if not self.path.exists():
                raise BadInput(f"{self.path}: no such file")
            if self.path.is_dir():
                raise BadInput(f"{self.path}: is a directory, not a raster file (pass its files)")
            if self.path.stat().st_size == 0:
                raise BadInput(f"{self.path}: the file is empty")
        try:
            with rasterio.Env(**self._env):
                self._inspect(self._dataset())
        except BaseException:
            self.close()
            raise

    # -- opening and scene-level decisions ---------------------------------------------------

    def _open(self) -> DatasetReader:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                return rasterio.open(self.path)
        except RasterioError as exc:
            if self._env:
                raise BadInput(f"{self.path}: cannot be read over HTTP ({exc}); check the URL") from exc
            raise BadInput(
                f"{self.path}: not a readable raster ({exc}); check the file, or convert it "
                "with gdal_translate"
            ) from exc

    def _dataset(self) -> DatasetReader:
        """This thread's dataset handle, opened on first use (GDAL handles are not thread-safe)."""
        if self._closed:
            raise RuntimeError(f"SceneReader for {self.path} is closed")
        ds = self._local.dataset
        if ds is None:
            ds = self._open()
            with self._lock:
                self._handles.append(ds)
            self._local.dataset = ds
        return ds

    def _inspect(self, ds: DatasetReader) -> None:
        self.width: int = ds.width
        self.height: int = ds.height
        require_bands(ds, self.path)
        if self.width == 0 or self.height == 0:
            raise BadInput(f"{self.path}: has zero size ({self.width}x{self.height} pixels)")
        if min(self.width, self.height) < MIN_SCENE_SIDE:
            raise BadInput(
                f"{self.path}: {self.width}x{self.height} pixels is too small to tile "
                f"(each side needs at least {MIN_SCENE_SIDE} pixels)"
            )
        # refuses complex pixels, bands out of range and scenes without a valid pixel
        self.style: RasterStyle = choose_style(
            ds, self.spec.bands, source=self.path, require_valid=True
        )
        self.band_indexes: tuple[int, int, int] = self.style.band_indexes
        self.dtype: str = self.style.dtype
        self.warnings.extend(self.style.warnings)

        self._transform: Affine = ds.transform
        self._crs: CRS | None = ds.crs if ds.crs else None
        if self._crs is None:
            why = "only ground control points" if ds.gcps[0] else "no CRS"
            self.warnings.append(
                f"{why}: footprints are in pixel coordinates and the scene is excluded from "
                "bbox filters"
            )
        self.crs: str | None = _crs_string(self._crs) if self._crs is not None else None
        self.gsd: float | None = self._scene_gsd(ds)
        self.acquired: str | None = self._acquired(ds)
        geo = self._geometry(TileWindow(1, 0, 0, self.width, self.height))
        self.footprint: list[list[float]] | None = geo.footprint
        self.bbox: tuple[float, float, float, float] | None = geo.bbox
        self.native_bounds = geo.native_bounds
        for message in self.warnings:
            log.info("%s: %s", self.path, message)

    def _scene_gsd(self, ds: DatasetReader) -> float | None:
        """Ground metres per scene pixel at the scene centre (geometric mean of x and y).

        Measured on the ellipsoid, not in CRS units: Web Mercator "metres" are 1/cos(lat)
        ground metres, degrees are not metres at all, and UTM grid metres are off by the
        scale factor. None without a CRS.
        """
        if self._crs is None:
            return None
        a, b, c, d, e, f = self._transform[:6]
        cols = np.array([0.0, 1.0, 0.0]) + self.width / 2
        rows = np.array([0.0, 0.0, 1.0]) + self.height / 2
        try:
            lons, lats = transform_xy(
                self._crs, WGS84, (a * cols + b * rows + c).tolist(),
                (d * cols + e * rows + f).tolist(),
            )
            dx = _GEOD.inv(lons[0], lats[0], lons[1], lats[1])[2]
            dy = _GEOD.inv(lons[0], lats[0], lons[2], lats[2])[2]
        except (RasterioError, ValueError) as exc:
            self.warnings.append(f"ground sample distance unknown ({exc})")
            return None
        gsd = math.sqrt(dx * dy)
        return gsd if math.isfinite(gsd) and gsd > 0 else None

    def _acquired(self, ds: DatasetReader) -> str | None:
        """Acquisition time (ISO 8601 UTC) from imagery metadata, else the TIFF date tag."""
        candidates = [ds.tags(ns="IMAGERY").get("ACQUISITIONDATETIME"), ds.tags().get(
            "ACQUISITIONDATETIME"), ds.tags().get("TIFFTAG_DATETIME")]
        for value in candidates:
            if value:
                when = read_time(value)
                if when is not None:
                    return iso_utc(when)
        return None

    # -- tiles -------------------------------------------------------------------------------

    def windows(self) -> list[TileWindow]:
        """Every window of every level, deterministic order; no pixel is read."""
        if self._windows is None:
            self._windows = plan_windows(self.width, self.height, self.spec)
        return list(self._windows)

    def read(self, window: TileWindow) -> Tile | None:
        """The tile of a window, or None when it is mostly nodata (see ``max_nodata``)."""
        # an Env routes GDAL's messages to logging; outside one GDAL prints them on stderr
        with rasterio.Env(**self._env):
            return self._read(window)

    def _read(self, window: TileWindow) -> Tile | None:
        ds = self._dataset()
        level = window.level
        size = self.spec.tile_size
        out_h = min(size, max(1, round(window.height / level)))
        out_w = min(size, max(1, round(window.width / level)))
        win = Window(window.col, window.row, window.width, window.height)
        style = self.style
        try:
            data, valid = style.read(ds, win, (out_h, out_w), style.resampling(level > 1))
        except RasterioError as exc:
            raise BadInput(
                f"{self.path}: cannot read window {window} ({exc}); the file may be damaged"
            ) from exc
        valid_fraction = float(valid.mean())
        if valid_fraction == 0.0 or 1.0 - valid_fraction > self.spec.max_nodata:
            return None
        pixels = np.zeros((size, size, 3), dtype=np.uint8)
        pixels[:out_h, :out_w] = style.to_rgb(data, valid)
        geo = self._geometry(window)
        return Tile(
            window=window,
            pixels=pixels,
            valid_fraction=valid_fraction,
            native_bounds=geo.native_bounds,
            footprint=geo.footprint,
            bbox=geo.bbox,
            center=geo.center,
            gsd=self.gsd * level if self.gsd is not None else None,
        )

    # -- geometry ----------------------------------------------------------------------------

    def _geometry(self, window: TileWindow) -> _Geo:
        """Native bounds, and the WGS84 ring, bbox and centre from densified window edges."""
        c0, r0 = window.col, window.row
        c1, r1 = c0 + window.width, r0 + window.height
        if self._crs is None:
            return _Geo(native_bounds=(float(c0), float(r0), float(c1), float(r1)))
        t = np.linspace(0.0, 1.0, EDGE_POINTS)
        edges = [
            (c0 + (c1 - c0) * t, np.full_like(t, r0)),  # top, left to right
            (np.full_like(t, c1), r0 + (r1 - r0) * t),  # right, top to bottom
            (c1 - (c1 - c0) * t, np.full_like(t, r1)),  # bottom, right to left
            (np.full_like(t, c0), r1 - (r1 - r0) * t),  # left, bottom to top
        ]
        cols = np.concatenate([e[0] for e in edges] + [np.array([(c0 + c1) / 2])])
        rows = np.concatenate([e[1] for e in edges] + [np.array([(r0 + r1) / 2])])
        a, b, c, d, e, f = self._transform[:6]
        xs = a * cols + b * rows + c
        ys = d * cols + e * rows + f
        corners_x, corners_y = xs[:-1], ys[:-1]
        native = (
            float(corners_x.min()),
            float(corners_y.min()),
            float(corners_x.max()),
            float(corners_y.max()),
        )
        try:
            lons, lats = transform_xy(self._crs, WGS84, xs.tolist(), ys.tolist())
        except RasterioError as exc:
            log.debug("%s: footprint of %s not reprojectable: %s", self.path, window, exc)
            return _Geo(native_bounds=native)
        lon = np.asarray(lons, dtype=np.float64)
        lat = np.clip(np.asarray(lats, dtype=np.float64), -90.0, 90.0)
        finite = np.isfinite(lon) & np.isfinite(lat)
        if not finite[:-1].any():
            return _Geo(native_bounds=native)
        center_lon, center_lat = float(lon[-1]), float(lat[-1])
        ring_lon, ring_lat = lon[:-1][finite[:-1]], lat[:-1][finite[:-1]]
        crosses = bool(np.any(np.abs(np.diff(ring_lon)) > 180.0))
        if crosses:
            # unwrap across the antimeridian: the ring stays continuous (lon may pass 180)
            ring_lon = np.rad2deg(np.unwrap(np.deg2rad(ring_lon)))
            west, east = float(ring_lon.min()), float(ring_lon.max())
            if east - west >= 360.0:
                west, east = -180.0, 180.0
            else:
                west = (west + 180.0) % 360.0 - 180.0
                east = (east + 180.0) % 360.0 - 180.0
        else:
            ring_lon = np.clip(ring_lon, -180.0, 180.0)
            west, east = float(ring_lon.min()), float(ring_lon.max())
        bbox = (
            round(west, COORD_DECIMALS),
            round(float(ring_lat.min()), COORD_DECIMALS),
            round(east, COORD_DECIMALS),
            round(float(ring_lat.max()), COORD_DECIMALS),
        )
        ring = self._ring(ring_lon, ring_lat, finite[:-1])
        center = None
        if math.isfinite(center_lon) and math.isfinite(center_lat):
            center = (
                round(max(-180.0, min(180.0, center_lon)), COORD_DECIMALS),
                round(center_lat, COORD_DECIMALS),
            )
        return _Geo(native_bounds=native, footprint=ring, bbox=bbox, center=center)

    @staticmethod
    def _ring(lon: np.ndarray, lat: np.ndarray, finite: np.ndarray) -> list[list[float]]:
        """A closed ring with the points on straight stretches dropped."""
        points = np.stack([lon, lat], axis=1)
        if finite.all():
            parts = [
                _simplify(points[i * EDGE_POINTS : (i + 1) * EDGE_POINTS], FOOTPRINT_TOLERANCE_DEG)
                for i in range(4)
            ]
            points = np.concatenate([p if i == 0 else p[1:] for i, p in enumerate(parts)])
        keep = np.ones(len(points), dtype=bool)
        keep[1:] = np.any(np.abs(np.diff(points, axis=0)) > 0, axis=1)
        points = points[keep]
        ring = [[round(float(x), COORD_DECIMALS), round(float(y), COORD_DECIMALS)] for x, y in points]
        if ring[0] != ring[-1]:
            ring.append(list(ring[0]))
        return ring

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Closes every thread's dataset handle."""
        with self._lock:
            self._closed = True
            handles, self._handles = self._handles, []
        for ds in handles:
            ds.close()
        self._local.dataset = None

    def __enter__(self) -> "SceneReader":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
