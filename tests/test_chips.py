"""Chips and previews rendered from real GeoTIFFs: the same pixels ingest gave the model, the
region outlined where it matched, bounded caches, and clear errors when a source went away."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.warp import transform_bounds

from _web_fixtures import GEOTIFFS, demo_store, ftfsearch_command
from ftfsearch.chips import (
    OUTLINE_RGB,
    WEB_MERCATOR_MAX_LAT,
    ChipRenderer,
    ChipSpec,
    LruCache,
    render_preview,
    write_chips,
)
from ftfsearch.errors import BadInput, SourceUnavailable
from ftfsearch.search import Result
from ingest.tiling import SceneReader, TilingSpec

RGB = GEOTIFFS / "rasterio" / "RGB.byte.tif"


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def outline(pixels: np.ndarray) -> np.ndarray:
    return np.all(pixels[..., :3] == OUTLINE_RGB, axis=-1)


# -- the pixels ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "rasterio/RGB.byte.tif",  # uint8 RGB, nodata 0
        "rasterio/RGBA.byte.tif",  # alpha band as mask
        "rasterio/shade.tif",  # 1 band grey, nodata 255
        "rio-tiler/cog.tif",  # uint16 with overviews: stretch from an overview
        "rio-tiler/pix4d_alpha_nodata.tif",  # RGBA drone ortho with transparent areas
        "solaris_spacenet/pan1.tif",  # uint16 panchromatic
        "solaris_spacenet/ms1.tif",  # float64 4 bands, no colour interpretation
        "solaris_spacenet/sample_geotiff_custom_proj.tif",  # int16 3 bands, custom CRS
        "opengeos_data/raster_cog.tif",  # float64 COG in EPSG:4326
    ],
)
@pytest.mark.parametrize("level", [1, 2])
def test_chip_shows_what_ingest_gave_the_model(name: str, level: int) -> None:
    """Same bands, stretch, masks and resampling as ``ingest.tiling`` for every window kind."""
    path = GEOTIFFS / name
    spec = TilingSpec(tile_size=128, levels=(level,), max_nodata=1.0)
    renderer = ChipRenderer()
    with SceneReader(path, spec) as reader:
        windows = [w for w in reader.windows() if w.level == level]
        compared = 0
        for w in (windows[0], windows[len(windows) // 2], windows[-1]):
            tile = reader.read(w)
            if tile is None:
                continue
            chip = decode(renderer.chip(ChipSpec(
                str(path), w.col, w.row, w.width, w.height, level=level, tile_size=128,
            )))
            h, wd = chip.shape[:2]
            assert (h, wd) == (min(128, round(w.height / level)), min(128, round(w.width / level)))
            expected = tile.pixels[:h, :wd]
            # float stretches may round one step apart; everything else is bit for bit
            assert np.abs(chip.astype(int) - expected.astype(int)).max() <= 1, name
            assert np.mean(chip != expected) < 0.01
            compared += 1
    assert compared > 0


def test_palette_chip_matches_ingest(tmp_path: Path) -> None:
    """A palette raster made from real pixels: colours come from its colour map."""
    with rasterio.open(RGB) as src:
        rgb = src.read().transpose(1, 2, 0)
        profile = src.profile
    quant = Image.fromarray(rgb).quantize(colors=32)
    index = np.asarray(quant, dtype=np.uint8)
    pal = quant.getpalette()[: 32 * 3]
    cmap = {i: (pal[3 * i], pal[3 * i + 1], pal[3 * i + 2], 255) for i in range(32)}
    path = tmp_path / "palette.tif"
    profile.update(count=1, nodata=None, photometric="palette")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(index, 1)
        dst.write_colormap(1, cmap)
    with SceneReader(path, TilingSpec(tile_size=256)) as reader:
        w = reader.windows()[1]
        tile = reader.read(w)
    assert tile is not None
    chip = decode(ChipRenderer().chip(ChipSpec(str(path), w.col, w.row, w.width, w.height)))
    assert np.array_equal(chip, tile.pixels[: chip.shape[0], : chip.shape[1]])
    assert len(np.unique(chip.reshape(-1, 3), axis=0)) > 3  # colours, not indexes


def test_region_outline_and_sizes() -> None:
    renderer = ChipRenderer()
    plain = decode(renderer.chip(ChipSpec(str(RGB), 256, 256, 256, 256)))
    boxed = decode(renderer.chip(ChipSpec(str(RGB), 256, 256, 256, 256, region=(0.5, 0.25, 1.0, 0.75))))
    assert plain.shape == boxed.shape == (256, 256, 3)
    assert not outline(plain).any()
    ys, xs = np.nonzero(outline(boxed))
    assert abs(xs.min() - 128) <= 1 and xs.max() == 255 and abs(ys.min() - 64) <= 1 and abs(ys.max() - 191) <= 1
    changed = np.any(plain != boxed, axis=-1)
    assert not changed[:, :120].any() and not changed[:56].any() and not changed[200:].any()
    assert not changed[80:176, 144:240].any()  # inside the box: the image itself

    # A level-2 window: tile size by default, full window resolution on request, outline scales.
    level2 = ChipSpec(str(RGB), 0, 0, 512, 512, level=2, tile_size=256, region=(0.0, 0.0, 0.5, 0.5))
    small = decode(renderer.chip(level2))
    assert small.shape == (256, 256, 3)
    big = decode(renderer.chip(ChipSpec(**{**level2.__dict__, "size": 512})))
    assert big.shape == (512, 512, 3)
    ys, xs = np.nonzero(outline(big))
    assert xs.max() <= 256 and ys.max() <= 256 and xs.max() >= 250
    with rasterio.open(RGB) as ds:
        raw = ds.read(window=rasterio.windows.Window(0, 0, 512, 512)).transpose(1, 2, 0)
    inside = ~np.isin(np.arange(512), np.arange(0, 262))
    assert np.array_equal(big[inside][:, inside], raw[inside][:, inside])  # native pixels away from the box
    # size never exceeds the window's own pixels
    assert decode(renderer.chip(ChipSpec(str(RGB), 0, 0, 100, 60, size=1000))).shape == (60, 100, 3)
    with pytest.raises(BadInput):
        renderer.chip(ChipSpec(str(RGB), 0, 0, 100, 60, size=5000))


def test_explicit_bands_reorder_channels() -> None:
    renderer = ChipRenderer()
    rgb = decode(renderer.chip(ChipSpec(str(RGB), 200, 200, 256, 256)))
    bgr = decode(renderer.chip(ChipSpec(str(RGB), 200, 200, 256, 256, bands=(3, 2, 1))))
    grey = decode(renderer.chip(ChipSpec(str(RGB), 200, 200, 256, 256, bands=(2,))))
    assert np.array_equal(bgr, rgb[..., ::-1])
    assert np.array_equal(grey[..., 0], rgb[..., 1]) and np.array_equal(grey[..., 2], rgb[..., 1])


# -- previews -----------------------------------------------------------------------------------


def test_preview_is_warped_to_the_map_and_transparent_outside() -> None:
    preview = render_preview(RGB, max_side=400)
    assert preview is not None
    with rasterio.open(RGB) as ds:
        expected = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
    assert np.allclose(preview.bounds, expected, atol=1e-6)
    pixels = decode(preview.png)
    assert pixels.shape[2] == 4 and max(pixels.shape[:2]) == 400
    alpha = pixels[..., 3]
    assert (alpha[[0, 0, -1, -1], [0, -1, 0, -1]] == 0).all()  # the rotated scene leaves corners empty
    assert alpha[200, 200] == 255 and 0.4 < (alpha > 0).mean() < 0.9
    assert (pixels[alpha == 0][:, :3] == 0).all()


def test_preview_of_the_whole_world_is_clipped_to_web_mercator() -> None:
    preview = render_preview(GEOTIFFS / "rasterio" / "world.rgb.tif", max_side=256)
    assert preview is not None
    w, s, e, n = preview.bounds
    assert (w, e) == pytest.approx((-180, 180), abs=1e-6)
    assert (s, n) == pytest.approx((-WEB_MERCATOR_MAX_LAT, WEB_MERCATOR_MAX_LAT), abs=1e-6)
    assert decode(preview.png).shape == (256, 256, 4)


def test_no_preview_without_crs_but_chips_work(tmp_path: Path) -> None:
    with rasterio.open(RGB) as src:
        data = src.read()
    path = tmp_path / "nocrs.tif"
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=3,
                       dtype="uint8") as dst:
        dst.write(data)
    renderer = ChipRenderer()
    assert render_preview(path) is None and renderer.preview(str(path)) is None
    assert renderer.preview_bounds(str(path)) is None
    chip = decode(renderer.chip(ChipSpec(str(path), 300, 300, 128, 128)))
    assert np.array_equal(chip, data[:, 300:428, 300:428].transpose(1, 2, 0))


# -- caching and failures -----------------------------------------------------------------------


def test_lru_cache_is_bounded_by_bytes_and_items() -> None:
    cache: LruCache[str, bytes] = LruCache(max_bytes=100, max_items=3, sizeof=len)
    for key in "abc":
        cache.put(key, b"x" * 30)
    assert len(cache) == 3 and cache.get("a") == b"x" * 30  # "a" is now the most recent
    cache.put("d", b"y" * 30)  # 4 items: "b" (least recent) goes
    assert cache.get("b") is None and cache.get("a") is not None
    cache.put("e", b"z" * 60)  # 120 bytes: oldest go until it fits
    assert cache.stats()["bytes"] <= 100 and cache.get("e") is not None
    cache.put("huge", b"h" * 101)  # larger than the whole cache: not kept
    assert cache.get("huge") is None


def test_renderer_caches_and_notices_a_rewritten_file(tmp_path: Path) -> None:
    path = tmp_path / "scene.tif"
    shutil.copy(RGB, path)
    renderer = ChipRenderer(chip_cache_bytes=1 << 20)
    spec = ChipSpec(str(path), 256, 256, 256, 256)
    first = renderer.chip(spec)
    assert renderer.chip(spec) == first and renderer.chips.hits == 1
    with rasterio.open(path, "r+") as ds:  # the file changes in place
        ds.write(255 - ds.read(1), 1)
    os.utime(path, ns=(1, 1))
    changed = decode(renderer.chip(spec))
    assert not np.array_equal(changed, decode(first))
    # 64 distinct chips of ~100 kB cannot all stay in 1 MiB
    for i in range(64):
        renderer.chip(ChipSpec(str(path), i, i, 256, 256))
    assert renderer.chips.stats()["bytes"] <= 1 << 20


def test_missing_or_changed_source_is_a_clear_error(tmp_path: Path) -> None:
    renderer = ChipRenderer()
    gone = tmp_path / "gone.tif"
    with pytest.raises(SourceUnavailable, match="gone.tif.*re-ingest"):
        renderer.chip(ChipSpec(str(gone), 0, 0, 64, 64))
    with pytest.raises(SourceUnavailable, match="outside"):
        renderer.chip(ChipSpec(str(RGB), 700, 700, 256, 256))
    not_raster = tmp_path / "notes.tif"
    not_raster.write_text("not a raster")
    with pytest.raises(SourceUnavailable, match="notes.tif"):
        renderer.chip(ChipSpec(str(not_raster), 0, 0, 64, 64))
    with pytest.raises(SourceUnavailable, match="bands"):
        renderer.chip(ChipSpec(str(RGB), 0, 0, 64, 64, bands=(5, 2, 1)))


def _result(rank: int, path: Path, scene: str, col: int) -> Result:
    window = {"col": col, "row": 0, "width": 256, "height": 256}
    return Result(
        rank=rank, score=1.0 / rank, coarse_score=0.5, id=f"{rank:08d}-0000-5000-8000-000000000000",
        scene_id=scene, path=str(path), level=1, window=window, bbox=None, footprint=None,
        region=[0.0, 0.0, 0.5, 0.5], region_index=1, payload={"tile_size": 256},
    )


def test_write_chips_names_by_rank_and_skips_lost_sources(tmp_path: Path) -> None:
    results = [
        _result(1, RGB, "RGB.byte", 0),
        _result(2, tmp_path / "moved.tif", "gone/../scene", 0),
        _result(3, RGB, "weird name: ünïcode/..", 256),
    ]
    written = write_chips(results, tmp_path / "chips")
    names = [p.name for p in written.paths]
    assert names == ["001_RGB.byte_00000001.png", "003_weird_name_n_code_00000003.png"]
    assert len(written.skipped) == 1 and "result 2" in written.skipped[0] and "moved.tif" in written.skipped[0]
    for p in written.paths:
        assert p.parent == tmp_path / "chips" and outline(decode(p.read_bytes())).any()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BadInput, match="^chips "):
        write_chips(results, blocker / "sub")


def test_query_chips_cli_writes_the_pngs_the_server_serves(tmp_path_factory: pytest.TempPathFactory,
                                                          tmp_path: Path) -> None:
    demo = demo_store(tmp_path_factory)
    out = tmp_path / "chips"
    proc = subprocess.run(
        [ftfsearch_command(), "query", "a river next to farmland", "--k", "3", "--json", "--chips", str(out),
         "--store", str(demo.store_dir), "--model", str(demo.model_dir), "--device", "cpu"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "FTF_CONFIG": str(tmp_path / "none.toml")},
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == 3 and "wrote 3 chips" in proc.stderr
    files = sorted(out.iterdir())
    assert [f.name[:4] for f in files] == ["001_", "002_", "003_"]
    renderer = ChipRenderer()
    for f, r in zip(files, results, strict=True):
        assert r["id"][:8] in f.name
        spec = ChipSpec.from_payload({"path": r["path"], "window": r["window"], "level": r["level"]},
                                     region=r["region"])
        assert f.read_bytes() == renderer.chip(spec)


def test_region_geometry_is_one_rule_for_results_and_chips() -> None:
    """A level-2 window clipped at the scene's edge (300 of the 512 scene pixels the model saw as a
    256 px tile): region fractions scale the square, not the window, in Result.region_window and
    in the chip outline alike; a store without tile_size takes the window as the square."""
    from ftfsearch.search import Result

    r = Result(rank=1, score=0.0, coarse_score=0.0, id="t", scene_id="s", path=str(RGB), level=2,
               window={"col": 100, "row": 50, "width": 300, "height": 512}, bbox=None, footprint=None,
               region=[0.5, 0.0, 1.0, 0.5], payload={"tile_size": 256})
    assert r.region_window() == {"col": 356, "row": 50, "width": 44, "height": 256}
    spec = ChipSpec.from_result(r)
    out_h, out_w = spec.output_shape()
    assert (out_h, out_w) == (256, 150)
    assert spec.region_pixels(out_h, out_w) == (128, 0, 149, 127)
    r.payload = {}
    assert r.region_window() == {"col": 250, "row": 50, "width": 150, "height": 256}
    old = ChipSpec.from_result(r)
    assert old.region_pixels(*old.output_shape()) == (75, 0, 149, 127)


def test_recorded_bands_are_one_rule_for_chips_previews_and_query_chips() -> None:
    """The scene's --bands as its ingest recorded them: ints, or None where none were given (the
    file's own choice), for the API's chips and previews and for `query --chips` alike."""
    from ftfsearch.chips import recorded_bands, scene_bands
    from ftfsearch.store.base import SceneRecord

    def record(tiling: dict) -> SceneRecord:
        return SceneRecord(scene_id="s", path="p", fingerprint="f", state="complete", model_id="m", tiling=tiling)

    assert recorded_bands(record({"bands": [3, 2, 1]})) == (3, 2, 1)
    assert recorded_bands(record({"bands": ["4", 3.0, 2]})) == (4, 3, 2)  # a JSON round trip keeps them ints
    assert recorded_bands(record({"bands": []})) is None
    assert recorded_bands(record({"bands": None})) is None
    assert recorded_bands(record({})) is None
    assert recorded_bands(None) is None  # a scene dropped since the search

    class Scenes:
        def get_scene(self, sid: str) -> SceneRecord | None:
            return {"a": record({"bands": [1]}), "b": record({})}.get(sid)

    assert scene_bands(Scenes(), ["a", "b", "a", "gone"]) == {"a": (1,), "b": None, "gone": None}  # type: ignore[arg-type]
