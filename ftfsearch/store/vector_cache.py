"""A bounded in-process cache of tile vectors for the rerank, checked against every recall.

Why: the rerank needs each candidate's coarse and region vectors (8 KiB a tile at D=256, R=14).
Reading them with the recall costs more than the recall itself: on a Qdrant server, 100
candidates with their packed vectors took 8.2 ms against 2.3 ms for ids and scores alone, and
Qdrant's own prefetch + MaxSim 6.0 ms (10k tiles, loaded 2-core machine; BENCHMARKS.md). A process
that answers many queries (``ftfsearch serve``) recalls the same tiles again and again, so it
keeps their vectors and fetches only the ones it has not seen.

Staleness: a point id names a window of a scene fingerprint, but a scene dropped and ingested
again with other bands gets the same ids with other vectors. Every recall returns the store's
own coarse score of each candidate; a cached entry is used only when its coarse vector
reproduces that score, so a changed tile is fetched again instead of served stale.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

SCORE_TOLERANCE = 2e-5
"""Largest |cached <t, g> - recalled score| of a valid entry: float32 dot products of unit
vectors computed by Qdrant and by numpy differ by ~1e-6; a changed tile differs by far more."""


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stale: int = 0


class VectorCache:
    """Coarse (float32) and region (float16) vectors of up to ``max_bytes`` worth of tiles, LRU.

    The slabs are allocated once with ``np.empty``: pages are touched, hence resident, only as
    entries fill them. Thread-safe (``serve`` answers requests from a thread pool).
    """

    def __init__(self, dim: int, num_regions: int, max_bytes: int) -> None:
        self.dim = dim
        self.num_regions = num_regions
        entry = dim * 4 + num_regions * dim * 2
        self.capacity = max(0, int(max_bytes) // entry)
        self._coarse = np.empty((self.capacity, dim), dtype=np.float32)
        self._regions = np.empty((self.capacity, num_regions, dim), dtype=np.float16)
        self._slot: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._free: list[int] = []  # slots of entries dropped as stale
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._slot)

    def lookup(
        self, ids: list[str], scores: np.ndarray, text: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(coarse [K, D], regions [K, R, D], found [K] bool)`` for the recalled ``ids``.

        Rows where ``found`` is False are undefined: not cached, or cached with a coarse vector
        that does not reproduce the recalled score for ``text`` (dropped from the cache).
        """
        k = len(ids)
        coarse = np.empty((k, self.dim), dtype=np.float32)
        regions = np.empty((k, self.num_regions, self.dim), dtype=np.float16)
        with self._lock:
            slots = np.fromiter((self._slot.get(i, -1) for i in ids), dtype=np.int64, count=k)
            found = slots >= 0
            coarse[found] = self._coarse[slots[found]]
            regions[found] = self._regions[slots[found]]
            for i in np.flatnonzero(found):
                self._slot.move_to_end(ids[i])
        if found.any():
            got = coarse[found] @ np.asarray(text, dtype=np.float32)
            bad = np.abs(got - np.asarray(scores, dtype=np.float32)[found]) > SCORE_TOLERANCE
            if bad.any():
                stale = np.flatnonzero(found)[bad]
                found[stale] = False
                with self._lock:
                    for i in stale:
                        slot = self._slot.pop(ids[i], None)
                        if slot is not None:
                            self._free.append(slot)
                    self.stats.stale += len(stale)
        with self._lock:
            self.stats.hits += int(found.sum())
            self.stats.misses += int(k - found.sum())
        return coarse, regions, found

    def put(self, ids: list[str], coarse: np.ndarray, regions: np.ndarray) -> None:
        """Remember these tiles' vectors, evicting the least recently used beyond capacity."""
        if self.capacity == 0:
            return
        with self._lock:
            for i, c, r in zip(ids, coarse, regions):
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
