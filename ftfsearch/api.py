"""The Python API for notebooks: ``ftfsearch.connect(...)`` and one object whose methods are the CLI's
commands.

Every method builds the command's request model and hands it to the command layer
(:func:`ftfsearch.commands.open_commands`): the same checks, the same store access (through the
``ftfsearch serve`` holding an embedded store when one does) and the same results as the CLI. A new
command is one method here that forwards its request (:meth:`Connection._run`), nothing more.

Results convert to a GeoDataFrame (``pip install 'ftfsearch[geo]'``) whose ``.explore()`` draws the
footprints on a map; ingest shows a ``tqdm.auto`` bar, a widget in Jupyter and text elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, overload

from ftfsearch.commands import (
    ClassifyPlan,
    ClassifyRequest,
    ChangeOutcome,
    ChangeRequest,
    Commands,
    FindPlan,
    FindRequest,
    ReviewOutcome,
    ReviewRequest,
    DropOutcome,
    DropRequest,
    InfoRequest,
    SceneRow,
    ScenesRequest,
    SearchOutcome,
    SearchRequest,
    WatchAddRequest,
    WatchDeliverOutcome,
    WatchDeliverRequest,
    WatchHitsOutcome,
    WatchHitsRequest,
    WatchListRequest,
    WatchRmOutcome,
    WatchRmRequest,
    WatchRow,
    open_commands,
)
from ftfsearch.commands.ingest_requests import IngestOutcome, IngestRequest
from ftfsearch.config import Settings, load_settings
from ftfsearch.errors import BadInput
from ftfsearch.commands.requests import Detection
from ftfsearch.search import Result

Refs = str | Path | Iterable[str | Path]
"""Examples: a tile id, a point ``"lon,lat"`` or an image file, or several of them."""


class Results(Sequence[Result]):
    """A search's ranked results, with the warnings and stage timings that came with them."""

    def __init__(self, outcome: SearchOutcome, query: str | None = None) -> None:
        self.outcome = outcome
        self.query = query

    @overload
    def __getitem__(self, index: int) -> Result: ...

    @overload
    def __getitem__(self, index: slice) -> list[Result]: ...

    def __getitem__(self, index: int | slice) -> Result | list[Result]:
        return self.outcome.results[index]

    def __len__(self) -> int:
        return len(self.outcome.results)

    def __iter__(self) -> Iterator[Result]:
        return iter(self.outcome.results)

    def __repr__(self) -> str:
        return f"<Results {len(self)} for {self.query!r}>"

    @property
    def warnings(self) -> list[str]:
        return self.outcome.warnings

    @property
    def timings_ms(self) -> dict[str, float]:
        return self.outcome.timings_ms

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per result, as ``query --json`` prints them."""
        return [dict(r.to_dict()) for r in self]

    def to_geojson(self) -> dict[str, Any]:
        """The RFC 7946 FeatureCollection ``query --geojson`` writes (tiles without a CRS left out)."""
        from ftfsearch.export import results_to_geojson

        return results_to_geojson(self, self.query)

    def to_geodataframe(self) -> Any:
        """The footprints as a ``geopandas.GeoDataFrame`` in EPSG:4326, one row per result with a CRS,
        ``rank``, ``score``, ``scene_id``, ``acquired`` (a UTC datetime) and the rest of the record."""
        try:
            import geopandas as gpd
            import pandas as pd
        except ImportError as exc:
            raise BadInput("to_geodataframe needs geopandas: pip install 'ftfsearch[geo]'") from exc
        features = self.to_geojson()["features"]
        columns = ["rank", "score", "coarse_score", "fine_score", "id", "scene_id", "path", "level", "acquired"]
        if not features:
            return gpd.GeoDataFrame({c: [] for c in columns}, geometry=[], crs="EPSG:4326")
        frame = gpd.GeoDataFrame.from_features(features, crs="EPSG:4326")
        frame["acquired"] = pd.to_datetime(frame["acquired"], utc=True)
        return frame


class _TqdmObserver:
    """An ingest's progress as a ``tqdm.auto`` bar per scene (a widget in Jupyter); failures and
    warnings printed as one line each."""

    def __init__(self) -> None:
        self._bar: Any = None

    def start(self, scene_id: str, total: int, already: int) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=already, desc=scene_id, unit="tile")

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def scene(self, item: Any) -> None:
        from ftfsearch.errors import in_api_words

        if hasattr(item, "message"):
            print(f"skipped: {in_api_words(item.message)}")
        else:
            for warning in item.warnings:
                print(f"warning: {item.path}: {in_api_words(warning)}")


def _refs(value: Refs | None, param: str) -> list[Any]:
    from ftfsearch.examples import parse_ref

    if value is None:
        return []
    items = [value] if isinstance(value, (str, Path)) else list(value)
    return [parse_ref(str(v), param) for v in items]


def _geojson(value: dict[str, Any] | str | Path, param: str) -> dict[str, Any]:
    """A GeoJSON object, or the content of the file it names."""
    if isinstance(value, dict):
        return value
    import json

    try:
        data = json.loads(Path(value).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"`{param}` {str(value)!r}: cannot be read as GeoJSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BadInput(f"`{param}` {str(value)!r}: not a GeoJSON object")
    return data


def _area(value: dict[str, Any] | str | Path | None) -> dict[str, Any] | None:
    return None if value is None else _geojson(value, "aoi")


class Connection:
    """A store (an embedded directory or a Qdrant server) and its commands. Close it, or use it as a
    context manager, to release what the commands hold."""

    def __init__(self, commands: Commands, settings: Settings) -> None:
        self.commands = commands
        self.settings = settings

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.settings.qdrant_url or self.settings.resolved_store_dir
        return f"<ftfsearch.Connection {where} collection={self.settings.collection!r}>"

    def _run(self, command: str, request: Any, *args: Any) -> Any:
        """The one way a method reaches the command layer: the command of that name, with its request."""
        return getattr(self.commands, command)(request, *args)

    def ingest(self, *paths: str | Path, stack: Iterable[str] = (), assets: str | None = None,
               limit: int | None = None, tile_size: int = 256, overlap: float = 0.0,
               levels: Sequence[int] = (1, 2), bands: Sequence[int] | None = None, batch_size: int = 32,
               readers: int = 2, scene_id: str | None = None, acquired: str | None = None,
               progress: bool = True) -> IngestOutcome:
        """``ftfsearch ingest``: rasters, directories, globs, URLs or STAC JSON, each scene tiled,
        encoded and stored (an interrupted scene resumes)."""
        from ftfsearch.commands.sources import IngestInput
        from ingest.tiling import TilingSpec

        spec = TilingSpec(tile_size=tile_size, overlap=overlap, levels=tuple(levels),
                          bands=None if bands is None else tuple(bands))
        files = IngestInput(paths=tuple(str(p) for p in paths), stack=tuple(stack), assets=assets,
                            limit=limit).sources(self.settings.resolved_stack_dir)
        request = IngestRequest(sources=tuple(files), tiling=spec, batch_size=batch_size, readers=readers,
                                scene_id=scene_id, acquired=acquired, model=self.settings.model)
        outcome: IngestOutcome = self._run("ingest", request, _TqdmObserver() if progress else None)
        return outcome

    def query(self, text: str | None = None, *, like: Refs | None = None, unlike: Refs | None = None,
              k: int = 10, recall_k: int = 100, rerank: bool = True,
              bbox: str | Sequence[float] | None = None, scenes: Iterable[str] = (),
              after: str | datetime | None = None, before: str | datetime | None = None) -> Results:
        """``ftfsearch query``: tiles ranked by a text, examples (``like``/``unlike``: tile ids,
        points ``"lon,lat"``, image files), or both; ``bbox``, ``scenes`` and a time range filter."""
        # validated as the API's parameters are: a bbox string or four numbers, ISO times or datetimes
        request = SearchRequest.model_validate(dict(
            text=text, examples=tuple(_refs(like, "like") + _refs(unlike, "unlike")), k=k, recall_k=recall_k,
            rerank=rerank, bbox=bbox, scenes=tuple(scenes), after=after, before=before))
        return Results(self._run("search", request), text)

    def find(self, text: str | None = None, *, like: Refs | None = None, unlike: Refs | None = None,
             aoi: dict[str, Any] | str | Path | None = None, bbox: str | Sequence[float] | None = None,
             scenes: Iterable[str] = (), after: str | datetime | None = None, before: str | datetime | None = None,
             min_score: float | None = None, max_hits: int = 1_000_000) -> tuple[FindPlan, list[Result]]:
        """``ftfsearch find``: every tile of the scope scoring at least ``min_score`` (default: chosen
        from a sample of the scope's scores), with the plan that says how. ``aoi``: GeoJSON or a file."""
        request = FindRequest.model_validate(dict(
            text=text, examples=tuple(_refs(like, "like") + _refs(unlike, "unlike")), aoi=_area(aoi), bbox=bbox,
            scenes=tuple(scenes), after=after, before=before, min_score=min_score, max_hits=max_hits))
        items = iter(self._run("find", request))
        plan = next(items)
        return plan, [r for page in items for r in page.results]

    def classify(self, labels: dict[str, Any] | str | Path, *, aoi: dict[str, Any] | str | Path | None = None,
                 bbox: str | Sequence[float] | None = None, scenes: Iterable[str] = (),
                 min_probability: float = 0.5, estimate: bool = False) -> tuple[ClassifyPlan, list[Detection]]:
        """``ftfsearch classify``: a classifier trained on the marks of ``labels`` (a labels GeoJSON
        or its file) scoring every tile of the scope; the plan holds its cross-validated quality and,
        with ``estimate``, the count of hits from the review answers in ``labels``."""
        request = ClassifyRequest.model_validate(dict(
            labels=_geojson(labels, "labels"), aoi=_area(aoi), bbox=bbox, scenes=tuple(scenes),
            min_probability=min_probability, estimate=estimate))
        items = iter(self._run("classify", request))
        plan = next(items)
        return plan, [d for page in items for d in page.detections]

    def review(self, labels: dict[str, Any] | str | Path, answers: dict[str, bool | None] | None = None, *,
               aoi: dict[str, Any] | str | Path | None = None, bbox: str | Sequence[float] | None = None,
               scenes: Iterable[str] = (), seed: int | None = None) -> ReviewOutcome:
        """``ftfsearch review``: ``answers`` ({tile id: True a hit, False a miss, None skipped})
        applied to the review in ``labels`` (started in the scope given when it has none), the
        classifier retrained, the next tile proposed. Keep ``outcome.labels``: it is the review."""
        request = ReviewRequest.model_validate(dict(
            labels=_geojson(labels, "labels"), answers=[{"id": t, "hit": h} for t, h in (answers or {}).items()],
            aoi=_area(aoi), bbox=bbox, scenes=tuple(scenes), seed=seed))
        outcome: ReviewOutcome = self._run("review", request)
        return outcome

    def scenes(self) -> list[SceneRow]:
        """``ftfsearch scenes``."""
        rows: list[SceneRow] = self._run("scenes", ScenesRequest())
        return rows

    def info(self) -> dict[str, Any]:
        """``ftfsearch info``."""
        described: dict[str, Any] = self._run("info", InfoRequest())
        return described

    def drop(self, scene_id: str) -> DropOutcome:
        """``ftfsearch drop``: a scene and its tiles out of the collection."""
        dropped: DropOutcome = self._run("drop", DropRequest(scene_id=scene_id))
        return dropped

    def change(self, text: str | None = None, *, before: str, after: str, like: Refs | None = None,
               unlike: Refs | None = None, k: int = 10, bbox: str | Sequence[float] | None = None,
               disappeared: bool = False, aoi: dict[str, Any] | None = None) -> ChangeOutcome:
        """``ftfsearch change``: places covered in both ISO 8601 ranges (``START/END``, ``..`` open),
        ranked by the rise (or fall) of a query's score, or by how far their vectors moved."""
        request = ChangeRequest.model_validate(dict(
            text=text, examples=tuple(_refs(like, "like") + _refs(unlike, "unlike")), before=before, after=after,
            k=k, bbox=bbox, disappeared=disappeared, aoi=aoi))
        outcome: ChangeOutcome = self._run("change", request)
        return outcome

    def watch_add(self, name: str, text: str | None = None, *, like: Refs | None = None, unlike: Refs | None = None,
                  aoi: dict[str, Any] | None = None, min_score: float | None = None,
                  webhook: str | None = None) -> WatchRow:
        """``ftfsearch watch add``: a standing query every later ingest scores its tiles against."""
        request = WatchAddRequest.model_validate(dict(
            name=name, text=text, examples=tuple(_refs(like, "like") + _refs(unlike, "unlike")), aoi=aoi,
            min_score=min_score, webhook=webhook))
        row: WatchRow = self._run("watch_add", request)
        return row

    def watches(self) -> list[WatchRow]:
        """``ftfsearch watch list``."""
        rows: list[WatchRow] = self._run("watch_list", WatchListRequest())
        return rows

    def watch_rm(self, name: str) -> WatchRmOutcome:
        """``ftfsearch watch rm``: the watch and its hits."""
        out: WatchRmOutcome = self._run("watch_rm", WatchRmRequest(name=name))
        return out

    def watch_hits(self, name: str, since: str | datetime | None = None) -> WatchHitsOutcome:
        """``ftfsearch watch hits``: newest first; ``.hits`` and, as GeoJSON,
        :func:`ftfsearch.watch.hits_geojson`."""
        out: WatchHitsOutcome = self._run("watch_hits", WatchHitsRequest.model_validate(dict(name=name, since=since)))
        return out

    def watch_deliver(self, name: str | None = None) -> WatchDeliverOutcome:
        """``ftfsearch watch deliver``: POST the pending hits to their webhooks now."""
        out: WatchDeliverOutcome = self._run("watch_deliver", WatchDeliverRequest.model_validate({"name": name}))
        return out

    def close(self) -> None:
        self.commands.close()


def connect(store: str | Path | None = None, *, qdrant_url: str | None = None, api_key: str | None = None,
            collection: str | None = None, model: str | None = None, device: str | None = None) -> Connection:
    """The store to work on: an embedded store directory (``store``) or a Qdrant server
    (``qdrant_url``, ``api_key``); unset ones come from the environment and the config file as for
    the CLI. Nothing loads yet: the model loads on the first command that needs it."""
    if store is not None and qdrant_url is not None:
        raise BadInput("give `store` (an embedded store directory) or `qdrant_url` (a Qdrant server), not both")
    settings = load_settings(store_dir=None if store is None else str(store), qdrant_url=qdrant_url,
                             qdrant_api_key=api_key, collection=collection, model=model, device=device)
    return Connection(open_commands(settings), settings)
