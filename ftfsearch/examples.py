"""Search by example: what a ``like`` / ``unlike`` reference names, and the vector it stands for.

A reference (REF) is one of:

- a tile id (the ``id`` of a result): the stored tile's coarse vector;
- a point ``lon,lat`` (WGS84): the finest stored tile that contains it (the one whose centre is
  nearest when overlapping tiles do);
- an image file (PNG, JPEG, GeoTIFF chip), or image bytes POSTed to the API: encoded on the fly
  with the collection's model.

With a region index (``REF:N``) the example is that tile's N-th region vector, so a search
matches candidates' regions against one small thing instead of whole tiles.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ftfsearch.errors import BadInput, TileNotFound
from ftfsearch.records import TILE_ID, ExampleRef, image_ref, parse_ref  # noqa: F401 - re-exported
from ftfsearch.model.base import Encoder
from ftfsearch.store.base import QueryFilter, Store

if TYPE_CHECKING:  # rasterio and torch only for an image example: a text query imports neither
    import rasterio

MIN_IMAGE_SIDE = 32
"""Smaller chips hold too little for the model (it sees tiles of a few hundred pixels)."""
MAX_IMAGE_SIDE = 8192
"""Larger images are scenes, not examples: ingest them instead."""
MAX_IMAGE_ASPECT = 2.0
"""Tiles are square; a strip longer than this would be squashed out of recognition."""
READ_LONG_SIDE = 1024
"""Images are read resampled to at most this long side before the model resizes them."""
MAX_EXAMPLES = 64
"""Per search, positives and negatives together."""
POINT_CANDIDATES = 512
"""Tiles read under a point to pick the finest (a point lies under a few per level)."""


@dataclass
class Example:
    """A resolved reference: the vector a search compares tiles with."""

    ref: ExampleRef
    vector: np.ndarray
    """``[D]`` float32, unit: the tile's (or image's) coarse vector, or one region vector."""
    tile_id: str | None
    """The stored tile it came from (never returned as a result); None for an image."""


def read_image(ref: ExampleRef) -> np.ndarray:
    """The referenced image as ``uint8 [H, W, 3]``, bands and stretch chosen as ingest does."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.io import MemoryFile

    where = ref.where()
    if ref.data is not None and not ref.data:
        raise BadInput(f"{where}: is empty; send a PNG, JPEG or GeoTIFF image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            if ref.data is not None:
                with MemoryFile(ref.data) as mem, mem.open() as ds:
                    return _read_rgb(ds, where)
            assert ref.image is not None
            with rasterio.open(ref.image) as ds:
                return _read_rgb(ds, where)
    except RasterioError as exc:
        raise BadInput(f"{where}: is not an image GDAL can read; give a PNG, JPEG or GeoTIFF chip") from exc
    except OSError as exc:
        raise BadInput(f"{where}: cannot be read ({exc.strerror or exc})") from exc


def _read_rgb(ds: rasterio.io.DatasetReader, where: str) -> np.ndarray:
    from rasterio.enums import ColorInterp

    from ftfsearch.raster import choose_style

    h, w = ds.height, ds.width
    if min(h, w) < MIN_IMAGE_SIDE or max(h, w) > MAX_IMAGE_SIDE:
        raise BadInput(
            f"{where}: is {w}x{h} pixels; an example must be {MIN_IMAGE_SIDE} to {MAX_IMAGE_SIDE} pixels "
            "a side (crop a chip around what you want)"
        )
    if max(h, w) / min(h, w) > MAX_IMAGE_ASPECT:
        raise BadInput(f"{where}: is {w}x{h} pixels; crop it to a roughly square chip (at most {MAX_IMAGE_ASPECT:g}:1)")
    colours = [ci for ci in ds.colorinterp if ci != ColorInterp.alpha]
    if len(colours) == 2:
        raise BadInput(f"{where}: has 2 bands that are not alpha; give an RGB (or RGBA) image or one grey band")
    style = choose_style(ds, source=where)
    scale = min(1.0, READ_LONG_SIDE / max(h, w))
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    data, valid = style.read(ds, None, shape, style.resampling(scale < 1.0))
    if not valid.any():
        raise BadInput(f"{where}: has no valid pixels (all nodata or transparent)")
    return style.to_rgb(data, valid)


def resolve(refs: Sequence[ExampleRef], store: Store, encoder: Encoder) -> list[Example]:
    """The vectors of ``refs``: stored tiles read in one request, each image encoded on the fly.

    Raises TileNotFound (an unknown id), BadInput (a point under no tile, a bad image, a region
    index out of range, one tile both liked and unliked, too many examples).
    """
    if len(refs) > MAX_EXAMPLES:
        raise BadInput(f"`like`: at most {MAX_EXAMPLES} examples per search (got {len(refs)})")
    for ref in refs:
        if ref.region is not None and not 0 <= ref.region < encoder.num_regions:
            raise BadInput(
                f"{ref.where()}: region {ref.region} is out of range; this model has {encoder.num_regions} "
                f"regions (0..{encoder.num_regions - 1}), as in a result's region_index"
            )
    tile_of: dict[int, str] = {}
    for i, ref in enumerate(refs):
        if ref.tile_id is not None:
            tile_of[i] = ref.tile_id
        elif ref.point is not None:
            tile_of[i] = tile_at(store, ref)
    _check_not_both(refs, tile_of)
    coarse: dict[int, np.ndarray] = {}
    regions: dict[int, np.ndarray] = {}
    if tile_of:
        ids, c, r, _ = store.get_vectors(list(dict.fromkeys(tile_of.values())))
        row = {tid: j for j, tid in enumerate(ids)}
        for i, tid in tile_of.items():
            if tid not in row:
                raise TileNotFound(
                    f"{refs[i].where()}: tile {tid} is not in collection {store.collection!r}; "
                    "use the 'id' of a current search result"
                )
            coarse[i], regions[i] = c[row[tid]], r[row[tid]]
    images = [i for i, ref in enumerate(refs) if i not in tile_of]
    if images:
        pixels = [read_image(refs[i]) for i in images]
        for i, px in zip(images, pixels):
            import torch

            g, rg = encoder.encode_images(torch.from_numpy(np.ascontiguousarray(px))[None])
            coarse[i], regions[i] = g[0].float().cpu().numpy(), rg[0].float().cpu().numpy()
    out = []
    for i, ref in enumerate(refs):
        vec = coarse[i] if ref.region is None else regions[i][ref.region]
        vec = np.asarray(vec, dtype=np.float32)
        out.append(Example(ref=ref, vector=vec / max(float(np.linalg.norm(vec)), 1e-12), tile_id=tile_of.get(i)))
    return out


def tile_at(store: Store, ref: ExampleRef) -> str:
    """The finest stored tile under ``ref.point``; among overlapping ones, the nearest centre."""
    assert ref.point is not None
    lon, lat = ref.point
    found = store.find_tiles(QueryFilter(bbox=(lon, lat, lon, lat)), limit=POINT_CANDIDATES)
    if not found:
        raise BadInput(
            f"{ref.where()}: no stored tile contains this point (lon,lat in WGS84); 'ftfsearch scenes' "
            "lists what is ingested (scenes without a CRS have no coordinates)"
        )

    def key(item: tuple[str, dict]) -> tuple[int, float, str]:
        tid, p = item
        west, south, east, north = (float(p[k]) for k in ("west", "south", "east", "north"))
        return int(p.get("level", 1)), ((west + east) / 2 - lon) ** 2 + ((south + north) / 2 - lat) ** 2, tid

    return min(found, key=key)[0]


def _check_not_both(refs: Sequence[ExampleRef], tile_of: dict[int, str]) -> None:
    """One tile cannot be both a positive and a negative (whole tiles; regions may differ)."""
    liked = {tile_of[i]: refs[i] for i in tile_of if refs[i].positive and refs[i].region is None}
    for i, tid in tile_of.items():
        if not refs[i].positive and refs[i].region is None and tid in liked:
            raise BadInput(
                f"{refs[i].where()}: names the same tile as {liked[tid].where()}; a tile is either liked or unliked"
            )
