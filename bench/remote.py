"""A COG ingested over loopback HTTP (GDAL /vsicurl/ range requests) against the same file read
locally: bytes the server sent, requests, and seconds, for reading every tile and for a whole
ingest. The server is the tests' Range-honouring loopback server (tests/_http_server.py), so
what is counted is what GDAL fetched. The COG is the real rio-tiler ``cog.tif`` (2658 x 2667
uint16, 256 px tiles, overviews) from ../shared/data, upsampled to ``--scale`` times its side as
a tiled, deflated GeoTIFF with overviews (written once under .cache/bench)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import rasterio
from rasterio.enums import Resampling

from bench.common import CACHE, GEOTIFFS, load_bench_encoder, machine, machine_line, table

REPO = Path(__file__).resolve().parents[1]


def cog_path(scale: int) -> Path:
    out = CACHE / f"cog_x{scale}.tif"
    if out.is_file():
        return out
    src_path = GEOTIFFS / "rio-tiler" / "cog.tif"
    CACHE.mkdir(parents=True, exist_ok=True)
    with rasterio.open(src_path) as src:
        h, w = src.height * scale, src.width * scale
        profile = {**src.profile, "height": h, "width": w, "tiled": True, "blockxsize": 512, "blockysize": 512,
                   "compress": "deflate", "transform": src.transform @ src.transform.scale(1 / scale, 1 / scale)}
        tmp = out.with_suffix(".tmp.tif")
        with rasterio.open(tmp, "w", **profile) as dst:
            for row in range(0, h, 2048):
                for col in range(0, w, 2048):
                    win = rasterio.windows.Window(col, row, min(2048, w - col), min(2048, h - row))
                    src_win = rasterio.windows.Window(win.col_off / scale, win.row_off / scale,
                                                      win.width / scale, win.height / scale)
                    dst.write(src.read(1, window=src_win, out_shape=(int(win.height), int(win.width)),
                                       resampling=Resampling.bilinear), 1, window=win)
            dst.build_overviews([2, 4, 8, 16, 32], Resampling.average)
        tmp.rename(out)
    return out


def run(scale: int, model: str | None, levels: tuple[int, ...], device: str = "auto") -> dict[str, Any]:
    from tests._http_server import RangeServer  # the tests' loopback server (tests/ beside bench/)

    from ftfsearch.store import open_store
    from ingest.pipeline import IngestOptions, ingest_scene
    from ingest.tiling import SceneReader, TilingSpec

    cog = cog_path(scale)
    size = cog.stat().st_size
    spec = TilingSpec(tile_size=256, levels=levels)
    encoder, model_id = load_bench_encoder(model, device)
    rows = []
    with tempfile.TemporaryDirectory() as www, RangeServer(Path(www)) as server:
        # two names of one file: GDAL caches what it fetched per URL, and each pass must start cold
        for name in ("read.tif", "ingest.tif"):
            shutil.copyfile(cog, Path(www) / name)
        for name in ("local", "http"):
            server.reset()
            source: Path | str = cog if name == "local" else f"{server.url}/read.tif"
            t0 = time.perf_counter()
            with SceneReader(source, spec) as reader:
                opened = time.perf_counter() - t0
                open_bytes = server.served["read.tif"]
                windows = reader.windows()
                for w in windows:
                    reader.read(w)
            read_s = time.perf_counter() - t0
            read_bytes = server.served["read.tif"]
            server.reset()
            source = cog if name == "local" else f"{server.url}/ingest.tif"
            with tempfile.TemporaryDirectory() as store_dir:
                store = open_store(collection="tiles", store_dir=Path(store_dir), qdrant_url=None, api_key=None,
                                   timeout=30.0)
                t0 = time.perf_counter()
                summary = ingest_scene(source, encoder, store, IngestOptions(spec=spec, batch_size=32, readers=2))
                ingest_s = time.perf_counter() - t0
                store.close()
            rows.append({
                "source": name, "tiles": summary.tiles_in_store, "open_s": opened, "open_share": open_bytes / size,
                "read_all_s": read_s, "read_share": read_bytes / size, "ingest_s": ingest_s,
                "ingest_share": server.served["ingest.tif"] / size, "requests": len(server.requests),
            })
    return {"machine": machine(), "model": model_id, "file_bytes": size, "scale": scale, "levels": list(levels),
            "rows": rows}


def main(scale: int = 2, model: str | None = None, levels: tuple[int, ...] = (1,), device: str = "auto") -> int:
    out = run(scale, model, levels, device)
    print(machine_line(out["machine"]))
    print(f"model {out['model']}; file {out['file_bytes'] / 1e6:.1f} MB; levels {out['levels']}")
    local = next(r for r in out["rows"] if r["source"] == "local")
    http = next(r for r in out["rows"] if r["source"] == "http")
    print(table(
        "COG over loopback HTTP vs the same file locally (bytes: share of the file the server sent)",
        ["source", "tiles", "open s", "open bytes", "read all tiles s", "x local", "read bytes", "ingest s",
         "x local", "ingest bytes", "requests (ingest)"],
        [[r["source"], r["tiles"], round(r["open_s"], 3), f"{r['open_share']:.3f}", round(r["read_all_s"], 2),
          round(r["read_all_s"] / local["read_all_s"], 2), f"{r['read_share']:.2f}", round(r["ingest_s"], 2),
          round(r["ingest_s"] / local["ingest_s"], 2), f"{r['ingest_share']:.2f}",
          r["requests"] if r is http else "-"] for r in out["rows"]],
    ))
    return 0
