"""Standing queries (``ftfsearch watch``): a query scored on every tile as an ingest writes it.

A watch keeps its query as a vector (the text's, or the examples' ``2 avg(like) - avg(unlike)``, the
vector recall searches with) and the model's rerank parameters, so an ingest scores new tiles
without the text tower. Its score is the two-stage score a search ranks by (BTI over the tile's
coarse and region vectors, :func:`ftfsearch.rerank.bti`; one query vector, so no fusion) and its
matched region the one the text-guided attention weighs most. The coarse cosine alone (``find``'s
score) was measured too weak for this: on real NAIP with a pasted patch of buildings, unchanged
tiles of the same scene outscored the patched one by coarse cosine (0.62 vs 0.60), while BTI put
the patched tile first (0.66 vs 0.61 for the best unchanged one).

Default threshold (no ``min_score``): the best score among a sample of the stored tiles in the
watch's area (all of them up to :data:`SAMPLE`), so a watch fires on a new tile that matches better
than what the store already holds: "tell me when a new scene shows this". ``find``'s robust rule
(median + 4 robust SD) sat above every tile, the patched one included, on that data.

Watches and their hits are records beside the scene records (:meth:`Store.put_records`), so every
ingest worker, shard and ``serve`` on one store sees the same ones. A hit of a watch with a webhook
is recorded ``pending``: the record is the outbox, so a hook that is down loses nothing. Delivery
(:func:`deliver`) POSTs pending hits as a GeoJSON FeatureCollection with a timeout and retries; it
is at-least-once (each feature carries its ``hit_id`` for the receiver to drop repeats).
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ftfsearch.area import Area
from ftfsearch.errors import BadInput, WatchNotFound
from ftfsearch.find import unit
from ftfsearch.net import LOOPBACK_HOSTS
from ftfsearch.rerank import bti
from ftfsearch.store.base import QueryFilter, Store, TileBatch
from ftfsearch.records import WatchHit
from ftfsearch.times import iso_utc, parse_time

KIND_WATCH = "watch"
KIND_HIT = "watch_hit"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HOOK_TIMEOUT_S = 5.0
"""A webhook that has not answered in this long has failed this try."""
HOOK_TRIES = 3
HOOK_BACKOFF_S = 1.0
"""Waits between tries: this, then twice this, ..."""
FEATURES_PER_POST = 500
SAMPLE = 4096
"""Stored tiles scored to choose a watch's default threshold."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise BadInput(f"`name` {str(name)[:80]!r}: a watch name is 1 to 64 letters, digits, '.', '_' or '-', "
                       "starting with a letter or digit")
    return name


def check_webhook(url: str | None) -> str | None:
    """An http(s) URL with a host, or None."""
    if url is None:
        return None
    parts = urllib.parse.urlsplit(str(url).strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"`webhook` {str(url)[:200]!r}: not an http(s) URL; give one such as "
                       "https://example.org/hooks/ftfsearch")
    return parts.geturl()


def _now() -> str:
    return iso_utc(datetime.now(timezone.utc))


@dataclass
class Watch:
    """A standing query: its name, what it looks for (as a vector), where, and above which score."""

    name: str
    query: str
    """What the user asked, for lists (the text, or ``like ...``)."""
    vector: list[float]
    min_score: float
    threshold_source: str
    model_id: str
    aoi: dict[str, Any] | None = None
    webhook: str | None = None
    created: str = field(default_factory=_now)
    rerank: dict[str, Any] = field(default_factory=lambda: {"tau": 0.05, "alpha": 0.5, "balanced": True})
    """The model's BTI parameters (``tau``, ``alpha``, ``balanced``) when the watch was added."""

    def area(self) -> Area | None:
        return None if self.aoi is None else Area.from_geojson(self.aoi)

    def to_payload(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> "Watch":
        return cls(name=str(p["name"]), query=str(p.get("query") or ""), vector=[float(v) for v in p["vector"]],
                   min_score=float(p["min_score"]), threshold_source=str(p.get("threshold_source") or ""),
                   model_id=str(p.get("model_id") or ""), aoi=p.get("aoi"), webhook=p.get("webhook"),
                   created=str(p.get("created") or ""), rerank=dict(p.get("rerank") or {}))

    def summary(self) -> dict[str, Any]:
        """The watch as lists show it (without its vector)."""
        d = self.to_payload()
        d.pop("vector")
        d.pop("rerank")
        return d


def hits_geojson(hits: Sequence[WatchHit]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": [h.feature() for h in hits]}


# -- the watches of a store -----------------------------------------------------------------------


def list_watches(store: Store) -> list[Watch]:
    return sorted((Watch.from_payload(p) for p in store.list_records(KIND_WATCH)), key=lambda w: w.name)


def get_watch(store: Store, name: str) -> Watch:
    found = store.list_records(KIND_WATCH, {"name": check_name(name)})
    if not found:
        known = ", ".join(w.name for w in list_watches(store)) or "none"
        raise WatchNotFound(f"watch {name!r}: no such watch in collection {store.collection!r} (watches: {known}); "
                            "'ftfsearch watch list' lists them")
    return Watch.from_payload(found[0])


def add_watch(store: Store, watch: Watch) -> None:
    """Record ``watch``; a name already taken is refused (remove it first to change it)."""
    check_name(watch.name)
    check_webhook(watch.webhook)
    if store.list_records(KIND_WATCH, {"name": watch.name}):
        raise BadInput(f"`name` {watch.name!r}: a watch of that name exists; 'ftfsearch watch rm {watch.name}' "
                       "first, or choose another name")
    store.put_records(KIND_WATCH, [(watch.name, watch.to_payload())])


def remove_watch(store: Store, name: str) -> int:
    """Remove a watch and its hits (its outbox too); the number of hits removed."""
    get_watch(store, name)
    hits = len(store.list_records(KIND_HIT, {"watch": name}))
    store.delete_records(KIND_HIT, {"watch": name})
    store.delete_records(KIND_WATCH, {"name": name})
    return hits


def watch_hits(store: Store, name: str, since: datetime | None = None) -> list[WatchHit]:
    """A watch's hits found at or after ``since``: the newest first, then by score."""
    get_watch(store, name)
    hits = [WatchHit.from_payload(p) for p in store.list_records(KIND_HIT, {"watch": name})]
    if since is not None:
        hits = [h for h in hits if (t := parse_time(h.found_at, "found_at")) is not None and t >= since]
    return sorted(hits, key=lambda h: (h.found_at, h.score), reverse=True)


# -- scoring tiles as they are written ------------------------------------------------------------


def watch_scores(queries: np.ndarray, coarse: np.ndarray, regions: np.ndarray,
                 rerank: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [W, B], matched region [W, B])`` of B tiles for W query vectors: BTI, as a search ranks."""
    out = bti(np.asarray(queries, dtype=np.float32), unit(coarse), np.asarray(regions, dtype=np.float32),
              tau=float(rerank["tau"]), alpha=float(rerank["alpha"]), balanced=bool(rerank["balanced"]))
    return np.asarray(out.scores), np.asarray(out.attention).argmax(-1)


def default_threshold(store: Store, query: np.ndarray, rerank: dict[str, Any], flt: QueryFilter | None,
                      area: Area | None, sample: int = SAMPLE) -> tuple[float, str]:
    """The best score among up to ``sample`` stored tiles in scope (the scan's first: ids are
    hashes, a fair draw), and how it was chosen; None-equivalent ``(1.0, ...)`` never happens: the
    caller refuses an empty store first."""
    best, seen = -1.0, 0
    for batch in store.scan(flt, page=min(1024, sample)):
        keep = [i for i, p in enumerate(batch.payloads) if area is None or area.keeps(p.get("footprint"), p.get("bbox"))]
        if keep:
            scores, _ = watch_scores(query[None], batch.coarse[keep], batch.regions[keep], rerank)
            best = max(best, float(scores.max()))
        seen += len(keep)
        if seen >= sample:
            break
    if seen == 0:
        raise BadInput("`min_score`: no stored tile lies in the watch's area to choose the threshold from; give one")
    how = "every stored tile" if seen < sample else f"{seen} sampled stored tiles"
    return best + 1e-4, f"above the best score of {how} in scope ({seen})"


class WatchScorer:
    """Scores batches of written tiles against a set of watches: one BTI over all of them per batch."""

    def __init__(self, watches: Sequence[Watch], region_boxes: Any) -> None:
        self.watches = list(watches)
        self.queries = unit(np.asarray([w.vector for w in self.watches], dtype=np.float32))  # [W, D]
        self.thresholds = np.asarray([w.min_score for w in self.watches], dtype=np.float32)
        self.areas = [w.area() for w in self.watches]
        self.boxes = np.asarray(region_boxes, dtype=np.float64)
        self.pending = [w.webhook is not None for w in self.watches]
        # watches of one store share its model's parameters; group them anyway (a model's may change)
        self.groups: dict[tuple[float, float, bool], list[int]] = defaultdict(list)
        for j, w in enumerate(self.watches):
            r = w.rerank
            self.groups[(float(r["tau"]), float(r["alpha"]), bool(r["balanced"]))].append(j)

    def score(self, batch: TileBatch) -> list[WatchHit]:
        """The hits of ``batch``: each (tile, watch) whose score reaches the watch's threshold, in its area."""
        if not len(batch) or not self.watches:
            return []
        hits: list[WatchHit] = []
        found_at = _now()
        for (tau, alpha, balanced), idx in self.groups.items():
            scores, regions = watch_scores(self.queries[idx], batch.coarse, batch.regions,
                                           {"tau": tau, "alpha": alpha, "balanced": balanced})
            for g, i in zip(*np.nonzero(scores >= self.thresholds[idx][:, None])):
                w, i = idx[int(g)], int(i)
                p = batch.payloads[i]
                area = self.areas[w]
                if area is not None and not area.keeps(p.get("footprint"), p.get("bbox")):
                    continue
                region = int(regions[g, i])
                hits.append(WatchHit(
                    watch=self.watches[w].name, tile_id=batch.ids[i], score=round(float(scores[g, i]), 4),
                    scene_id=str(p.get("scene_id", "")), path=str(p.get("path", "")), level=int(p.get("level", 1)),
                    window=dict(p.get("window") or {}), bbox=p.get("bbox"), footprint=p.get("footprint"),
                    region=[float(v) for v in self.boxes[region]], region_index=region, acquired=p.get("acquired"),
                    found_at=found_at, pending=self.pending[w]))
        return hits


def record_hits(store: Store, hits: Sequence[WatchHit]) -> None:
    if hits:
        store.put_records(KIND_HIT, [(h.key, h.to_payload()) for h in hits])


# -- webhooks -------------------------------------------------------------------------------------


def post_geojson(url: str, body: dict[str, Any], timeout: float = HOOK_TIMEOUT_S, tries: int = HOOK_TRIES,
                 backoff: float = HOOK_BACKOFF_S, stop: Callable[[], bool] = lambda: False) -> str | None:
    """POST ``body`` to ``url``; None once a 2xx answers, else why the last try failed."""
    host = urllib.parse.urlsplit(url).hostname or ""
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if host in LOOPBACK_HOSTS else []))
    data = json.dumps(body).encode("utf-8")
    why = "not tried"
    for attempt in range(max(1, tries)):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        if stop():
            return why
        req = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/geo+json", "User-Agent": "ftfsearch-watch"})
        try:
            with opener.open(req, timeout=timeout) as resp:
                if 200 <= resp.status < 300:
                    return None
                why = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            why = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            why = f"{type(reason).__name__}: {reason}"[:200]
    return why


def send(watch: Watch, hits: Sequence[WatchHit], write: Callable[[list[WatchHit]], None],
         timeout: float = HOOK_TIMEOUT_S, tries: int = HOOK_TRIES, stop: Callable[[], bool] = lambda: False) -> int:
    """POST one watch's ``hits`` to its webhook and hand each part, marked delivered or not, to
    ``write`` (which records them; the ingest hook's drops them once its ingest has ended); the
    number delivered."""
    assert watch.webhook is not None
    delivered = 0
    for start in range(0, len(hits), FEATURES_PER_POST):
        part = list(hits[start:start + FEATURES_PER_POST])
        why = post_geojson(watch.webhook, {**hits_geojson(part), "watch": watch.name}, timeout, tries, stop=stop)
        when = _now()
        for h in part:
            h.tries += 1
            if why is None:
                h.pending, h.delivered_at, h.last_error = False, when, None
            else:
                h.last_error = why
        delivered += len(part) if why is None else 0
        write(part)
    return delivered


@dataclass
class DeliveryReport:
    delivered: int
    failed: int
    errors: dict[str, str]
    """watch -> why its last POST failed."""


def pending_hits(store: Store, names: Iterable[str] | None = None) -> dict[str, list[WatchHit]]:
    """The outbox: pending hits by watch (of ``names`` only, when given)."""
    wanted = None if names is None else set(names)
    out: dict[str, list[WatchHit]] = defaultdict(list)
    for p in store.list_records(KIND_HIT, {"delivery": "pending"}):
        h = WatchHit.from_payload(p)
        if wanted is None or h.watch in wanted:
            out[h.watch].append(h)
    return dict(out)


def deliver(store: Store, name: str | None = None, timeout: float = HOOK_TIMEOUT_S,
            tries: int = HOOK_TRIES) -> DeliveryReport:
    """POST every pending hit (of one watch, or all) to its webhook; what is not delivered stays pending."""
    watches = {w.name: w for w in ([get_watch(store, name)] if name else list_watches(store))}
    delivered = failed = 0
    errors: dict[str, str] = {}
    for watch_name, hits in pending_hits(store, watches).items():
        watch = watches[watch_name]
        if watch.webhook is None:
            continue
        ok = send(watch, hits, lambda part: record_hits(store, part), timeout, tries)
        delivered += ok
        failed += len(hits) - ok
        if ok < len(hits):
            errors[watch_name] = str(hits[-1].last_error)
    return DeliveryReport(delivered, failed, errors)
