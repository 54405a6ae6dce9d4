"""``python -m bench scene PATH``: one real scene through the CLI's own path, on both backends.

Ingest (the pipeline with its default threads) then single-thread queries (as ``ftfsearch
query`` and ``serve`` run them) over real captions, on the embedded store and on a Qdrant
server started for the run: the everyday figures a user sees for one scene.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.common import captions, load_bench_encoder, machine, machine_line, median, table
from deploy.qdrant_local import QdrantServer
from ftfsearch.search import Searcher
from ftfsearch.store import open_store
from ingest.pipeline import IngestOptions, ingest_paths
from ingest.tiling import TilingSpec


def _measure(store: Any, path: Path, encoder: Any, texts: list[str], warmup: int) -> dict[str, Any]:
    threads = torch.get_num_threads()
    done, failed = ingest_paths([path], encoder, store, IngestOptions(spec=TilingSpec(levels=(1, 2))))
    if failed:
        raise SystemExit(f"{path}: {failed[0].message}")
    s = done[0]
    torch.set_num_threads(1)
    try:
        searcher = Searcher(encoder, store)
        lat: list[float] = []
        for i, text in enumerate(texts):
            response = searcher.search(text, k=10, recall_k=100)
            if i >= warmup:
                lat.append(sum(response.timings_ms.values()))
    finally:
        torch.set_num_threads(threads)
    lat.sort()
    return {
        "tiles": s.tiles_in_store, "ingest_s": round(s.seconds, 2), "tiles_per_s": round(s.tiles_per_s, 1),
        "query_ms_p50": round(median(lat), 2), "query_ms_p95": round(lat[int(0.95 * (len(lat) - 1))], 2),
        "queries": len(lat),
    }


def main(path: Path, model: str | None, queries: int, json_path: Path | None, device: str = "auto") -> int:
    encoder, label = load_bench_encoder(model, device)
    texts = captions(queries + 10)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ftf-bench-scene-") as tmp:
        edge = open_store(collection="tiles", store_dir=Path(tmp), qdrant_url=None, api_key=None, timeout=30)
        try:
            rows["edge"] = _measure(edge, path, encoder, texts, 10)
        finally:
            edge.close()
    with QdrantServer() as server:
        remote = open_store(collection="tiles", store_dir=None, qdrant_url=server.url, api_key=None, timeout=30)
        try:
            rows["server"] = _measure(remote, path, encoder, texts, 10)
        finally:
            remote.close()
    m = machine()
    print(f"scene {path} (levels 1,2, 256 px tiles); encoder: {label}")
    print(machine_line(m))
    print(table("", ["backend", "tiles", "ingest s", "tiles/s", "query p50 ms", "query p95 ms", "queries"],
                [[b, r["tiles"], r["ingest_s"], r["tiles_per_s"], r["query_ms_p50"], r["query_ms_p95"], r["queries"]]
                 for b, r in rows.items()]))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"scene": str(path), "encoder": label, "machine": m, **rows}, indent=2))
    return 0
