"""The store: one ``Store`` protocol, two backends (embedded Qdrant Edge, Qdrant server)."""

from __future__ import annotations

from pathlib import Path

from ftfsearch.errors import BadInput
from ftfsearch.store.base import Store


def open_store(
    *,
    collection: str,
    store_dir: Path | None,
    qdrant_url: str | None,
    api_key: str | None,
    timeout: float,
    read_only: bool = False,
    payload_vectors: bool = True,
) -> Store:
    """The server store when ``qdrant_url`` is given, else the embedded store in ``store_dir``.

    The caller resolves defaults (config, environment); this only picks and opens the backend.
    Backends are imported lazily so that using one does not load the other's client.
    ``payload_vectors=False`` reads the rerank's vectors the plain way (Qdrant's named vectors),
    a reference for the benchmark and the tests; the product reads their packed payload copy.
    """
    if qdrant_url:
        from ftfsearch.store.server import ServerStore

        return ServerStore(
            qdrant_url,
            collection=collection,
            api_key=api_key,
            timeout=timeout,
            read_only=read_only,
            payload_vectors=payload_vectors,
        )
    if store_dir is None:
        raise BadInput("no store given: pass `store` DIR for the embedded store or `qdrant_url` / QDRANT_URL")
    from ftfsearch.store.edge import EdgeStore

    return EdgeStore(Path(store_dir), collection=collection, read_only=read_only, payload_vectors=payload_vectors)


__all__ = ["Store", "open_store"]
