"""A bounded in-process cache of what the rerank reads of each tile, checked against every recall.

Why: the rerank needs each candidate's coarse and region vectors (8 KiB a tile at D=256, R=14),
and the answer needs the winners' payloads. Reading the vectors with the recall costs more than
the recall itself: on a Qdrant server, 100 candidates with their packed vectors took 8.2 ms
against 2.3 ms for ids and scores alone, and Qdrant's own prefetch + MaxSim 6.0 ms (10k tiles,
loaded 2-core machine; BENCHMARKS.md); reading the k winners' payloads afterwards was a third
request. A process that answers many queries (``ftfsearch serve``) recalls the same tiles again
and again, so it keeps their vectors and payloads and fetches only the tiles it has not seen.

Staleness: entries are keyed by point id and Qdrant's point version, which every recall returns
at no cost and which rises whenever the point is written again, so a tile re-ingested from
another path (same id, same vectors, new payload) is refetched. As a second guard, a cached
coarse vector must reproduce the store's recalled score. Versions are operation numbers of one
collection: a collection dropped and recreated under a running process starts them again, so
restart ``serve`` after recreating its collection (its model check is made once, too).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

SCORE_TOLERANCE = 2e-5
"""Largest |cached <t, g> - recalled score| of a valid entry: float32 dot products of unit
vectors computed by Qdrant and by numpy differ by ~1e-6; a changed tile differs by far more."""

PAYLOAD_BYTES = 16 << 10
"""What one cached payload is counted as: a tile's payload as Python objects measured 13.6 KB
(its WGS84 footprint is densified), more than its vectors."""


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stale: int = 0


class VectorCache:
    """Coarse (float32) and region (float16) vectors and payloads of up to ``max_bytes`` worth
    of tiles, LRU, keyed by (point id, point version).

    The slabs are allocated once with ``np.empty``: pages are touched, hence resident, only as
    entries fill them. Thread-safe (``serve`` answers requests from a thread pool).
    """

    def __init__(self, dim: int, num_regions: int, max_bytes: int) -> None:
        self.dim = dim
        self.num_regions = num_regions
        entry = dim * 4 + num_regions * dim * 2 + PAYLOAD_BYTES
        self.capacity = max(0, int(max_bytes) // entry)
        self._coarse = np.empty((self.capacity, dim), dtype=np.float32)
        self._regions = np.empty((self.capacity, num_regions, dim), dtype=np.float16)
        self._payloads: list[dict[str, Any] | None] = [None] * self.capacity
        self._version = np.full(self.capacity, -1, dtype=np.int64)
        self._slot: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._free: list[int] = []  # slots of entries dropped as stale
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._slot)

    def lookup(
        self, ids: list[str], versions: np.ndarray, scores: np.ndarray, text: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any] | None], np.ndarray]:
        """``(coarse [K, D], regions [K, R, D], payloads [K], found [K] bool)`` for the recalled
        ``ids`` at their recalled ``versions``.

        Rows where ``found`` is False are undefined (payload None): not cached, or cached at
        another version or with a coarse vector that does not reproduce the recalled score for
        ``text`` (dropped from the cache). A version below 0 (the store gave none) never hits.
        """
        k = len(ids)
        coarse = np.empty((k, self.dim), dtype=np.float32)
        regions = np.empty((k, self.num_regions, self.dim), dtype=np.float16)
        payloads: list[dict[str, Any] | None] = [None] * k
        versions = np.asarray(versions, dtype=np.int64)
        with self._lock:
            slots = np.fromiter((self._slot.get(i, -1) for i in ids), dtype=np.int64, count=k)
            cached = slots >= 0
            found = cached & (versions >= 0)
            found[cached] &= self._version[slots[cached]] == versions[cached]
            coarse[found] = self._coarse[slots[found]]
            regions[found] = self._regions[slots[found]]
            for i in np.flatnonzero(found):
                payloads[i] = self._payloads[slots[i]]
                self._slot.move_to_end(ids[i])
        bad = cached & ~found
        if found.any():
            got = coarse[found] @ np.asarray(text, dtype=np.float32)
            wrong = np.abs(got - np.asarray(scores, dtype=np.float32)[found]) > SCORE_TOLERANCE
            if wrong.any():
                bad[np.flatnonzero(found)[wrong]] = True
                found &= ~bad
        if bad.any():
            with self._lock:
                for i in np.flatnonzero(bad):
                    slot = self._slot.pop(ids[i], None)
                    if slot is not None:
                        self._payloads[slot] = None
                        self._free.append(slot)
                self.stats.stale += int(bad.sum())
            for i in np.flatnonzero(bad):
                payloads[i] = None
        with self._lock:
            self.stats.hits += int(found.sum())
            self.stats.misses += int(k - found.sum())
        return coarse, regions, payloads, found

    def put(
        self,
        ids: list[str],
        versions: np.ndarray,
        coarse: np.ndarray,
        regions: np.ndarray,
        payloads: list[dict[str, Any]],
    ) -> None:
        """Remember these tiles as of ``versions``, evicting the least recently used beyond capacity."""
        if self.capacity == 0:
            return
        with self._lock:
            for i, v, c, r, p in zip(ids, versions, coarse, regions, payloads):
                slot = self._slot.get(i)
                if slot is None:
                    if self._free:
                        slot = self._free.pop()
                    elif len(self._slot) < self.capacity:
                        slot = len(self._slot)
                    else:
                        _, slot = self._slot.popitem(last=False)
                    self._slot[i] = slot
                else:
                    self._slot.move_to_end(i)
                self._coarse[slot] = c
                self._regions[slot] = r
                self._payloads[slot] = p
                self._version[slot] = v
