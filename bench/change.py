"""Change search at scale (issue 25): two dates of N tiles each in a real embedded store (Qdrant
Edge), synthetic vectors (unit Gaussian; the later date a perturbed copy) on a ground grid, the
later grid shifted by a tenth of a tile so every place pairs by overlap as real scenes do. Times
``change`` with a text query and without (p50 of runs; wall and the process's CPU time, which a
loaded machine inflates less), the stages as the command reports them:
the fast-then-fine path the command runs, and in the same run the baseline that scores every
pair with the second stage (``exhaustive=True``, BTI over all places as before the shortlist),
with how many of the fast path's top ``k`` places the baseline's top ``k`` holds. The store is
built once under ``.cache/bench`` and reused.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import CACHE, load_bench_encoder, machine, machine_line, table
from ftfsearch.collection import collection_meta
from ftfsearch.store import open_store
from ftfsearch.store.base import SceneRecord, TileBatch

DATES = ("2019-06-01T00:00:00Z", "2021-06-01T00:00:00Z")
STEP = 0.001
"""Degrees per tile side."""


def add_parser(sub: Any) -> None:
    c = sub.add_parser("change", help="change search p50 over two dates of N synthetic tiles each (Edge store)")
    c.add_argument("--tiles", type=int, default=100_000, help="tiles per date")
    c.add_argument("--runs", type=int, default=5)
    c.add_argument("--exhaustive-runs", type=int, default=None,
                   help="runs of the baseline that scores every pair (default: --runs; 0 skips it)")
    c.add_argument("--model", default=None)
    c.add_argument("--device", default="cpu")
    c.add_argument("--json", type=Path, default=None)


def _build(store: Any, encoder: Any, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    side = math.ceil(math.sqrt(n))
    dim, regions = encoder.dim, encoder.num_regions
    store.ensure_collection(collection_meta(encoder))
    page = 2000
    for d, (date, shift) in enumerate(zip(DATES, (0.0, 0.1 * STEP))):
        sid = f"synthetic_{date[:4]}"
        for start in range(0, n, page):
            idx = np.arange(start, min(n, start + page))
            g = np.random.default_rng(seed + int(start)).normal(size=(len(idx), dim)).astype(np.float32)
            r = np.random.default_rng(seed + int(start) + 1).normal(size=(len(idx), regions, dim)).astype(np.float32)
            if d == 1:  # the later date: the same places, moved a little (some a lot)
                amount = np.where(rng.random(len(idx)) < 0.01, 1.0, 0.1)[:, None]
                g = g + amount * rng.normal(size=g.shape).astype(np.float32)
                r = r + amount[:, :, None] * rng.normal(size=r.shape).astype(np.float32)
            g /= np.linalg.norm(g, axis=-1, keepdims=True)
            r /= np.linalg.norm(r, axis=-1, keepdims=True)
            payloads = []
            for i in idx:
                col, row = int(i % side), int(i // side)
                w, s = -100.0 + col * STEP + shift, 40.0 + row * STEP
                payloads.append({"scene_id": sid, "path": f"/synthetic/{sid}.tif", "level": 1,
                                 "window": {"col": col * 256, "row": row * 256, "width": 256, "height": 256},
                                 "tile_size": 256, "bbox": [w, s, w + STEP, s + STEP], "west": w, "south": s,
                                 "east": w + STEP, "north": s + STEP,
                                 "center": {"lon": w + STEP / 2, "lat": s + STEP / 2}, "acquired": date})
            ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{sid}/{i}")) for i in idx]
            store.upsert_tiles(TileBatch(ids=ids, coarse=g, regions=r.astype(np.float16), payloads=payloads))
        store.put_scene(SceneRecord(scene_id=sid, path=f"/synthetic/{sid}.tif", fingerprint=sid, state="complete",
                                    model_id=encoder.id, tiling={}, expected_tiles=n,
                                    bbox=[-100.0 + shift, 40.0, -100.0 + shift + side * STEP, 40.0 + side * STEP],
                                    extra={"acquired": date}))
    store.optimize()


def main(args: argparse.Namespace) -> int:
    from ftfsearch.change import change_search
    from ftfsearch.search import Searcher
    from ftfsearch.times import parse_range

    encoder, label = load_bench_encoder(args.model, args.device)
    root = CACHE / f"change-{args.tiles}-{encoder.id.replace(':', '_').replace('/', '_')}"
    built = (root / ".complete").is_file()
    store = open_store(collection="tiles", store_dir=root / "store", qdrant_url=None, api_key=None, timeout=60.0)
    try:
        if not built:
            t0 = time.perf_counter()
            _build(store, encoder, args.tiles)
            print(f"built {2 * args.tiles:,} tiles in {time.perf_counter() - t0:.0f} s")
            (root / ".complete").write_text("ok")
        searcher = Searcher(encoder, store, vector_cache_bytes=0)
        before, after = parse_range("../2020-01-01", "before"), parse_range("2020-01-01/..", "after")
        res: dict[str, Any] = {"machine": machine(), "model": label, "tiles_per_date": args.tiles, "modes": {}}
        baseline_runs = args.runs if args.exhaustive_runs is None else args.exhaustive_runs
        for mode, text in (("text query", "buildings next to a parking lot"), ("no query (vectors moved)", None)):
            tops: dict[str, list[str]] = {}
            for path, runs in (("fast then fine", args.runs), ("every pair (baseline)", baseline_runs)):
                times, cpu, stages = [], [], []
                for _ in range(runs):
                    t0, c0 = time.perf_counter(), time.process_time()
                    out = change_search(searcher, before, after, text=text, k=10, exhaustive=path != "fast then fine")
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
                    stages.append(out.timings_ms)
                    tops[path] = [h.after.id for h in out.hits]
                if runs:
                    res["modes"][f"{mode}, {path}"] = {
                        "p50_s": statistics.median(times), "runs_s": times, "cpu_p50_s": statistics.median(cpu),
                        "stages_ms": {k: statistics.median(s[k] for s in stages) for k in stages[0]}}
            if len(tops) == 2:
                same = len(set(tops["fast then fine"]) & set(tops["every pair (baseline)"]))
                res["modes"][f"{mode}, fast then fine"]["top10_shared_with_baseline"] = same
    finally:
        store.close()
    print(report(res))
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


def report(res: dict[str, Any]) -> str:
    rows = [[mode, f"{m['p50_s']:.2f}", f"{m['cpu_p50_s']:.2f}", ", ".join(f"{k} {v:.0f}" for k, v in m["stages_ms"].items()),
             str(m.get("top10_shared_with_baseline", ""))]
            for mode, m in res["modes"].items()]
    return "\n".join([
        table(f"change search: two dates of {res['tiles_per_date']:,} synthetic tiles each, embedded store, "
              f"{res['model']}", ["mode", "p50 s", "CPU s (p50)", "stages (ms, p50)", "top 10 shared"], rows),
        machine_line(res["machine"]),
    ])
