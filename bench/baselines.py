"""Baselines the query benchmark measures FTF against that the product does not use.

Qdrant's own rerank (prefetch the ``recall_k`` nearest tiles by coarse cosine, then score them
by MaxSim of the text over their ``regions`` multivector, all inside Qdrant) is what a user of
Qdrant alone would run. It reads the collection the way the store writes it (``schema``), with a
client of its own: a REST connection to the server (the same transport the store's query path
uses, so the baseline pays no more than FTF for the request), or the embedded shard itself,
which Qdrant Edge lets one opener hold at a time: close the ``EdgeStore`` first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from ftfsearch.store import schema
from ftfsearch.store.rest import RestTransport, qdrant_headers


@dataclass
class Ranked:
    """Tiles best first: ids, scores and payloads (without the packed vectors)."""

    ids: list[str]
    scores: np.ndarray
    payloads: list[dict[str, Any]]


class QdrantMaxSim:
    """Qdrant's prefetch + MaxSim rerank over one tiles collection, on a server or an Edge shard."""

    def __init__(self, *, rest: RestTransport | None = None, shard: qe.EdgeShard | None = None, collection: str):
        if (rest is None) == (shard is None):
            raise ValueError("QdrantMaxSim: give a server transport or an Edge shard")
        self._rest, self._shard, self.collection = rest, shard, collection

    @classmethod
    def on_server(
        cls, url: str, collection: str, api_key: str | None = None, timeout: float = 30.0, use_httpx: bool | None = None
    ) -> "QdrantMaxSim":
        """Over REST, with the headers the store's query path sends (``use_httpx`` as RestTransport's)."""
        return cls(rest=RestTransport(url, qdrant_headers(api_key), timeout, use_httpx=use_httpx), collection=collection)

    @classmethod
    def on_edge(cls, store_dir: Path, collection: str) -> "QdrantMaxSim":
        """On the tiles shard of an embedded store (``<store_dir>/<collection>/``), which no
        ``EdgeStore`` may hold open meanwhile."""
        return cls(shard=qe.EdgeShard.load(str(Path(store_dir) / collection)), collection=collection)

    def __call__(self, text: np.ndarray, k: int, recall_k: int = 100) -> Ranked:
        vec = np.asarray(text, dtype=np.float32).reshape(-1).tolist()
        prefetch_k = max(recall_k, k)
        if self._shard is not None:
            return self._edge(self._shard, vec, k, prefetch_k)
        assert self._rest is not None
        body = {
            "prefetch": {"query": vec, "using": schema.COARSE, "limit": prefetch_k},
            "query": [vec],
            "using": schema.REGIONS,
            "limit": k,
            "with_payload": {"exclude": [schema.VECTORS_FIELD]},
            "with_vector": False,
        }
        status, content = self._rest.post(f"/collections/{self.collection}/points/query", json.dumps(body).encode())
        if status != 200:
            raise RuntimeError(f"Qdrant MaxSim query: HTTP {status}: {content[:300]!r}")
        points = json.loads(content)["result"]["points"]
        return Ranked(
            ids=[str(p["id"]) for p in points],
            scores=np.array([p["score"] for p in points], dtype=np.float32),
            payloads=[p.get("payload") or {} for p in points],
        )

    @staticmethod
    def _edge(shard: qe.EdgeShard, vec: list[float], k: int, prefetch_k: int) -> Ranked:
        request = qe.QueryRequest(
            limit=k,
            prefetches=[qe.Prefetch(limit=prefetch_k, query=qe.Query.Nearest(vec, using=schema.COARSE))],
            query=qe.Query.Nearest([vec], using=schema.REGIONS),
            with_payload=qe.PayloadSelector.Exclude([schema.VECTORS_FIELD]),
            with_vector=False,
        )
        points = shard.query(request)
        return Ranked(
            ids=[str(p.id) for p in points],
            scores=np.array([p.score for p in points], dtype=np.float32),
            payloads=[p.payload or {} for p in points],
        )

    def close(self) -> None:
        if self._rest is not None:
            self._rest.close()
        if self._shard is not None:
            self._shard.close()
            self._shard = None

    def __enter__(self) -> "QdrantMaxSim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
