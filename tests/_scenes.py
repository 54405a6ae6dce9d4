"""Large test scenes made from real pixels: a shared ortho shown many times larger through a VRT."""

from __future__ import annotations

from pathlib import Path

import rasterio

from _data import SHARED_DATA

ORTHO = SHARED_DATA / "geotiffs" / "rio-tiler" / "201404_13SED190110_201404_0x1500m_CL_1.tif"
"""15 cm aerial ortho of Colorado, EPSG:26913 (``../shared/data``)."""


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
