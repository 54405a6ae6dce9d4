"""``python -m bench query|ingest|area|scene|remote|examples|generalise|workers|watch|change|gpu|processes|text|report``: see BENCHMARKS.md for the commands and the results."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench.common import add_device_option


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("query", help="query latency: FTF vs coarse-only, Qdrant MaxSim, exhaustive BTI")
    q.add_argument("--backend", choices=["edge", "server"], default="server")
    q.add_argument("--points", type=int, default=10000)
    q.add_argument("--k", type=int, default=10)
    q.add_argument("--recall-k", type=int, default=100)
    q.add_argument("--queries", type=int, default=200)
    q.add_argument("--warmup", type=int, default=20)
    q.add_argument("--exhaustive-queries", type=int, default=20)
    q.add_argument("--plain-queries", type=int, default=20)
    q.add_argument("--transport-queries", type=int, default=50, help="server: http.client vs httpx, interleaved")
    q.add_argument("--model", default=None, help="model name or directory (default: the shipped default)")
    q.add_argument("--threads", type=int, default=1, help="torch threads (query-time ops are small)")
    q.add_argument("--json", type=Path, default=None)
    i = sub.add_parser("ingest", help="ingest throughput on a >= 20000 x 20000 px scene of real pixels")
    i.add_argument("--max-tiles", type=int, default=2000, help="tiles measured per mode (bounds the run time)")
    i.add_argument("--naive-tiles", type=int, default=300)
    i.add_argument("--size", type=int, default=20480, help="scene side in pixels")
    i.add_argument("--batch-size", type=int, default=32)
    i.add_argument("--readers", type=int, default=2)
    i.add_argument("--backend", choices=["edge", "server"], default="edge")
    i.add_argument("--model", default=None)
    i.add_argument("--json", type=Path, default=None)
    i.add_argument("--mode", choices=["all", "pipeline", "encoder", "torch", "eager", "naive"], default="all", help=argparse.SUPPRESS)
    rm = sub.add_parser("remote", help="a COG ingested over loopback HTTP (/vsicurl/) vs the same file locally")
    rm.add_argument("--scale", type=int, default=2, help="upsample the real COG to this many times its side")
    rm.add_argument("--levels", default="1", help="tiling levels, e.g. 1,2")
    rm.add_argument("--model", default=None)
    sc = sub.add_parser("scene", help="one real scene: ingest tiles/s and query p50 on both backends")
    sc.add_argument("path", type=Path)
    sc.add_argument("--model", default=None)
    sc.add_argument("--queries", type=int, default=100)
    sc.add_argument("--json", type=Path, default=None)
    ex = sub.add_parser("examples", help="search by example (issue 12): P@10 on UCM/RSICD val+test, latency at 100k")
    ex.add_argument("--part", choices=["all", "quality", "latency"], default="all")
    ex.add_argument("--trials", type=int, default=5, help="random example sets per class")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--points", type=int, default=100000, help="latency: tiles in the collection")
    ex.add_argument("--queries", type=int, default=200, help="latency: queries per kind")
    ex.add_argument("--warmup", type=int, default=20)
    ex.add_argument("--backends", default="server,edge", help="latency: comma-separated, of server, edge")
    ex.add_argument("--model", default=None)
    ex.add_argument("--threads", type=int, default=1, help="torch threads for the latency part")
    ex.add_argument("--encode-threads", type=int, default=0, help="torch threads for encoding the labelled images (0: torch's default)")
    ex.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    gen = sub.add_parser("generalise", help="scene words (mAP by class phrase) and things inside a mosaic scene (P@10/50), per model")
    gen.add_argument("--model", action="append", default=None,
                     help="model name or directory, repeatable (default: the shipped default)")
    gen.add_argument("--json", type=Path, default=None, help="default: bench/results/generalise.json")
    from bench.workers import add_parser as add_workers

    add_workers(sub)
    from bench.area import add_parser as add_area

    add_area(sub)
    from bench.change import add_parser as add_change
    from bench.watch import add_parser as add_watch

    add_watch(sub)
    add_change(sub)
    g = sub.add_parser("gpu", help="the GPU check: CPU vs CUDA vectors, rerank, training, eval, timings (bench/gpu.py)")
    g.add_argument("--dry-run", action="store_true", help="run on the CPU in place of CUDA (automatic without CUDA)")
    g.add_argument("--tiles", type=int, default=0, help="tiles for the encoder timing (default 1024, 64 in a dry run)")
    g.add_argument("--queries", type=int, default=20, help="captions compared and reranked")
    g.add_argument("--batch-size", type=int, default=128, help="tiles per encode call in the timing")
    g.add_argument("--json", type=Path, default=None, help="default bench/results/gpu.json (gpu-dry-run.json)")
    for parser in (q, i, rm, sc, ex, gen):
        add_device_option(parser)
    pr = sub.add_parser("processes", help="CLI process times: --version, a text query, a refused argument (min of N)")
    pr.add_argument("--store", type=Path, default=Path(".demo/store"))
    pr.add_argument("--text", default="houses with red roofs")
    pr.add_argument("--runs", type=int, default=5)
    pr.add_argument("--baseline-cli", default=None, help="another install's ftfsearch, timed in the same run")
    pr.add_argument("--json", type=Path, default=None)
    tx = sub.add_parser("text", help="text encoding p50: the torch tower against its ONNX Runtime export")
    tx.add_argument("--queries", type=int, default=200)
    tx.add_argument("--warmup", type=int, default=20)
    tx.add_argument("--json", type=Path, default=None)
    sub.add_parser("report", help="Markdown tables of bench/results/*.json (for BENCHMARKS.md)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpcore", "ingest.tiling", "rasterio"):  # no log line inside a timed call
        logging.getLogger(noisy).setLevel(logging.WARNING if noisy.startswith("http") else logging.ERROR)
    if args.cmd == "query":
        from bench.query import Options, main as query_main

        return query_main(
            Options(
                backend=args.backend, points=args.points, k=args.k, recall_k=args.recall_k, queries=args.queries,
                warmup=args.warmup, exhaustive_queries=args.exhaustive_queries, plain_queries=args.plain_queries,
                transport_queries=args.transport_queries,
                model=args.model, threads=args.threads, json_path=args.json, device=args.device,
            )
        )
    if args.cmd in ("area", "watch", "change"):  # modules whose main takes the parsed arguments
        import importlib

        return int(importlib.import_module(f"bench.{args.cmd}").main(args))
    if args.cmd == "workers":
        from bench.workers import main as workers_main

        return workers_main(args)
    if args.cmd == "remote":
        from bench.remote import main as remote_main

        return remote_main(args.scale, args.model, tuple(int(v) for v in args.levels.split(",")), args.device)
    if args.cmd == "scene":
        from bench.scene import main as scene_main

        return scene_main(args.path, args.model, args.queries, args.json, args.device)
    if args.cmd == "examples":
        from bench.examples import Options as ExOptions, main as examples_main

        return examples_main(
            ExOptions(
                part=args.part, trials=args.trials, seed=args.seed, points=args.points, queries=args.queries,
                warmup=args.warmup, backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
                model=args.model, threads=args.threads, encode_threads=args.encode_threads, out_dir=args.out_dir,
                device=args.device,
            )
        )
    if args.cmd == "generalise":
        from bench.generalise import main as generalise_main

        return generalise_main(args.model or [None], args.json, args.device)
    if args.cmd == "gpu":
        from bench.gpu import main as gpu_main

        return gpu_main(args)
    if args.cmd == "text":
        from bench.text import main as text_main

        return text_main(args.queries, args.warmup, args.json)
    if args.cmd == "processes":
        from bench.processes import main as processes_main

        return processes_main(args.store, args.text, args.runs, args.json, args.baseline_cli)
    if args.cmd == "report":
        from bench.report import main as report_main

        return report_main()
    from bench.ingest import main as ingest_main

    return ingest_main(args)


if __name__ == "__main__":
    sys.exit(main())
