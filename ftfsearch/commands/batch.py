"""``ingest --from LIST``: a list's sources ingested here, each failure recorded in the store, and
the list's state. Batches run in workers of their own, never through the ``serve`` holding an
embedded store (point the workers at a Qdrant server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ftfsearch.config import Settings
from ftfsearch.errors import StoreLocked


def list_sources(list_path: Path, shard: str | None, stack_dir: Path | None = None) -> tuple[list[Any], Any]:
    """The sources of ``--from`` (``--shard``'s part of them when given), and that part."""
    from ingest.batch import Shard, expand_list, partition

    part = Shard.parse(shard) if shard is not None else None
    sources = expand_list(list_path, stack_dir)
    return (partition(sources, part) if part is not None else sources), part


def ingest_list(settings: Settings, sources: list[Any], options: Any, progress: Any = None,
                on_source: Callable[[Any], None] | None = None) -> Any:
    """:func:`ingest.batch.ingest_sources` on the store ``settings`` name, the model loaded first
    (a bad model leaves no store behind)."""
    from ftfsearch.model.loading import load_encoder
    from ingest.batch import ingest_sources

    encoder = load_encoder(settings.model, device=settings.device)
    try:
        db = settings.open_store()
    except StoreLocked as exc:
        if settings.qdrant_url:
            raise
        from ftfsearch.store.holder_client import HolderClient

        holder = HolderClient.find(settings.resolved_store_dir, settings.collection)
        if holder is None:
            raise
        raise StoreLocked(
            f"embedded store {settings.resolved_store_dir} is held by 'ftfsearch serve' (pid {holder.record.pid}); "
            "ingest --from does not go through it: ingest the rasters by name, stop the server, or use a "
            "Qdrant server (QDRANT_URL)"
        ) from exc
    try:
        return ingest_sources(sources, encoder, db, options, progress=progress, on_source=on_source)
    finally:
        db.close()


def list_status(settings: Settings, sources: list[Any]) -> Any:
    """:func:`ingest.batch.batch_status` of ``sources`` in the store ``settings`` name."""
    from ingest.batch import batch_status

    db = settings.open_store(read_only=True)
    try:
        return batch_status(sources, db)
    finally:
        db.close()
