"""Ingest at scale: a list of sources, a deterministic partition of it, and the batch's state.

Parallel workers need no scheduler of ours: point ids are idempotent and scenes resume, so each
worker takes one part (``Shard``) of one list and ingests it; Kubernetes (an Indexed Job) or
Slurm (an array) starts the workers, retries the ones that die, and nothing coordinates them
but the store. ``batch_status`` reads the state of every source of a list back from the store.

The list: one source per line (a file, a directory, a glob or a URL); blank lines and lines
starting with ``#`` are skipped. Relative paths and globs resolve against the list file's own
directory, never the worker's working directory, so the list means the same thing wherever it
is read. Globs and directories expand (sorted) before partitioning.

The partition: sources are sorted by the sha256 of their *name* (the path relative to the list's
directory when the file lies under it, else the absolute path; a URL as written) and dealt
round-robin. Parts therefore differ in size by at most one, do not depend on the order of the
lines, and agree between machines that mount the list and its files at different places.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from operator import attrgetter
from typing import Any, TypeVar

from ftfsearch.errors import (
    BadInput,
    CollectionNotFound,
    ModelMismatch,
    PermissionDenied,
    StoreUnavailable,
    in_api_words,
)
from ftfsearch.model.base import Encoder
from ftfsearch.store.base import SourceFailure, Store
from ftfsearch.raster import is_url
from ftfsearch.collection import collection_meta
from ingest.pipeline import Ingest, IngestOptions, Progress, SceneSummary, scene_error
from ingest.scenes import is_stac
from ingest.sources import Source, resolve_entry

log = logging.getLogger(__name__)
T = TypeVar("T")

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SHARD = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")

STATES = ("complete", "ingesting", "failed", "not_started")
"""The states of a source in a batch, in the order reports list them."""

FATAL = (StoreUnavailable, PermissionDenied, ModelMismatch, CollectionNotFound)
"""Errors that end a worker: they concern the store or the model, so every other source would
fail the same way. Everything else fails one source, is recorded, and the worker goes on."""


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count`` (0-based): the ``K/N`` of ``--shard``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise BadInput(f"`shard` {str(self)!r}: N must be at least 1")
        if not 0 <= self.index < self.count:
            raise BadInput(f"`shard` {str(self)!r}: K must be between 0 and N-1 = {self.count - 1}")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"K/N"`` with integers ``0 <= K < N``, e.g. ``"2/8"``."""
        m = _SHARD.match(text or "")
        if m is None:
            raise BadInput(f"`shard` {text!r}: give K/N, part K (0-based) of N, e.g. 0/4")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class ListEntry:
    """One unit of work of a batch: a source of the list, or an entry that names none."""

    key: str
    """How the store records it: the source's key (:attr:`ingest.sources.Source.key`), else the
    entry as resolved (an absolute path or glob, or a URL)."""
    name: str
    """What the partition hashes: ``key`` relative to the list's directory when under it."""
    line: int
    """Line of the list it came from (1-based)."""
    source: Source | None = None
    """The scene to ingest, when the entry named one."""
    problem: str | None = None
    """Why the entry cannot be ingested, found while expanding it (matches nothing, a URL)."""

    @property
    def scene_id(self) -> str | None:
        return self.source.scene_id if self.source is not None else None


def read_list(list_path: str | Path) -> list[tuple[int, str]]:
    """``(line number, entry)`` of every source line of the list file (comments and blanks out)."""
    p = Path(list_path).expanduser()
    if p.is_dir():
        raise BadInput(f"`list_path` {p}: is a directory; give a text file with one source per line")
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise BadInput(f"`list_path` {p}: no such file") from None
    except UnicodeDecodeError:
        raise BadInput(f"`list_path` {p}: not UTF-8 text; give one source per line") from None
    except OSError as exc:
        raise BadInput(f"`list_path` {p}: cannot be read ({exc.strerror or exc})") from None
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            entries.append((number, line))
    if not entries:
        raise BadInput(f"`list_path` {p}: holds no sources (only blank lines or # comments)")
    return entries


def _name(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def expand_list(list_path: str | Path, stack_dir: Path | None = None) -> list[ListEntry]:
    """The sources of a list file, in list order, each once (first mention wins), resolved entry by
    entry as the command line's paths are (:func:`ingest.sources.resolve_entry`), relative ones
    against the list's directory.

    An entry that names nothing usable becomes one :class:`ListEntry` carrying the problem, so the
    worker that owns it records the failure and ``batch_status`` reports it. A STAC item, catalog,
    collection or ItemCollection (``.json``) is one source per item (band stacks under ``stack_dir``,
    default the list's directory); an item that cannot be ingested carries its problem too.
    """
    p = Path(list_path).expanduser()
    entries = read_list(p)
    base = p.resolve().parent
    out: dict[str, ListEntry] = {}
    for number, entry in entries:
        try:
            sources = resolve_entry(entry, stack_dir or base, base=base)
        except BadInput as exc:
            out.setdefault(*_unusable(entry, number, base, exc))
            continue
        for source in sources:
            out.setdefault(source.key, ListEntry(key=source.key, name=_source_name(source.key, base), line=number,
                                                 source=source, problem=getattr(source, "error", None)))
    return list(out.values())


def _unusable(entry: str, number: int, base: Path, exc: BadInput) -> tuple[str, ListEntry]:
    """The failed entry of a line that names nothing readable, keyed as written (a STAC file, a
    URL) or by its absolute path."""
    if is_stac(entry) or _URL.match(entry):
        message = exc.message if not is_stac(entry) else f"line {number}: {exc.message}"
        return entry, ListEntry(key=entry, name=entry, line=number, problem=message)
    target = Path(entry).expanduser()
    key = os.path.normpath(str(target if target.is_absolute() else base / target))
    return key, ListEntry(key=key, name=_name(Path(key), base), line=number, problem=f"line {number}: {exc}")


def _source_name(key: str, base: Path) -> str:
    """A source's name in the partition: a URL as it is, a file (or a STAC item's ``file#id``)
    relative to the list's directory when under it."""
    if is_url(key):
        return key
    file, sep, fragment = key.partition("#")
    return _name(Path(file), base) + sep + fragment


def _rank(name: str) -> tuple[str, str]:
    return hashlib.sha256(name.encode("utf-8")).hexdigest(), name


def partition(sources: Sequence[T], shard: Shard, name: Callable[[T], str] = attrgetter("name")) -> list[T]:
    """Part ``shard.index`` of ``shard.count``: sorted by the hash of each source's ``name``, dealt
    round-robin, returned in list order (a list's sources, or a STAC API search's items by id)."""
    ranked = sorted(range(len(sources)), key=lambda i: _rank(name(sources[i])))
    mine = sorted(ranked[shard.index :: shard.count])
    return [sources[i] for i in mine]


# -- ingest -----------------------------------------------------------------------------------


@dataclass
class SourceOutcome:
    """What became of one source in this run."""

    source: ListEntry
    summary: SceneSummary | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.summary is not None and self.summary.state == "complete"


@dataclass
class BatchResult:
    outcomes: list[SourceOutcome] = field(default_factory=list)

    @property
    def done(self) -> list[SceneSummary]:
        return [o.summary for o in self.outcomes if o.summary is not None]

    @property
    def failed(self) -> list[SourceOutcome]:
        return [o for o in self.outcomes if not o.ok]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _record_failure(store: Store, encoder: Encoder, options: IngestOptions, source: ListEntry, message: str) -> None:
    """Put the error where ``batch_status`` finds it: on the source's scene record when this
    source has one that is not complete (a scene that failed part-way), else on a failure point
    keyed by the source. A store that fails now is not this source's fault: logged, not raised."""
    try:
        store.ensure_collection(collection_meta(encoder), options.shards, options.replication_factor)
        sid = source.scene_id
        record = store.get_scene(sid) if sid else None
        if record is not None and record.path == source.key and record.state != "complete":
            record.last_error = message
            store.put_scene(record)
        else:
            store.put_failure(SourceFailure(source=source.key, message=message, scene_id=sid, recorded_at=_now()))
    except FATAL as exc:
        log.warning("could not record the failure of %s: %s", source.key, exc)


def ingest_sources(
    sources: list[ListEntry],
    encoder: Encoder,
    store: Store,
    options: IngestOptions,
    progress: Progress | None = None,
    on_source: Callable[[SourceOutcome], None] | None = None,
) -> BatchResult:
    """Ingest each source as one scene; a failed source is recorded in the store and the others
    go on. Store and model errors (:data:`FATAL`) end the run: the scene being written stays
    ``ingesting`` and the next run resumes it."""
    if options.scene_id:
        raise BadInput("`scene_id` names one scene: a batch names its scenes after their files")
    run = Ingest(encoder, store, options, progress)
    run.check_model()
    recorded = {f.source for f in store.list_failures()}
    result = BatchResult()
    for entry in sources:
        outcome = SourceOutcome(entry)
        try:
            if entry.problem is not None:
                raise BadInput(entry.problem)
            assert entry.source is not None
            outcome.summary = run.scene(entry.source)
            if outcome.summary.state != "complete":
                outcome.error = f"{entry.key}: {outcome.summary.tiles_in_store} tiles stored, fewer than expected"
        except FATAL:
            raise
        except Exception as exc:  # noqa: BLE001 - one source's failure, whatever it is, is recorded
            known = scene_error(entry.key, exc)
            outcome.error = known.message if known is not None else (
                f"{entry.key}: internal error: {type(exc).__name__}: {exc}"
            )
            log.info("failed %s: %s", entry.key, outcome.error)
            _record_failure(store, encoder, options, entry, outcome.error)
        else:
            if outcome.ok and entry.key in recorded:
                store.delete_failure(entry.key)
        result.outcomes.append(outcome)
        if on_source:
            on_source(outcome)
    run.optimize(result.done)
    return result


# -- status -----------------------------------------------------------------------------------


@dataclass
class SourceState:
    source: str
    state: str
    """One of :data:`STATES`."""
    scene_id: str | None = None
    tiles: int | None = None
    """Tiles the scene record counts (complete scenes)."""
    error: str | None = None
    line: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "state": self.state, "scene_id": self.scene_id, "tiles": self.tiles,
                "error": None if self.error is None else in_api_words(self.error), "line": self.line}


@dataclass
class BatchStatus:
    sources: list[SourceState]
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(x.state == s for x in self.sources) for s in STATES}

    @property
    def complete(self) -> bool:
        return all(x.state == "complete" for x in self.sources)

    def to_dict(self) -> dict[str, Any]:
        return {"total": len(self.sources), "counts": self.counts, "complete": self.complete,
                "sources": [s.to_dict() for s in self.sources]}


def batch_status(sources: list[ListEntry], store: Store) -> BatchStatus:
    """The state of each source as the store records it, with two reads of the scenes registry.

    ``complete``: its scene is complete. ``ingesting``: its scene is being written, or its writer
    died (a rerun resumes it). ``failed``: the last run recorded an error (on the scene, or for
    the source). ``not_started``: nothing is recorded for it. Files are not read again, except to
    fingerprint a source whose scene id is recorded under another path.
    """
    t0 = time.perf_counter()
    scenes = {s.scene_id: s for s in store.list_scenes()}
    failures = {f.source: f for f in store.list_failures()}
    out: list[SourceState] = []
    for src in sources:
        sid = src.scene_id
        record = scenes.get(sid) if sid else None
        failure = failures.get(src.key)
        state = SourceState(source=src.key, state="not_started", scene_id=sid, line=src.line)
        if record is not None and src.source is not None and src.source.is_scene(record):
            if record.state == "complete":
                state.state, state.tiles = "complete", record.expected_tiles
            elif record.last_error:
                state.state, state.error = "failed", record.last_error
            else:
                state.state = "ingesting"
        elif failure is not None:
            state.state, state.error = "failed", failure.message
        out.append(state)
    return BatchStatus(out, time.perf_counter() - t0)
