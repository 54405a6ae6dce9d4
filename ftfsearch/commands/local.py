"""The commands run here, over a store: what the CLI does without a holder, and what the holder's
routes do for the other commands (over the store it holds, :class:`StoreAccess`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ContextManager, Protocol

from ftfsearch.commands.base import IngestObserver
from ftfsearch.commands.requests import (
    ChangeOutcome,
    ChangeRequest,
    DropOutcome,
    DropRequest,
    InfoRequest,
    IngestOutcome,
    IngestRequest,
    PushRequest,
    SceneRow,
    ScenesRequest,
    SearchOutcome,
    SearchRequest,
)
from ftfsearch.config import Settings
from ftfsearch.errors import SceneNotFound
from ftfsearch.model.base import Encoder
from ftfsearch.model.sources import device_label
from ftfsearch.store.base import Store
from ftfsearch.store.transfer import PushSummary


class StoreAccess(Protocol):
    """How the commands reach the store and the model: opened for one command (the CLI), or
    held for the life of ``serve`` and taken under its lock (the holder)."""

    settings: Settings

    def store(self, read_only: bool) -> ContextManager[Store]: ...

    def encoder(self) -> Encoder: ...

    def device(self) -> str:
        """Where this access encodes (``cpu``, ``cuda:0``): shown by ``info`` and the holder."""
        ...

    def searcher(self) -> ContextManager[tuple[Any, Store]]: ...


class OpenedAccess:
    """One command's access: the store opened for the call and closed after; the model loaded on
    first use (never for a command that needs none, nor before a bad argument is refused)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._encoder: Encoder | None = None

    @contextmanager
    def store(self, read_only: bool) -> Iterator[Store]:
        db = self.settings.open_store(read_only=read_only)
        try:
            yield db
        finally:
            db.close()

    def encoder(self, device: str | None = None) -> Encoder:
        if self._encoder is None:
            from ftfsearch.model.loading import load_encoder

            self._encoder = load_encoder(self.settings.model, device=device or self.settings.device)
        return self._encoder

    def device(self) -> str:
        from ftfsearch.model.sources import describe_device

        return describe_device(self.settings.device)

    @contextmanager
    def searcher(self) -> Iterator[tuple[Any, Store]]:
        from ftfsearch.search import Searcher

        # One query encodes one text and reranks ~100 candidates (milliseconds on a CPU core):
        # `auto` does not pay CUDA's start-up and the model's copy to the GPU for that.
        device = "cpu" if self.settings.device.strip().lower() == "auto" else self.settings.device
        with self.store(read_only=True) as db:
            yield Searcher(self.encoder(device), db, vector_cache_bytes=0), db  # one query: nothing to reuse


def open_target(to: str, collection: str, api_key: str | None, timeout: float) -> Store:
    """A push's target: a Qdrant server (an http(s) URL) or an embedded store directory."""
    from ftfsearch.store import open_store

    url = to if to.startswith(("http://", "https://")) else None
    return open_store(collection=collection, store_dir=None if url else Path(to).expanduser(), qdrant_url=url,
                      api_key=api_key, timeout=timeout)


class LocalCommands:
    """:class:`~ftfsearch.commands.base.Commands` over a store reached through ``access``."""

    def __init__(self, access: StoreAccess) -> None:
        self.access = access

    @classmethod
    def from_settings(cls, settings: Settings) -> "LocalCommands":
        return cls(OpenedAccess(settings))

    def search(self, request: SearchRequest) -> SearchOutcome:
        with self.access.searcher() as (searcher, db):
            out = searcher.search(
                request.text, k=request.k, recall_k=request.recall_k, rerank=request.rerank, bbox=request.bbox,
                scenes=request.scenes, examples=request.examples, after=request.after, before=request.before,
            )
            bands: dict[str, tuple[int, ...] | None] = {}
            if request.with_bands:
                from ftfsearch.chips import scene_bands

                bands = scene_bands(db, [r.scene_id for r in out.results])
        return SearchOutcome(results=out.results, timings_ms=out.timings_ms, warnings=out.warnings, bands=bands,
                             device=device_label(searcher.encoder.device))

    def change(self, request: ChangeRequest) -> ChangeOutcome:
        from ftfsearch.change import change_search

        before, after = request.ranges()
        with self.access.searcher() as (searcher, _):
            out = change_search(searcher, before, after, text=request.text, examples=request.examples, k=request.k,
                                bbox=request.bbox, disappeared=request.disappeared)
        return ChangeOutcome(hits=out.hits, timings_ms=out.timings_ms, warnings=out.warnings)

    def ingest(self, request: IngestRequest, observer: IngestObserver | None = None) -> IngestOutcome:
        from ingest.pipeline import ingest_paths

        encoder = self.access.encoder()  # before the store opens: a bad model leaves no store behind
        with self.access.store(read_only=False) as db:
            done, failed = ingest_paths(list(request.sources), encoder, db, request.options(), progress=observer,
                                        on_scene=None if observer is None else observer.scene)
        return IngestOutcome(scenes=done, failed=failed)

    def scenes(self, request: ScenesRequest) -> list[SceneRow]:
        with self.access.store(read_only=True) as db:
            return [
                SceneRow(scene_id=s.scene_id, path=s.path, tiles=db.count_tiles(s.scene_id), state=s.state,
                         acquired=s.extra.get("acquired") or None, stac=s.extra.get("stac") or None)
                for s in db.list_scenes()
            ]

    def info(self, request: InfoRequest) -> dict[str, Any]:
        with self.access.store(read_only=True) as db:
            described = db.describe()
            meta = db.meta()
            scene_list = db.list_scenes() if meta is not None else []
            return {
                **described,
                "tiles": db.count_tiles() if meta is not None else 0,
                "scenes": len(scene_list),
                "scenes_complete": sum(s.state == "complete" for s in scene_list),
                "device": self.access.device(),
            }

    def drop(self, request: DropRequest) -> DropOutcome:
        with self.access.store(read_only=False) as db:
            if db.get_scene(request.scene_id) is None:
                raise SceneNotFound(f"scene {request.scene_id!r}: not in collection {db.collection!r}; "
                                    "'ftfsearch scenes' lists them")
            return DropOutcome(scene_id=request.scene_id, removed=int(db.delete_scene(request.scene_id)))

    def push(self, request: PushRequest) -> PushSummary:
        from ftfsearch.store.transfer import push_store

        settings = self.access.settings
        with self.access.store(read_only=True) as source:
            target = open_target(request.to, request.collection or source.collection,
                                 request.api_key if request.api_key is not None else settings.qdrant_api_key,
                                 request.timeout or settings.timeout)
            try:
                return push_store(source, target, shards=request.shards,
                                  replication_factor=request.replication_factor)
            finally:
                target.close()

    def close(self) -> None:
        """Nothing held between commands."""
