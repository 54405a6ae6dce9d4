"""Image chips and scene previews, read from the source rasters on demand.

A chip is one result's tile as PNG with its matched region outlined; a preview is a whole scene,
low resolution, warped to Web Mercator so a Leaflet image overlay sits exactly on the map.
Both are windowed/decimated reads (memory bounded by the output size, never the scene) and both
are cached in bounded LRU caches by :class:`ChipRenderer`, which the web server and
``ftfsearch query --chips`` share.

Band choice, stretch and masks are :mod:`ftfsearch.raster`'s, the same code ``ingest.tiling``
uses: a chip shows exactly the pixels the model was given for that tile.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Hashable, Mapping, Sequence, TypeVar

import numpy as np
import rasterio
from affine import Affine
from PIL import Image, ImageDraw
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from ftfsearch import raster
from ftfsearch.errors import BadInput, SourceUnavailable
from ftfsearch.model.regions import region_in_window
from ftfsearch.raster import WGS84, RasterStyle, gdal_options, is_url
from ftfsearch.search import Result
from ftfsearch.store.base import SceneRecord, Store

log = logging.getLogger(__name__)

MAX_CHIP_SIDE = 1024
"""Largest chip side served (a level-4 tile of 256 is 1024 scene pixels)."""
PREVIEW_MAX_SIDE = 512
"""Longest side of a scene preview: an overlay a map shows whole, never a full-size copy (a 934 x 723
drone scene at full size was a 1.2 MB PNG); zoomed in, the chips show the detail."""
WEB_MERCATOR = "EPSG:3857"
"""The CRS of Leaflet's map: previews are warped to it."""
WEB_MERCATOR_MAX_LAT = 85.0511287798
PNG_COMPRESS_LEVEL = 3
"""Fast zlib level: chips are made per request; level 9 costs ~4x the time for ~10% fewer bytes."""
OUTLINE_RGB = (255, 214, 0)
HALO_RGB = (0, 0, 0)


def _open(path: str | Path) -> DatasetReader:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.Env(**gdal_options(path)):
                return rasterio.open(path)
    except (RasterioError, OSError) as exc:
        raise SourceUnavailable(
            f"{path}: the scene's source raster cannot be read ({exc}); it was moved, deleted or "
            "changed since ingest: re-ingest it from where it is now, or 'ftfsearch drop' the scene"
        ) from exc


def choose_style(ds: DatasetReader, bands: Sequence[int] | None = None) -> RasterStyle:
    """:func:`ftfsearch.raster.choose_style` for a source that ingest accepted: a source that no
    longer fits (bands gone, damaged) is :class:`SourceUnavailable`, not the user's bad input."""
    try:
        return raster.choose_style(ds, bands)
    except BadInput as exc:
        raise SourceUnavailable(
            f"{exc.message}; the file changed since ingest: re-ingest it, or 'ftfsearch drop' the scene"
        ) from exc


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


# -- chips ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChipSpec:
    """What one chip shows: a tile's window of a source raster and, optionally, its matched region."""

    path: str
    col: int
    row: int
    width: int
    height: int
    level: int = 1
    tile_size: int | None = None
    """Pixels per side of the tile the model saw; None (stores before it was recorded): the window."""
    bands: tuple[int, ...] | None = None
    """The scene's ``--bands`` (from its tiling spec); None chooses as ingest does."""
    region: tuple[float, float, float, float] | None = None
    """``(x0, y0, x1, y1)`` fractions of the tile (as ``Result.region``); None draws no outline."""
    size: int | None = None
    """Long side of the PNG; None: the tile's own resolution. Never above the window's scene pixels."""

    @classmethod
    def from_payload(
        cls,
        payload: Mapping[str, Any],
        *,
        bands: Sequence[int] | None = None,
        region: Sequence[float] | None = None,
        size: int | None = None,
    ) -> "ChipSpec":
        """From a stored tile payload (``path``, ``window``, ``level``, ``tile_size``)."""
        window = payload.get("window") or {}
        try:
            return cls(
                path=str(payload["path"]),
                col=int(window["col"]),
                row=int(window["row"]),
                width=int(window["width"]),
                height=int(window["height"]),
                level=int(payload.get("level") or 1),
                tile_size=int(payload["tile_size"]) if payload.get("tile_size") else None,
                bands=tuple(int(b) for b in bands) if bands else None,
                region=None if region is None else tuple(float(v) for v in region[:4]),  # type: ignore[arg-type]
                size=size,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(f"tile payload lacks a source path or pixel window ({exc}); re-ingest the scene") from exc

    @classmethod
    def from_result(cls, result: Result, *, bands: Sequence[int] | None = None, size: int | None = None) -> "ChipSpec":
        payload = {**result.payload, "path": result.path, "window": result.window, "level": result.level}
        return cls.from_payload(payload, bands=bands, region=result.region, size=size)

    def output_shape(self) -> tuple[int, int]:
        """(height, width) of the PNG: the tile's resolution (as ingest read it) or ``size``."""
        if self.width < 1 or self.height < 1:
            raise BadInput(f"chip window {self.width}x{self.height}: must be at least 1x1 pixel")
        long_window = max(self.width, self.height)
        if self.size is None:
            long_out = max(1, round(long_window / self.level))
            if self.tile_size:
                long_out = min(self.tile_size, long_out)
        else:
            if not 1 <= self.size <= MAX_CHIP_SIDE:
                raise BadInput(f"size {self.size}: must be between 1 and {MAX_CHIP_SIDE} pixels")
            long_out = self.size
        long_out = min(long_out, long_window)
        scale = long_out / long_window
        return max(1, round(self.height * scale)), max(1, round(self.width * scale))

    def region_pixels(self, out_h: int, out_w: int) -> tuple[int, int, int, int] | None:
        """The region in chip pixels. Region fractions are of the square tile the model saw
        (``tile_size`` pixels per side, each ``level`` scene pixels), so they map through it."""
        if self.region is None:
            return None
        x0, y0, x1, y1 = region_in_window(self.region, self.width, self.height, self.tile_size, self.level)
        sx, sy = out_w / self.width, out_h / self.height
        left, top = int(round(x0 * sx)), int(round(y0 * sy))
        right, bottom = int(round(x1 * sx)) - 1, int(round(y1 * sy)) - 1
        left, top = max(0, min(left, out_w - 1)), max(0, min(top, out_h - 1))
        right, bottom = max(left, min(right, out_w - 1)), max(top, min(bottom, out_h - 1))
        return left, top, right, bottom


def draw_region(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Outline ``box`` (inclusive chip pixels) in yellow with a dark halo so it shows on any ground."""
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    h, w = pixels.shape[:2]
    width = max(2, round(max(h, w) / 128))
    left, top, right, bottom = box
    draw.rectangle(
        (max(0, left - 1), max(0, top - 1), min(w - 1, right + 1), min(h - 1, bottom + 1)),
        outline=HALO_RGB, width=width + 2,
    )
    draw.rectangle((left, top, right, bottom), outline=OUTLINE_RGB, width=width)
    return np.asarray(image)


def render_chip_pixels(spec: ChipSpec, ds: DatasetReader, style: RasterStyle) -> np.ndarray:
    """``uint8 [h, w, 3]`` of the chip with the region drawn; one windowed, resampled read."""
    if spec.col < 0 or spec.row < 0 or spec.col + spec.width > ds.width or spec.row + spec.height > ds.height:
        raise SourceUnavailable(
            f"{spec.path}: window {spec.col},{spec.row},{spec.width},{spec.height} lies outside the "
            f"{ds.width}x{ds.height} raster; the file changed since ingest: re-ingest it"
        )
    out_h, out_w = spec.output_shape()
    window = Window(spec.col, spec.row, spec.width, spec.height)
    downsampled = out_w < spec.width or out_h < spec.height
    try:
        data, valid = style.read(ds, window, (out_h, out_w), style.resampling(downsampled))
    except RasterioError as exc:
        raise SourceUnavailable(f"{spec.path}: cannot read window ({exc}); the file may be damaged") from exc
    pixels = style.to_rgb(data, valid)
    box = spec.region_pixels(out_h, out_w)
    return pixels if box is None else draw_region(pixels, box)


# -- previews ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewGeometry:
    """Where a scene preview goes: a Web Mercator grid and its WGS84 edges (for ``L.imageOverlay``)."""

    bounds: tuple[float, float, float, float]
    """``(west, south, east, north)`` WGS84 of the image edges (latitudes clipped to Web Mercator)."""
    width: int
    height: int
    transform: Any
    """Affine of the Web Mercator grid."""


def preview_geometry(ds: DatasetReader, max_side: int = PREVIEW_MAX_SIDE) -> PreviewGeometry | None:
    """The Web Mercator grid of a scene's preview; None when it has no CRS or crosses the antimeridian."""
    if ds.crs is None:
        return None
    try:
        west, south, east, north = transform_bounds(ds.crs, WGS84, *ds.bounds, densify_pts=21)
    except (RasterioError, ValueError) as exc:
        log.info("%s: no preview: bounds not reprojectable (%s)", ds.name, exc)
        return None
    if not all(math.isfinite(v) for v in (west, south, east, north)) or west >= east:
        log.info("%s: no preview: the scene crosses the antimeridian or has no WGS84 extent", ds.name)
        return None
    south = max(south, -WEB_MERCATOR_MAX_LAT)
    north = min(north, WEB_MERCATOR_MAX_LAT)
    if south >= north:
        return None
    xs, ys = warp_transform(WGS84, WEB_MERCATOR, [west, east], [south, north])
    x0, x1 = xs
    y0, y1 = ys
    aspect = (x1 - x0) / (y1 - y0)
    long_side = max(1, min(max_side, max(ds.width, ds.height)))
    if aspect >= 1:
        width, height = long_side, max(1, round(long_side / aspect))
    else:
        width, height = max(1, round(long_side * aspect)), long_side
    return PreviewGeometry(
        bounds=(float(west), float(south), float(east), float(north)),
        width=width,
        height=height,
        transform=Affine((x1 - x0) / width, 0.0, x0, 0.0, -(y1 - y0) / height, y1),
    )


@dataclass(frozen=True)
class Preview:
    """A scene preview: RGBA PNG (transparent outside the scene) and the WGS84 edges of the image."""

    png: bytes
    bounds: tuple[float, float, float, float]


def render_preview(
    path: str | Path, bands: Sequence[int] | None = None, max_side: int = PREVIEW_MAX_SIDE
) -> Preview | None:
    """A low-resolution scene image warped to Web Mercator; None when it cannot sit on a map (no CRS)."""
    with _open(path) as ds:
        geometry = preview_geometry(ds, max_side)
        if geometry is None:
            return None
        style = choose_style(ds, bands)
        resampling = Resampling.nearest if style.palette is not None else Resampling.bilinear
        try:
            with WarpedVRT(
                ds, crs=WEB_MERCATOR, transform=geometry.transform, width=geometry.width,
                height=geometry.height, resampling=resampling,
            ) as vrt:
                data, valid = style.read(vrt, None, (geometry.height, geometry.width))
        except RasterioError as exc:
            raise SourceUnavailable(f"{path}: cannot warp a preview ({exc})") from exc
    rgb = style.to_rgb(data, valid)
    rgba = np.dstack([rgb, np.where(valid, 255, 0).astype(np.uint8)])
    return Preview(png=_png(rgba), bounds=geometry.bounds)


# -- matched regions on the map ------------------------------------------------------------------

REGION_EDGE_POINTS = 5
"""Points per region edge reprojected to WGS84 (edges of projected boxes curve slightly)."""


def region_footprints(results: Sequence[Result]) -> list[list[list[float]] | None]:
    """The WGS84 ring ``[[lon, lat], ...]`` of each result's matched region, for the map.

    Computed from the tile's stored CRS and native bounds, without reading the file: exact for
    north-up rasters (nearly every GeoTIFF), an envelope-based approximation for rotated
    geotransforms. None where a result has no region (no rerank) or no CRS."""
    out: list[list[list[float]] | None] = [None] * len(results)
    t = np.linspace(0.0, 1.0, REGION_EDGE_POINTS)[:-1]
    by_crs: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for i, r in enumerate(results):
        crs, bounds = r.payload.get("crs"), r.payload.get("native_bounds")
        if r.region is None or r.bbox is None or not crs or not bounds or len(bounds) != 4:
            continue
        minx, miny, maxx, maxy = (float(v) for v in bounds)
        w, h = max(1, r.window["width"]), max(1, r.window["height"])
        px0, py0, px1, py1 = region_in_window(r.region, w, h, r.payload.get("tile_size"), r.level)
        fx0, fy0, fx1, fy1 = px0 / w, py0 / h, px1 / w, py1 / h
        x0, x1 = minx + fx0 * (maxx - minx), minx + fx1 * (maxx - minx)
        y0, y1 = maxy - fy0 * (maxy - miny), maxy - fy1 * (maxy - miny)
        xs = np.concatenate([x0 + (x1 - x0) * t, np.full_like(t, x1), x1 - (x1 - x0) * t, np.full_like(t, x0)])
        ys = np.concatenate([np.full_like(t, y0), y0 + (y1 - y0) * t, np.full_like(t, y1), y1 - (y1 - y0) * t])
        by_crs.setdefault(str(crs), []).append((i, xs, ys))
    for crs, items in by_crs.items():
        try:
            lon, lat = raster.transform_xy(
                crs, WGS84,
                np.concatenate([x for _, x, _ in items]).tolist(), np.concatenate([y for _, _, y in items]).tolist(),
            )
        except (RasterioError, ValueError) as exc:
            log.info("region footprints in %s: not reprojectable (%s)", crs[:80], exc)
            continue
        lons, lats = np.asarray(lon), np.asarray(lat)
        start = 0
        for i, xs, _ in items:
            ring_lon, ring_lat = lons[start : start + len(xs)], lats[start : start + len(xs)]
            start += len(xs)
            if not (np.isfinite(ring_lon).all() and np.isfinite(ring_lat).all()) or np.ptp(ring_lon) > 180:
                continue
            ring = [[round(float(x), 8), round(float(y), 8)] for x, y in zip(ring_lon, ring_lat)]
            out[i] = ring + [ring[0]]
    return out


# -- caching renderer ----------------------------------------------------------------------------

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A thread-safe LRU cache bounded by total size (``sizeof``) and by entry count."""

    def __init__(self, max_bytes: int, max_items: int, sizeof: Callable[[V], int]) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._sizeof = sizeof
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: K, value: V) -> None:
        size = self._sizeof(value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes or len(self._items) > self.max_items:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"items": len(self._items), "bytes": self._bytes, "hits": self.hits, "misses": self.misses}

    def __len__(self) -> int:
        return len(self._items)


def _file_key(path: str) -> tuple[str, int, int]:
    """Identity of a file's current content for cache keys: a rewritten file is not served stale
    (a URL is its own key: asking the server each time would cost a request per chip)."""
    if is_url(path):
        return path, 0, 0
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceUnavailable(
            f"{path}: the scene's source raster is gone ({exc.strerror}); re-ingest it from where it "
            "is now, or 'ftfsearch drop' the scene"
        ) from exc
    return path, st.st_mtime_ns, st.st_size


class ChipRenderer:
    """Renders chips and previews with bounded caches. Thread-safe: every render opens its own
    dataset handle (GDAL handles are not), styles are cached per file and band choice."""

    def __init__(self, chip_cache_bytes: int = 64 << 20, preview_cache_bytes: int = 64 << 20) -> None:
        self.chips: LruCache[Hashable, bytes] = LruCache(chip_cache_bytes, 4096, len)
        # Previews and geometries are cached as 1-tuples: a scene without one (no CRS) is cached too.
        self.previews: LruCache[Hashable, tuple[Preview | None]] = LruCache(
            preview_cache_bytes, 256, lambda p: 64 if p[0] is None else len(p[0].png)
        )
        self.geometries: LruCache[Hashable, tuple[PreviewGeometry | None]] = LruCache(1 << 20, 1024, lambda g: 64)
        self.styles: LruCache[Hashable, RasterStyle] = LruCache(1 << 20, 256, lambda s: 256)

    def _style(self, ds: DatasetReader, file_key: tuple[str, int, int], bands: tuple[int, ...] | None) -> RasterStyle:
        key = (file_key, bands)
        style = self.styles.get(key)
        if style is None:
            style = choose_style(ds, bands)
            self.styles.put(key, style)
        return style

    def chip(self, spec: ChipSpec) -> bytes:
        """The chip's PNG bytes, from the cache or one windowed read."""
        spec.output_shape()  # validates size before touching the file
        key = (_file_key(spec.path), spec)
        png = self.chips.get(key)
        if png is None:
            with _open(spec.path) as ds:
                png = _png(render_chip_pixels(spec, ds, self._style(ds, key[0], spec.bands)))
            self.chips.put(key, png)
        return png

    def preview(
        self, path: str, bands: Sequence[int] | None = None, max_side: int = PREVIEW_MAX_SIDE
    ) -> Preview | None:
        """The scene's preview (None without a CRS), from the cache or one decimated warp."""
        key = (_file_key(path), tuple(bands) if bands else None, max_side)
        cached = self.previews.get(key)
        if cached is None:
            cached = (render_preview(path, bands, max_side),)
            self.previews.put(key, cached)
        return cached[0]

    def preview_bounds(self, path: str, max_side: int = PREVIEW_MAX_SIDE) -> tuple[float, float, float, float] | None:
        """Where the preview of ``path`` goes on the map, without reading pixels."""
        key = (_file_key(path), max_side)
        cached = self.geometries.get(key)
        if cached is None:
            with _open(path) as ds:
                cached = (preview_geometry(ds, max_side),)
            self.geometries.put(key, cached)
        return None if cached[0] is None else cached[0].bounds

    def stats(self) -> dict[str, dict[str, int]]:
        return {"chips": self.chips.stats(), "previews": self.previews.stats()}


# -- query --chips -------------------------------------------------------------------------------


def recorded_bands(record: SceneRecord | None) -> tuple[int, ...] | None:
    """The scene's ``--bands`` as its ingest recorded them in the tiling spec; None (no record,
    or none given): chosen from the file, as ingest chose them."""
    bands = (record.tiling or {}).get("bands") if record is not None else None
    return tuple(int(b) for b in bands) if bands else None


def scene_bands(store: Store, scene_ids: Sequence[str]) -> dict[str, tuple[int, ...] | None]:
    """Each scene's :func:`recorded_bands`."""
    return {sid: recorded_bands(store.get_scene(sid)) for sid in dict.fromkeys(scene_ids)}


@dataclass
class ChipsWritten:
    paths: list[Path]
    skipped: list[str]
    """One message per result whose chip could not be made (source raster gone, ...)."""


def chip_filename(result: Result) -> str:
    """``001_<scene>_<id8>.png``: sorts by rank, readable, safe on every filesystem."""
    scene = re.sub(r"[^A-Za-z0-9._-]+", "_", result.scene_id)[:60].strip("._") or "scene"
    return f"{result.rank:03d}_{scene}_{result.id[:8]}.png"


def _chips_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(
            f"`chips` {out_dir}: cannot create the directory ({exc.strerror}); choose a writable path"
        ) from exc


def _write_png(out_dir: Path, name: str, png: bytes) -> Path:
    """Write atomically (a reader never sees half a PNG)."""
    target = out_dir / name
    try:
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(png)
        tmp.replace(target)
    except OSError as exc:
        raise BadInput(f"`chips` {out_dir}: cannot write {target.name} ({exc.strerror})") from exc
    return target


def write_chips(
    results: Sequence[Result],
    out_dir: Path,
    bands: Mapping[str, tuple[int, ...] | None] | None = None,
    renderer: ChipRenderer | None = None,
    size: int | None = None,
) -> ChipsWritten:
    """Write one PNG per result into ``out_dir`` (the same chips the web page shows)."""
    _chips_dir(out_dir)
    renderer = renderer or ChipRenderer()
    bands = bands or {}
    written = ChipsWritten(paths=[], skipped=[])
    for result in results:
        spec = ChipSpec.from_result(result, bands=bands.get(result.scene_id), size=size)
        try:
            png = renderer.chip(spec)
        except SourceUnavailable as exc:
            written.skipped.append(f"result {result.rank} ({result.id}): {exc}")
            log.warning("%s", exc)
            continue
        written.paths.append(_write_png(out_dir, chip_filename(result), png))
    return written


PAIR_SIDE = 256
"""Each half of a before/after pair, in pixels (both the same size, so they compare)."""
PAIR_GAP = 6


def write_pair_chips(
    pairs: Sequence[tuple[int, Result, Result]],
    out_dir: Path,
    bands: Mapping[str, tuple[int, ...] | None] | None = None,
) -> ChipsWritten:
    """One PNG per ``(rank, before, after)``: the two tiles side by side, before on the left, each
    with its matched region outlined (``change --chips``)."""
    _chips_dir(out_dir)
    bands = bands or {}
    written = ChipsWritten(paths=[], skipped=[])
    for rank, before, after in pairs:
        halves = []
        try:
            for r in (before, after):
                spec = ChipSpec.from_result(r, bands=bands.get(r.scene_id), size=PAIR_SIDE)
                with _open(spec.path) as ds:
                    halves.append(render_chip_pixels(spec, ds, choose_style(ds, spec.bands)))
        except SourceUnavailable as exc:
            written.skipped.append(f"place {rank} ({after.id}): {exc}")
            log.warning("%s", exc)
            continue
        h = max(p.shape[0] for p in halves)
        canvas = np.full((h, halves[0].shape[1] + PAIR_GAP + halves[1].shape[1], 3), 255, dtype=np.uint8)
        canvas[: halves[0].shape[0], : halves[0].shape[1]] = halves[0]
        canvas[: halves[1].shape[0], halves[0].shape[1] + PAIR_GAP:] = halves[1]
        scene = re.sub(r"[^A-Za-z0-9._-]+", "_", after.scene_id)[:60].strip("._") or "scene"
        written.paths.append(_write_png(out_dir, f"{rank:03d}_{scene}_{after.id[:8]}_pair.png", _png(canvas)))
    return written
