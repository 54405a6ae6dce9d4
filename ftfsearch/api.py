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
    Commands,
    DropOutcome,
    DropRequest,
    InfoRequest,
    IngestOutcome,
    IngestRequest,
    SceneRow,
    ScenesRequest,
    SearchOutcome,
    SearchRequest,
    open_commands,
)
from ftfsearch.config import Settings, load_settings
from ftfsearch.errors import BadInput
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
