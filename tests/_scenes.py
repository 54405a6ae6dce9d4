"""Large test scenes made from real pixels: a shared ortho shown many times larger through a VRT."""

from __future__ import annotations

from pathlib import Path

import rasterio
from rasterio.enums import Resampling

from _data import SHARED_DATA

ORTHO = SHARED_DATA / "geotiffs" / "rio-tiler" / "201404_13SED190110_201404_0x1500m_CL_1.tif"
"""15 cm aerial ortho of Colorado, EPSG:26913 (``../shared/data``)."""
S2 = SHARED_DATA / "sentinel2"
"""Two real Sentinel-2 L2A port scenes, one file per band (B02, B03, B04, B08)."""


def upsampling_vrt(path: Path, source: Path, factor: float) -> Path:
    """A VRT that shows ``source`` ``factor`` times larger: real pixels, many more tiles."""
    with rasterio.open(source) as ds:
        w, h, t, crs, count = ds.width, ds.height, ds.transform, ds.crs, ds.count
    W, H = round(w * factor), round(h * factor)
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{source}</SourceFilename><SourceBand>{b}</SourceBand>'
        f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="0" yOff="0" xSize="{W}" ySize="{H}"/>'
        "</SimpleSource></VRTRasterBand>"
        for b in range(1, count + 1)
    )
    gt = f"{t.c}, {t.a * w / W}, 0.0, {t.f}, 0.0, {t.e * h / H}"
    path.write_text(
        f'<VRTDataset rasterXSize="{W}" rasterYSize="{H}"><SRS>{crs.to_wkt()}</SRS>'
        f"<GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>"
    )
    return path


def s2_bands(place: str, *names: str) -> list[Path]:
    found = []
    for name in names:
        matches = sorted((S2 / place).glob(f"*_{name}_*.tif*"))
        assert len(matches) == 1, f"real test data missing: {S2 / place} {name}"
        found.append(matches[0])
    return found


def split_bands(src: Path, out: Path, coarse: dict[int, int] | None = None) -> list[Path]:
    """One single-band GeoTIFF per band of ``src``; band i downsampled by ``coarse[i]`` (same extent)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with rasterio.open(src) as ds:
        for i in range(1, ds.count + 1):
            factor = (coarse or {}).get(i, 1)
            h, w = ds.height // factor, ds.width // factor
            data = ds.read(i, out_shape=(h, w), resampling=Resampling.average)
            profile = {**ds.profile, "count": 1, "height": h, "width": w,
                       "transform": ds.transform @ ds.transform.scale(ds.width / w, ds.height / h)}
            profile.pop("photometric", None)
            p = out / f"scene_B{i}.tif"
            with rasterio.open(p, "w", **profile) as dst:
                dst.write(data, 1)
            paths.append(p)
    return paths


NAIP = SHARED_DATA / "geotiffs" / "opengeos_data"
NAIP_2009 = NAIP / "naip_m_4709963_se_14_1_20090818.tif"
NAIP_2020 = NAIP / "naip_m_4709963_se_14_1_20200831.tif"
PASTE = (270, 150, 100, 100)
"""``(col, row, width, height)`` of the patch in the later copy: inside the tile at col 256, row 128
of a 128 px grid."""


def pasted_naip(root: Path) -> tuple[Path, Path]:
    """A copy of the 2020 NAIP scene with a patch of :data:`ORTHO` pasted in at :data:`PASTE` (a
    known change at a known place), and that patch as a PNG (an example of what appeared)."""
    import numpy as np
    from PIL import Image
    from rasterio.windows import Window

    col, row, width, height = PASTE
    with rasterio.open(ORTHO) as src:
        patch = src.read((1, 2, 3), window=Window(src.width // 2, src.height // 2, width, height))
    pasted = root / "naip_2020_pasted.tif"
    with rasterio.open(NAIP_2020) as src:
        profile, data = src.profile, src.read()
    data[:3, row:row + height, col:col + width] = patch
    with rasterio.open(pasted, "w", **profile) as dst:
        dst.write(data)
    example = root / "patch.png"
    Image.fromarray(np.moveaxis(patch, 0, -1)).save(example)
    return pasted, example
