"""What one ``ftfsearch serve`` holds for its lifetime: the store, the encoder, the searcher and
the chip renderer, and what ``serve`` adds to the Settings."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ftfsearch.chips import PREVIEW_MAX_SIDE, ChipRenderer, LruCache, recorded_bands
from ftfsearch.commands.local import LocalCommands
from ftfsearch.config import Settings
from ftfsearch.errors import TileNotFound
from ftfsearch.keys import DEFAULT_RATE_LIMIT
from ftfsearch.model.base import Encoder
from ftfsearch.search import DEFAULT_VECTOR_CACHE_BYTES, Result, Searcher
from ftfsearch.store.base import Store

MEMO_SECONDS = 300.0
"""How long tile payloads and scene band choices seen by searches serve chip requests without
asking the store (a dropped and re-ingested scene shows its new bands after this)."""


@dataclass(frozen=True)
class ServeOptions:
    """What ``ftfsearch serve`` adds to the Settings."""

    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from other pages; empty: CORS off (same origin only)."""
    basemap_url: str | None = None
    """Leaflet tile URL template (``https://.../{z}/{x}/{y}.png``); None: the scene previews only."""
    basemap_attribution: str | None = None
    chip_cache_bytes: int = 64 << 20
    preview_cache_bytes: int = 64 << 20
    vector_cache_bytes: int = DEFAULT_VECTOR_CACHE_BYTES
    preview_max_side: int = PREVIEW_MAX_SIDE
    keys_file: Path | None = None
    """The API keys (``ftfsearch keys``); None: no authentication, and ``serve`` binds loopback only."""
    rate_limit: str = DEFAULT_RATE_LIMIT
    """Requests per key, in ``limits`` notation (ftfsearch.web.auth)."""
    deliver_every_s: float = 60.0
    """Send the watches' pending webhook hits this often while serving a store it may write
    (:mod:`ftfsearch.web.courier`); 0: never."""


class LockedStore:
    """A store whose every call takes ``lock`` for that call only (iterators: for each item)."""

    def __init__(self, store: Store, lock: threading.Lock) -> None:
        self._store = store
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._store, name)
        if not callable(value):
            return value
        lock = self._lock

        def call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                result = value(*args, **kwargs)
            if isinstance(result, Iterator):
                return _locked_iter(result, lock)
            return result

        return call


def _locked_iter(it: Iterator[Any], lock: threading.Lock) -> Iterator[Any]:
    while True:
        with lock:
            try:
                item = next(it)
            except StopIteration:
                return
        yield item


class HeldAccess:
    """The commands' access (:class:`~ftfsearch.commands.local.StoreAccess`) to the store and
    encoder ``serve`` holds: every store call under the app's lock, never closed by a command."""

    def __init__(self, resources: "Resources", settings: Settings) -> None:
        self.resources = resources
        self.settings = settings
        self.locked = LockedStore(resources.store, resources.lock)

    @contextmanager
    def store(self, read_only: bool) -> Iterator[Any]:
        yield self.locked

    def encoder(self) -> Encoder:
        return self.resources.encoder

    def device(self) -> str:
        from ftfsearch.model.sources import encoder_device_label

        return encoder_device_label(self.resources.encoder)

    @contextmanager
    def searcher(self) -> Iterator[tuple[Any, Store]]:
        """The long-lived searcher (its vector cache), the lock held for the whole search."""
        with self.resources.lock:
            yield self.resources.searcher(), self.resources.store


class Resources:
    """What one app holds: the store, the encoder, the searcher (made on first use, since a
    collection may not exist yet when the server starts) and the chip renderer."""

    def __init__(
        self, store: Store, encoder: Encoder, renderer: ChipRenderer,
        vector_cache_bytes: int = DEFAULT_VECTOR_CACHE_BYTES, settings: Settings | None = None,
    ) -> None:
        self.store = store
        self.vector_cache_bytes = vector_cache_bytes
        self.encoder = encoder
        self.renderer = renderer
        self.lock = threading.Lock()
        """Serialises store and encoder calls."""
        self._searcher: Searcher | None = None
        self.holder: Any = None
        """The holder serving the other commands from this store (ftfsearch.web.holder), if any."""
        self.before_close: list[Callable[[], Any]] = []
        """Called first by close() (the holder stops its ingests while the store is still open)."""
        # Chips of the results just returned are what the page asks for next: their payloads are
        # remembered so those chips never wait for the lock behind a running search.
        self._tiles: LruCache[str, tuple[float, dict[str, Any]]] = LruCache(1 << 62, 20_000, lambda v: 1)
        self._bands: LruCache[str, tuple[float, tuple[int, ...] | None]] = LruCache(1 << 62, 10_000, lambda v: 1)
        self.commands = LocalCommands(HeldAccess(self, settings or Settings()))
        """The store commands over what this app holds (the API's search, the holder's routes)."""

    @classmethod
    def open(cls, settings: Settings, options: ServeOptions | None = None, writable: bool = False) -> "Resources":
        """Open the store (read-only unless ``writable``: the holder of an embedded store ingests
        and drops for the other commands) and load the encoder named by ``settings``."""
        from ftfsearch.model.loading import load_encoder

        options = options or ServeOptions()
        store = settings.open_store(read_only=not writable)
        try:
            encoder = load_encoder(settings.model, device=settings.device)
        except BaseException:
            store.close()
            raise
        return cls(store, encoder, ChipRenderer(options.chip_cache_bytes, options.preview_cache_bytes),
                   options.vector_cache_bytes, settings)

    def searcher(self) -> Searcher:
        """The searcher; call with ``lock`` held. Raises CollectionNotFound / ModelMismatch."""
        if self._searcher is None:
            self._searcher = Searcher(self.encoder, self.store, self.vector_cache_bytes)
        return self._searcher

    def _scene_bands(self, scene_id: str) -> tuple[int, ...] | None:
        """The scene's recorded ``--bands``, remembered; call with ``lock`` held."""
        hit = self._bands.get(scene_id)
        if hit is not None and time.monotonic() - hit[0] < MEMO_SECONDS:
            return hit[1]
        value = recorded_bands(self.store.get_scene(scene_id))
        self._bands.put(scene_id, (time.monotonic(), value))
        return value

    def remember(self, results: list[Result]) -> None:
        """Keep what the chips of these results need; call with ``lock`` held."""
        now = time.monotonic()
        for r in results:
            self._scene_bands(r.scene_id)
            self._tiles.put(r.id, (now, r.payload))

    def tile(self, tile_id: str) -> tuple[dict[str, Any], tuple[int, ...] | None]:
        """A tile's payload and its scene's bands: remembered, else from the store."""
        hit = self._tiles.get(tile_id)
        bands = self._bands.get(str(hit[1].get("scene_id", ""))) if hit is not None else None
        now = time.monotonic()
        if hit is not None and bands is not None and now - hit[0] < MEMO_SECONDS and now - bands[0] < MEMO_SECONDS:
            return hit[1], bands[1]
        with self.lock:
            found = self.store.get_tiles([tile_id]) if self.store.meta() is not None else []
            if not found:
                raise TileNotFound(f"tile {tile_id}: not in collection {self.store.collection!r}")
            payload = found[0][1]
            self._tiles.put(tile_id, (now, payload))
            return payload, self._scene_bands(str(payload.get("scene_id", "")))

    def close(self) -> None:
        try:
            for hook in self.before_close:
                hook()
        finally:
            self.before_close = []
            self.store.close()
