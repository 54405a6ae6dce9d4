"""Search by example (issue 12): quality on labelled real tiles, and latency at 100k tiles.

Quality. The val + test images of UCM (21 classes) and RSICD (31 classes), never the train
splits the shipped model learned from, are each one tile of an embedded (Edge) store in a temp
dir, one store per dataset, encoded with the shipped encoder (vectors cached under
``.cache/bench/``, keyed by model id and file list). For every class and trial (seeded) the
conditions are: the class name as text; 1 and 3 example tiles (by tile id); 3 examples + 2
negatives, the two highest-ranked wrong results of that 3-example search; text + 3 examples.
Each coarse (recall order) and reranked. Precision@10 counts results of the class; the engine
excludes the examples' own tiles. Beside the library's defaults (recorded in the results): the
recall strategies (``sum_scores``, ``best_score``, ``average_vector``, through
``Store.recommend``), the negative weight of the rerank (0, 0.25, 0.5, 1), and z-scored against
raw-score fusion; and a control that only excludes the two marked tiles.

Latency. ``Searcher.search`` end to end (vector_cache_bytes=0, k=10, recall_k=100) for a text
query, 1 example, 3 examples and 3 examples + 2 negatives (real tile ids of the store),
interleaved query by query, on the query benchmark's 100k collection (bench/query.py: synthetic
vectors around real encoder outputs), on a real Qdrant server and on the embedded store.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    CACHE,
    DATA,
    REPO,
    captions,
    load_bench_encoder,
    machine,
    machine_line,
    table,
    timed,
)
from ftfsearch.training.datasets import CaptionImage, CaptionSplit, load_dataset, load_pixels
from ftfsearch.examples import parse_ref, resolve
from ftfsearch.model.base import Encoder
from ftfsearch.rerank import NEGATIVE_WEIGHT, bti, bti_fused
from ftfsearch.search import Searcher
from ftfsearch.store.base import QueryFilter, Store, TileBatch
from ftfsearch.store.edge import EdgeStore
from ftfsearch.store.schema import tile_point_id
from ftfsearch.collection import collection_meta

log = logging.getLogger("bench.examples")

DATASETS = (("ucm", DATA / "ucm" / "dataset_ucm.json"), ("rsicd", DATA / "rsicd" / "dataset_rsicd.json"))
EVAL_SPLITS = ("val", "test")
"""Never train: the shipped model was trained on the train splits."""
PIXELS = 224
"""Decode size, as the evaluation does (the model's input size)."""
K = 10
RECALL_K = 100
STRATEGIES = ("sum_scores", "best_score", "average_vector")
WEIGHTS = (0.0, 0.25, 0.5, 1.0)
RESULTS = REPO / "bench" / "results"

CONDITIONS = (
    ("text", "text only (class name)"),
    ("ex1", "1 example"),
    ("ex3", "3 examples"),
    ("ex3_neg2", "3 examples + 2 negatives"),
    ("ex3_excl2", "3 examples, those 2 tiles only excluded (control)"),
    ("text_ex3", "text + 3 examples"),
)
EXAMPLE_CONDITIONS = ("ex1", "ex3", "ex3_neg2", "text_ex3")


@dataclass
class Options:
    part: str = "all"
    trials: int = 5
    seed: int = 0
    points: int = 100000
    queries: int = 200
    warmup: int = 20
    backends: tuple[str, ...] = ("server", "edge")
    model: str | None = None
    threads: int = 1
    encode_threads: int = 0
    out_dir: Path = RESULTS
    device: str = "auto"


# -- class names as everyday words -----------------------------------------------------------


def caption_ngrams(max_n: int = 4) -> Counter[tuple[str, ...]]:
    """Counts of every 1..max_n-word sequence in the captions of both datasets (all splits:
    only how people word things, never a label)."""
    grams: Counter[tuple[str, ...]] = Counter()
    for _, path in DATASETS:
        for img in json.loads(path.read_text())["images"]:
            for s in img.get("sentences", []):
                t = re.findall(r"[a-z]+", str(s.get("raw", "")).lower()) + ["</s>"]
                for n in range(1, max_n + 1):
                    grams.update(tuple(t[i : i + n]) for i in range(len(t) - n + 1))
    return grams


def splits(word: str, grams: Counter[tuple[str, ...]], parts: int = 3) -> list[tuple[str, ...]]:
    """Every way to write ``word`` as up to ``parts`` caption words of 2+ letters (itself included)."""
    out: list[tuple[str, ...]] = [(word,)]
    if parts > 1:
        for i in range(2, len(word) - 1):
            head = word[:i]
            if grams.get((head,), 0):
                out += [(head,) + rest for rest in splits(word[i:], grams, parts - 1) if all(grams.get((w,), 0) for w in rest)]
    return out


STOPWORDS = frozenset(
    ["a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "by", "for", "with", "from", "near", "beside", "around", "is", "are", "was", "were", "be", "been", "has", "have", "it", "its", "this", "that", "there", "these", "those", "some", "many", "lots"]
)
"""Function words, never appended to a class name."""


def class_phrase(label: str, grams: Counter[tuple[str, ...]]) -> str:
    """The label as captioners word it, by one rule for every class: each run-together word
    ('baseballdiamond', 'storagetanks') becomes the split into caption words that the captions
    write most often ('baseball diamond'); then the word that follows the phrase in at least
    half of its caption occurrences, unless a function word, is appended ('dense residential' -> '... area',
    'parking' -> 'parking lot')."""
    words: list[str] = []
    for part in label.lower().replace("_", " ").split():
        best: tuple[str, ...] = max(splits(part, grams), key=lambda c: (grams.get(c, 0), -len(c)))
        words += best
    phrase = tuple(words)
    total = grams.get(phrase, 0)
    if total and len(phrase) < 4:
        nxt = [(g[-1], c) for g, c in grams.items() if len(g) == len(phrase) + 1 and g[:-1] == phrase]
        if nxt:
            w, c = max(nxt, key=lambda x: x[1])
            if w != "</s>" and w not in STOPWORDS and 2 * c >= total:
                words.append(w)
    return " ".join(words)


# -- labelled stores ---------------------------------------------------------------------------


@dataclass
class Labelled:
    """One dataset's val+test tiles in an embedded store."""

    name: str
    ids: list[str]
    labels: list[str]
    store: Store
    searcher: Searcher
    label_of: dict[str, str] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)


def eval_images(path: Path) -> tuple[str, list[CaptionImage]]:
    ds = load_dataset(path)
    images = [im for im in ds.images if im.split in EVAL_SPLITS]
    if any(im.label is None for im in images):
        raise SystemExit(f"{path}: every val/test image needs a 'label'")
    return ds.name, images


def encoded(encoder: Encoder, name: str, images: list[CaptionImage]) -> tuple[np.ndarray, np.ndarray]:
    """Coarse [N, D] and regions [N, R, D] of ``images``, cached by model id and file list."""
    import hashlib

    key = hashlib.sha256(("|".join(str(im.path) for im in images) + f"|{PIXELS}").encode()).hexdigest()[:12]
    model = encoder.id.replace("/", "_").replace(":", "_")
    path = CACHE / f"examples-{name}-{model}-{len(images)}-{key}.npz"
    if path.is_file():
        z = np.load(path)
        return z["coarse"], z["regions"]
    split = CaptionSplit(name=name, split="+".join(EVAL_SPLITS), images=tuple(images))
    pixels = load_pixels(split, PIXELS, REPO / ".cache" / "pixels")
    t0 = time.perf_counter()
    cs, rs = [], []
    with torch.inference_mode():
        for i in range(0, len(pixels), 64):
            c, r = encoder.encode_images(torch.from_numpy(np.ascontiguousarray(pixels[i : i + 64])))
            cs.append(c.float().numpy())
            rs.append(r.float().numpy())
            if (i // 64) % 8 == 0:
                log.info("%s: encoded %d / %d images (%.0f s)", name, i + len(c), len(pixels), time.perf_counter() - t0)
    coarse, regions = np.concatenate(cs), np.concatenate(rs).astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, coarse=coarse, regions=regions)
    return coarse, regions


def labelled_store(encoder: Encoder, path: Path, store_dir: Path) -> Labelled:
    name, images = eval_images(path)
    coarse, regions = encoded(encoder, name, images)
    store = EdgeStore(store_dir / name, collection=f"examples_{name}")
    store.ensure_collection(collection_meta(encoder))
    ids = [tile_point_id(f"bench-examples-{name}", 1, i, 0, PIXELS, PIXELS) for i in range(len(images))]
    labels = [str(im.label) for im in images]
    payloads = [
        {
            "scene_id": f"{name}-{im.split}",
            "path": str(im.path),
            "fingerprint": f"bench-examples-{name}",
            "level": 1,
            "window": {"col": 0, "row": 0, "width": PIXELS, "height": PIXELS},
            "tile_size": PIXELS,
            "label": lab,
        }
        for im, lab in zip(images, labels)
    ]
    for s in range(0, len(ids), 256):
        store.upsert_tiles(TileBatch(ids=ids[s : s + 256], coarse=coarse[s : s + 256], regions=regions[s : s + 256],
                                     payloads=payloads[s : s + 256]))
    store.optimize()
    lab = Labelled(name=name, ids=ids, labels=labels, store=store, searcher=Searcher(encoder, store, vector_cache_bytes=0))
    lab.label_of = dict(zip(ids, labels))
    for i, l in zip(ids, labels):
        lab.members.setdefault(l, []).append(i)
    return lab


# -- one parameterised engine beside Searcher.search ----------------------------------------------


def ranked(
    lab: Labelled,
    pos: torch.Tensor,
    neg: torch.Tensor,
    exclude: Sequence[str],
    rerank: bool,
    strategy: str | None = None,
    weight: float = NEGATIVE_WEIGHT,
    fusion: str = "z",
) -> list[str]:
    """The top K ids for positive / negative vectors, as Searcher.search ranks them, with the
    recall strategy (None: the store's default, as the search uses), the negative weight and the
    fusion open (``fusion='raw'``: raw BTI scores averaged instead of z-scores)."""
    flt = QueryFilter(exclude_ids=tuple(exclude)) if exclude else None
    limit = RECALL_K if rerank else K
    extra = {} if strategy is None else {"strategy": strategy}
    cands = lab.store.recommend(pos.numpy(), neg.numpy(), limit, flt=flt, with_vectors=rerank,
                                with_payload=False, **extra)
    if not rerank:
        return list(cands.ids[:K])
    assert cands.coarse is not None and cands.regions is not None
    p = lab.searcher.encoder.rerank_params
    coarse, regions = torch.from_numpy(np.ascontiguousarray(cands.coarse)), torch.from_numpy(np.ascontiguousarray(cands.regions))
    if fusion == "z":
        scores = bti_fused(pos, neg, coarse, regions, tau=p.tau, alpha=p.alpha, balanced=p.balanced,
                           negative_weight=weight).scores
    else:
        s = bti(torch.cat([pos, neg]), coarse, regions, tau=p.tau, alpha=p.alpha, balanced=p.balanced).scores
        scores = s[: len(pos)].mean(0) - (weight * s[len(pos):].mean(0) if len(neg) else 0.0)
    order = np.argsort(-scores.float().numpy(), kind="stable")[:K]
    return [cands.ids[i] for i in order]


def precision(lab: Labelled, ids: Sequence[str], cls: str) -> float:
    return sum(lab.label_of.get(i) == cls for i in ids) / max(1, len(ids))


def vectors(lab: Labelled, tile_ids: Sequence[str]) -> torch.Tensor:
    refs = [parse_ref(t, "like") for t in tile_ids]
    return torch.from_numpy(np.stack([e.vector for e in resolve(refs, lab.store, lab.searcher.encoder)]))


Inputs = dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]]
"""condition -> (positive vectors, negative vectors, excluded ids) of one trial."""


def _score_variants(lab: Labelled, cls: str, mode: str, rerank: bool, inputs: Inputs,
                    strat: dict[str, dict[str, dict[str, list[float]]]]) -> None:
    """P@10 of every condition under every example strategy, in ``mode`` (coarse or rerank)."""
    for c, (pv, nv, exc) in inputs.items():
        for s in STRATEGIES:
            strat[c][s][mode].append(precision(lab, ranked(lab, pv, nv, exc, rerank, strategy=s), cls))


def _score_rerank_knobs(lab: Labelled, cls: str, inputs: Inputs, weights: dict[str, dict[str, list[float]]],
                        fusion: dict[str, dict[str, list[float]]]) -> None:
    """P@10 of the reranked negatives condition per negative weight and score fusion, and of the
    example conditions per fusion."""
    pos, neg, exc = inputs["ex3_neg2"]
    for w in WEIGHTS:
        for f in ("z", "raw"):
            weights[f"{w:g}"][f].append(precision(lab, ranked(lab, pos, neg, exc, True, weight=w, fusion=f), cls))
    for c in ("ex3", "text_ex3"):
        pv, nv, exc = inputs[c]
        for f in ("z", "raw"):
            fusion[c][f].append(precision(lab, ranked(lab, pv, nv, exc, True, fusion=f), cls))


def quality_dataset(lab: Labelled, grams: Counter[tuple[str, ...]], opts: Options, ds_index: int) -> dict[str, Any]:
    enc = lab.searcher.encoder
    dim = enc.dim
    none = torch.zeros((0, dim))
    # p[condition][mode] -> list of P@10; modes "coarse" / "rerank"
    p: dict[str, dict[str, list[float]]] = {c: {"coarse": [], "rerank": []} for c, _ in CONDITIONS}
    strat: dict[str, dict[str, dict[str, list[float]]]] = {
        c: {s: {"coarse": [], "rerank": []} for s in STRATEGIES} for c in EXAMPLE_CONDITIONS + ("ex3_excl2",)
    }
    weights: dict[str, dict[str, list[float]]] = {f"{w:g}": {"z": [], "raw": []} for w in WEIGHTS}
    fusion: dict[str, dict[str, list[float]]] = {c: {"z": [], "raw": []} for c in ("ex3", "text_ex3")}
    phrases: dict[str, str] = {}
    agree = [0, 0]
    neg_found: Counter[str] = Counter()
    for ci, cls in enumerate(sorted(lab.members)):
        phrase = class_phrase(cls, grams)
        phrases[cls] = phrase
        tv = torch.as_tensor(enc.encode_text([phrase])[0]).float()
        for mode, rr in (("coarse", False), ("rerank", True)):
            p["text"][mode].append(precision(lab, [r.id for r in lab.searcher.search(phrase, k=K, recall_k=RECALL_K, rerank=rr).results], cls))
        members = lab.members[cls]
        for t in range(opts.trials):
            rng = np.random.default_rng([opts.seed, ds_index, ci, t])
            ex = [members[i] for i in rng.choice(len(members), 3, replace=False)]
            ex_vec = vectors(lab, ex)
            like1, like3 = [parse_ref(ex[0], "like")], [parse_ref(e, "like") for e in ex]
            for mode, rr in (("coarse", False), ("rerank", True)):
                run = lambda refs, text=None, k=K: [r.id for r in lab.searcher.search(
                    text, k=k, recall_k=RECALL_K, rerank=rr, examples=refs).results]
                p["ex1"][mode].append(precision(lab, run(like1), cls))
                top3 = run(like3)
                p["ex3"][mode].append(precision(lab, top3, cls))
                # what an analyst marks down: the two highest-ranked wrong results they saw
                wrong = [i for i in top3 if lab.label_of[i] != cls][:2]
                if len(wrong) < 2:
                    wrong += [i for i in run(like3, k=RECALL_K) if lab.label_of[i] != cls and i not in wrong][: 2 - len(wrong)]
                neg_found[f"{mode}:{len(wrong)}"] += 1
                unlike = [parse_ref(w, "unlike") for w in wrong]
                top_neg = run(like3 + unlike)
                p["ex3_neg2"][mode].append(precision(lab, top_neg, cls))
                neg_vec = vectors(lab, wrong) if wrong else none
                excl = ranked(lab, ex_vec, none, ex + wrong, rr)
                p["ex3_excl2"][mode].append(precision(lab, excl, cls))
                top_t3 = run(like3, text=phrase)
                p["text_ex3"][mode].append(precision(lab, top_t3, cls))
                # the parameterised engine at the defaults reproduces Searcher.search
                for got, want in ((ranked(lab, ex_vec, none, ex, rr), top3),
                                  (ranked(lab, ex_vec, neg_vec, ex + wrong, rr), top_neg),
                                  (ranked(lab, torch.cat([tv[None], ex_vec]), none, ex, rr), top_t3)):
                    agree[0] += got == want
                    agree[1] += 1
                inputs: Inputs = {
                    "ex1": (ex_vec[:1], none, ex[:1]),
                    "ex3": (ex_vec, none, ex),
                    "ex3_neg2": (ex_vec, neg_vec, ex + wrong),
                    "ex3_excl2": (ex_vec, none, ex + wrong),
                    "text_ex3": (torch.cat([tv[None], ex_vec]), none, ex),
                }
                _score_variants(lab, cls, mode, rr, inputs, strat)
                if rr:
                    _score_rerank_knobs(lab, cls, inputs, weights, fusion)
        log.info("%s: class %d / %d (%s -> %r) done", lab.name, ci + 1, len(lab.members), cls, phrase)

    def per(c: str, ci: int) -> list[float]:
        n = 1 if c == "text" else opts.trials
        return p[c]["rerank"][ci * n : (ci + 1) * n]

    def mean(xs: list[float]) -> dict[str, float]:
        a = np.asarray(xs, dtype=np.float64)
        se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else float("nan")
        return {"p_at_10": round(float(a.mean()), 4), "se": round(se, 4), "n": int(a.size)}

    return {
        "tiles": len(lab.ids),
        "classes": len(lab.members),
        "trials_per_class": opts.trials,
        "phrases": phrases,
        "conditions": {c: {m: mean(v) for m, v in p[c].items()} for c, _ in CONDITIONS},
        "per_class_rerank": {
            cls: {c: round(float(np.mean(per(c, ci))), 3) for c, _ in CONDITIONS}
            for ci, cls in enumerate(sorted(lab.members))
        },
        "strategies": {c: {s: {m: mean(v) for m, v in d.items()} for s, d in sd.items()} for c, sd in strat.items()},
        "negative_weights_ex3_neg2_rerank": {w: {f: mean(v) for f, v in d.items()} for w, d in weights.items()},
        "fusion_rerank": {c: {f: mean(v) for f, v in d.items()} for c, d in fusion.items()},
        "engine_reproduces_searcher": f"{agree[0]}/{agree[1]}",
        "negatives_found": dict(neg_found),
    }


def library_defaults() -> dict[str, Any]:
    import inspect

    return {"recommend_strategy": inspect.signature(EdgeStore.recommend).parameters["strategy"].default,
            "negative_weight": NEGATIVE_WEIGHT}


def quality(opts: Options, encoder: Encoder, model_note: str) -> dict[str, Any]:
    grams = caption_ngrams()
    out: dict[str, Any] = {
        "benchmark": "examples-quality",
        "encoder": encoder.id,
        "encoder_note": model_note,
        "splits": list(EVAL_SPLITS),
        "k": K,
        "recall_k": RECALL_K,
        "seed": opts.seed,
        "library_defaults": library_defaults(),
        "datasets": {},
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-examples-") as tmp:
        for di, (_, path) in enumerate(DATASETS):
            lab = labelled_store(encoder, path, Path(tmp))
            try:
                out["datasets"][lab.name] = quality_dataset(lab, grams, opts, di)
            finally:
                lab.store.close()
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["machine"] = machine()
    return out


# -- latency at 100k -----------------------------------------------------------------------------

KINDS = (
    ("text", "text query (real caption)"),
    ("ex1", "1 example (tile id)"),
    ("ex3", "3 examples"),
    ("ex3_neg2", "3 examples + 2 negatives"),
)


def pstat(ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p90_ms": round(float(np.percentile(a, 90)), 3), "mean_ms": round(float(a.mean()), 3)}


def warm_page_cache(path: Path | None) -> tuple[float, float]:
    """Read the collection's files once, so every query finds its tiles in the page cache.

    Text queries land on a few hot clusters while example tiles are drawn at random over the
    whole collection: without this, the first touch of a cold cluster (100-200 ms of page
    faults on this disk) falls mostly on example queries, and the comparison measures the page
    cache, not the query. Returns (MB read, seconds)."""
    if path is None or not path.is_dir():
        return 0.0, 0.0
    t0, total = time.perf_counter(), 0
    for f in sorted(path.rglob("*")):
        if f.is_file():
            with f.open("rb") as fh:
                while chunk := fh.read(1 << 22):
                    total += len(chunk)
    return round(total / 2**20, 1), round(time.perf_counter() - t0, 1)


def latency_backend(opts: Options, encoder: Encoder, backend: str) -> dict[str, Any]:
    from bench.query import base_vectors, build, collection_name, open_bench_store, point_ids

    base = base_vectors(encoder)
    store, server = open_bench_store(backend, collection_name(encoder, opts.points))
    try:
        build_s = build(store, encoder, base, opts.points)
        name = collection_name(encoder, opts.points)
        where = CACHE / "edge" / name if backend == "edge" else (CACHE / "qdrant" / "storage" / "collections" / name if server else None)
        warmed_mb, warm_s = warm_page_cache(where)
        searcher = Searcher(encoder, store, vector_cache_bytes=0)
        texts = captions(opts.queries + opts.warmup)
        rng = np.random.default_rng([opts.seed, 12])
        picks = [rng.choice(opts.points, 6, replace=False) for _ in texts]
        ids = [[point_ids(int(i), int(i) + 1)[0] for i in row] for row in picks]
        assert len(store.existing_ids(ids[0])) == 6, "example ids must be real ids of the store"

        def query(kind: str, qi: int) -> Any:
            row = ids[qi]
            if kind == "text":
                return searcher.search(texts[qi], k=K, recall_k=RECALL_K)
            if kind == "ex1":
                return searcher.search(None, k=K, recall_k=RECALL_K, examples=[parse_ref(row[0], "like")])
            likes = [parse_ref(i, "like") for i in row[1:4]]
            if kind == "ex3":
                return searcher.search(None, k=K, recall_k=RECALL_K, examples=likes)
            return searcher.search(None, k=K, recall_k=RECALL_K,
                                   examples=likes + [parse_ref(i, "unlike") for i in row[4:6]])

        kinds = [k for k, _ in KINDS]
        for qi in range(opts.warmup):
            for kind in kinds:
                query(kind, qi)
        ms: dict[str, list[float]] = {k: [] for k in kinds}
        stages: dict[str, dict[str, list[float]]] = {k: {} for k in kinds}
        for qi in range(opts.warmup, opts.warmup + opts.queries):
            order = kinds[qi % len(kinds):] + kinds[: qi % len(kinds)]  # rotate: no kind always first
            for kind in order:
                t, resp = timed(lambda: query(kind, qi))
                ms[kind].append(t)
                for s, v in resp.timings_ms.items():
                    stages[kind].setdefault(s, []).append(v)
        res: dict[str, Any] = {
            "backend": store.backend,
            "build_seconds": round(build_s, 1),
            "page_cache_warmed_mb": warmed_mb,
            "page_cache_warm_seconds": warm_s,
            "end_to_end": {k: pstat(v) for k, v in ms.items()},
            "stages_p50_ms": {k: {s: round(float(np.median(v)), 3) for s, v in d.items()} for k, d in stages.items()},
        }
        res["recall_breakdown"] = recall_breakdown(store, encoder, texts, ids, opts)
        text_p50 = res["end_to_end"]["text"]["p50_ms"]
        res["bound_met"] = {k: res["end_to_end"][k]["p50_ms"] <= text_p50 for k in kinds if k != "text"}
        return res
    finally:
        store.close()
        if server is not None:
            server.stop()


RECALL_VARIANTS = (
    ("nearest", "nearest (text recall)"),
    ("nearest_excl", "nearest + exclude-ids filter"),
    ("recommend1", "recommend (default strategy), 1 positive, no filter"),
    ("recommend1_excl", "recommend (default strategy), 1 positive + exclude-ids filter"),
    ("recommend3_2_excl", "recommend (default strategy), 3 positives + 2 negatives + filter"),
    ("sum_scores3_2_excl", "recommend sum_scores, 3 positives + 2 negatives + filter"),
)


def recall_breakdown(store: Store, encoder: Encoder, texts: list[str], ids: list[list[str]], opts: Options) -> dict[str, Any]:
    """Where an example query's recall time goes: the same vector as a nearest query and as a
    one-positive recommend query, each with and without the exclude filter (recall_k with
    vectors, as the search asks), interleaved."""
    n = min(opts.queries, 100)
    _, c, _, _ = store.get_vectors([row[0] for row in ids[:n]])
    vec = {row[0]: c[j] for j, row in enumerate(ids[:n])}
    ms: dict[str, list[float]] = {k: [] for k, _ in RECALL_VARIANTS}
    none = np.zeros((0, encoder.dim), dtype=np.float32)
    for qi in range(n):
        row = ids[qi]
        v = vec[row[0]]
        excl = QueryFilter(exclude_ids=(row[0],))
        excl5 = QueryFilter(exclude_ids=tuple(row[1:6]))
        _, c5, _, _ = store.get_vectors(row[1:6])
        calls = {
            "nearest": lambda: store.recall(v, RECALL_K, with_vectors=True, with_payload=False),
            "nearest_excl": lambda: store.recall(v, RECALL_K, flt=excl, with_vectors=True, with_payload=False),
            "recommend1": lambda: store.recommend(v[None], none, RECALL_K, with_vectors=True, with_payload=False),
            "recommend1_excl": lambda: store.recommend(v[None], none, RECALL_K, flt=excl, with_vectors=True, with_payload=False),
            "recommend3_2_excl": lambda: store.recommend(c5[:3], c5[3:], RECALL_K, flt=excl5, with_vectors=True, with_payload=False),
            "sum_scores3_2_excl": lambda: store.recommend(c5[:3], c5[3:], RECALL_K, flt=excl5, with_vectors=True,
                                                          with_payload=False, strategy="sum_scores"),
        }
        keys = list(calls)
        for key in keys[qi % len(keys):] + keys[: qi % len(keys)]:
            ms[key].append(timed(calls[key])[0])
    return {k: pstat(v) for k, v in ms.items()}


def latency(opts: Options, encoder: Encoder, model_note: str) -> dict[str, Any]:
    torch.set_num_threads(opts.threads)
    out: dict[str, Any] = {
        "benchmark": "examples-latency",
        "points": opts.points,
        "k": K,
        "recall_k": RECALL_K,
        "vector_cache_bytes": 0,
        "library_defaults": library_defaults(),
        "queries": opts.queries,
        "warmup": opts.warmup,
        "encoder": encoder.id,
        "encoder_note": model_note,
        "data": "bench/query.py's collection: synthetic vectors, real encoder outputs on 384 real tiles perturbed per point",
        "machine": machine(),
        "backends": {},
    }
    for b in opts.backends:
        out["backends"][b] = latency_backend(opts, encoder, b)
    out["machine_after"] = machine()
    return out


# -- report --------------------------------------------------------------------------------------


def report_quality(res: dict[str, Any]) -> str:
    names = list(res["datasets"])
    parts = [(f"examples quality: encoder {res['encoder']}, {'+'.join(res['splits'])} splits, k={res['k']}, "
              f"recall_k={res['recall_k']}; library defaults {res['library_defaults']}")]
    rows = []
    for c, label in CONDITIONS:
        row: list[Any] = [label]
        for n in names:
            d = res["datasets"][n]["conditions"][c]
            row += [d["coarse"]["p_at_10"], d["rerank"]["p_at_10"]]
        row.append(" / ".join(str(res["datasets"][n]["conditions"][c]["rerank"]["n"]) for n in names))
        rows.append(row)
    head = ["condition"] + [f"{n} {m}" for n in names for m in ("coarse", "rerank")] + ["trials (" + " / ".join(names) + ")"]
    parts.append(table("P@10, mean over classes x trials", head, rows))
    rows = []
    for c in EXAMPLE_CONDITIONS + ("ex3_excl2",):
        for s in STRATEGIES:
            row = [dict(CONDITIONS)[c], s]
            for n in names:
                d = res["datasets"][n]["strategies"][c][s]
                row += [d["coarse"]["p_at_10"], d["rerank"]["p_at_10"]]
            rows.append(row)
    head = ["condition", "recall strategy"] + [f"{n} {m}" for n in names for m in ("coarse", "rerank")]
    parts.append(table("recall strategies (rerank: BTI over that strategy's 100 candidates)", head, rows))
    rows = []
    for w in res["datasets"][names[0]]["negative_weights_ex3_neg2_rerank"]:
        row = [w] + [res["datasets"][n]["negative_weights_ex3_neg2_rerank"][w][f]["p_at_10"] for n in names for f in ("z", "raw")]
        rows.append(row)
    head = ["negative_weight"] + [f"{n} {f}" for n in names for f in ("z-score", "raw")]
    parts.append(table("3 examples + 2 negatives, rerank: negative weight and fusion", head, rows))
    rows = []
    for c in ("ex3", "text_ex3"):
        rows.append([dict(CONDITIONS)[c]] + [res["datasets"][n]["fusion_rerank"][c][f]["p_at_10"] for n in names for f in ("z", "raw")])
    parts.append(table("rerank fusion of several positives", ["condition"] + [f"{n} {f}" for n in names for f in ("z-score", "raw")], rows))
    for n in names:
        d = res["datasets"][n]
        parts.append(f"{n}: {d['tiles']} tiles, {d['classes']} classes, {d['trials_per_class']} trials; engine = Searcher "
                     f"{d['engine_reproduces_searcher']}; negatives found {d['negatives_found']}")
    parts.append(machine_line(res["machine"]))
    return "\n".join(parts)


def report_latency(res: dict[str, Any]) -> str:
    rows = []
    for b, d in res["backends"].items():
        text = d["end_to_end"]["text"]["p50_ms"]
        for k, label in KINDS:
            e = d["end_to_end"][k]
            st = d["stages_p50_ms"][k]
            rows.append([b, label, e["p50_ms"], e["p90_ms"], f"{e['p50_ms'] / text:.2f}",
                         ", ".join(f"{s} {v:.2f}" for s, v in st.items())])
    rows2 = []
    for b, d in res["backends"].items():
        br = d.get("recall_breakdown") or {}
        for k, label in RECALL_VARIANTS:
            if k in br:
                rows2.append([b, label, br[k]["p50_ms"], br[k]["p90_ms"]])
    head = f"examples latency ({res['library_defaults']}): {res['points']} tiles, k={res['k']}, recall_k={res['recall_k']}, {res['queries']} queries per kind (+{res['warmup']} warm-up), interleaved"
    return head + "\n" + table("", ["backend", "query", "p50 ms", "p90 ms", "x text p50", "stage p50 ms"], rows) + \
        "\n" + table(f"recall stage only ({RECALL_K} candidates with vectors, same example vector)",
                     ["backend", "recall", "p50 ms", "p90 ms"], rows2) + "\n" + machine_line(res["machine"])


def main(opts: Options) -> int:
    torch.set_grad_enabled(False)
    if opts.encode_threads:
        torch.set_num_threads(opts.encode_threads)
    encoder, note = load_bench_encoder(opts.model, opts.device)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    if opts.part in ("all", "quality"):
        res = quality(opts, encoder, note)
        (opts.out_dir / "examples-quality.json").write_text(json.dumps(res, indent=2))
        print(report_quality(res), flush=True)
    if opts.part in ("all", "latency"):
        res = latency(opts, encoder, note)
        (opts.out_dir / f"examples-latency-{opts.points}.json").write_text(json.dumps(res, indent=2))
        print(report_latency(res), flush=True)
    return 0
