"""Band-per-file products (Sentinel-2, Landsat) as one scene, through a GDAL VRT.

``ingest --stack B04.tif,B03.tif,B02.tif`` writes a VRT whose bands are the files in the order
given (so the first three are shown as red, green, blue), on the grid of the finest file: a
coarser band (Sentinel-2's 20 m bands beside 10 m ones) is resampled bilinearly by GDAL at read
time. The VRT is the scene's path, so tiling, chips and previews all read the same stack.

It is written once per distinct stack, as ``<stack dir>/<hash>/<scene id>.vrt`` where the hash
covers the VRT's text, which records each band file's path and content fingerprint: the same
stack always gets the same file and scene fingerprint (a re-run resumes), an edited band file
gives another. Files that do not line up (another CRS, another extent, rotated grids) are
refused: reproject or clip them first, as a mosaic tool would silently do otherwise.

A STAC item's separate red, green and blue assets (:mod:`ingest.stac`) are stacked the same way;
band files over HTTP(S) are VRT sources through ``/vsicurl/``, read with the timeouts and retries
of every remote read.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from ftfsearch.errors import BadInput
from ftfsearch.raster import gdal_options, is_url
from ingest.scenes import default_scene_id, fingerprint

EXTENT_TOLERANCE = 0.5
"""Band extents may differ by this share of the coarsest band's pixel (rounding of writers)."""
_COLOURS = ("Red", "Green", "Blue")


@dataclass(frozen=True)
class _Band:
    path: Path | str
    """A local file, or an http(s) URL."""
    width: int
    height: int
    transform: rasterio.Affine
    crs: rasterio.crs.CRS | None
    dtype: str
    nodata: float | None
    description: str
    tags: dict[str, str]
    fingerprint: str

    @property
    def name(self) -> str:
        return _name(self.path)

    @property
    def source(self) -> str:
        """The VRT's name for the file: GDAL reads a URL through ``/vsicurl/``."""
        return f"/vsicurl/{self.path}" if is_url(self.path) else str(self.path)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform
        return (t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f)


def _name(path: Path | str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] if is_url(path) else Path(path).name


def parse_stack(value: str) -> list[Path]:
    """``B04.tif,B03.tif,B02.tif`` -> absolute paths (each an existing file)."""
    names = [v.strip() for v in value.split(",")]
    if not value.strip() or any(not n for n in names):
        raise BadInput(f"`stack` {value!r}: give band files separated by commas, e.g. B04.tif,B03.tif,B02.tif")
    paths = []
    for name in names:
        p = Path(name).expanduser()
        if not p.is_file():
            raise BadInput(f"`stack` {value!r}: {name}: no such file")
        paths.append(p.resolve())
    if len(set(paths)) != len(paths):
        raise BadInput(f"`stack` {value!r}: a file is named twice")
    return paths


def _read_band(path: Path | str, what: str) -> _Band:
    """One band file's grid and fingerprint; ``what`` names the stack in messages."""
    name = _name(path)
    fp = fingerprint(path)  # first: a missing URL is named as such (HTTP 404), not as an unreadable raster
    try:
        with warnings.catch_warnings(), rasterio.Env(**gdal_options(path)):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                if ds.count != 1:
                    raise BadInput(
                        f"{what}: {name} has {ds.count} bands; each file of a stack is one "
                        "band (pass a multi-band raster as a path, with `bands`)"
                    )
                if "complex" in ds.dtypes[0]:
                    raise BadInput(f"{what}: {name} has complex pixels; convert to amplitude first")
                t = ds.transform
                if t.b != 0 or t.d != 0:
                    raise BadInput(f"{what}: {name} has a rotated grid; warp it north-up first (gdalwarp)")
                return _Band(
                    path=path, width=ds.width, height=ds.height, transform=t, crs=ds.crs or None,
                    dtype=ds.dtypes[0], nodata=ds.nodata, description=ds.descriptions[0] or "",
                    tags={k: v for k, v in ds.tags().items() if k in ("ACQUISITIONDATETIME", "TIFFTAG_DATETIME")},
                    fingerprint=fp,
                )
    except RasterioError as exc:
        raise BadInput(f"{what}: {name} is not a readable raster ({exc})") from exc


def _check_aligned(bands: list[_Band], what: str) -> None:
    first = bands[0]
    for b in bands[1:]:
        if (b.crs is None) != (first.crs is None) or (b.crs is not None and b.crs != first.crs):
            raise BadInput(
                f"{what}: {b.name} is in {b.crs or 'no CRS'}, {first.name} in "
                f"{first.crs or 'no CRS'}; reproject the bands to one CRS first (gdalwarp -t_srs)"
            )
    coarsest = max(max(abs(b.transform.a), abs(b.transform.e)) for b in bands)
    tol = EXTENT_TOLERANCE * coarsest
    for b in bands[1:]:
        if any(abs(x - y) > tol for x, y in zip(b.bounds, first.bounds)):
            raise BadInput(
                f"{what}: {b.name} covers {_fmt(b.bounds)}, {first.name} covers "
                f"{_fmt(first.bounds)}; the bands of a stack must cover the same extent (clip them first)"
            )
        if (b.transform.a > 0) != (first.transform.a > 0) or (b.transform.e > 0) != (first.transform.e > 0):
            raise BadInput(f"{what}: {b.name} is flipped against {first.name}")


def _fmt(bounds: tuple[float, ...]) -> str:
    return ",".join(f"{v:.6g}" for v in bounds)


def _vrt_text(bands: list[_Band]) -> str:
    """The VRT document: the finest band's grid, one VRTRasterBand per file."""
    grid = min(bands, key=lambda b: abs(b.transform.a * b.transform.e))
    t = grid.transform
    root = ET.Element("VRTDataset", rasterXSize=str(grid.width), rasterYSize=str(grid.height))
    if grid.crs is not None:
        ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = grid.crs.to_wkt()
        ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e))
    meta = ET.SubElement(root, "Metadata")
    for key, val in next((b.tags for b in bands if b.tags), {}).items():
        ET.SubElement(meta, "MDI", key=key).text = val
    # what the scene fingerprint (a hash of this text) must change with: each band's content
    ET.SubElement(meta, "MDI", key="FTF_STACK").text = ";".join(f"{b.name}={b.fingerprint}" for b in bands)
    for i, b in enumerate(bands, start=1):
        vb = ET.SubElement(root, "VRTRasterBand", dataType=_gdal_type(b.dtype), band=str(i))
        ET.SubElement(vb, "Description").text = b.description or Path(b.name).stem
        if b.nodata is not None and math.isfinite(b.nodata):
            ET.SubElement(vb, "NoDataValue").text = repr(float(b.nodata))
        ET.SubElement(vb, "ColorInterp").text = _COLOURS[i - 1] if len(bands) >= 3 and i <= 3 else (
            "Gray" if len(bands) == 1 else "Undefined")
        same_grid = b.width == grid.width and b.height == grid.height
        src = ET.SubElement(vb, "ComplexSource" if b.nodata is not None else "SimpleSource",
                            attrib={} if same_grid else {"resampling": "bilinear"})
        ET.SubElement(src, "SourceFilename", relativeToVRT="0").text = b.source
        ET.SubElement(src, "SourceBand").text = "1"
        ET.SubElement(src, "SrcRect", xOff="0", yOff="0", xSize=str(b.width), ySize=str(b.height))
        # the band's extent on the grid (equal extents up to the tolerance: the whole grid)
        x0 = (b.transform.c - t.c) / t.a
        y0 = (b.transform.f - t.f) / t.e
        ET.SubElement(src, "DstRect", xOff=repr(x0), yOff=repr(y0),
                      xSize=repr(b.width * b.transform.a / t.a), ySize=repr(b.height * b.transform.e / t.e))
        if b.nodata is not None:
            ET.SubElement(src, "NODATA").text = repr(float(b.nodata))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


_GDAL_TYPES = {
    "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "int32": "Int32",
    "uint64": "UInt64", "int64": "Int64", "float32": "Float32", "float64": "Float64",
}


def _gdal_type(dtype: str) -> str:
    try:
        return _GDAL_TYPES[dtype]
    except KeyError:
        raise BadInput(f"`stack`: band type {dtype} is not supported") from None


def stack_scene_id(paths: Sequence[Path | str]) -> str:
    """The band files' common name prefix (``..._Sentinel-2_L2A_B04`` etc. -> ``..._Sentinel-2_L2A``),
    else the first file's name with ``_stack``."""
    stems = [default_scene_id(p) for p in paths]
    prefix = os.path.commonprefix(stems)
    if any(len(s) > len(prefix) and s[len(prefix)] not in "_.-" for s in stems):
        prefix = prefix[: max(prefix.rfind(c) for c in "_.-") + 1]  # not mid-word: ..._B0 -> ..._
    prefix = prefix.rstrip("_.-")
    return prefix if len(prefix) >= 3 else f"{stems[0]}_stack"


def build_stack(value: str, stack_dir: Path) -> Path:
    """Check the band files of ``--stack`` and write (or reuse) their VRT; returns its path.

    Raises :class:`BadInput` naming ``stack`` for a missing or multi-band file, bands in other
    CRSs or extents, and a stack directory that cannot be written.
    """
    return stack_vrt(list(parse_stack(value)), stack_dir, f"`stack` {value!r}")


def stack_vrt(sources: list[Path | str], stack_dir: Path, what: str, name: str | None = None) -> Path:
    """The VRT of band files or URLs (red, green, blue first), written once under ``stack_dir``.

    ``what`` names the stack in messages (``stack 'B04.tif,...'``, a STAC item's assets);
    ``name`` is the VRT's file name (default: the files' common prefix). Raises
    :class:`BadInput` as :func:`build_stack` does.
    """
    bands = [_read_band(p, what) for p in sources]
    _check_aligned(bands, what)
    text = _vrt_text(bands)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    out = stack_dir / digest / f"{name or stack_scene_id(sources)}.vrt"
    if out.is_file() and out.read_text(encoding="utf-8") == text:
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # written whole or not at all: a reader never sees half a VRT
        fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".vrt.tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
    except OSError as exc:
        raise BadInput(
            f"{what}: cannot write its VRT under {stack_dir} ({exc.strerror or exc}); "
            "set FTF_STACK_DIR to a writable directory"
        ) from exc
    return out
