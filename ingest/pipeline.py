"""Reader threads -> batches -> encoder -> writer thread, with bounded queues and resume.

Memory is bounded by queue sizes and the batch, never by the scene: windows are enumerated
cheaply, tiles are read on demand by a few threads (rasterio releases the GIL), the encoder
runs in the calling thread, and a writer thread upserts while the next batch encodes.
A scene is recorded ``ingesting`` before the first write and ``complete`` only after the
store holds every non-empty tile; a re-run skips the tiles already stored (by point id).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Literal, Protocol, Sequence, get_args

import numpy as np
from rasterio.errors import RasterioError

from ftfsearch.errors import BadInput
from ftfsearch.model.base import Encoder
from ftfsearch.collection import collection_meta
from ftfsearch.model.sources import device_label
from ftfsearch.store.base import SceneRecord, Store, TileBatch
from ftfsearch.store.schema import tile_point_id
from ftfsearch.times import iso_utc, parse_time
from ingest.scenes import fingerprint
from ingest.sources import Source, as_source
from ingest.tiling import SceneReader, Tile, TileWindow, TilingSpec
from ingest.watching import WatchHook

log = logging.getLogger(__name__)

_EXISTING_CHUNK = 1000
MAX_WINDOWS_PER_SCENE = 1_000_000
"""Windows are listed (with their ids) in memory, about 0.5 KB each: beyond this a raster is
refused by name rather than exhausting memory (a VRT can claim any size)."""
_DONE = object()


class Progress(Protocol):
    """What the pipeline reports as it goes (the CLI draws it as a progress bar)."""

    def start(self, scene_id: str, total: int, already: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


@dataclass
class IngestOptions:
    spec: TilingSpec = field(default_factory=TilingSpec)
    batch_size: int = 32
    readers: int = 2
    scene_id: str | None = None
    shards: int | None = None
    replication_factor: int | None = None
    acquired: str | None = None
    """The user's ``acquired`` time (any form :func:`~ftfsearch.times.parse_time` reads); it
    replaces a time found in the rasters' metadata. Stored as ISO 8601 UTC."""

    def __post_init__(self) -> None:
        if self.acquired is not None:
            self.acquired = iso_utc(parse_time(self.acquired, "acquired"))  # type: ignore[arg-type]
        if not 1 <= self.batch_size <= 4096:
            raise BadInput(f"`batch_size` {self.batch_size}: must be between 1 and 4096")
        if not 1 <= self.readers <= 64:
            raise BadInput(f"`readers` {self.readers}: must be between 1 and 64")


Stage = Literal["read", "encode", "write"]


@dataclass
class StageTimes:
    """Wall seconds of one scene's ingest loop by stage, as the encoding thread lives them (the
    way clip-retrieval's runner counts): ``read`` is waiting for the reader threads' next tile,
    ``encode`` the model, ``write`` handing batches to the writer thread and waiting for the
    store to take them (its queue holds two; the last batches are waited for at the end).

    The readers and the writer work on other threads meanwhile, so these are not CPU time: the
    three add up to the loop's wall time (the rest of the scene's ``seconds`` is opening, the
    resume check and bookkeeping), and the largest is the stage that holds the ingest up.
    """

    read: float = 0.0
    encode: float = 0.0
    write: float = 0.0

    @contextmanager
    def timing(self, stage: Stage) -> Iterator[None]:
        """Add the wall time of the ``with`` block to ``stage``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, stage, getattr(self, stage) + time.perf_counter() - t0)

    @property
    def total(self) -> float:
        return self.read + self.encode + self.write

    def line(self) -> str:
        """``read 3.1 s · encode 12.4 s · write 0.8 s``, for the end of an ingest."""
        return " · ".join(f"{stage} {getattr(self, stage):.1f} s" for stage in get_args(Stage))

    def to_dict(self) -> dict[str, float]:
        return {stage: round(getattr(self, stage), 3) for stage in get_args(Stage)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> StageTimes:
        return cls(**{stage: float((d or {}).get(stage, 0.0)) for stage in get_args(Stage)})


@dataclass
class SceneSummary:
    scene_id: str
    path: str
    windows: int
    written: int
    already_stored: int
    skipped_nodata: int
    tiles_in_store: int
    state: str
    seconds: float
    warnings: list[str] = field(default_factory=list)
    stages: StageTimes = field(default_factory=StageTimes)
    device: str = ""
    """Where the tiles were encoded (``cpu``, ``cuda:0``): ``auto`` falls back to the CPU silently."""

    @property
    def tiles_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "scene_id": self.scene_id,
            "path": self.path,
            "windows": self.windows,
            "written": self.written,
            "already_stored": self.already_stored,
            "skipped_nodata": self.skipped_nodata,
            "tiles": self.tiles_in_store,
            "state": self.state,
            "seconds": round(self.seconds, 3),
            "tiles_per_s": round(self.tiles_per_s, 2),
            "stages": self.stages.to_dict(),
            "warnings": self.warnings,
            "device": self.device,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneSummary:
        """The summary :meth:`to_dict` gave (a scene ingested by the server holding the store)."""
        return cls(
            d["scene_id"], d["path"], d["windows"], d["written"], d["already_stored"], d["skipped_nodata"],
            d["tiles"], d["state"], float(d["seconds"]), list(d.get("warnings") or []),
            StageTimes.from_dict(d.get("stages")), str(d.get("device") or ""),
        )


def window_id(fp: str, w: TileWindow) -> str:
    return tile_point_id(fp, w.level, w.col, w.row, w.width, w.height)


def tile_payload(
    scene_id: str, reader: SceneReader, fp: str, tile: Tile, encoder: Encoder, acquired: str | None = None
) -> dict[str, Any]:
    """The stored payload of one tile (DESIGN.md, Store)."""
    w = tile.window
    payload: dict[str, Any] = {
        "scene_id": scene_id,
        "path": str(reader.path),
        "fingerprint": fp,
        "level": w.level,
        "window": {"col": w.col, "row": w.row, "width": w.width, "height": w.height},
        "tile_size": int(tile.pixels.shape[0]),
        "crs": reader.crs,
        "native_bounds": [float(v) for v in tile.native_bounds],
        "gsd": tile.gsd,
        "valid_fraction": round(float(tile.valid_fraction), 4),
        "layout": encoder.region_layout,
    }
    if tile.bbox is not None:
        west, south, east, north = (float(v) for v in tile.bbox)
        payload.update(bbox=[west, south, east, north], west=west, south=south, east=east, north=north)
        payload["footprint"] = tile.footprint
    if tile.center is not None:
        payload["center"] = {"lon": float(tile.center[0]), "lat": float(tile.center[1])}
    if acquired:
        payload["acquired"] = acquired
    return payload


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _read_tiles(
    reader: SceneReader, windows: list[TileWindow], n_threads: int, capacity: int, stop: threading.Event
) -> Generator[Tile | None, None, None]:
    """Yield tiles (None for mostly-nodata windows) read by ``n_threads`` threads, in any order."""
    todo: queue.Queue[TileWindow] = queue.Queue()
    for w in windows:
        todo.put(w)
    out: queue.Queue[Any] = queue.Queue(maxsize=capacity)

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            while not stop.is_set():
                try:
                    w = todo.get_nowait()
                except queue.Empty:
                    break
                put(reader.read(w))
        except BaseException as exc:  # handed to the consumer, which re-raises
            put(_Failure(exc))
        finally:
            put(_DONE)

    threads = [threading.Thread(target=work, name=f"ftf-reader-{i}", daemon=True) for i in range(n_threads)]
    for t in threads:
        t.start()
    finished = 0
    try:
        while finished < len(threads):
            item = out.get()
            if item is _DONE:
                finished += 1
            elif isinstance(item, _Failure):
                raise item.exc
            else:
                yield item
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)


class _Writer:
    """Upserts batches on its own thread so the next batch encodes meanwhile."""

    def __init__(self, store: Store, depth: int = 2, after: Callable[[TileBatch], None] | None = None) -> None:
        self.store = store
        self.after = after
        """Called with each batch once it is stored (the watches, :mod:`ingest.watching`)."""
        self.q: queue.Queue[TileBatch | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.written = 0
        self.thread = threading.Thread(target=self._run, name="ftf-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            batch = self.q.get()
            if batch is None:
                return
            if self.error is not None:
                continue
            try:
                self.store.upsert_tiles(batch)
                self.written += len(batch)
                if self.after is not None:
                    self.after(batch)
            except BaseException as exc:
                self.error = exc

    def put(self, batch: TileBatch) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(batch)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def encode_tiles(encoder: Encoder, tiles: list[Tile]) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's encode step: one batch of tiles -> (coarse float32 [B, D], regions float16
    [B, R, D]), as they are stored (the ingest benchmark times this step alone). torch is imported
    here: the request models import this module, and a text query must not pay for torch."""
    import torch

    pixels = torch.from_numpy(np.stack([t.pixels for t in tiles]))
    with torch.inference_mode():
        coarse, regions = encoder.encode_images(pixels)
    return coarse.float().numpy(), regions.to(torch.float16).numpy()


def _window_bound(width: int, height: int, spec: TilingSpec) -> int:
    """An upper bound of the windows ``plan_windows`` makes, computed without listing them."""
    total = 0
    for level in spec.levels:
        step = spec.step(level)
        total += (width // step + 2) * (height // step + 2)
    return total


def _timed_reads(tiles: Generator[Tile | None, None, None], stages: StageTimes) -> Iterator[Tile | None]:
    """``tiles``, with the time spent waiting for each one added to ``stages.read``; closing
    this closes ``tiles`` (its reader threads stop)."""
    try:
        while True:
            with stages.timing("read"):
                try:
                    tile = next(tiles)
                except StopIteration:
                    return
            yield tile
    finally:
        tiles.close()


@dataclass
class _Scene:
    """One scene as planned before anything is written: its id, file, time, windows and record."""

    sid: str
    fp: str
    acquired: str | None
    windows: list[TileWindow]
    previous: SceneRecord | None
    record: SceneRecord


def _check_size(path: Path | str, reader: SceneReader, spec: TilingSpec) -> None:
    bound = _window_bound(reader.width, reader.height, spec)
    if bound > MAX_WINDOWS_PER_SCENE:
        raise BadInput(
            f"{path}: {reader.width}x{reader.height} pixels would make up to {bound:,} tiles at "
            f"`tile_size` {spec.tile_size}, more than {MAX_WINDOWS_PER_SCENE:,} per scene; "
            "use a larger `tile_size` or fewer `levels`, or split the raster"
        )


def _check_previous(
    path: Path | str, sid: str, fp: str, spec: dict[str, Any], acquired: str | None, previous: SceneRecord | None
) -> None:
    """Refuse to mix this raster into a stored scene of another file, time or tiling."""
    if previous is None:
        return
    if previous.fingerprint != fp:
        raise BadInput(
            f"{path}: scene id {sid!r} already holds another file ({previous.path}); "
            "pass `scene_id` to name this one, or 'ftfsearch drop' the old one"
        )
    if "acquired" in previous.extra and previous.extra["acquired"] != acquired:
        # stored tiles carry the time: a scene has one, and changing it means re-ingesting
        raise BadInput(
            f"`acquired` {acquired or 'unknown'}: scene {sid!r} was ingested with acquisition time "
            f"{previous.extra.get('acquired') or 'unknown'}; drop it first to change its time, "
            "or ingest with the same one"
        )
    if previous.tiling != spec:
        raise BadInput(
            f"{path}: scene {sid!r} was ingested with other tiling options ({previous.tiling}); "
            "drop it first to re-tile, or ingest with the same options"
        )


def _plan_scene(source: Source, path: Path | str, reader: SceneReader, encoder_id: str, store: Store,
                options: IngestOptions, fp: str | None) -> _Scene:
    """Check the raster against the store and make its scene record; reads no tile, writes nothing.
    The source's own time (a STAC item's) wins over the file's tags, ``--acquired`` over both.
    ``path``: the raster the source opened; ``fp`` its fingerprint when opening took it already (a
    remote one costs requests)."""
    sid = options.scene_id or source.scene_id
    fp = fp or fingerprint(path)
    _check_size(path, reader, options.spec)
    windows = reader.windows()
    previous = store.get_scene(sid)
    spec = json.loads(json.dumps(options.spec.to_dict()))  # as stored: tuples become lists
    acquired = options.acquired or source.acquired or reader.acquired
    _check_previous(path, sid, fp, spec, acquired, previous)
    stac = source.properties
    record = SceneRecord(
        scene_id=sid,
        path=str(reader.path),
        fingerprint=fp,
        state="ingesting",
        model_id=encoder_id,
        tiling=spec,
        expected_tiles=previous.expected_tiles if previous else 0,
        footprint=reader.footprint,
        bbox=list(reader.bbox) if reader.bbox else None,
        crs=reader.crs,
        extra={"width": reader.width, "height": reader.height, "dtype": reader.dtype, "gsd": reader.gsd,
               "acquired": acquired, **({"stac": stac} if stac else {})},
    )
    return _Scene(sid, fp, acquired, windows, previous, record)


def _stored_ids(store: Store, ids: list[str]) -> set[str]:
    stored: set[str] = set()
    for i in range(0, len(ids), _EXISTING_CHUNK):
        stored |= store.existing_ids(ids[i : i + _EXISTING_CHUNK])
    return stored


@dataclass
class IngestFailure:
    path: str
    message: str
    """Why, its parameters marked as in :mod:`ftfsearch.errors` (the CLI names them as flags)."""


def scene_error(name: object, exc: BaseException) -> BadInput | None:
    """``exc`` as the bad input of the source ``name``, or None when it is not about the source."""
    if isinstance(exc, BadInput):
        return exc
    if isinstance(exc, RasterioError):  # GDAL failed on this file
        return BadInput(f"{name}: cannot be read as a raster scene ({exc}); check the file")
    return None


def _source_options(options: IngestOptions, source: Source) -> IngestOptions:
    """The options for a source: the red, green and blue bands it names (a STAC asset's band
    list), unless ``bands`` chose others."""
    if source.bands is None or options.spec.bands is not None:
        return options
    return dataclasses.replace(options, spec=dataclasses.replace(options.spec, bands=source.bands))


@dataclass
class Ingest:
    """One ingest: the model, the store, the options and who watches it. Each source becomes one
    scene (:meth:`scene`); :meth:`run` ingests many, a bad one reported and the others going on."""

    encoder: Encoder
    store: Store
    options: IngestOptions
    progress: Progress | None = None

    def check_model(self) -> None:
        """Refuse a collection made with another model before reading anything."""
        if self.store.meta() is not None:
            self.store.ensure_collection(collection_meta(self.encoder))

    def run(self, sources: Sequence[Source],
            on_scene: Callable[[SceneSummary | IngestFailure], None] | None = None,
            ) -> tuple[list[SceneSummary], list[IngestFailure]]:
        """Ingest every source: one that cannot be read is reported and skipped, the others go on."""
        if self.options.scene_id and len(sources) > 1:
            raise BadInput("`scene_id` names one scene: give exactly one raster with it")
        self.check_model()
        done: list[SceneSummary] = []
        failed: list[IngestFailure] = []
        for source in sources:
            try:
                summary = self.scene(source)
            except (BadInput, RasterioError) as raised:
                exc = scene_error(source, raised) or BadInput(str(raised))
                failure = IngestFailure(str(source), exc.message)
                failed.append(failure)
                log.info("skipped %s: %s", source, exc)
                if on_scene:
                    on_scene(failure)
                continue
            done.append(summary)
            if on_scene:
                on_scene(summary)
        self.optimize(done)
        return done, failed

    def optimize(self, done: list[SceneSummary]) -> None:
        if any(s.written for s in done):
            self.store.optimize()  # Edge builds its HNSW index only when asked; the server does it itself

    def scene(self, source: Source, stages: StageTimes | None = None) -> SceneSummary:
        """Ingest one source as one scene; resumable and idempotent.

        The summary carries the loop's :class:`StageTimes`. Pass ``stages`` to watch them accrue: a
        caller whose progress callback stops the ingest part-way (a benchmark measuring the first N
        tiles) still reads the times up to the stop.
        """
        t_start = time.perf_counter()
        stages = stages if stages is not None else StageTimes()
        path, fp = source.open()
        options = _source_options(self.options, source)
        store, encoder, progress = self.store, self.encoder, self.progress
        with SceneReader(path, options.spec) as reader:
            scene = _plan_scene(source, path, reader, encoder.id, store, options, fp)
            sid, windows, previous = scene.sid, scene.windows, scene.previous
            if previous is not None and previous.state == "complete":
                stored = store.count_tiles(sid)
                if stored == previous.expected_tiles:
                    return SceneSummary(
                        sid, str(reader.path), len(windows), 0, stored, 0, stored, "complete",
                        time.perf_counter() - t_start, list(reader.warnings), stages, device_label(encoder.device),
                    )
            ids = {w: window_id(scene.fp, w) for w in windows}
            stored_ids = _stored_ids(store, list(ids.values()))
            pending = [w for w in windows if ids[w] not in stored_ids]
            # Created only now, when a readable scene is about to be written: bad input leaves no trace.
            store.ensure_collection(collection_meta(encoder), options.shards, options.replication_factor)
            store.put_scene(scene.record)
            if progress:
                progress.start(sid, len(windows), len(windows) - len(pending))
            written, skipped = self._write_tiles(scene, reader, [(w, ids[w]) for w in pending], options, stages)

            in_store = store.count_tiles(sid)
            if in_store == 0:
                store.delete_scene(sid)
                raise BadInput(
                    f"{path}: no tile has enough valid pixels (all nodata or masked); nothing was ingested"
                )
            state = "complete" if in_store >= len(stored_ids) + written else "ingesting"
            scene.record.state = state
            scene.record.expected_tiles = in_store
            store.put_scene(scene.record)
            return SceneSummary(
                scene_id=sid,
                path=str(reader.path),
                windows=len(windows),
                written=written,
                already_stored=len(stored_ids),
                skipped_nodata=skipped,
                tiles_in_store=in_store,
                state=state,
                seconds=time.perf_counter() - t_start,
                warnings=list(reader.warnings),
                stages=stages,
                device=device_label(encoder.device),
            )

    def _write_tiles(self, scene: _Scene, reader: SceneReader, pending: list[tuple[TileWindow, str]],
                     options: IngestOptions, stages: StageTimes) -> tuple[int, int]:
        """Read, encode and write the ``pending`` windows (with their point ids): (tiles written,
        windows skipped as nodata)."""
        encoder, progress = self.encoder, self.progress
        ids = dict(pending)
        stop = threading.Event()
        hook = WatchHook.open(self.store, encoder)
        writer = _Writer(self.store, after=None if hook is None else hook.written)
        skipped = 0
        batch: list[Tile] = []

        def flush() -> None:
            with stages.timing("encode"):
                coarse, regions = encode_tiles(encoder, batch)
            with stages.timing("write"):
                writer.put(
                    TileBatch(
                        ids=[ids[t.window] for t in batch],
                        coarse=coarse,
                        regions=regions,
                        payloads=[tile_payload(scene.sid, reader, scene.fp, t, encoder, scene.acquired)
                                  for t in batch],
                    )
                )
            if progress:
                progress.advance(len(batch))
            batch.clear()

        try:
            capacity = max(4, 2 * options.batch_size)
            windows = list(ids)
            for tile in _timed_reads(_read_tiles(reader, windows, options.readers, capacity, stop), stages):
                if tile is None:
                    skipped += 1
                    if progress:
                        progress.advance(1)
                    continue
                batch.append(tile)
                if len(batch) >= options.batch_size:
                    flush()
            if batch:
                flush()
        finally:
            stop.set()
            with stages.timing("write"):  # the batches still queued reach the store
                try:
                    writer.close()
                finally:
                    if hook is not None:
                        hook.close()
            if progress:
                progress.finish()
        return writer.written, skipped


def ingest_scene(source: Source | Path | str, encoder: Encoder, store: Store, options: IngestOptions,
                 progress: Progress | None = None, stages: StageTimes | None = None) -> SceneSummary:
    """One source (or raster path) as one scene: :meth:`Ingest.scene`."""
    return Ingest(encoder, store, options, progress).scene(as_source(source), stages)


def ingest_paths(
    paths: Sequence[Source | Path | str],
    encoder: Encoder,
    store: Store,
    options: IngestOptions,
    progress: Progress | None = None,
    on_scene: Callable[[SceneSummary | IngestFailure], None] | None = None,
) -> tuple[list[SceneSummary], list[IngestFailure]]:
    """Ingest many sources (or raster paths): :meth:`Ingest.run`."""
    return Ingest(encoder, store, options, progress).run([as_source(p) for p in paths], on_scene)
