"""The ingest's hook for standing queries (:mod:`ftfsearch.watch`): every batch the writer stores is
scored against the store's watches right after it is written (no second pass over the scene), and
the hits are recorded with their scene and time. Both the CLI's ingest and serve's holder run the
pipeline, so both call this.

Webhooks: the hits of a watch with one are recorded ``pending`` (the outbox) before anything is
sent, then a courier thread POSTs them, and the outbox left by earlier runs, while the ingest goes
on. The ingest never waits for a hook: when the scene ends the courier may finish the POST in
flight but no longer writes to the store, so what it could not confirm stays pending and is sent by
the next ingest or ``ftfsearch watch deliver`` (at-least-once; receivers drop repeats by hit id).
"""

from __future__ import annotations

import logging
import queue
import threading

from ftfsearch.model.base import Encoder
from ftfsearch.store.base import Store, TileBatch
from ftfsearch.watch import Watch, WatchHit, WatchScorer, list_watches, pending_hits, record_hits, send

log = logging.getLogger(__name__)

HOOK_TRIES_AT_INGEST = 1
"""Tries per POST during an ingest: a hook that is down is tried again at the next ingest or by
``watch deliver``, not here in a loop."""


class WatchHook:
    """Scores written batches against the watches of one store, for one scene's ingest."""

    def __init__(self, store: Store, watches: list[Watch], encoder: Encoder) -> None:
        self.store = store
        self.scorer = WatchScorer(watches, encoder.region_boxes)
        self.by_name = {w.name: w for w in watches}
        self.hits = 0
        self._lock = threading.Lock()
        self._closed = False
        self._outbox: queue.Queue[tuple[Watch, list[WatchHit]] | None] = queue.Queue()
        self._courier: threading.Thread | None = None
        if any(w.webhook for w in watches):
            self._courier = threading.Thread(target=self._deliver, name="ftf-watch-courier", daemon=True)
            self._courier.start()
            for name, hits in pending_hits(store, self.by_name).items():  # what earlier runs could not send
                self._outbox.put((self.by_name[name], hits))

    @classmethod
    def open(cls, store: Store, encoder: Encoder) -> "WatchHook | None":
        """The hook, or None when the store has no watch (then ingest does nothing more)."""
        watches = list_watches(store)
        return cls(store, watches, encoder) if watches else None

    def written(self, batch: TileBatch) -> None:
        """Called by the writer once ``batch`` is stored: its hits recorded, the owed ones handed to the courier."""
        hits = self.scorer.score(batch)
        if not hits:
            return
        record_hits(self.store, hits)
        self.hits += len(hits)
        if self._courier is not None:
            for name in dict.fromkeys(h.watch for h in hits if h.pending):
                self._outbox.put((self.by_name[name], [h for h in hits if h.watch == name]))

    def close(self) -> None:
        """From now on the courier writes nothing (a POST in flight may still end; its hits stay pending)."""
        with self._lock:
            self._closed = True
        self._outbox.put(None)

    def _record(self, hits: list[WatchHit]) -> None:
        with self._lock:
            if not self._closed:
                record_hits(self.store, hits)

    def _deliver(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            watch, hits = item
            try:
                send(watch, hits, self._record, tries=HOOK_TRIES_AT_INGEST, stop=lambda: self._closed)
            except Exception:  # a hook's failure never reaches the ingest; the hits stay pending
                log.warning("watch %s: delivery failed; its hits stay pending", watch.name, exc_info=True)
