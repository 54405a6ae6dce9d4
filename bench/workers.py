"""Parallel ingest workers: tiles/s of 1, 2, 3 concurrent ``ingest --from LIST --shard K/N`` workers
into one Qdrant server, against one worker, in the same run.

The batch: 12 scenes of equal size (640 x 768 px crops of the real 16-bit COG
rio-tiler/cog.tif, each a GeoTIFF), so that parts of equal count are parts of equal work and
the figure measures contention, not imbalance. Each worker is its own process that loads the
model and warms up first; all start ingesting together (a pipe says go), and the aggregate rate
is the tiles written by all over the time from the first start to the last finish.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CACHE, GEOTIFFS, add_device_option, machine, machine_line, table

SOURCE = "rio-tiler/cog.tif"
CROP_W, CROP_H, COLS, ROWS = 640, 768, 4, 3
TILE_SIZE, OVERLAP = 128, 0.5


def batch_list() -> Path:
    """The 12 crops (made once under .cache/bench) and a list file naming them relative to itself."""
    import rasterio
    from rasterio.windows import Window, transform as window_transform

    root = CACHE / "workers"
    lst = root / "list.txt"
    if lst.is_file():
        return lst
    root.mkdir(parents=True, exist_ok=True)
    src_path = GEOTIFFS / SOURCE
    if not src_path.is_file():
        raise SystemExit(f"{src_path}: missing; the workers benchmark needs ../shared/data")
    names = []
    with rasterio.open(src_path) as src:
        for r in range(ROWS):
            for c in range(COLS):
                win = Window(c * CROP_W, r * CROP_H, CROP_W, CROP_H)
                profile = dict(src.profile, width=CROP_W, height=CROP_H, transform=window_transform(win, src.transform),
                               tiled=True, blockxsize=256, blockysize=256, driver="GTiff")
                name = f"cog_r{r}c{c}.tif"
                with rasterio.open(root / name, "w", **profile) as dst:
                    dst.write(src.read(window=win))
                names.append(name)
    lst.write_text("# equal crops of rio-tiler/cog.tif\n" + "\n".join(names) + "\n")
    return lst


def child(args: argparse.Namespace) -> int:
    """One worker: load, warm up, say ready, wait for go, ingest its shard, print a JSON line."""
    import torch

    from bench.common import load_bench_encoder
    from ftfsearch.store import open_store
    from ingest.batch import Shard, expand_list, ingest_sources, partition
    from ingest.pipeline import IngestOptions
    from ingest.tiling import TilingSpec

    encoder, note = load_bench_encoder(args.model, args.device)
    encoder.encode_images(torch.zeros(args.batch_size, TILE_SIZE, TILE_SIZE, 3, dtype=torch.uint8))
    store = open_store(collection=args.collection, store_dir=None, qdrant_url=args.url, api_key=None, timeout=120.0)
    sources = partition(expand_list(args.list), Shard.parse(args.shard))
    options = IngestOptions(spec=TilingSpec(tile_size=TILE_SIZE, overlap=OVERLAP, levels=(1,)),
                            batch_size=args.batch_size)
    print("ready", flush=True)
    sys.stdin.readline()  # go
    t0 = time.time()
    result = ingest_sources(sources, encoder, store, options)
    t1 = time.time()
    store.close()
    print(json.dumps({"start": t0, "end": t1, "written": sum(s.written for s in result.done),
                      "failed": len(result.failed), "sources": len(sources), "encoder": encoder.id,
                      "encoder_note": note, "torch_threads": torch.get_num_threads()}), flush=True)
    return 0


def _run(workers: int, lst: Path, url: str, args: argparse.Namespace) -> dict[str, Any]:
    collection = f"workers_{workers}_{int(time.time())}"
    procs = []
    for k in range(workers):
        cmd = [sys.executable, "-m", "bench", "workers", "--child", "--list", str(lst), "--url", url,
               "--collection", collection, "--shard", f"{k}/{workers}", "--batch-size", str(args.batch_size),
               "--device", args.device]
        if args.model:
            cmd += ["--model", args.model]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for p in procs:
        line = p.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "ready":
            raise SystemExit(f"a worker failed to start: {line!r}")
    for p in procs:
        p.stdin.write("go\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
    reports = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a worker exited {p.returncode}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    from ftfsearch.store.server import ServerStore

    store = ServerStore(url, collection=collection, timeout=120.0)
    stored = store.count_tiles()
    store.drop_collection()
    store.close()
    written = sum(r["written"] for r in reports)
    if any(r["failed"] for r in reports) or stored != written:
        raise SystemExit(f"{workers} workers: {stored} tiles stored, {written} written, failures: {reports}")
    seconds = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    return {"workers": workers, "tiles": written, "seconds": seconds, "tiles_per_s": written / seconds,
            "per_worker": reports}


def main(args: argparse.Namespace) -> int:
    if args.child:
        return child(args)
    from deploy.qdrant_local import QdrantServer

    lst = batch_list()
    counts = [int(v) for v in args.workers.split(",")]
    m = machine()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ftf-bench-workers-", dir=CACHE) as tmp:
        with QdrantServer(tmp_root=Path(tmp)) as server:
            for rep in range(args.repeat):
                for n in counts:  # interleaved, so drift in the machine's load hits every count alike
                    r = _run(n, lst, server.url, args)
                    r["repeat"] = rep
                    runs.append(r)
                    print(f"{n} worker(s): {r['tiles']} tiles in {r['seconds']:.1f} s = {r['tiles_per_s']:.1f} tiles/s",
                          file=sys.stderr)
    import statistics

    best: dict[int, dict[str, Any]] = {}
    rows = []
    base = statistics.median(r["tiles_per_s"] for r in runs if r["workers"] == 1) if 1 in counts else None
    for n in counts:
        rates = [r["tiles_per_s"] for r in runs if r["workers"] == n]
        rate = statistics.median(rates)
        best[n] = {"tiles_per_s": rate, "runs": rates}
        rows.append([n, runs[[r["workers"] for r in runs].index(n)]["tiles"], rate,
                     rate / base if base else float("nan"), rate / n])
    encoder = runs[0]["per_worker"][0]["encoder"]
    print(table(
        f"ingest workers into one Qdrant server ({encoder}; {len(runs) // len(counts)} run(s) each, median)",
        ["workers", "tiles", "tiles/s (all)", "vs 1 worker", "tiles/s per worker"], rows,
    ))
    print(machine_line(m))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": m, "summary": best, "runs": runs,
                                         "tiling": {"tile_size": TILE_SIZE, "overlap": OVERLAP, "levels": [1]},
                                         "batch_size": args.batch_size, "scenes": ROWS * COLS}, indent=2))
    return 0


def add_parser(sub: Any) -> None:
    w = sub.add_parser("workers", help="tiles/s of 1, 2, 3 concurrent ingest --shard workers into one server")
    w.add_argument("--workers", default="1,2,3")
    w.add_argument("--repeat", type=int, default=1)
    w.add_argument("--batch-size", type=int, default=32)
    w.add_argument("--model", default=None)
    w.add_argument("--json", type=Path, default=None)
    add_device_option(w)
    w.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    w.add_argument("--list", type=Path, help=argparse.SUPPRESS)
    w.add_argument("--url", help=argparse.SUPPRESS)
    w.add_argument("--collection", help=argparse.SUPPRESS)
    w.add_argument("--shard", help=argparse.SUPPRESS)
