"""``python -m bench area``: finding every match, a classifier from marks, and counts with error bars (issue 24).

Speed (``--part speed``), on a Qdrant server this run starts (or ``QDRANT_URL``), with the query
benchmark's synthetic collection (real encoder vectors of real tiles, perturbed; ``--points``):
- ``find`` of about 1% of the tiles (the threshold set at the 99th percentile of the text's
  scores: Qdrant's exact threshold search, then the hits' vectors) against a full scroll that
  keeps nothing (reading every tile once) and against find as it was (scroll every tile and score
  it here), same set checked; its Python peak memory (tracemalloc) at 1% and at 10% hits: flat in
  the hits;
- a linear classifier on unit coarse vectors as a query (``w.x + b >= 0`` <=> ``cos(x, w) >= -b/|w|``):
  Qdrant's search with that score threshold (exact, and HNSW) against scroll-and-score of the same
  model, same answer checked;
- training on 200 marks (100 hits, 100 misses, plus the background tiles ``classify`` adds): one
  fit, the fit with its cross-validation, and a review's answer (the refit ``review`` runs on every
  answer: fetching the marks and the background, one fit, no cross-validation; then the next
  proposal), on a review started over the whole collection.

Quality (``--part quality``), on real pixels: the UCM and RSICD val+test images as tiles (the
examples benchmark's stores), one class at a time: 5, 10 and 20 marked hits and as many misses,
precision, recall and F1 of the found set (marked tiles left out) for ``classify`` and for the same
marks as ``--like/--unlike`` of ``find`` (its default threshold); then reviews of 50 tiles each
(seeded trials): how often the 95% interval covers the class's true count, and the median error.
To keep the run in minutes, a review here retrains every 10 answers, not every answer: the
estimate does not depend on the classifier (its strata are fixed at the start), only the learning
picks do.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import DATA, machine, table

log = logging.getLogger("bench.area")
OUT = Path("bench/results/area.json")


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


# -- speed ---------------------------------------------------------------------------------------------


def speed(points: int, repeats: int, model: str | None) -> dict[str, Any]:
    from qdrant_client import models as qm

    from bench.query import Place, base_vectors, build, collection_name
    from ftfsearch.classify import Model, Quality
    from ftfsearch.find import find_pages, score_batch, unit
    from ftfsearch.labels import Label
    from ftfsearch.model.loading import load_encoder

    encoder = load_encoder(model, device="cpu")
    base = base_vectors(encoder)
    place = Place.start("server", collection_name(encoder, points))
    try:
        store = place.open()
        built = build(store, encoder, base, points)
        text = unit(encoder.encode_text(["a river next to farmland"])[0].float().numpy())
        scores = np.concatenate([unit(b.coarse) @ text for b in store.scan(None, page=1024)])
        t1, t10 = float(np.quantile(scores, 0.99)), float(np.quantile(scores, 0.90))

        def scroll_all() -> int:
            n = 0
            for b in store.scan(None, page=1024):
                n += len(b)
            return n

        def find_all(threshold: float) -> int:
            return sum(len(page) for page in find_pages(store, text, threshold, None, None))

        def find_scroll(threshold: float) -> set[str]:
            """find as it was before the threshold search: every tile read and scored here."""
            found: set[str] = set()
            for batch in store.scan(None, page=1024):
                keep = np.flatnonzero(score_batch(batch, text) >= threshold)
                if len(keep):
                    np.argmax(unit(np.asarray(batch.regions[keep], dtype=np.float32)) @ text, axis=-1)
                    found.update(batch.ids[i] for i in keep)
            return found

        def peak(fn: Any) -> float:
            tracemalloc.start()
            fn()
            _, top = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            return top / 2**20

        timings: dict[str, list[float]] = {"scroll": [], "find_1pct": [], "find_scroll_1pct": [],
                                           "qdrant_exact": [], "qdrant_hnsw": [], "classifier_scroll": []}
        hits = find_all(t1)
        # a coarse-only linear classifier: hits are the 1% above t1, misses drawn from the rest
        x = unit(np.concatenate([b.coarse for b in store.scan(None, page=1024)]))[:20000]
        y = (x @ text >= t1).astype(int)
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000).fit(x, y)
        w, b = clf.coef_[0].astype(np.float32), float(clf.intercept_[0])
        norm = float(np.linalg.norm(w))
        linear = Model(w, b, Quality(0, 0, 0, 0, 0, 0, 0))

        def classifier_scroll() -> set[str]:
            found: set[str] = set()
            for batch in store.scan(None, page=1024):
                found.update(i for i, s in zip(batch.ids, unit(batch.coarse) @ w + b) if s >= 0)
            return found

        client = store._client  # type: ignore[attr-defined]  # the bench reads the server's own search

        def classifier_qdrant(exact: bool) -> set[str]:
            res = client.query_points(place.name, query=(w / norm).tolist(), using="coarse", limit=points,
                                      score_threshold=-b / norm, with_payload=False,
                                      search_params=qm.SearchParams(exact=exact))
            return {str(p.id) for p in res.points}

        for _ in range(repeats):
            for name, fn in (("scroll", scroll_all), ("find_1pct", lambda: find_all(t1)),
                             ("find_scroll_1pct", lambda: find_scroll(t1)),
                             ("classifier_scroll", classifier_scroll),
                             ("qdrant_exact", lambda: classifier_qdrant(True)),
                             ("qdrant_hnsw", lambda: classifier_qdrant(False))):
                t0 = time.perf_counter()
                fn()
                timings[name].append(time.perf_counter() - t0)
        truth, exact, hnsw = classifier_scroll(), classifier_qdrant(True), classifier_qdrant(False)
        find_same = {h.id for page in find_pages(store, text, t1, None, None) for h in page} == find_scroll(t1)
        mem = {"find_1pct_mb": peak(lambda: find_all(t1)), "find_10pct_mb": peak(lambda: find_all(t10)),
               "hits_10pct": find_all(t10)}

        # training on 200 marks (100 hits, 100 misses) with the background classify adds
        order = np.argsort(-scores)
        ids = [i for batch in store.scan(None, page=1024) for i in batch.ids]
        marks = [Label(ids[i], "positive") for i in order[:100]] + [Label(ids[i], "negative") for i in order[-100:]]
        training = train_200(store, marks, repeats)
        store.close()
        _ = linear
    finally:
        place.stop()
    p50 = {k: statistics.median(v) for k, v in timings.items()}
    return {
        "points": points, "build_seconds": built, "repeats": repeats, "hits_1pct": hits, "p50_s": p50,
        "find_over_scroll": p50["find_1pct"] / p50["scroll"],
        "find_over_find_scroll": p50["find_1pct"] / p50["find_scroll_1pct"], "find_same": find_same,
        "qdrant_exact_over_scroll_classifier": p50["qdrant_exact"] / p50["classifier_scroll"],
        "qdrant_hnsw_over_scroll_classifier": p50["qdrant_hnsw"] / p50["classifier_scroll"],
        "classifier_hits": len(truth), "qdrant_exact_same": exact == truth,
        "qdrant_hnsw_recall": len(hnsw & truth) / max(len(truth), 1),
        "memory": mem, "train_200_marks": training,
    }


def train_200(store: Any, marks: list[Any], repeats: int) -> dict[str, Any]:
    """Training on 200 marks: a fit with its cross-validation, a refit alone, and a review's
    answers (each refits, without cross-validation, and proposes the next tile)."""
    from ftfsearch.classify import fit
    from ftfsearch.labels import LabelSet
    from ftfsearch.review import answer, propose, retrain, start

    fits, train_ms, refits, refit_ms = [], [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model_ = fit(store, LabelSet(marks), None, None)
        fits.append(time.perf_counter() - t0)
        train_ms.append(model_.quality.train_ms)
        t0 = time.perf_counter()
        refit_ms.append(fit(store, LabelSet(marks), None, None, cross_validate=False).quality.train_ms)
        refits.append(time.perf_counter() - t0)
    # a review's answers: 200 marks, then each answer refits (no cross-validation) and proposes the next tile
    labels = LabelSet(list(marks))
    review, model_r = start(store, labels, None, None, {}, seed=0)
    per_answer: list[float] = []
    item = propose(store, review, labels, model_r)
    for k in range(2 * repeats):
        if item is None:
            break
        t0 = time.perf_counter()
        labels = answer(labels, review, [(item.id, bool(k % 2))])
        model_r = retrain(store, review, labels, None, None)
        item = propose(store, review, labels, model_r)
        per_answer.append(time.perf_counter() - t0)
    return {"fit_ms_p50": statistics.median(train_ms), "with_cv_and_fetch_s_p50": statistics.median(fits),
            "refit_ms_p50": statistics.median(refit_ms), "refit_and_fetch_s_p50": statistics.median(refits),
            "review_answer_s": per_answer, "review_answer_s_p50": statistics.median(per_answer),
            "background": model_.quality.background}


# -- quality -------------------------------------------------------------------------------------------


def prf(found: set[str], truth: set[str]) -> tuple[float, float, float]:
    tp = len(found & truth)
    p = tp / len(found) if found else 0.0
    r = tp / len(truth) if truth else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def quality(datasets: list[str], sizes: tuple[int, ...], trials: int, review_trials: int, reviews: int,
            model: str | None, seed: int) -> dict[str, Any]:
    from bench.examples import labelled_store
    from ftfsearch.classify import fit, score_pages
    from ftfsearch.find import default_threshold, find_pages, unit
    from ftfsearch.labels import Label, LabelSet
    from ftfsearch.model.loading import load_encoder
    from ftfsearch.review import answer, estimate, propose, start
    from ftfsearch.store.base import average_vector

    encoder = load_encoder(model, device="cpu")
    out: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        for path in datasets:
            lab = labelled_store(encoder, DATA / path, Path(tmp))
            store = lab.store
            all_ids = list(lab.ids)
            _, coarse_all, _, _ = store.get_vectors(all_ids, with_payload=False)
            by_marks: dict[int, Any] = {}
            row: dict[str, Any] = {"classes": len(lab.members), "tiles": len(all_ids), "by_marks": by_marks}
            for n in sizes:
                scores: dict[str, list[tuple[float, float, float]]] = {"classify": [], "like_unlike": []}
                for cls, members in sorted(lab.members.items()):
                    if len(members) < n + 5:
                        continue
                    others = [i for i in all_ids if lab.label_of[i] != cls]
                    for _ in range(trials):
                        pos = list(rng.choice(members, n, replace=False))
                        neg = list(rng.choice(others, n, replace=False))
                        truth = set(members) - set(pos)
                        marks = LabelSet([Label(t, "positive") for t in pos] + [Label(t, "negative") for t in neg])
                        m = fit(store, marks, None, None)
                        found = {d.id for page in score_pages(store, m, None, None) for d in page} - set(pos) - set(neg)
                        scores["classify"].append(prf(found, truth))
                        got, c, _, _ = store.get_vectors(pos + neg, with_payload=False)
                        index = {t: k for k, t in enumerate(got)}
                        q = unit(average_vector(c[[index[t] for t in pos]], c[[index[t] for t in neg]]))
                        threshold = default_threshold(unit(coarse_all) @ q)
                        found = {h.id for page in find_pages(store, q, threshold, None, None) for h in page}
                        scores["like_unlike"].append(prf(found - set(pos) - set(neg), truth))
                if not scores["classify"]:  # no class has n + 5 tiles: nothing measured, no NaN row
                    by_marks[n] = {"trials": 0, "why": f"no class has {n + 5} tiles ({n} marked and 5 to find)"}
                    log.info("%s n=%d: %s", lab.name, n, by_marks[n]["why"])
                    continue
                by_marks[n] = {k: {"precision": float(np.mean([s[0] for s in v])),
                                          "recall": float(np.mean([s[1] for s in v])),
                                          "f1": float(np.mean([s[2] for s in v])), "trials": len(v)}
                                      for k, v in scores.items()}
                log.info("%s n=%d: %s", lab.name, n, by_marks[n])
            covered, errors, widths, t_review = [], [], [], []
            for cls, members in sorted(lab.members.items()):
                if len(members) < 15:
                    continue
                truth_set = set(members)
                others = [i for i in all_ids if i not in truth_set]
                for trial in range(review_trials):
                    pos = list(rng.choice(members, 10, replace=False))
                    neg = list(rng.choice(others, 10, replace=False))
                    marks = LabelSet([Label(t, "positive") for t in pos] + [Label(t, "negative") for t in neg])
                    t0 = time.perf_counter()
                    review, m = start(store, marks, None, None, {}, seed=int(rng.integers(2**31)))
                    for k in range(reviews):
                        item = propose(store, review, marks, m)
                        if item is None:
                            break
                        marks = answer(marks, review, [(item.id, item.id in truth_set)])
                        if (k + 1) % 10 == 0:
                            m = fit(store, marks, None, None)
                    t_review.append(time.perf_counter() - t0)
                    est = estimate(review, marks)
                    true_count = len(members)
                    covered.append(est.low <= true_count <= est.high)
                    errors.append(abs(est.count - true_count) / true_count)
                    widths.append((est.high - est.low) / true_count)
            row["review"] = {"trials": len(covered), "reviews": reviews, "coverage": float(np.mean(covered)),
                             "median_error": float(np.median(errors)), "median_width_over_truth": float(np.median(widths)),
                             "seconds_per_review_run_p50": float(np.median(t_review))}
            log.info("%s review: %s", lab.name, row["review"])
            out[lab.name] = row
            store.close()
    return out


def report(res: dict[str, Any]) -> str:
    lines = [f"machine: {json.dumps(res['machine'])}"]
    s = res.get("speed")
    if s:
        p = s["p50_s"]
        lines.append(table(
            f"find and classify on a Qdrant server, {s['points']:,} tiles (p50 of {s['repeats']})",
            ["pass", "p50 s", "vs baseline"],
            [["baseline: scroll every tile", p["scroll"], 1.0],
             [f"find, {s['hits_1pct']:,} hits (1%): threshold search", p["find_1pct"], s["find_over_scroll"]],
             ["find as it was: scroll and score", p["find_scroll_1pct"], p["find_scroll_1pct"] / p["scroll"]],
             [f"classifier: scroll and score ({s['classifier_hits']:,} hits)", p["classifier_scroll"], 1.0],
             ["classifier: Qdrant score threshold, exact", p["qdrant_exact"], s["qdrant_exact_over_scroll_classifier"]],
             ["classifier: Qdrant score threshold, HNSW", p["qdrant_hnsw"], s["qdrant_hnsw_over_scroll_classifier"]]]))
        lines.append(f"same answer: exact {s['qdrant_exact_same']}, HNSW recall {s['qdrant_hnsw_recall']:.3f}; "
                     f"find peak Python memory {s['memory']['find_1pct_mb']:.1f} MB at 1% hits, "
                     f"{s['memory']['find_10pct_mb']:.1f} MB at 10% ({s['memory']['hits_10pct']:,} hits); "
                     f"training on 200 marks: fit {s['train_200_marks']['fit_ms_p50']:.0f} ms, with "
                     f"cross-validation and fetching {s['train_200_marks']['with_cv_and_fetch_s_p50']:.2f} s")
        t = s["train_200_marks"]
        if "find_same" in s:
            lines.append(f"find: same set as scroll and score {s['find_same']}, "
                         f"{s['find_over_find_scroll']:.3f} of its time; a review's answer on 200 marks (refit "
                         f"{t['refit_ms_p50']:.0f} ms, with fetching {t['refit_and_fetch_s_p50']:.2f} s; with the next "
                         f"proposal) {t['review_answer_s_p50']:.2f} s p50 of {len(t['review_answer_s'])}")
    for name, row in (res.get("quality") or {}).items():
        rows = []
        for n, by in row["by_marks"].items():
            if not by.get("trials", 1):
                lines.append(f"{name}, {n} + {n} marks: not measured ({by['why']})")
                continue
            for k, v in by.items():
                rows.append([f"{n} + {n}", k, v["precision"], v["recall"], v["f1"], v["trials"]])
        lines.append(table(f"{name}: found set from marks ({row['classes']} classes, {row['tiles']} tiles)",
                           ["marks", "method", "precision", "recall", "F1", "trials"], rows))
        r = row["review"]
        lines.append(f"{name} review, {r['reviews']} answers, {r['trials']} trials: 95% CI coverage "
                     f"{r['coverage']:.2f}, median error {r['median_error']:.3f}, median CI width / truth "
                     f"{r['median_width_over_truth']:.2f}, {r['seconds_per_review_run_p50']:.1f} s per review run")
    return "\n\n".join(lines)


def main(args: Any) -> int:
    res: dict[str, Any] = {"machine": machine()}
    if args.part in ("all", "speed"):
        res["speed"] = speed(args.points, args.repeats, args.model)
    if args.part in ("all", "quality"):
        res["quality"] = quality(args.datasets.split(","), tuple(int(v) for v in args.marks.split(",")), args.trials,
                                 args.review_trials, args.reviews, args.model, args.seed)
    out = args.json or OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file():  # a part run alone keeps the other part's figures
        res = {**json.loads(out.read_text()), **res}
    out.write_text(json.dumps(res, indent=1, default=float))
    print(report(res))
    return 0


def add_parser(sub: Any) -> None:
    a = sub.add_parser("area", help="find every match, classify from marks, count with error bars (issue 24)")
    a.add_argument("--part", choices=["all", "speed", "quality"], default="all")
    a.add_argument("--points", type=int, default=50_000, help="speed: tiles in the server's collection")
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--datasets", default="ucm/dataset_ucm.json,rsicd/dataset_rsicd.json")
    a.add_argument("--marks", default="5,10,20", help="quality: marked hits (and as many misses)")
    a.add_argument("--trials", type=int, default=2, help="quality: random mark sets per class and size")
    a.add_argument("--review-trials", type=int, default=2, help="quality: reviews per class")
    a.add_argument("--reviews", type=int, default=50)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--model", default=None)
    a.add_argument("--json", type=Path, default=None)
