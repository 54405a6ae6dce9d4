"""Review (``ftfsearch review``, ``classify --estimate``): tiles for an analyst to check, so that a
count comes with error bars and every answer teaches the classifier.

A review lives in the labels file itself, as its ``review`` member beside the marks: the answers are
marks like any other (``classify --labels``, ``query --labels`` read the same file), and the member
holds the sampling design (the strata, their sizes, the random draws). One file the analyst names
is the whole state: it needs no write access to the collection, works the same on both backends
and through ``serve`` (its content travels in the request, the route writes nothing), can be
versioned or shared, and re-deriving the estimate from it needs nothing else.

Every proposal is a tile drawn uniformly at random within probability strata fixed when the
review started (the first classifier's; sizes counted over the whole scope), so every answer enters
the stratified estimate (:mod:`ftfsearch.estimate`) and the count stays unbiased however the
classifier changes afterwards: what is counted is the reviewer's truth; the strata only decide where
to look. A drawn tile that is already marked is answered by its mark, without asking. Two kinds
choose the stratum:

- **estimate draws**: where one more answer shrinks the interval most (Neyman allocation).
- **learning draws**: where the answers so far are most mixed, that is where the classifier is least
  reliable; these train it where it errs. (Learning picks outside the random draws, the tiles the
  classifier was least sure of, cost the estimate half its answers: on RSICD, 50 answers, median
  error 13% against 5% with learning draws, BENCHMARKS.md. They remain for when every stratum's
  random order is used up.)

A stratum not yet sampled comes first; then the two kinds alternate. Every answer refits the
classifier (one fit: a tenth of a second for a few hundred marks); its cross-validated precision and
recall (five more fits) are measured every :data:`VALIDATE_EVERY` marks or when asked, and kept in
the review with the number of marks they were measured on, so an answer says how fresh they are.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ftfsearch.area import Area
from ftfsearch.classify import Model, fit, marked_features, scored_batches
from ftfsearch.errors import BadInput
from ftfsearch.estimate import Estimate, Stratum, most_mixed, next_stratum, strata_edges, stratified_estimate
from ftfsearch.labels import Label, LabelSet
from ftfsearch.store.base import QueryFilter, Store

REVIEW_VERSION = 1
STRATA = 5
QUEUE = 200
"""Random draws kept per stratum (the first ``n`` of a random order are a simple random sample)."""
POOL = 256
"""Learning picks come from the tiles the first classifier was least sure of, at most this many."""
VALIDATE_EVERY = 10
"""Marks added between two cross-validations of the review's classifier."""


@dataclass
class Validated:
    """The classifier's cross-validated quality, measured when the labels held ``marks`` marked tiles."""

    precision: float
    recall: float
    folds: int
    marks: int


@dataclass
class StratumPlan:
    """A probability stratum ``[low, high)`` of the first classifier: its size in the scope and a
    random order of (up to :data:`QUEUE` of) its tiles, drawn in that order."""

    low: float
    high: float
    size: int
    queue: list[str]


@dataclass
class Review:
    """The sampling design and what was proposed; the answers are the file's marks."""

    scope: dict[str, Any]
    seed: int
    strata: list[StratumPlan]
    draws: list[tuple[str, int]] = field(default_factory=list)
    """Estimate draws in order: (tile id, stratum)."""
    pool: list[str] = field(default_factory=list)
    learned: list[str] = field(default_factory=list)
    """Learning picks proposed, in order."""
    skipped: list[str] = field(default_factory=list)
    """Tiles the reviewer could not tell (a skipped draw is left out of the estimate)."""
    validated: Validated | None = None
    """The last cross-validation (None in a file written before reviews kept it)."""

    def to_json(self) -> dict[str, Any]:
        return {"version": REVIEW_VERSION, "scope": self.scope, "seed": self.seed,
                "strata": [asdict(s) for s in self.strata], "draws": [list(d) for d in self.draws],
                "pool": self.pool, "learned": self.learned, "skipped": self.skipped,
                **({"validated": asdict(self.validated)} if self.validated is not None else {})}

    @classmethod
    def from_json(cls, data: Any, source: str = "`labels`") -> "Review":
        """The ``review`` member of a labels file; BadInput naming ``source`` when it is not one."""
        try:
            if data.get("version") != REVIEW_VERSION:
                raise ValueError(f"version {data.get('version')!r} is not {REVIEW_VERSION}")
            strata = [StratumPlan(float(s["low"]), float(s["high"]), int(s["size"]), [str(t) for t in s["queue"]])
                      for s in data["strata"]]
            draws = [(str(t), int(h)) for t, h in data.get("draws", [])]
            if any(not 0 <= h < len(strata) for _, h in draws):
                raise ValueError("a draw names no stratum")
            v = data.get("validated")
            validated = None if v is None else Validated(float(v["precision"]), float(v["recall"]), int(v["folds"]),
                                                         int(v["marks"]))
            return cls(scope=dict(data["scope"]), seed=int(data["seed"]), strata=strata, draws=draws,
                       pool=[str(t) for t in data.get("pool", [])], learned=[str(t) for t in data.get("learned", [])],
                       skipped=[str(t) for t in data.get("skipped", [])], validated=validated)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise BadInput(f"{source}: its 'review' member is not one 'ftfsearch review' wrote ({exc}); start a "
                           "new review file") from exc


@dataclass(frozen=True)
class Proposal:
    """A tile to check: why (``estimate`` or ``learn``ing draw; ``learn`` with stratum -1: a pick outside
    the draws, once they are used up), its stratum, the current
    classifier's probability, and its payload (footprint, scene, window)."""

    id: str
    kind: str
    stratum: int
    probability: float
    payload: dict[str, Any]


def review_of(labels: dict[str, Any]) -> Review | None:
    """The review in a labels file's content, if it has one."""
    member = labels.get("review")
    return None if member is None else Review.from_json(member)


def marks_of(labels: LabelSet) -> dict[str, bool]:
    """Each marked tile's answer (a marked region counts for its tile; the last mark wins)."""
    return {m.tile_id: m.label == "positive" for m in labels.labels}


def start(store: Store, labels: LabelSet, flt: QueryFilter | None, area: Area | None, scope: dict[str, Any],
          seed: int | None = None) -> tuple[Review, Model]:
    """Train on the marks, score every tile of the scope, and fix the strata, their random draw
    orders and the learning pool. Memory: one id and one probability per tile in scope."""
    model = fit(store, labels, flt, area)
    ids: list[str] = []
    parts: list[np.ndarray] = []
    for batch, p, inside in scored_batches(store, model, flt, area):
        keep = np.flatnonzero(inside)
        ids += [batch.ids[i] for i in keep]
        parts.append(p[keep])
    if not ids:
        raise BadInput("`aoi`: no tile in the review's scope; widen `aoi`, `bbox`, `scene` or the time range")
    p = np.concatenate(parts)
    seed = secrets.randbits(31) if seed is None else int(seed)
    rng = np.random.default_rng(seed)
    edges = strata_edges(p, STRATA)
    bounds = [0.0, *[float(e) for e in edges], 1.0]
    which = np.searchsorted(edges, p, side="right")
    strata = []
    for h in range(len(bounds) - 1):
        members = np.flatnonzero(which == h)
        order = members[rng.permutation(len(members))[:QUEUE]]
        strata.append(StratumPlan(bounds[h], bounds[h + 1], int(len(members)), [ids[i] for i in order]))
    marked = marks_of(labels)
    pool = [ids[i] for i in np.argsort(np.abs(p - 0.5), kind="stable")[: POOL + len(marked)] if ids[i] not in marked]
    q = model.quality
    validated = Validated(q.precision, q.recall, q.folds, len(marked))
    return Review(scope=scope, seed=seed, strata=strata, pool=pool[:POOL], validated=validated), model


def retrain(store: Store, review: Review, labels: LabelSet, flt: QueryFilter | None, area: Area | None,
            validate: bool = False) -> Model:
    """The classifier refitted on the marks after an answer; cross-validated too (and kept in
    ``review.validated``) when asked, when none is kept, or when :data:`VALIDATE_EVERY` marks were
    added since the last one."""
    marks = len(marks_of(labels))
    last = review.validated
    due = validate or last is None or abs(marks - last.marks) >= VALIDATE_EVERY
    model = fit(store, labels, flt, area, cross_validate=due)
    if due:
        q = model.quality
        review.validated = Validated(q.precision, q.recall, q.folds, marks)
    return model


def answer(labels: LabelSet, review: Review, answers: list[tuple[str, bool | None]]) -> LabelSet:
    """The marks with ``answers`` applied: True a hit, False a miss (either replaces the tile's
    earlier marks), None skipped (the reviewer could not tell)."""
    marks = list(labels.labels)
    for tile_id, hit in answers:
        tile_id = tile_id.lower()
        if hit is None:
            if tile_id not in review.skipped:
                review.skipped.append(tile_id)
            continue
        marks = [m for m in marks if m.tile_id != tile_id]
        marks.append(Label(tile_id, "positive" if hit else "negative"))
        if tile_id in review.skipped:
            review.skipped.remove(tile_id)
    return LabelSet(marks, query=labels.query, model_id=labels.model_id)


def strata_counts(review: Review, marks: dict[str, bool]) -> list[Stratum]:
    """Each stratum's size, answered draws and hits among them (skipped draws left out)."""
    reviewed = [0] * len(review.strata)
    positive = [0] * len(review.strata)
    for tile_id, h in review.draws:
        if tile_id in marks and tile_id not in review.skipped:
            reviewed[h] += 1
            positive[h] += int(marks[tile_id])
    return [Stratum(s.size, n, y) for s, n, y in zip(review.strata, reviewed, positive)]


def estimate(review: Review, labels: LabelSet) -> Estimate:
    """The number of hits in the review's scope, with its 95% interval (:mod:`ftfsearch.estimate`)."""
    return stratified_estimate(strata_counts(review, marks_of(labels)))


def propose(store: Store, review: Review, labels: LabelSet, model: Model) -> Proposal | None:
    """The next tile to check (the same one again until it is answered or skipped); None when
    nothing is left to propose. Records a new draw or pick in ``review``."""
    marks = marks_of(labels)
    skipped = set(review.skipped)
    learning = set(review.learned)
    for tile_id, h in review.draws:
        if tile_id not in marks and tile_id not in skipped:
            return _proposal(store, model, tile_id, "learn" if tile_id in learning else "estimate", h)
    if review.learned and review.learned[-1] not in marks and review.learned[-1] not in skipped:
        return _proposal(store, model, review.learned[-1], "learn", -1)
    counts = strata_counts(review, marks)
    unsampled = any(s.size > 0 and s.reviewed == 0 for s in counts)
    answered = [t for t, _ in review.draws if t in marks and t not in skipped]
    learned = sum(1 for t in answered if t in learning)
    if not unsampled and learned < len(answered) - learned:
        return _draw(store, review, marks, model, for_learning=True) or _learn_pick(store, review, marks, model)
    return _draw(store, review, marks, model) or _learn_pick(store, review, marks, model)


def _draw(store: Store, review: Review, marks: dict[str, bool], model: Model,
          for_learning: bool = False) -> Proposal | None:
    """The next random tile of the stratum where a review helps the estimate most (``for_learning``:
    whose answers so far are most mixed); a drawn tile already marked is answered by its mark and
    the next is drawn."""
    while True:
        drawn = [0] * len(review.strata)
        for _, h in review.draws:
            drawn[h] += 1
        counts = strata_counts(review, marks)
        open_ = [Stratum(s.size, c.reviewed, c.positive) if d < len(s.queue) else Stratum(0, 0, 0)
                 for s, c, d in zip(review.strata, counts, drawn)]
        if not any(s.size > s.reviewed for s in open_):
            return None
        h = most_mixed(open_) if for_learning else next_stratum(open_)
        tile_id = review.strata[h].queue[drawn[h]]
        review.draws.append((tile_id, h))
        if for_learning:
            review.learned.append(tile_id)
        if tile_id not in marks:
            return _proposal(store, model, tile_id, "learn" if for_learning else "estimate", h)


def _learn_pick(store: Store, review: Review, marks: dict[str, bool], model: Model) -> Proposal | None:
    """The pool's unmarked tile the current classifier is least sure of."""
    taken = set(marks) | set(review.skipped) | set(review.learned) | {t for t, _ in review.draws}
    candidates = [t for t in review.pool if t not in taken]
    if not candidates:
        return None
    p = model.probability(marked_features(store, candidates))
    best = int(np.argmin(np.abs(p - 0.5)))
    review.learned.append(candidates[best])
    return _proposal(store, model, candidates[best], "learn", -1, float(p[best]))


def _proposal(store: Store, model: Model, tile_id: str, kind: str, stratum: int,
              probability: float | None = None) -> Proposal:
    if probability is None:
        probability = float(model.probability(marked_features(store, [tile_id]))[0])
    found = dict(store.get_tiles([tile_id]))
    return Proposal(tile_id, kind, stratum, probability, found.get(tile_id, {}))
