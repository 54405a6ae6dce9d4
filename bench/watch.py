"""What watches cost an ingest (issue 25): the same real scene ingested into fresh embedded stores
with no watch and with N watches, runs interleaved (A B A B ...) in one process, tiles/s compared.

The watches are real captions encoded by the model; all but two have a threshold a few tiles reach,
two fire on every tile (the worst case of hits written), so the cost measured includes scoring and
recording hits. No webhook: delivery runs on its own thread and is not the ingest's cost.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import GEOTIFFS, captions, load_bench_encoder, machine, machine_line, median, table
from ftfsearch.collection import collection_meta
from ftfsearch.store import open_store
from ftfsearch.watch import Watch, WatchScorer, add_watch, record_hits
from ingest.pipeline import IngestOptions, ingest_scene
from ingest.tiling import TilingSpec

SCENE = GEOTIFFS / "opengeos_data" / "naip_m_4709963_se_14_1_20200831.tif"


def add_parser(sub: Any) -> None:
    w = sub.add_parser("watch", help="ingest tiles/s with and without N watches (same run, interleaved)")
    w.add_argument("--watches", type=int, default=20)
    w.add_argument("--rounds", type=int, default=3, help="runs of each mode, interleaved")
    w.add_argument("--tile-size", type=int, default=64)
    w.add_argument("--model", default=None)
    w.add_argument("--device", default="cpu")
    w.add_argument("--json", type=Path, default=None)


def _watches(encoder: Any, n: int) -> list[Watch]:
    params = encoder.rerank_params
    rerank = {"tau": params.tau, "alpha": params.alpha, "balanced": params.balanced}
    texts = captions(n)
    vectors = np.asarray(encoder.encode_text(texts), dtype=np.float32)
    return [Watch(name=f"w{i:02d}", query=t, vector=v.tolist(), min_score=-1.0 if i < 2 else 0.45,
                  threshold_source="bench", model_id=encoder.id, rerank=rerank)
            for i, (t, v) in enumerate(zip(texts, vectors))]


def _run(encoder: Any, root: Path, watches: list[Watch], tile_size: int) -> dict[str, float]:
    store_dir = root / "store"
    shutil.rmtree(store_dir, ignore_errors=True)
    store = open_store(collection="tiles", store_dir=store_dir, qdrant_url=None, api_key=None, timeout=30.0)
    try:
        if watches:
            store.ensure_collection(collection_meta(encoder))
            for w in watches:
                add_watch(store, w)
        options = IngestOptions(spec=TilingSpec(tile_size=tile_size, levels=(1,)))
        summary = ingest_scene(SCENE, encoder, store, options)
        hits = len(store.list_records("watch_hit")) if watches else 0
        hook_s = _hook_seconds(store, watches, encoder) if watches else 0.0
    finally:
        store.close()
    return {"tiles": summary.written, "seconds": summary.seconds, "tiles_per_s": summary.tiles_per_s, "hits": hits,
            "hook_s": hook_s}


def _hook_seconds(store: Any, watches: list[Watch], encoder: Any, batch_size: int = 32) -> float:
    """The hook's own work on the tiles just written, timed alone: score every batch of 32 against
    the watches and record the hits (again: the same keys), as the writer thread does after each upsert."""
    scorer = WatchScorer(watches, encoder.region_boxes)
    total = 0.0
    for batch in store.scan(None, page=batch_size):
        t0 = time.perf_counter()
        record_hits(store, scorer.score(batch))
        total += time.perf_counter() - t0
    return total


def main(args: argparse.Namespace) -> int:
    encoder, label = load_bench_encoder(args.model, args.device)
    watches = _watches(encoder, args.watches)
    root = Path(tempfile.mkdtemp(prefix="ftf-bench-watch-"))
    runs: dict[str, list[dict[str, float]]] = {"none": [], "watches": []}
    try:
        _run(encoder, root, [], args.tile_size)  # warm-up: file cache, first-call costs
        for _ in range(args.rounds):
            runs["none"].append(_run(encoder, root, [], args.tile_size))
            runs["watches"].append(_run(encoder, root, watches, args.tile_size))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = median([r["tiles_per_s"] for r in runs["none"]])
    with_w = median([r["tiles_per_s"] for r in runs["watches"]])
    hook = median([r["hook_s"] / r["seconds"] for r in runs["watches"]])
    res = {"machine": machine(), "model": label, "device": args.device, "scene": str(SCENE.name), "tile_size": args.tile_size,
           "watches": args.watches, "runs": runs, "tiles_per_s_none": base, "tiles_per_s_watches": with_w,
           "cost": 1 - with_w / base, "hook_share": hook}
    print(report(res))
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


def report(res: dict[str, Any]) -> str:
    rows = [[mode, ", ".join(f"{r['tiles_per_s']:.1f}" for r in res["runs"][key]),
             f"{res['tiles_per_s_' + key]:.1f}", int(res["runs"][key][0]["tiles"]), int(res["runs"][key][0]["hits"])]
            for mode, key in (("no watch", "none"), (f"{res['watches']} watches", "watches"))]
    return "\n".join([
        table(f"ingest with watches: {res['scene']}, {res['tile_size']} px tiles, {res['model']} on {res['device']}",
              ["mode", "tiles/s per run", "median", "tiles", "hits"], rows),
        f"cost of {res['watches']} watches: {100 * res['cost']:.1f}% of ingest throughput (median of runs); the hook's "
        f"own work (scoring every batch and recording its hits, timed alone) is {100 * res['hook_share']:.2f}% of "
        "the ingest's wall time",
        machine_line(res["machine"]),
    ])
