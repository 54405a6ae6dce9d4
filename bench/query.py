"""Query benchmark: FTF (coarse recall, packed-vector fetch, local BTI) against its baselines.

The collection holds N tiles whose vectors are real encoder outputs on real tiles (the shared
GeoTIFFs), perturbed per tile: clusters of near-duplicates around real content, as a large
scene gives, rather than uniform noise. Built once per parameter set and reused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.baselines import QdrantMaxSim
from bench.common import (
    CACHE,
    GEOTIFFS,
    REAL_SCENES,
    Stat,
    load_bench_encoder,
    captions,
    machine,
    machine_line,
    table,
    timed,
)
from ftfsearch.model.base import Encoder
from ftfsearch.rerank import bti
from ftfsearch.search import DEFAULT_VECTOR_CACHE_BYTES, Searcher
from ftfsearch.store.base import Store, TileBatch
from ftfsearch.store.edge import EdgeStore
from ftfsearch.store.server import ServerStore
from ftfsearch.store.schema import tile_point_id
from ftfsearch.vector_cache import VectorCache
from ftfsearch.collection import collection_meta
from ingest.tiling import SceneReader, TilingSpec

log = logging.getLogger("bench.query")

GEN_CHUNK = 1000
BASE_TILES = 384
NOISE = 0.6
"""Perturbation: each vector is ``unit(base + NOISE * unit(noise))`` (cosine to its base about 0.86)."""
SEED = 7
DATA_VERSION = 2


@dataclass
class Options:
    backend: str
    points: int
    k: int = 10
    recall_k: int = 100
    queries: int = 200
    warmup: int = 20
    exhaustive_queries: int = 20
    plain_queries: int = 20
    transport_queries: int = 50
    model: str | None = None
    threads: int = 1
    json_path: Path | None = None
    device: str = "auto"


def base_vectors(encoder: Encoder) -> tuple[np.ndarray, np.ndarray]:
    """Encoder outputs on up to BASE_TILES real tiles spread over the shared scenes (cached)."""
    key = encoder.id.replace("/", "_").replace(":", "_")
    path = CACHE / f"base-{key}-{BASE_TILES}.npz"
    if path.is_file():
        z = np.load(path)
        return z["coarse"], z["regions"]
    per_scene = BASE_TILES // len(REAL_SCENES) + 1
    tiles: list[np.ndarray] = []
    for rel in REAL_SCENES:
        src = GEOTIFFS / rel
        if not src.is_file():
            continue
        with SceneReader(src, TilingSpec(tile_size=256)) as reader:
            windows = reader.windows()
            step = max(1, len(windows) // per_scene)
            for w in windows[::step][:per_scene]:
                tile = reader.read(w)
                if tile is not None:
                    tiles.append(tile.pixels)
    if not tiles:
        raise SystemExit(f"no readable tiles under {GEOTIFFS}: the query benchmark needs ../shared/data")
    tiles = tiles[:BASE_TILES]
    cs, rs = [], []
    with torch.inference_mode():
        for i in range(0, len(tiles), 32):
            c, r = encoder.encode_images(torch.from_numpy(np.stack(tiles[i : i + 32])))
            cs.append(c.float().cpu().numpy())
            rs.append(r.float().cpu().numpy())
    coarse, regions = np.concatenate(cs), np.concatenate(rs)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, coarse=coarse, regions=regions)
    return coarse, regions


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def generate(base: tuple[np.ndarray, np.ndarray], start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of tiles ``start..stop`` (deterministic per GEN_CHUNK, whatever the caller's batching)."""
    bc, br = base
    cs, rs = [], []
    for c0 in range(start - start % GEN_CHUNK, stop, GEN_CHUNK):
        rng = np.random.default_rng([SEED, c0])
        n = GEN_CHUNK
        j = rng.integers(0, len(bc), n)
        c = _unit(bc[j] + NOISE * _unit(rng.standard_normal((n, bc.shape[1]), dtype=np.float32)))
        r = _unit(br[j] + NOISE * _unit(rng.standard_normal((n,) + br.shape[1:], dtype=np.float32)))
        lo, hi = max(start, c0) - c0, min(stop, c0 + n) - c0
        cs.append(c[lo:hi].astype(np.float32))
        rs.append(r[lo:hi].astype(np.float16))
    return np.concatenate(cs), np.concatenate(rs)


def _payload(i: int) -> dict[str, Any]:
    scene = i // 10000
    col, row = (i % 100) * 256, ((i // 100) % 100) * 256
    west, south = 10.0 + scene + (i % 100) * 0.01, 45.0 + ((i // 100) % 100) * 0.01
    return {
        "scene_id": f"bench-{scene}",
        "path": f"/bench/scene-{scene}.tif",
        "fingerprint": f"bench-{scene}",
        "level": 1,
        "window": {"col": col, "row": row, "width": 256, "height": 256},
        "tile_size": 256,
        "crs": "EPSG:4326",
        "native_bounds": [west, south, west + 0.01, south + 0.01],
        "gsd": 1.0,
        "valid_fraction": 1.0,
        "layout": "bench",
        "bbox": [west, south, west + 0.01, south + 0.01],
        "west": west, "south": south, "east": west + 0.01, "north": south + 0.01,
        "footprint": [[west, south], [west + 0.01, south], [west + 0.01, south + 0.01], [west, south + 0.01], [west, south]],
        "center": {"lon": west + 0.005, "lat": south + 0.005},
    }


def point_ids(start: int, stop: int) -> list[str]:
    """The ids of the synthetic points ``start..stop-1`` that :func:`build` writes."""
    return [tile_point_id("bench", 1, i, 0, 256, 256) for i in range(start, stop)]


def collection_name(encoder: Encoder, points: int) -> str:
    digest = encoder.id.split(":")[-1][:8]
    return f"bench_v{DATA_VERSION}_{digest}_d{encoder.dim}_r{encoder.num_regions}_n{points}"


def build(store: Store, encoder: Encoder, base: tuple[np.ndarray, np.ndarray], points: int) -> float:
    """Fill the collection unless it already holds exactly these points; seconds spent (0 if reused)."""
    meta = collection_meta(encoder)
    if store.meta() == meta and store.count_tiles() == points:
        return 0.0
    resume = store.meta() == meta and store.count_tiles() < points  # an interrupted build: ids are stable
    if store.meta() is not None and not resume:
        store.drop_collection()
    t0 = time.perf_counter()
    store.ensure_collection(meta)
    step = 512
    for s in range(0, points, step):
        e = min(points, s + step)
        if resume and len(store.existing_ids(point_ids(s, e))) == e - s:
            continue
        c, r = generate(base, s, e)
        store.upsert_tiles(TileBatch(ids=point_ids(s, e), coarse=c, regions=r, payloads=[_payload(i) for i in range(s, e)]))
        if (s // step) % 20 == 0:
            log.info("built %d / %d tiles (%.0f s)", e, points, time.perf_counter() - t0)
    store.optimize()
    if store.backend == "server":  # wait for the server's own indexing to finish
        while store.describe().get("status") != "green":
            time.sleep(1.0)
    return time.perf_counter() - t0


@dataclass
class Place:
    """Where the benchmark's collection lives: an embedded store directory, or a server URL (and
    the Qdrant server this run started, when QDRANT_URL names none)."""

    backend: str
    name: str
    url: str | None = None
    api_key: str | None = None
    server: Any = None

    @classmethod
    def start(cls, backend: str, name: str) -> "Place":
        if backend == "edge":
            return cls(backend, name)
        url = os.environ.get("QDRANT_URL")
        server = None
        if not url:
            from deploy.qdrant_local import QdrantServer

            server = QdrantServer(storage_dir=CACHE / "qdrant", startup_timeout=120.0).start()
            url = server.url
        return cls(backend, name, url, os.environ.get("QDRANT_API_KEY"), server)

    def open(self, payload_vectors: bool = True, use_httpx: bool | None = None) -> Store:
        """The store; ``payload_vectors=False`` reads vectors the plain way, ``use_httpx``
        picks the server's query transport (see ``ServerStore``)."""
        if self.url is None:
            return EdgeStore(CACHE / "edge", collection=self.name, payload_vectors=payload_vectors)
        return ServerStore(self.url, collection=self.name, api_key=self.api_key, timeout=120.0,
                           payload_vectors=payload_vectors, use_httpx=use_httpx)

    def maxsim(self, use_httpx: bool | None = None) -> QdrantMaxSim:
        """Qdrant's own rerank over the collection (on Edge, only while no store holds it)."""
        if self.url is None:
            return QdrantMaxSim.on_edge(CACHE / "edge", self.name)
        return QdrantMaxSim.on_server(self.url, self.name, self.api_key, 120.0, use_httpx=use_httpx)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def open_bench_store(backend: str, name: str) -> tuple[Store, Any]:
    """The store and, for ``server`` without QDRANT_URL, the Qdrant server this run started."""
    place = Place.start(backend, name)
    return place.open(), place.server


def exhaustive_top(encoder: Encoder, text: torch.Tensor, coarse: torch.Tensor, regions: torch.Tensor, k: int) -> np.ndarray:
    """BTI over every tile (the 'complex interaction' approach FTF replaces): indices of the top k."""
    p = encoder.rerank_params
    parts = []
    for s in range(0, coarse.shape[0], 16384):
        out = bti(text, coarse[s : s + 16384], regions[s : s + 16384], tau=p.tau, alpha=p.alpha, balanced=p.balanced)
        parts.append(out.scores[0])
    return torch.topk(torch.cat(parts), k).indices.cpu().numpy()


def run(opts: Options) -> dict[str, Any]:
    torch.set_grad_enabled(False)
    torch.set_num_threads(opts.threads)
    encoder, model_note = load_bench_encoder(opts.model, opts.device)
    base = base_vectors(encoder)
    place = Place.start(opts.backend, collection_name(encoder, opts.points))
    try:
        store = place.open()
        try:
            build_s = build(store, encoder, base, opts.points)
            res, texts = measure(opts, encoder, model_note, store, place, build_s)
        finally:
            store.close()  # an embedded store has one opener: the baselines below open it again
        plain_texts = [np.asarray(encoder.encode_text([q])[0]) for q in texts[: opts.plain_queries]]
        res["baselines"].update(_plain(place, encoder, plain_texts, opts))
        _maxsim(place, encoder, texts, opts, res)
        return res
    finally:
        place.stop()


def _plain(place: Place, encoder: Encoder, texts: list[np.ndarray], opts: Options) -> dict[str, Any]:
    """The plain path: Qdrant's named vectors through the client/binding (the path the packed copy
    replaced), then the same rerank."""
    store = place.open(payload_vectors=False)
    searcher = Searcher(encoder, store, vector_cache_bytes=0)
    plain: list[float] = []
    try:
        for tv in texts:
            ms_f, cands = timed(lambda: store.recall(tv, opts.recall_k, with_vectors=True))
            ms_r, _ = timed(lambda: searcher.rank(tv[None], np.zeros((0, tv.shape[0]), np.float32), cands, opts.k, True))
            plain.append(ms_f + ms_r)
    finally:
        store.close()
    return {"plain_fetch_rerank_ms_p50": round(Stat.of(plain).p50, 3), "plain_queries": len(plain)}


def _maxsim(place: Place, encoder: Encoder, texts: list[str], opts: Options, res: dict[str, Any]) -> None:
    """Qdrant's prefetch + MaxSim (text encoding included, as in FTF end to end), after warm-up; on
    a server also through httpx, interleaved query by query (``transport``)."""
    k, rk = opts.k, opts.recall_k
    warm = captions(opts.warmup)
    runs: dict[str, list[float]] = {"http_client": [], "httpx": []}
    with place.maxsim() as maxsim:
        for q in warm:
            maxsim(np.asarray(encoder.encode_text([q])[0]), k, rk)
        st = [timed(lambda: maxsim(np.asarray(encoder.encode_text([q])[0]), k, rk))[0] for q in texts]
        if res.get("transport") is not None:
            with place.maxsim(use_httpx=True) as slow:
                for q in texts[: opts.transport_queries]:
                    for name, run_one in (("http_client", maxsim), ("httpx", slow)):
                        runs[name].append(timed(lambda: run_one(np.asarray(encoder.encode_text([q])[0]), k, rk))[0])
    stat = Stat.of(st)
    res["stages"]["server_maxsim"] = stat.to_dict()
    res["baselines"]["server_maxsim_ms_p50"] = round(stat.p50, 3)
    if res.get("transport") is not None:
        for name, values in runs.items():
            res["transport"][f"{name}_maxsim"] = round(Stat.of(values).p50, 3)


def measure(
    opts: Options, encoder: Encoder, model_note: str, store: Store, place: Place, build_s: float
) -> tuple[dict[str, Any], list[str]]:
    """FTF's stages and end-to-end paths on ``store``; the result and the timed queries (the
    baselines that need the store to themselves run on them afterwards)."""
    # One call per query (the CLI: candidates and their packed vectors in the recall), and the
    # long-lived searcher of `serve` (ids-only recall, vectors from its cache, misses fetched);
    # `cold` is the cached path with an empty cache on every query.
    searcher = Searcher(encoder, store, vector_cache_bytes=0)
    cached = Searcher(encoder, store)
    cold = Searcher(encoder, store)
    k, rk = opts.k, opts.recall_k
    texts = captions(opts.queries + opts.warmup)
    for q in texts[: opts.warmup]:
        searcher.search(q, k=k, recall_k=rk)
        cached.search(q, k=k, recall_k=rk)
    texts = texts[opts.warmup :]
    assert cached.vector_cache is not None
    warm_stats = dataclasses.replace(cached.vector_cache.stats)
    st: dict[str, list[float]] = {n: [] for n in (
        "encode_text", "recall", "recall_fetch", "rerank", "fetch_rerank", "end_to_end", "end_to_end_cached",
        "end_to_end_cold_cache", "cached_recall_ids", "cached_vectors", "cached_rerank", "coarse_only")}
    ftf_top: dict[str, list[str]] = {}
    same_top = 0
    for q in texts:
        ms, tv = timed(lambda: encoder.encode_text([q])[0])
        st["encode_text"].append(ms)
        vec = np.asarray(tv)
        st["recall"].append(timed(lambda: store.recall(vec, rk, with_vectors=False))[0])
        ms_f, cands = timed(lambda: store.recall(vec, rk, with_vectors=True))
        ms_r, _ = timed(lambda: searcher.rank(vec[None], np.zeros((0, vec.shape[0]), np.float32), cands, k, True))
        st["recall_fetch"].append(ms_f)
        st["rerank"].append(ms_r)
        st["fetch_rerank"].append(ms_f + ms_r)
        ms, resp = timed(lambda: searcher.search(q, k=k, recall_k=rk))
        st["end_to_end"].append(ms)
        ftf_top[q] = [r.id for r in resp.results]
        ms, resp_c = timed(lambda: cached.search(q, k=k, recall_k=rk))
        st["end_to_end_cached"].append(ms)
        st["cached_recall_ids"].append(resp_c.timings_ms["recall"])
        st["cached_vectors"].append(resp_c.timings_ms["vectors"])
        st["cached_rerank"].append(resp_c.timings_ms["rerank"])
        same_top += [(r.id, r.score) for r in resp_c.results] == [(r.id, r.score) for r in resp.results]
        cold.vector_cache = VectorCache(encoder.dim, encoder.num_regions, DEFAULT_VECTOR_CACHE_BYTES)
        st["end_to_end_cold_cache"].append(timed(lambda: cold.search(q, k=k, recall_k=rk))[0])
        st["coarse_only"].append(timed(lambda: searcher.search(q, k=k, rerank=False))[0])
    transport = _transport_comparison(place, searcher, cached, texts[: opts.transport_queries], k, rk)
    cs = cached.vector_cache.stats
    hit_rate = (cs.hits - warm_stats.hits) / max(1, cs.hits + cs.misses - warm_stats.hits - warm_stats.misses)
    qps = {c: _qps(searcher, texts, k, rk, c) for c in (1, 4)}
    qps_cached = {c: _qps(cached, texts, k, rk, c) for c in (1, 4)}
    exh_ms, agree = _exhaustive(opts, encoder, texts[: opts.exhaustive_queries], ftf_top, k)
    stats = {n: Stat.of(v) for n, v in st.items()}
    m = machine()
    res: dict[str, Any] = {
        "benchmark": "query",
        "backend": store.backend,
        "points": opts.points,
        "k": k,
        "recall_k": rk,
        "queries": len(texts),
        "warmup": opts.warmup,
        "dim": encoder.dim,
        "num_regions": encoder.num_regions,
        "encoder": encoder.id,
        "encoder_note": model_note,
        "machine": m,
        "build_seconds": round(build_s, 1),
        "stages": {n: s.to_dict() for n, s in stats.items()},
        "fetch_rerank_ms_p50": round(stats["fetch_rerank"].p50, 3),
        "fetch_only_ms_p50": round(stats["recall_fetch"].p50 - stats["recall"].p50, 3),
        "end_to_end_ms_p50": round(stats["end_to_end"].p50, 3),
        "end_to_end_ms_p95": round(stats["end_to_end"].p95, 3),
        "qps_concurrency_1": round(qps[1], 1),
        "qps_concurrency_4": round(qps[4], 1),
        "end_to_end_cached_ms_p50": round(stats["end_to_end_cached"].p50, 3),
        "end_to_end_cached_ms_p95": round(stats["end_to_end_cached"].p95, 3),
        "end_to_end_cold_cache_ms_p50": round(stats["end_to_end_cold_cache"].p50, 3),
        "vector_cache_hit_rate": round(hit_rate, 3),
        "vector_cache_entries": len(cached.vector_cache),
        "cached_identical_results": round(same_top / max(1, len(texts)), 3),
        "qps_cached_concurrency_1": round(qps_cached[1], 1),
        "qps_cached_concurrency_4": round(qps_cached[4], 1),
        "baselines": {
            "coarse_only_ms_p50": round(stats["coarse_only"].p50, 3),
            "exhaustive_ms_p50": round(float(np.median(exh_ms)), 3),
            "exhaustive_queries": len(exh_ms),
        },
        "transport": transport,
        "exhaustive_speedup": round(float(np.median(exh_ms)) / stats["end_to_end"].p50, 1),
        "recall_at_10_vs_exhaustive": round(agree, 3),
    }
    return res, texts


def _transport_comparison(
    place: Place, one_call: Searcher, cached: Searcher, texts: list[str], k: int, rk: int
) -> dict[str, Any] | None:
    """The server's REST transport (``http.client``) against httpx, which it replaced: the one-call
    query and the cached query through a store opened with each, interleaved query by query (the
    MaxSim baseline's pair is added by ``_maxsim``).

    The queries ran before, so the cached path finds every candidate in its cache (the hit rate is
    reported): it is the steady state of a long-running ``serve`` whose queries recur."""
    if place.backend != "server" or not texts or cached.vector_cache is None:
        return None
    before = dataclasses.replace(cached.vector_cache.stats)
    slow_store = place.open(use_httpx=True)
    slow_one_call = Searcher(one_call.encoder, slow_store, vector_cache_bytes=0)
    slow_cached = Searcher(cached.encoder, slow_store)
    slow_cached.vector_cache = cached.vector_cache  # the same warm cache: only the transport differs
    runs: dict[str, list[float]] = {}
    try:
        for q in texts:
            for name, pair in (("http_client", (one_call, cached)), ("httpx", (slow_one_call, slow_cached))):
                runs.setdefault(f"{name}_one_call", []).append(timed(lambda: pair[0].search(q, k=k, recall_k=rk))[0])
                runs.setdefault(f"{name}_cached", []).append(timed(lambda: pair[1].search(q, k=k, recall_k=rk))[0])
    finally:
        slow_store.close()
    out: dict[str, Any] = {n: round(Stat.of(v).p50, 3) for n, v in runs.items()}
    after = cached.vector_cache.stats
    hits, misses = after.hits - before.hits, after.misses - before.misses
    out["queries"] = len(texts)
    out["cached_hit_rate"] = round(hits / max(1, hits + misses), 3)
    return out


def _qps(searcher: Searcher, texts: list[str], k: int, rk: int, concurrency: int) -> float:
    def run_all() -> None:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(lambda q: searcher.search(q, k=k, recall_k=rk), texts))

    return len(texts) / (timed(run_all)[0] / 1000.0)


def _exhaustive(
    opts: Options, encoder: Encoder, texts: list[str], ftf_top: dict[str, list[str]], k: int
) -> tuple[list[float], float]:
    """Time exhaustive BTI (text encoding included) and how much of its top k FTF finds."""
    base = base_vectors(encoder)
    coarse, regions = generate(base, 0, opts.points)
    c, r = torch.from_numpy(coarse).to(encoder.device), torch.from_numpy(regions).to(encoder.device)
    ids = point_ids(0, opts.points)
    times, hits = [], 0
    for q in texts:
        ms, top = timed(lambda: exhaustive_top(encoder, torch.as_tensor(encoder.encode_text([q])[0]).to(encoder.device), c, r, k))
        times.append(ms)
        hits += len({ids[i] for i in top} & set(ftf_top[q]))
    return times, hits / (k * max(1, len(texts)))


def report(res: dict[str, Any]) -> str:
    s, b = res["stages"], res["baselines"]
    e2e = res["end_to_end_ms_p50"]
    rows = [
        ["text encoding", s["encode_text"]["p50_ms"], s["encode_text"]["p95_ms"], ""],
        [f"recall {res['recall_k']} (no vectors)", s["recall"]["p50_ms"], s["recall"]["p95_ms"], ""],
        [f"recall {res['recall_k']} + packed vectors", s["recall_fetch"]["p50_ms"], s["recall_fetch"]["p95_ms"], ""],
        [f"BTI rerank of {res['recall_k']}", s["rerank"]["p50_ms"], s["rerank"]["p95_ms"], ""],
        ["recall + fetch + rerank", s["fetch_rerank"]["p50_ms"], s["fetch_rerank"]["p95_ms"], ""],
        ["FTF end to end (one call: recall with vectors)", s["end_to_end"]["p50_ms"], s["end_to_end"]["p95_ms"], "1.00"],
        ["  cached path: recall ids + scores", s["cached_recall_ids"]["p50_ms"], s["cached_recall_ids"]["p95_ms"], ""],
        ["  cached path: vectors + payloads (cache, misses fetched)", s["cached_vectors"]["p50_ms"],
         s["cached_vectors"]["p95_ms"], ""],
        ["  cached path: BTI rerank", s["cached_rerank"]["p50_ms"], s["cached_rerank"]["p95_ms"], ""],
        [f"FTF end to end, vector cache (hit rate {res['vector_cache_hit_rate']:.0%})", s["end_to_end_cached"]["p50_ms"],
         s["end_to_end_cached"]["p95_ms"], f"{res['end_to_end_cached_ms_p50'] / e2e:.2f}"],
        ["FTF end to end, vector cache emptied per query", s["end_to_end_cold_cache"]["p50_ms"],
         s["end_to_end_cold_cache"]["p95_ms"], f"{res['end_to_end_cold_cache_ms_p50'] / e2e:.2f}"],
        ["baseline: coarse only (single stage)", s["coarse_only"]["p50_ms"], s["coarse_only"]["p95_ms"],
         f"{b['coarse_only_ms_p50'] / e2e:.2f}"],
        ["baseline: Qdrant prefetch + MaxSim", s["server_maxsim"]["p50_ms"], s["server_maxsim"]["p95_ms"],
         f"{b['server_maxsim_ms_p50'] / e2e:.2f}"],
        [f"baseline: plain vector fetch + rerank ({b['plain_queries']} q)", b["plain_fetch_rerank_ms_p50"], float("nan"),
         f"{b['plain_fetch_rerank_ms_p50'] / s['fetch_rerank']['p50_ms']:.1f} (vs fetch+rerank)"],
        [f"baseline: exhaustive BTI ({b['exhaustive_queries']} q)", b["exhaustive_ms_p50"], float("nan"),
         f"{b['exhaustive_ms_p50'] / e2e:.1f}"],
    ]
    head = (
        f"query benchmark: backend={res['backend']} points={res['points']} D={res['dim']} R={res['num_regions']} "
        f"k={res['k']} recall_k={res['recall_k']} queries={res['queries']} (+{res['warmup']} warm-up)\n"
        f"encoder: {res['encoder']} ({res['encoder_note']})\n{machine_line(res['machine'])}"
    )
    tail = (
        f"QPS: {res['qps_concurrency_1']} at concurrency 1, {res['qps_concurrency_4']} at concurrency 4 (one call); "
        f"{res['qps_cached_concurrency_1']} / {res['qps_cached_concurrency_4']} (vector cache)\n"
        f"vector cache: same results as one call in {res['cached_identical_results']:.0%} of queries; "
        f"Qdrant MaxSim / cached FTF: {b['server_maxsim_ms_p50'] / res['end_to_end_cached_ms_p50']:.2f}\n"
        f"exhaustive BTI / FTF: {res['exhaustive_speedup']}x; FTF recall@10 vs exhaustive top 10: "
        f"{res['recall_at_10_vs_exhaustive']}\n{_transport_line(res.get('transport'))}collection build: {res['build_seconds']} s (0 = reused)"
    )
    return head + "\n" + table("", ["stage", "p50 ms", "p95 ms", "x FTF end to end"], rows) + "\n" + tail


def _transport_line(t: dict[str, Any] | None) -> str:
    if not t:
        return ""
    return (
        f"REST transport, p50 ms over {t['queries']} repeated queries, interleaved, http.client / httpx: "
        f"one call {t['http_client_one_call']} / {t['httpx_one_call']}, cached (hit rate "
        f"{t['cached_hit_rate']:.0%}) {t['http_client_cached']} / {t['httpx_cached']}, MaxSim "
        f"{t['http_client_maxsim']} / {t['httpx_maxsim']}\n"
    )


def main(opts: Options) -> int:
    res = run(opts)
    print(report(res))
    if opts.json_path:
        opts.json_path.parent.mkdir(parents=True, exist_ok=True)
        opts.json_path.write_text(json.dumps(res, indent=2))
    return 0


