"""Which review design counts best after 50 answers: learning picks outside the random draws (the
design before 2026-12-08) against learning draws (random draws in the stratum whose answers are most
mixed, so every answer counts), on the same marks and seeds, in one process.

Each trial marks 10 tiles of a class and 10 others among the RSICD test+val images placed as tiles
(``bench area``'s store), answers 50 proposals with the truth, refits every 10 answers, and scores
the estimate against the class's true count (BENCHMARKS.md, issue 24).

    PYTHONPATH=. python experiments/review_design.py [--seeds 0,1] [--answers 50]   # bench/ is not installed
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def learning_picks(review_module: Any) -> Any:
    """``propose`` as it was: after every stratum has a draw, estimate draws and pool picks alternate,
    and the picks are not counted."""
    r = review_module

    def propose(store: Any, review: Any, labels: Any, model: Any) -> Any:
        marks = r.marks_of(labels)
        skipped = set(review.skipped)
        for tile_id, h in review.draws:
            if tile_id not in marks and tile_id not in skipped:
                return r._proposal(store, model, tile_id, "estimate", h)
        if review.learned and review.learned[-1] not in marks and review.learned[-1] not in skipped:
            return r._proposal(store, model, review.learned[-1], "learn", -1)
        counts = r.strata_counts(review, marks)
        unsampled = any(s.size > 0 and s.reviewed == 0 for s in counts)
        learned = sum(1 for t in review.learned if t in marks)
        if not unsampled and learned < sum(s.reviewed for s in counts):
            return r._learn_pick(store, review, marks, model) or r._draw(store, review, marks, model)
        return r._draw(store, review, marks, model) or r._learn_pick(store, review, marks, model)

    return propose


def trials(design: str, seeds: list[int], answers: int) -> dict[str, Any]:
    import ftfsearch.review as review_module
    from bench.area import DATA
    from bench.examples import labelled_store
    from ftfsearch.classify import fit
    from ftfsearch.labels import Label, LabelSet
    from ftfsearch.model.loading import load_encoder

    propose = learning_picks(review_module) if design == "learning picks" else review_module.propose
    encoder = load_encoder(None, device="cpu")
    covered, errors, widths = [], [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        lab = labelled_store(encoder, DATA / "rsicd/dataset_rsicd.json", Path(tmp))
        all_ids = list(lab.ids)
        for seed in seeds:
            rng = np.random.default_rng(seed)
            for _, members in sorted(lab.members.items()):
                if len(members) < 15:
                    continue
                truth = set(members)
                others = [i for i in all_ids if i not in truth]
                for _ in range(2):
                    pos = list(rng.choice(members, 10, replace=False))
                    neg = list(rng.choice(others, 10, replace=False))
                    marks = LabelSet([Label(t, "positive") for t in pos] + [Label(t, "negative") for t in neg])
                    review, model = review_module.start(lab.store, marks, None, None, {}, seed=int(rng.integers(2**31)))
                    for k in range(answers):
                        item = propose(lab.store, review, marks, model)
                        if item is None:
                            break
                        marks = review_module.answer(marks, review, [(item.id, item.id in truth)])
                        if (k + 1) % 10 == 0:
                            model = fit(lab.store, marks, None, None)
                    est = review_module.estimate(review, marks)
                    covered.append(est.low <= len(members) <= est.high)
                    errors.append(abs(est.count - len(members)) / len(members))
                    widths.append((est.high - est.low) / len(members))
        lab.store.close()
    return {"design": design, "trials": len(covered), "coverage": float(np.mean(covered)),
            "median_error": float(np.median(errors)), "mean_error": float(np.mean(errors)),
            "median_width_over_truth": float(np.median(widths)), "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--answers", type=int, default=50)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    for design in ("learning picks", "learning draws"):
        print(json.dumps(trials(design, seeds, args.answers)), flush=True)


if __name__ == "__main__":
    main()
