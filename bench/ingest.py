"""Ingest benchmark: the pipeline against the encoder alone and a naive sequential loop.

The scene is a mosaic of the two real NAIP chips in ../shared/data (RGB bands, native 5 m
pixels, alternating in a checkerboard) of at least ``--size`` pixels per side: a VRT, then
written once as a tiled GeoTIFF under .cache/bench (a VRT of ~2000 sources reads ~10x slower
than the GeoTIFF a user would ingest). Each mode runs in its own process so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import torch

from bench.common import CACHE, GEOTIFFS, load_bench_encoder, machine, machine_line, peak_rss_mb, sync, table

NAIP = (
    "opengeos_data/naip_m_4709963_se_14_1_20200831.tif",
    "opengeos_data/naip_m_4709963_se_14_1_20090818.tif",
)


class _Enough(Exception):
    """Stops the pipeline once the measured number of tiles is written."""


def scene_path(size: int) -> Path:
    """The mosaic GeoTIFF (made once): at least ``size`` x ``size`` pixels of real NAIP RGB."""
    import rasterio
    from rasterio.windows import Window

    tif = CACHE / f"naip-mosaic-{size}.tif"
    if tif.is_file():
        return tif
    vrt = _mosaic_vrt(size)
    tmp = tif.with_suffix(".tmp.tif")
    with rasterio.open(vrt) as src:
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=3, dtype="uint8", crs=src.crs,
                       transform=src.transform, tiled=True, blockxsize=512, blockysize=512, photometric="RGB",
                       BIGTIFF="IF_SAFER")
        with rasterio.open(tmp, "w", **profile) as dst:
            for row in range(0, src.height, 1024):
                win = Window(0, row, src.width, min(1024, src.height - row))
                dst.write(src.read(window=win), window=win)
    tmp.replace(tif)
    return tif


def _mosaic_vrt(size: int) -> Path:
    import rasterio

    out = CACHE / f"naip-mosaic-{size}.vrt"
    if out.is_file():
        return out
    srcs = [GEOTIFFS / p for p in NAIP]
    for s in srcs:
        if not s.is_file():
            raise SystemExit(f"{s}: missing; the ingest benchmark needs ../shared/data")
    with rasterio.open(srcs[0]) as ds:
        crs_wkt = ds.crs.to_wkt()
        gt = ds.transform.to_gdal()
        cell_w, cell_h = ds.width, min(ds.height, *(rasterio.open(s).height for s in srcs[1:]))
    cols, rows = math.ceil(size / cell_w), math.ceil(size / cell_h)
    width, height = cols * cell_w, rows * cell_h
    bands = []
    for b, interp in ((1, "Red"), (2, "Green"), (3, "Blue")):
        sources = []
        for r in range(rows):
            for c in range(cols):
                src = srcs[(r + c) % len(srcs)]
                sources.append(
                    f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(str(src.resolve()))}</SourceFilename>'
                    f"<SourceBand>{b}</SourceBand>"
                    f'<SrcRect xOff="0" yOff="0" xSize="{cell_w}" ySize="{cell_h}"/>'
                    f'<DstRect xOff="{c * cell_w}" yOff="{r * cell_h}" xSize="{cell_w}" ySize="{cell_h}"/></SimpleSource>'
                )
        bands.append(
            f'<VRTRasterBand dataType="Byte" band="{b}"><ColorInterp>{interp}</ColorInterp>' + "".join(sources)
            + "</VRTRasterBand>"
        )
    xml = (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{escape(crs_wkt)}</SRS>'
        f"<GeoTransform>{', '.join(repr(float(v)) for v in gt)}</GeoTransform>" + "".join(bands) + "</VRTDataset>"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(xml)
    tmp.replace(out)
    return out


def _open(backend: str, root: Path) -> Any:
    from ftfsearch.store import open_store

    if backend == "edge":
        return open_store(collection="ingest", store_dir=root / "store", qdrant_url=None, api_key=None, timeout=120.0), None
    from deploy.qdrant_local import QdrantServer

    server = QdrantServer(tmp_root=root).start()
    return open_store(collection="ingest", store_dir=None, qdrant_url=server.url, api_key=None, timeout=120.0), server


def mode_pipeline(args: argparse.Namespace, scene: Path, root: Path) -> dict[str, Any]:
    """The real pipeline (readers, batching, encoder, writer thread), stopped after max_tiles."""
    from ingest import pipeline
    from ingest.tiling import TilingSpec

    encoder, note = load_bench_encoder(args.model, args.device)
    # Warmed up as the encoder-only mode is: the one-off costs of a process (the ONNX export of the
    # image path, first allocations: about 2.5 s) are not ingest throughput.
    encoder.encode_images(torch.zeros(args.batch_size, 256, 256, 3, dtype=torch.uint8))
    store, server = _open(args.backend, root)
    stages = pipeline.StageTimes()  # filled as the pipeline goes, so a stop after max_tiles keeps them
    limit = args.max_tiles

    class Stop:
        done = 0

        def start(self, scene_id: str, total: int, already: int) -> None:
            self.total = total

        def advance(self, n: int) -> None:
            self.done += n
            if limit and self.done >= limit:
                raise _Enough()

        def finish(self) -> None:
            pass

    prog = Stop()
    opts = pipeline.IngestOptions(spec=TilingSpec(tile_size=256), batch_size=args.batch_size, readers=args.readers)
    t0 = time.perf_counter()
    try:
        pipeline.ingest_scene(scene, encoder, store, opts, progress=prog, stages=stages)
    except _Enough:
        pass
    seconds = time.perf_counter() - t0
    written = store.count_tiles()
    store.close()
    if server is not None:
        server.stop()
    return {
        "tiles": written,
        "windows_in_scene": getattr(prog, "total", None),
        "seconds": seconds,
        "tiles_per_s": written / seconds,
        "stage_seconds": {k: round(v, 2) for k, v in stages.to_dict().items()},
        "encoder": encoder.id,
        "encoder_note": note,
    }


def _first_tiles(scene: Path, n: int) -> tuple[Any, list[Any]]:
    from ingest.tiling import SceneReader, TilingSpec

    reader = SceneReader(scene, TilingSpec(tile_size=256))
    out = []
    for w in reader.windows():
        t = reader.read(w)
        if t is not None:
            out.append(t)
        if len(out) >= n:
            break
    return reader, out


def mode_encoder(args: argparse.Namespace, scene: Path, root: Path, runtime: str | None = None) -> dict[str, Any]:
    """Encoding alone, on tiles read beforehand, in the pipeline's batches (its own encode step)."""
    from ingest.pipeline import encode_tiles

    encoder, _ = load_bench_encoder(args.model, args.device)
    if runtime is not None:
        if not hasattr(encoder, "runtime"):
            return {"tiles": 0, "seconds": float("nan"), "tiles_per_s": float("nan"), "note": "one runtime only"}
        encoder.runtime = runtime
    reader, tiles = _first_tiles(scene, args.max_tiles)
    reader.close()
    encode_tiles(encoder, tiles[: args.batch_size])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(tiles), args.batch_size):
        encode_tiles(encoder, tiles[i : i + args.batch_size])
    seconds = time.perf_counter() - t0
    return {"tiles": len(tiles), "seconds": seconds, "tiles_per_s": len(tiles) / seconds}


def mode_eager(args: argparse.Namespace, scene: Path, root: Path) -> dict[str, Any]:
    """The baseline of the encoder's own speed-ups: the same network's plain eager forward (NCHW,
    BatchNorm unfolded), on the same tiles in the same batches."""
    from ftfsearch.model.ftf import prepare_images

    encoder, _ = load_bench_encoder(args.model, args.device)
    model = getattr(encoder, "model", None)
    if model is None or not hasattr(model, "forward_images"):
        return {"tiles": 0, "seconds": float("nan"), "tiles_per_s": float("nan"), "note": "no eager forward"}
    size = encoder.cfg.image_size  # type: ignore[attr-defined]
    _, tiles = _first_tiles(scene, args.max_tiles)

    @torch.inference_mode()
    def run(batch: list[Any]) -> None:
        x = torch.from_numpy(np.stack([t.pixels for t in batch])).to(encoder.device)  # as encode_images does
        model.forward_images(model.normalize_pixels(prepare_images(x, size)))

    run(tiles[: args.batch_size])  # warm-up
    sync()
    t0 = time.perf_counter()
    for i in range(0, len(tiles), args.batch_size):
        run(tiles[i : i + args.batch_size])
    sync()
    seconds = time.perf_counter() - t0
    return {"tiles": len(tiles), "seconds": seconds, "tiles_per_s": len(tiles) / seconds}


def mode_naive(args: argparse.Namespace, scene: Path, root: Path) -> dict[str, Any]:
    """The naive loop: per window, read, convert to PIL, encode it, upsert it; one thing at a time."""
    from PIL import Image

    from ftfsearch.store.base import TileBatch
    from ftfsearch.collection import collection_meta
    from ingest.pipeline import tile_payload, window_id
    from ingest.scenes import fingerprint
    from ingest.tiling import SceneReader, TilingSpec

    encoder, _ = load_bench_encoder(args.model, args.device)
    store, server = _open(args.backend, root)
    store.ensure_collection(collection_meta(encoder))
    reader = SceneReader(scene, TilingSpec(tile_size=256))
    fp = fingerprint(scene)
    n = 0
    t0 = time.perf_counter()
    for w in reader.windows():
        tile = reader.read(w)
        if tile is None:
            continue
        img = Image.fromarray(tile.pixels).convert("RGB")
        pixels = torch.from_numpy(np.asarray(img)).unsqueeze(0)
        with torch.inference_mode():
            coarse, regions = encoder.encode_images(pixels)
        store.upsert_tiles(
            TileBatch(
                ids=[window_id(fp, w)],
                coarse=coarse.float().numpy(),
                regions=regions.to(torch.float16).numpy(),
                payloads=[tile_payload("naive", reader, fp, tile, encoder)],
            )
        )
        n += 1
        if n >= args.naive_tiles:
            break
    seconds = time.perf_counter() - t0
    reader.close()
    store.close()
    if server is not None:
        server.stop()
    return {"tiles": n, "seconds": seconds, "tiles_per_s": n / seconds}


def mode_torch(args: argparse.Namespace, scene: Path, root: Path) -> dict[str, Any]:
    """Encoder-only with the fused torch image path instead of ONNX Runtime (same vectors within 1e-4)."""
    return mode_encoder(args, scene, root, runtime="torch")


MODES = {"pipeline": mode_pipeline, "encoder": mode_encoder, "torch": mode_torch, "eager": mode_eager, "naive": mode_naive}


def _child(args: argparse.Namespace) -> int:
    scene = scene_path(args.size)
    root = Path(tempfile.mkdtemp(prefix="ingest-", dir=CACHE))
    try:
        res = MODES[args.mode](args, scene, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print("RESULT " + json.dumps(res))
    return 0


def main(args: argparse.Namespace) -> int:
    if args.mode != "all":
        return _child(args)
    scene = scene_path(args.size)
    import rasterio

    with rasterio.open(scene) as ds:
        w, h = ds.width, ds.height
    results: dict[str, dict[str, Any]] = {}
    for mode in ("pipeline", "encoder", "torch", "eager", "naive"):
        cmd = [sys.executable, "-m", "bench", "ingest", "--mode", mode, "--max-tiles", str(args.max_tiles),
               "--naive-tiles", str(args.naive_tiles), "--size", str(args.size), "--batch-size", str(args.batch_size),
               "--readers", str(args.readers), "--backend", args.backend, "--device", args.device]
        if args.model:
            cmd += ["--model", args.model]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            sys.stderr.write(out.stderr[-4000:])
            raise SystemExit(f"bench ingest --mode {mode} failed (exit {out.returncode})")
        results[mode] = json.loads(line[-1][len("RESULT "):])
    p, e, n = results["pipeline"], results["encoder"], results["naive"]
    res = {
        "benchmark": "ingest",
        "scene": str(scene),
        "scene_px": [w, h],
        "backend": args.backend,
        "batch_size": args.batch_size,
        "readers": args.readers,
        "max_tiles": args.max_tiles,
        "machine": machine(),
        "encoder": p["encoder"],
        "encoder_note": p["encoder_note"],
        "tiles_per_s": round(p["tiles_per_s"], 2),
        "encoder_only_tiles_per_s": round(e["tiles_per_s"], 2),
        "naive_tiles_per_s": round(n["tiles_per_s"], 2),
        "eager_encoder_tiles_per_s": round(results["eager"]["tiles_per_s"], 2),
        "torch_encoder_tiles_per_s": round(results["torch"]["tiles_per_s"], 2),
        "encoder_vs_eager": round(e["tiles_per_s"] / results["eager"]["tiles_per_s"], 2),
        "pipeline_vs_encoder": round(p["tiles_per_s"] / e["tiles_per_s"], 3),
        "pipeline_vs_naive": round(p["tiles_per_s"] / n["tiles_per_s"], 2),
        "peak_rss_mb": p["peak_rss_mb"],
        "modes": results,
    }
    print(report(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    return 0


def report(res: dict[str, Any]) -> str:
    m = res["modes"]
    p = m["pipeline"]
    rows = [
        ["pipeline end to end", p["tiles"], round(p["seconds"], 1), res["tiles_per_s"], 1.0, p["peak_rss_mb"]],
        ["encoder only (tiles pre-read)", m["encoder"]["tiles"], round(m["encoder"]["seconds"], 1),
         res["encoder_only_tiles_per_s"], round(res["encoder_only_tiles_per_s"] / res["tiles_per_s"], 2),
         m["encoder"]["peak_rss_mb"]],
        ["encoder only, fused torch instead of ONNX Runtime", m["torch"]["tiles"], round(m["torch"]["seconds"], 1),
         res["torch_encoder_tiles_per_s"], round(res["torch_encoder_tiles_per_s"] / res["tiles_per_s"], 2),
         m["torch"]["peak_rss_mb"]],
        ["eager NCHW forward, same network (tiles pre-read)", m["eager"]["tiles"], round(m["eager"]["seconds"], 1),
         res["eager_encoder_tiles_per_s"], round(res["eager_encoder_tiles_per_s"] / res["tiles_per_s"], 2),
         m["eager"]["peak_rss_mb"]],
        ["naive loop (batch of 1)", m["naive"]["tiles"], round(m["naive"]["seconds"], 1), res["naive_tiles_per_s"],
         round(res["naive_tiles_per_s"] / res["tiles_per_s"], 3), m["naive"]["peak_rss_mb"]],
    ]
    st = p["stage_seconds"]
    return (
        f"ingest benchmark: scene {res['scene_px'][0]} x {res['scene_px'][1]} px ({p.get('windows_in_scene')} tiles of "
        f"256 px), backend={res['backend']}, batch {res['batch_size']}, {res['readers']} readers, first "
        f"{res['max_tiles']} tiles measured\nencoder: {res['encoder']} ({res['encoder_note']})\n"
        f"{machine_line(res['machine'])}\n"
        + table("", ["mode", "tiles", "s", "tiles/s", "x pipeline", "peak RSS MB"], rows)
        + f"\npipeline stage time (wall, on the encoding thread: waiting for tiles, encoding, waiting for "
        f"the store): read {st['read']} s, encode {st['encode']} s, write {st['write']} s\nencoder-only / eager forward: {res['encoder_vs_eager']}x; "
        f"pipeline / encoder-only: {res['pipeline_vs_encoder']:.0%}; "
        f"pipeline / naive: {res['pipeline_vs_naive']}x"
    )
