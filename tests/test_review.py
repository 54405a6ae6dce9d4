"""Review on both backends with a real ingested scene: random draws across the first classifier's
strata before any learning pick, learning picks that are the current classifier's least sure tile,
a review of every tile that counts exactly the truth, the review file round trip, and the refusals.

The reviewer is an oracle: a tile is a hit when the text "a river" scores it in the top third of
the scene (a fixed, model-made truth, so the count can be checked exactly)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ftfsearch.classify import fit, marked_features
from ftfsearch.errors import BadInput
from ftfsearch.labels import Label, LabelSet, labels_to_geojson, parse_labels
from ftfsearch.model.loading import load_encoder
from ftfsearch.review import VALIDATE_EVERY, Review, answer, estimate, marks_of, propose, retrain, review_of, start
from ftfsearch.store.base import QueryFilter, Store
from ingest.pipeline import IngestOptions, ingest_paths
from ingest.tiling import TilingSpec

SCENE = Path(__file__).resolve().parent / "data" / "RGB.byte.tif"
SPEC = TilingSpec(tile_size=64, levels=(1,))


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return load_encoder(str(tiny_clip_dir), device="cpu")


@pytest.fixture
def filled(store: Store, encoder) -> Store:
    done, failed = ingest_paths([SCENE], encoder, store, IngestOptions(spec=SPEC, batch_size=32))
    assert not failed and done[0].state == "complete"
    return store


def oracle(store: Store, encoder) -> dict[str, bool]:
    """Every tile's truth: in the top third of the scene by its coarse score for "a river"."""
    ids = [i for batch in store.scan(None) for i in batch.ids]
    got, coarse, _, _ = store.get_vectors(ids, with_payload=False)
    text = encoder.encode_text(["a river"])[0].float().numpy()
    scores = coarse @ text
    cut = np.quantile(scores, 2 / 3)
    return {t: bool(s >= cut) for t, s in zip(got, scores)}


def first_marks(truth: dict[str, bool]) -> LabelSet:
    hits = [t for t, v in sorted(truth.items()) if v][:4]
    misses = [t for t, v in sorted(truth.items()) if not v][:2]
    return LabelSet([Label(t, "positive") for t in hits] + [Label(t, "negative") for t in misses])


def test_a_review_of_every_tile_counts_the_truth_exactly(filled: Store, encoder) -> None:
    truth = oracle(filled, encoder)
    labels = first_marks(truth)
    review, model = start(filled, labels, None, None, {"scope": "whole"}, seed=3)
    assert sum(s.size for s in review.strata) == len(truth) > 50
    assert all(s.size == len(s.queue) for s in review.strata)  # every tile is in its stratum's order
    kinds: list[str] = []
    while True:
        item = propose(filled, review, labels, model)
        if item is None:
            break
        if item.kind == "learn" and item.stratum == -1:  # draws used up: the pool's least sure open tile
            taken = set(marks_of(labels)) | set(review.learned[:-1]) | {t for t, _ in review.draws}
            open_ = [t for t in review.pool if t not in taken]
            p = model.probability(marked_features(filled, open_))
            assert abs(item.probability - 0.5) <= float(np.min(np.abs(p - 0.5))) + 1e-6
        else:  # a random draw, learning or not: it counts for the estimate
            assert review.draws[-1] == (item.id, item.stratum)
            assert (review.learned[-1:] == [item.id]) == (item.kind == "learn")
        kinds.append(item.kind)
        again = propose(filled, review, labels, model)  # asked again until answered
        assert again is not None and (again.id, again.kind) == (item.id, item.kind)
        labels = answer(labels, review, [(item.id, truth[item.id])])
        if len(kinds) % 10 == 0:
            model = fit(filled, labels, None, None)
    sampled_first = len([s for s in review.strata if s.size])
    assert set(kinds[:sampled_first]) == {"estimate"}, kinds[:sampled_first]  # every stratum before learning
    assert "learn" in kinds
    est = estimate(review, labels)
    true_count = sum(truth.values())
    assert est.count == est.low == est.high == true_count
    # the review file round trip: marks and design come back as they were
    doc = {**labels_to_geojson(labels, filled), "review": review.to_json()}
    again = review_of(doc)
    assert again is not None and again.to_json() == review.to_json()
    assert marks_of(parse_labels(doc)) == marks_of(labels)


def test_a_partial_review_estimates_with_an_interval(filled: Store, encoder) -> None:
    truth = oracle(filled, encoder)
    labels = first_marks(truth)
    review, model = start(filled, labels, None, None, {}, seed=11)
    for _ in range(30):
        item = propose(filled, review, labels, model)
        assert item is not None
        labels = answer(labels, review, [(item.id, truth[item.id])])
    est = estimate(review, labels)
    # every answer is a random draw and counts; a draw of a tile marked before the review counts unasked
    assert 30 <= est.reviewed <= 30 + len(marks_of(first_marks(truth))) and est.low < est.count < est.high
    assert est.low <= sum(truth.values()) <= est.high
    # a skipped draw is asked no more and left out of the estimate
    item = propose(filled, review, labels, model)
    assert item is not None
    labels = answer(labels, review, [(item.id, None)])
    after = propose(filled, review, labels, model)
    assert after is not None and after.id != item.id
    assert estimate(review, labels).reviewed == est.reviewed


def test_every_answer_refits_and_cross_validation_runs_every_few_marks(filled: Store, encoder) -> None:
    truth = oracle(filled, encoder)
    labels = first_marks(truth)
    review, model = start(filled, labels, None, None, {}, seed=7)
    assert review.validated is not None and review.validated.marks == 6 and review.validated.folds >= 2
    first = review.validated
    for n in range(1, VALIDATE_EVERY + 1):
        item = propose(filled, review, labels, model)
        assert item is not None
        labels = answer(labels, review, [(item.id, truth[item.id])])
        before = model.weights
        model = retrain(filled, review, labels, None, None)
        assert not np.array_equal(model.weights, before)  # refitted on this answer
        # the refit is the model a cross-validated fit of the same marks makes
        assert np.allclose(model.weights, fit(filled, labels, None, None).weights, atol=1e-6)
        if n < VALIDATE_EVERY:
            assert review.validated is first and model.quality.folds == 0  # not cross-validated
        else:
            assert review.validated.marks == 6 + VALIDATE_EVERY and model.quality.folds >= 2
    asked = retrain(filled, review, labels, None, None, validate=True)
    assert asked.quality.folds >= 2 and review.validated.precision == asked.quality.precision
    again = review_of({"review": review.to_json()})
    assert again is not None and again.validated == review.validated
    older = review.to_json()
    del older["validated"]  # a file written before reviews kept it: validated at the next answer
    old = Review.from_json(older)
    assert old.validated is None
    retrain(filled, old, labels, None, None)
    assert old.validated is not None and old.validated.marks == len(marks_of(labels))


def test_bad_review_files_are_refused_in_one_line(filled: Store) -> None:
    with pytest.raises(BadInput, match="review' member"):
        Review.from_json({"version": 1, "scope": {}, "seed": 1, "strata": [], "draws": [["x", 3]]})
    with pytest.raises(BadInput, match="too few tiles in scope"):  # refused before any scoring
        ids = [i for batch in filled.scan(None) for i in batch.ids][:3]
        start(filled, LabelSet([Label(t, "positive") for t in ids]), QueryFilter(scene_ids=("none",)), None, {})
