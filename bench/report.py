"""``python -m bench report``: the Markdown tables of BENCHMARKS.md from bench/results/*.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import table

RESULTS = Path(__file__).resolve().parent / "results"


def _load(pattern: str) -> list[dict[str, Any]]:
    out = [json.loads(p.read_text()) for p in sorted(RESULTS.glob(pattern))]
    return sorted(out, key=lambda r: (r.get("backend", ""), r.get("points", 0)))


def query_table(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        s, b = r["stages"], r["baselines"]
        e2e = r["end_to_end_ms_p50"]
        body.append([
            r["backend"], r["points"], r["machine"]["load_avg_1m"],
            s["encode_text"]["p50_ms"], s["recall"]["p50_ms"], s["recall_fetch"]["p50_ms"], s["rerank"]["p50_ms"],
            r["fetch_rerank_ms_p50"], e2e, r["end_to_end_ms_p95"],
            f"{b['coarse_only_ms_p50']:.2f} ({b['coarse_only_ms_p50'] / e2e:.2f}x)",
            f"{b['server_maxsim_ms_p50']:.2f} ({b['server_maxsim_ms_p50'] / e2e:.2f}x)",
            f"{b['plain_fetch_rerank_ms_p50']:.1f} ({b['plain_fetch_rerank_ms_p50'] / r['fetch_rerank_ms_p50']:.1f}x)",
            f"{b['exhaustive_ms_p50']:.0f} ({r['exhaustive_speedup']}x)",
            r["recall_at_10_vs_exhaustive"], r["qps_concurrency_1"], r["qps_concurrency_4"],
        ])
    head = table("", [
        "backend", "tiles", "load", "text ms", "recall ms", "recall+fetch ms", "BTI ms", "recall+fetch+BTI ms",
        "FTF e2e p50", "FTF e2e p95", "coarse-only e2e (x FTF)", "Qdrant MaxSim e2e (x FTF)",
        "plain fetch+BTI (x fast)", "exhaustive BTI e2e (speed-up)", "R@10 vs exh.", "QPS c=1", "QPS c=4",
    ], body)
    cached = [r for r in rows if "end_to_end_cached_ms_p50" in r]
    if not cached:
        return head
    body = []
    for r in cached:
        s, b = r["stages"], r["baselines"]
        c = r["end_to_end_cached_ms_p50"]
        body.append([
            r["backend"], r["points"], r["machine"]["load_avg_1m"], f"{r['vector_cache_hit_rate']:.0%}",
            s["cached_recall_ids"]["p50_ms"], s["cached_vectors"]["p50_ms"], s["cached_rerank"]["p50_ms"],
            c, r["end_to_end_cached_ms_p95"], r["end_to_end_cold_cache_ms_p50"],
            r["end_to_end_ms_p50"], f"{b['server_maxsim_ms_p50']:.2f} ({b['server_maxsim_ms_p50'] / c:.2f}x)",
            f"{r['cached_identical_results']:.0%}", r["qps_cached_concurrency_1"], r["qps_cached_concurrency_4"],
        ])
    return head + "\n\nWith the vector cache (`serve`):\n" + table("", [
        "backend", "tiles", "load", "hit rate", "recall ids ms", "vectors + payloads ms", "BTI ms",
        "cached e2e p50", "cached e2e p95", "cache emptied e2e p50", "one-call e2e p50", "Qdrant MaxSim e2e (x cached)",
        "same results", "QPS c=1", "QPS c=4",
    ], body)


def transport_table(rows: list[dict[str, Any]]) -> str:
    """http.client against httpx on the server's REST path, interleaved in one run (``transport``)."""
    body = []
    for r in rows:
        t = r.get("transport")
        if not t:
            continue
        body.append([
            r["points"], t["queries"],
            f"{t['http_client_one_call']:.2f} / {t['httpx_one_call']:.2f}",
            f"{t['http_client_cached']:.2f} / {t['httpx_cached']:.2f}", f"{t['cached_hit_rate']:.0%}",
            f"{t['http_client_maxsim']:.2f} / {t['httpx_maxsim']:.2f}",
            f"{t['http_client_cached'] / t['http_client_maxsim']:.2f}x",
        ])
    if not body:
        return ""
    return table("", ["tiles", "queries", "one call: http.client / httpx", "cached: http.client / httpx",
                      "cache hit rate", "Qdrant MaxSim: http.client / httpx", "cached / MaxSim (http.client)"], body)


def ingest_table(rows: list[dict[str, Any]]) -> str:
    body = [[
        f"{r['scene_px'][0]}x{r['scene_px'][1]}", r["backend"], r["modes"]["pipeline"]["tiles"],
        r["machine"]["load_avg_1m"], r["tiles_per_s"], r["encoder_only_tiles_per_s"], r["naive_tiles_per_s"],
        f"{r['pipeline_vs_encoder']:.0%}", f"{r['pipeline_vs_naive']}x", r["peak_rss_mb"],
    ] for r in rows]
    return table("", ["scene px", "backend", "tiles measured", "load", "pipeline tiles/s", "encoder-only tiles/s",
                      "naive tiles/s", "pipeline/encoder", "pipeline/naive", "peak RSS MB"], body)


def main() -> int:
    queries = _load("query-*.json")
    transport = transport_table(queries)
    print("## query\n" + query_table(queries)
          + (f"\n\n## server REST transport (repeated queries)\n{transport}" if transport else "")
          + "\n\n## ingest\n" + ingest_table(_load("ingest-*.json")))
    return 0
