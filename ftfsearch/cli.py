"""The ``ftfsearch`` command: parses flags, calls the library, maps errors to one line and an exit code."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from typer.models import OptionInfo

from ftfsearch.cli_usage import OneLineErrors
from ftfsearch.config import Settings, load_settings
from ftfsearch.errors import FtfError, in_api_words, render
from ftfsearch.keys import DEFAULT_RATE_LIMIT, KEYS_ENV
from ftfsearch.model.families import DEFAULT_FAMILY, FAMILIES, LossWeights
from ftfsearch.net import LOOPBACK_HOSTS, LOOPBACK_IP

app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Text search over remote-sensing scenes: fast coarse recall, then a text-guided region rerank.",
)
# Piped output is not cut to 80 columns: tables stay one row per result.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("ftfsearch")

F = TypeVar("F", bound=Callable[..., Any])


# Library messages name parameters in the API's words, between backticks (ftfsearch.errors);
# on the command line each is the flag of the running command that sets it.
_FLAG_OF_PARAMETER = {"list_path": "--from", "num_threads": "--threads", "feature_views": "--views"}
"""Parameters whose flag is not ``--`` + the name with dashes."""
_command_flags: ContextVar[frozenset[str]] = ContextVar("ftfsearch_command_flags", default=frozenset())
"""The long flags of the command being run (set by :func:`handles_errors`)."""


def _flags_of(fn: Callable[..., Any]) -> frozenset[str]:
    """The long flags a command function declares (``typer.Option`` defaults)."""
    flags: set[str] = set()
    for name, param in inspect.signature(fn).parameters.items():
        if isinstance(param.default, OptionInfo):
            decls = [d for d in param.default.param_decls or () if d.startswith("--")]
            flags.update(decls or ["--" + name.replace("_", "-")])
    return frozenset(flags)


def _as_flags(message: str) -> str:
    """``message`` with each named parameter as its flag (`` `bbox` `` -> ``--bbox``), or as the
    bare name where the running command has no flag for it."""
    flags = _command_flags.get()

    def flag(name: str) -> str:
        candidate = _FLAG_OF_PARAMETER.get(name, "--" + name.replace("_", "-"))
        return candidate if candidate in flags else name

    return render(message, flag)


def _fail(message: str, code: int) -> None:
    err.print(Text(f"error: {_as_flags(message)}"), highlight=False)
    raise typer.Exit(code)


def handles_errors(fn: F) -> F:
    """Turn library errors into one line on stderr, their parameters named as this command's
    flags, with the error class's exit code; never show a traceback for them."""
    flags = _flags_of(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = _command_flags.set(flags)
        try:
            return fn(*args, **kwargs)
        except FtfError as exc:
            _fail(exc.message, exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; an unfinished scene stays 'ingesting' and the next ingest resumes it", 130)
        except typer.Exit:
            raise
        except Exception as exc:  # a bug: still one line, with a way to see more
            if os.environ.get("FTF_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (set FTF_DEBUG=1 to see the traceback)", 70)
        finally:
            _command_flags.reset(token)

    return wrapper  # type: ignore[return-value]


# Shared options ----------------------------------------------------------------------------------
StoreOpt = typer.Option(None, "--store", help="Embedded store directory (env FTF_STORE).", show_default=False)
UrlOpt = typer.Option(None, "--qdrant-url", help="Qdrant server URL (env QDRANT_URL); key from QDRANT_API_KEY.")
CollectionOpt = typer.Option(None, "--collection", help="Tiles collection name (env FTF_COLLECTION; default tiles).")
ModelOpt = typer.Option(None, "--model", help="Model name or directory (env FTF_MODEL; default: the shipped model).")
DeviceOpt = typer.Option(None, "--device", help="auto, cpu or cuda (env FTF_DEVICE).")
KeysOpt = typer.Option(None, "--keys", envvar=KEYS_ENV,
                       help=f"API keys file (env {KEYS_ENV}; 'ftfsearch keys add' makes it): every request needs a key.")
QueryDeviceOpt = typer.Option(
    None, "--device", help="auto (here: the CPU, as one query is milliseconds of work), cpu or cuda (env FTF_DEVICE)."
)


def _settings(**flags: Any) -> Settings:
    return load_settings(**flags)


def _confirm_cancel() -> bool:
    """Ctrl+C during an ingest that runs in 'ftfsearch serve': cancel it there?"""
    import click

    try:
        return bool(typer.confirm("\ncancel the ingest in the server? (no: it goes on there)", default=False, err=True))
    except click.exceptions.Abort:
        return False


def _commands(settings: Settings) -> Any:
    """The store commands, wherever they run (:func:`ftfsearch.commands.open_commands` chooses)."""
    from ftfsearch.commands import open_commands

    return open_commands(settings, notify=lambda line: err.print(line, highlight=False),
                         confirm_cancel=_confirm_cancel)


def _single_thread_queries() -> None:
    """One torch thread for the query path: its tensors are tiny, and intra-op threads only add
    synchronisation (measured on the 2-core machine, shipped model: text encoding 173 -> 2.5 ms,
    BTI of 100 candidates 31 -> 0.7 ms p50 with a background job on the other core). A text query
    never imports torch: then the variable torch reads at import, should an image example load it."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    else:
        os.environ["OMP_NUM_THREADS"] = "1"


def _show_version(value: bool) -> None:
    if value:
        from ftfsearch import __version__

        out.print(f"ftfsearch {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Log to stderr what loads and how long it takes (model, ONNX cache, store)."
    ),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version, help="Print the version."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


# ingest ------------------------------------------------------------------------------------------
class _TilesPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- tiles/s" if speed is None else f"{speed:,.1f} tiles/s", style="cyan")


class _RichProgress:
    """The pipeline's Progress drawn as a rich bar on stderr."""

    def __init__(self) -> None:
        self._bar: Progress | None = None
        self._task: Any = None

    def start(self, scene_id: str, total: int, already: int) -> None:
        self._bar = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _TilesPerSecond(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(scene_id, total=total, completed=already)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class _IngestReport:
    """An ingest's progress as a bar (none with --json), and each scene's failure or warnings."""

    def __init__(self, as_json: bool) -> None:
        self._bar = None if as_json else _RichProgress()

    def start(self, scene_id: str, total: int, already: int) -> None:
        if self._bar is not None:
            self._bar.start(scene_id, total, already)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(n)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.finish()

    def scene(self, item: Any) -> None:
        if hasattr(item, "message"):
            _print_failure(item.message)
        else:
            _print_warnings(item.path, item.warnings)


def _parse_int_list(value: str | None, option: str) -> tuple[int, ...] | None:
    from ftfsearch.errors import BadInput

    if value is None:
        return None
    try:
        items = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError as exc:
        raise BadInput(f"{option} {value!r}: expected comma-separated integers, e.g. 3,2,1") from exc
    if not items:
        raise BadInput(f"{option} {value!r}: give at least one integer")
    return items


@app.command()
@handles_errors
def ingest(
    paths: Optional[list[str]] = typer.Argument(
        None, help="GeoTIFF files, directories, globs or URLs, each raster a scene; or STAC items, catalogs or "
        "collections (.json files or URLs), each item a scene (or --from LIST).",
    ),
    from_list: Optional[Path] = typer.Option(
        None, "--from", help="A file of sources, one per line (files, directories, globs; # comments); "
        "relative paths resolve against the file's directory. A failed source is recorded and the others go on.",
    ),
    shard: Optional[str] = typer.Option(
        None, "--shard", help="K/N: ingest only part K (0-based) of N of the --from list (deterministic, balanced)."
    ),
    stack: Optional[list[str]] = typer.Option(
        None, "--stack", help="Band files of one scene, comma-separated, shown as red,green,blue in that order "
        "(e.g. B04.tif,B03.tif,B02.tif); read through a VRT on the finest band's grid (repeatable).",
    ),
    assets: Optional[str] = typer.Option(
        None, "--assets", help="STAC asset keys of the RGB pixels: one RGB asset or red,green,blue ones (e.g. "
        "B04,B03,B02); default: the item's visual asset, else its red, green and blue bands by eo:bands common name.",
    ),
    limit: Optional[int] = typer.Option(
        None, "--limit", help="Ingest at most N items of the STAC catalogs given, or of the --stac-api search."
    ),
    stac_api: Optional[str] = typer.Option(
        None, "--stac-api", help="Search this STAC API (its landing page URL) and ingest each item found "
        "(with --collections; --shard K/N takes part K of the items).",
    ),
    collections: Optional[str] = typer.Option(
        None, "--collections", help="STAC API collections to search, comma-separated (with --stac-api)."
    ),
    stac_bbox: Optional[str] = typer.Option(
        None, "--bbox", help="With --stac-api: items intersecting minlon,minlat,maxlon,maxlat (WGS84)."
    ),
    stac_datetime: Optional[str] = typer.Option(
        None, "--datetime", help="With --stac-api: items in this time or range (RFC 3339, e.g. 2024-01-01/2024-06-30)."
    ),
    stac_query: Optional[list[str]] = typer.Option(
        None, "--query", help="With --stac-api: a property filter such as 'eo:cloud_cover<20' (repeatable)."
    ),
    max_pages: int = typer.Option(
        100, "--max-pages", help="With --stac-api: stop after this many result pages (an API that pages forever)."
    ),
    scene_id: Optional[str] = typer.Option(None, "--scene-id", help="Scene id (one raster only; default: file name)."),
    acquired: Optional[str] = typer.Option(
        None, "--acquired", help="Acquisition time of the scenes (ISO 8601; UTC if no zone); default: the STAC "
        "item's datetime, or the raster's ACQUISITIONDATETIME or TIFFTAG_DATETIME tag.",
    ),
    tile_size: int = typer.Option(256, "--tile-size", help="Tile size in pixels."),
    overlap: float = typer.Option(0.0, "--overlap", help="Overlap between neighbouring tiles, fraction in [0, 1)."),
    levels: str = typer.Option("1,2", "--levels", help="Scale levels: level L tiles windows of L*tile-size pixels."),
    bands: Optional[str] = typer.Option(None, "--bands", help="1-based bands to read as RGB, e.g. 3,2,1."),
    batch_size: int = typer.Option(32, "--batch-size", help="Tiles per encoder batch."),
    readers: int = typer.Option(2, "--readers", help="Reader threads."),
    shards: Optional[int] = typer.Option(None, "--shards", help="Shards when creating a server collection."),
    replication_factor: Optional[int] = typer.Option(
        None, "--replication-factor", help="Replicas when creating a server collection."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
    model: Optional[str] = ModelOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Cut rasters into tiles, encode them and store them (resumes an interrupted scene)."""
    from ftfsearch.commands.sources import IngestInput, stac_api_search
    from ingest.tiling import TilingSpec

    settings = _settings(store_dir=store, qdrant_url=qdrant_url, collection=collection, model=model, device=device)
    api = stac_api_search(stac_api, collections, stac_bbox, stac_datetime, tuple(stac_query or ()), limit, max_pages,
                          settings.timeout)
    named = IngestInput(paths=tuple(paths or ()), stack=tuple(stack or ()), list_path=from_list, shard=shard,
                        assets=assets, limit=limit, stac_api=api, scene_id=scene_id)
    if named.list_path is not None:
        entries, part = named.entries(settings.resolved_stack_dir)
    spec = TilingSpec(
        tile_size=tile_size,
        overlap=overlap,
        levels=_parse_int_list(levels, "--levels") or (1,),
        bands=_parse_int_list(bands, "--bands"),
    )
    if named.list_path is not None:
        from ingest.pipeline import IngestOptions

        options = IngestOptions(spec=spec, batch_size=batch_size, readers=readers, shards=shards,
                                replication_factor=replication_factor, acquired=acquired)
        _ingest_batch(entries, part, named.list_path, options, settings, as_json)
        return
    from ftfsearch.commands.ingest_requests import IngestRequest

    files = named.sources(settings.resolved_stack_dir, warn=_print_stopped)
    request = IngestRequest(sources=tuple(files), tiling=spec, batch_size=batch_size, readers=readers,
                            scene_id=scene_id, acquired=acquired, shards=shards,
                            replication_factor=replication_factor, model=model)
    outcome = _commands(settings).ingest(request, _IngestReport(as_json))
    if outcome.detached:  # Ctrl+C answered "no": the ingest goes on in 'serve'
        raise typer.Exit(0)
    _report_ingest(outcome.scenes, [f.__dict__ for f in outcome.failed], len(files), as_json)
    if _STOPPED.get():  # the search was cut short: what was found is ingested, the run is not whole
        raise typer.Exit(1)


_STOPPED: ContextVar[bool] = ContextVar("ftfsearch_stac_search_stopped", default=False)
"""Whether this ingest's STAC API search stopped before its last page."""


def _print_stopped(message: str) -> None:
    _STOPPED.set(True)
    err.print(Text(f"warning: {_as_flags(message)}"), highlight=False)


def _print_failure(message: str) -> None:
    err.print(Text(f"skipped: {_as_flags(message)}"), highlight=False)


def _print_warnings(path: str, warnings: list[str]) -> None:
    for warning in warnings:
        err.print(Text(f"warning: {path}: {_as_flags(warning)}"), highlight=False)


def _report_ingest(done: list[Any], failed: list[dict[str, Any]], total: int, as_json: bool) -> None:
    """The summary of an ingest; exit 2 when nothing was ingested, 1 when some scenes failed."""
    if as_json:
        failed_json = [{**f, "message": in_api_words(f["message"])} for f in failed]  # JSON: the API's words
        out.print_json(json.dumps({"scenes": [s.to_dict() for s in done], "failed": failed_json}))
    else:
        for s in done:
            _print_scene(s)
    if not done:
        _fail(f"nothing was ingested: {len(failed)} of {total} rasters skipped (see above)", 2)
    if failed:
        raise typer.Exit(1)


def _print_scene(s: Any) -> None:
    err.print(
        f"{s.scene_id}: {s.state}, {s.tiles_in_store} tiles in store ({s.written} written, "
        f"{s.already_stored} already stored, {s.skipped_nodata} nodata skipped) "
        f"in {s.seconds:.1f} s, {s.tiles_per_s:.1f} tiles/s" + (f" on {s.device}" if s.device else ""),
        highlight=False,
    )
    if s.written:
        err.print(f"  {s.stages.line()}", highlight=False)


def _ingest_batch(sources: list[Any], part: Any, list_path: Path, options: Any, settings: Settings,
                  as_json: bool) -> None:
    """``ingest --from``: one line per failed source, the others go on; exit 1 unless all complete."""
    from ftfsearch.commands.batch import ingest_list

    what = f"{list_path}" + (f" shard {part}" if part is not None else "")
    if not sources:
        err.print(f"{what}: no sources in this part (the list has fewer sources than parts)", highlight=False)
        if as_json:
            out.print_json(json.dumps({"shard": str(part), "scenes": [], "failed": []}))
        return
    def report(o: Any) -> None:
        if o.error is not None:
            err.print(Text(f"failed: {_as_flags(o.error)}"), highlight=False)
        if o.summary is not None:
            _print_warnings(o.summary.path, o.summary.warnings)
            if not as_json:
                _print_scene(o.summary)

    result = ingest_list(settings, sources, options, progress=None if as_json else _RichProgress(), on_source=report)
    failed = result.failed
    if as_json:
        out.print_json(json.dumps({
            "shard": None if part is None else str(part),
            "scenes": [s.to_dict() for s in result.done],
            "failed": [{"source": o.source.key, "message": in_api_words(o.error or "")} for o in failed],
        }))
    err.print(
        f"{what}: {len(sources)} sources, {len(sources) - len(failed)} complete, {len(failed)} failed",
        highlight=False,
    )
    if failed:
        raise typer.Exit(1)


# batch -------------------------------------------------------------------------------------------
batch_app = typer.Typer(
    no_args_is_help=True, help="Batches of sources for parallel workers: `ingest --from LIST --shard K/N`, then their state."
)
app.add_typer(batch_app, name="batch")


@batch_app.command("status")
@handles_errors
def batch_status_cmd(
    from_list: Path = typer.Option(..., "--from", help="The source list the workers ingest (as for ingest --from)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: only the sources of this part."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: counts and every source with its state."),
    pending: bool = typer.Option(
        False, "--pending", help="Print only the sources that are not complete, one per line: a list for --from."
    ),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
) -> None:
    """How many sources of a list are complete, ingesting, failed or not started, and which (exit 0 only when all are complete)."""
    from ftfsearch.commands.batch import list_sources, list_status
    from ingest.batch import STATES

    settings = _settings(store_dir=store, qdrant_url=qdrant_url, collection=collection)
    sources, part = list_sources(from_list, shard, settings.resolved_stack_dir)
    status = list_status(settings, sources)
    counts = status.counts
    if as_json:
        out.print_json(json.dumps({"list": str(from_list), "shard": None if part is None else str(part),
                                   **status.to_dict()}))
    elif pending:
        for s in status.sources:
            if s.state != "complete":
                out.print(Text(s.source), highlight=False)
    else:
        waiting = [s for s in status.sources if s.state != "complete"]
        if waiting:
            table = Table()
            for col in ("state", "source", "error"):
                table.add_column(col, overflow="fold")
            for s in waiting:
                table.add_row(s.state.replace("_", " "), s.source, _as_flags(s.error or ""))
            out.print(table)
    what = f"{from_list}" + (f" shard {part}" if part is not None else "")
    err.print(
        f"{what}: {len(status.sources)} sources: "
        + ", ".join(f"{counts[k]} {k.replace('_', ' ')}" for k in STATES),
        highlight=False,
    )
    if not status.complete:
        raise typer.Exit(1)


# query -------------------------------------------------------------------------------------------
LikeOpt = typer.Option(
    None, "--like", help="An example of what you want: a tile id, a point lon,lat or an image file (repeatable)."
)
UnlikeOpt = typer.Option(None, "--unlike", help="An example of what you do not want, as --like (repeatable).")
LikeRegionOpt = typer.Option(
    None, "--like-region", help="REF:N: region N of a tile (a result's region_index) as the example (repeatable)."
)
UnlikeRegionOpt = typer.Option(None, "--unlike-region", help="REF:N: a region you do not want (repeatable).")
LabelsOpt = typer.Option(
    None, "--labels", help="Add the marks of a labels file (labels export, or the map page) as examples."
)
BboxOpt = typer.Option(None, "--bbox", help="minlon,minlat,maxlon,maxlat (WGS84).")
SceneOpt = typer.Option(None, "--scene", help="Only these scene ids (repeatable).")
AfterOpt = typer.Option(
    None, "--after", help="Only scenes acquired at or after this time (ISO 8601, e.g. 2024-05-01; UTC if no zone)."
)
BeforeOpt = typer.Option(
    None, "--before", help="Only scenes acquired before this time. A time range leaves out scenes without a time."
)


OutOpt = typer.Option(
    None, "--out", "-o", help="Write the results to this file; its extension picks the format: .geojson, "
    ".parquet (GeoParquet) or .csv.", show_default=False,
)
AoiOpt = typer.Option(
    None, "--aoi", help="Only tiles intersecting this area: a GeoJSON Polygon, MultiPolygon, Feature or "
    "FeatureCollection file (WGS84).", show_default=False,
)


def _read_aoi(path: Optional[Path]) -> Optional[dict[str, Any]]:
    """An ``--aoi`` file's GeoJSON, checked (:mod:`ftfsearch.area`), or None."""
    if path is None:
        return None
    from ftfsearch.area import read_area
    from ftfsearch.commands.requests import checked_aoi

    return checked_aoi(read_area(path))


def _example_refs(
    like: Optional[list[str]], unlike: Optional[list[str]],
    like_region: Optional[list[str]], unlike_region: Optional[list[str]],
) -> list[Any]:
    from ftfsearch.records import parse_ref

    given = (("like", like), ("unlike", unlike), ("like_region", like_region), ("unlike_region", unlike_region))
    return [parse_ref(v, param) for param, values in given for v in values or ()]


def _query_refs(
    like: Optional[list[str]], unlike: Optional[list[str]], like_region: Optional[list[str]],
    unlike_region: Optional[list[str]], labels: Optional[Path], text: Optional[str],
) -> tuple[list[Any], Optional[str]]:
    """The examples of the flags and of ``--labels``, and the text (the labels' query when none is given)."""
    refs = _example_refs(like, unlike, like_region, unlike_region)
    if labels is None:
        return refs, text
    from ftfsearch.labels import read_labels

    marks = read_labels(labels)
    return refs + marks.refs(), text if text is not None else marks.query


def _print_whole(table: Table, *shrinkable: str) -> None:
    """Print ``table``; in a narrow terminal only the ``shrinkable`` columns (names, times) are cut,
    never a rank, a score or a coordinate (rich shortens every column otherwise)."""
    from rich.cells import cell_len

    for column in table.columns:
        if column.header not in shrinkable:
            column.min_width = max([cell_len(str(column.header))] + [cell_len(str(c)) for c in column.cells])
    out.print(table)


@app.command()
@handles_errors
def query(
    text: Optional[str] = typer.Argument(None, help="What to look for, in plain words (optional with --like)."),
    like: Optional[list[str]] = LikeOpt,
    unlike: Optional[list[str]] = UnlikeOpt,
    like_region: Optional[list[str]] = LikeRegionOpt,
    unlike_region: Optional[list[str]] = UnlikeRegionOpt,
    labels: Optional[Path] = LabelsOpt,
    k: int = typer.Option(10, "--k", help="Number of results."),
    recall_k: int = typer.Option(100, "--recall-k", help="Candidates recalled for the rerank."),
    no_rerank: bool = typer.Option(False, "--no-rerank", help="Return the coarse recall order."),
    bbox: Optional[str] = BboxOpt,
    aoi: Optional[Path] = AoiOpt,
    scene: Optional[list[str]] = SceneOpt,
    after: Optional[str] = AfterOpt,
    before: Optional[str] = BeforeOpt,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array of results."),
    geojson: Optional[Path] = typer.Option(None, "--geojson", help="Write result footprints as GeoJSON."),
    out_file: Optional[Path] = OutOpt,
    chips: Optional[Path] = typer.Option(
        None, "--chips", help="Write a PNG of each result, matched region outlined, into this directory."
    ),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
    model: Optional[str] = ModelOpt,
    device: Optional[str] = QueryDeviceOpt,
) -> None:
    """Search the ingested tiles by text, by example, or both: recall on coarse vectors, then rerank with the regions."""
    from ftfsearch.commands import SearchRequest

    settings = _settings(store_dir=store, qdrant_url=qdrant_url, collection=collection, model=model, device=device)
    refs, text = _query_refs(like, unlike, like_region, unlike_region, labels, text)
    if out_file is not None:
        from ftfsearch.writers import output_format

        output_format(out_file)  # a bad extension is refused before the search
    request = SearchRequest.model_validate({  # checked here, before a model loads or the store opens
        "text": text, "examples": tuple(refs), "k": k, "recall_k": recall_k, "rerank": not no_rerank, "bbox": bbox,
        "aoi": _read_aoi(aoi), "scenes": tuple(scene or ()), "after": after, "before": before, "with_bands": chips is not None,
    })
    _single_thread_queries()
    response = _commands(settings).search(request)  # the model loads only now, after every check
    title = " ".join(
        [repr(text)] * (text is not None)
        + [f"+{sum(r.positive for r in refs)} like"] * any(r.positive for r in refs)
        + [f"-{sum(not r.positive for r in refs)} unlike"] * any(not r.positive for r in refs)
    )
    for warning in response.warnings:
        err.print(Text(f"warning: {warning}"), highlight=False)
    if geojson is not None:
        from ftfsearch.export import write_geojson

        n = write_geojson(response.results, geojson, query=title)
        err.print(f"wrote {n} features to {geojson}", highlight=False)
    if out_file is not None:
        from ftfsearch.writers import RESULT_COLUMNS, open_writer, result_rows

        with open_writer(out_file, RESULT_COLUMNS, members={"query": title}) as writer:
            writer.write(result_rows(response.results))
        err.print(f"wrote {writer.count} results to {out_file}", highlight=False)
    if chips is not None:
        from ftfsearch.chips import write_chips

        written = write_chips(response.results, chips, response.bands)
        for message in written.skipped:
            err.print(Text(f"warning: no chip for {message}"), highlight=False)
        err.print(f"wrote {len(written.paths)} chips to {chips}", highlight=False)
    if as_json:
        from ftfsearch.export import results_to_json

        out.print_json(json.dumps(results_to_json(response.results)))
        return
    if not response.results:
        err.print("no tiles matched (is the bbox, time or scene filter too narrow?)")
        return
    table = Table(title=title, title_justify="left")
    timed = any(r.acquired for r in response.results)
    for col in ("#", "score", "coarse", "scene", "level", "window col,row,w,h", "bbox W,S,E,N",
                "region x0,y0,x1,y1") + ("acquired",) * timed:
        table.add_column(col, no_wrap=True)
    for r in response.results:
        w = r.window
        table.add_row(
            str(r.rank),
            f"{r.score:.4f}",
            f"{r.coarse_score:.4f}",
            r.scene_id,
            str(r.level),
            f"{w.get('col')},{w.get('row')},{w.get('width')},{w.get('height')}",
            "no CRS" if r.bbox is None else ",".join(f"{v:.4f}" for v in r.bbox),
            "-" if r.region is None else ",".join(f"{v:.2f}" for v in r.region),
            *([r.acquired or "-"] * timed),
        )
    _print_whole(table, "scene", "acquired")
    t = response.timings_ms
    err.print(", ".join(f"{stage} {ms:.1f} ms" for stage, ms in t.items()) + f" on {response.device}", highlight=False)


@app.command()
@handles_errors
def find(
    text: Optional[str] = typer.Argument(None, help="What to look for, in plain words (optional with --like)."),
    like: Optional[list[str]] = LikeOpt,
    unlike: Optional[list[str]] = UnlikeOpt,
    like_region: Optional[list[str]] = LikeRegionOpt,
    unlike_region: Optional[list[str]] = UnlikeRegionOpt,
    labels: Optional[Path] = LabelsOpt,
    bbox: Optional[str] = BboxOpt,
    aoi: Optional[Path] = AoiOpt,
    scene: Optional[list[str]] = SceneOpt,
    after: Optional[str] = AfterOpt,
    before: Optional[str] = BeforeOpt,
    min_score: Optional[float] = typer.Option(
        None, "--min-score", help="Keep tiles whose coarse score (cosine, -1..1) is at least this. Default: the "
        "median plus 4 robust standard deviations (1.4826 x MAD) of the scores of a sample of up to 4096 tiles "
        "in scope, i.e. the tiles that stand out from the typical one; the chosen value is printed.",
        show_default=False,
    ),
    max_hits: int = typer.Option(1_000_000, "--max-hits", help="Refuse a find estimated to return more tiles."),
    out_file: Path = typer.Option(..., "--out", "-o", help="Write every hit to this file: .geojson, .parquet "
                                  "(GeoParquet) or .csv, page by page; nothing is left behind on an error."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
    model: Optional[str] = ModelOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Every tile above a threshold in the area, scenes and time range (no k): score and matched region, to a file."""
    from ftfsearch.commands import FindPage, FindPlan, FindRequest
    from ftfsearch.writers import RESULT_COLUMNS, open_writer, output_format, result_rows

    output_format(out_file)
    settings = _settings(store_dir=store, qdrant_url=qdrant_url, collection=collection, model=model, device=device)
    refs, text = _query_refs(like, unlike, like_region, unlike_region, labels, text)
    request = FindRequest.model_validate({
        "text": text, "examples": tuple(refs), "bbox": bbox, "aoi": _read_aoi(aoi), "scenes": tuple(scene or ()),
        "after": after, "before": before, "min_score": min_score, "max_hits": max_hits,
    })
    _single_thread_queries()
    items = _commands(settings).find(request)
    plan = next(items)
    assert isinstance(plan, FindPlan)
    for warning in plan.warnings:
        err.print(Text(f"warning: {warning}"), highlight=False)
    err.print(f"threshold {plan.threshold:.4f} ({plan.threshold_source}); about {plan.estimated:,} of "
              f"{plan.scope:,} tiles in scope", highlight=False)
    with open_writer(out_file, RESULT_COLUMNS, members={"query": text, "threshold": plan.threshold}) as writer:
        for page in items:
            assert isinstance(page, FindPage)
            writer.write(result_rows(page.results))
    err.print(f"wrote {writer.count:,} tiles to {out_file}", highlight=False)


@app.command()
@handles_errors
def classify(
    labels: Path = typer.Option(..., "--labels", help="The marks to learn from: a labels GeoJSON file (labels "
                                "export, or the map page); at least 3 hits, misses optional."),
    bbox: Optional[str] = BboxOpt,
    aoi: Optional[Path] = AoiOpt,
    scene: Optional[list[str]] = SceneOpt,
    after: Optional[str] = AfterOpt,
    before: Optional[str] = BeforeOpt,
    min_probability: float = typer.Option(0.5, "--min-probability", help="A detection: a tile the model gives "
                                          "at least this probability."),
    out_file: Path = typer.Option(..., "--out", "-o", help="Write the detections to this file: .parquet "
                                  "(GeoParquet), .geojson or .csv."),
    objects: Optional[Path] = typer.Option(None, "--objects", help="Also write touching detections merged into "
                                           "polygons, with their area in m2 (.parquet, .geojson or .csv)."),
    estimate: bool = typer.Option(False, "--estimate", help="Also estimate how many tiles (and merged objects) "
                                  "in the area are hits, with a 95% interval, from the review answers in --labels "
                                  "(ftfsearch review writes them); the area defaults to the review's."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary: quality, detections, estimate."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
) -> None:
    """Train a classifier on marked tiles (logistic regression on their stored vectors, background negatives from the collection) and score every tile in scope."""
    import json as json_

    from ftfsearch.commands import ClassifyPage, ClassifyPlan, ClassifyRequest
    from ftfsearch.writers import open_writer, output_format

    output_format(out_file)
    if objects is not None:
        output_format(objects, "objects")
    try:
        marks = json_.loads(labels.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json_.JSONDecodeError) as exc:
        _fail(f"--labels {str(labels)!r}: cannot be read as GeoJSON ({exc})", 2)
    request = ClassifyRequest.model_validate({
        "labels": marks, "bbox": bbox, "aoi": _read_aoi(aoi), "scenes": tuple(scene or ()), "after": after,
        "before": before, "min_probability": min_probability, "estimate": estimate,
    })
    items = _commands(_settings(store_dir=store, qdrant_url=qdrant_url, collection=collection)).classify(request)
    plan = next(items)
    assert isinstance(plan, ClassifyPlan)
    merge = objects is not None or estimate
    err.print(f"trained on {plan.positives} hits, {plan.negatives} misses and {plan.background} background tiles "
              f"in {plan.train_ms:.0f} ms; {plan.folds}-fold cross-validated precision {plan.precision:.2f}, "
              f"recall {plan.recall:.2f}", highlight=False)
    from ftfsearch.writers import DETECTION_COLUMNS, Row, detection_rows

    footprints = []
    with open_writer(out_file, DETECTION_COLUMNS) as writer:
        for page in items:
            assert isinstance(page, ClassifyPage)
            rows = detection_rows(page.detections)
            if merge:
                footprints += [r.geometry for r in rows if r.geometry is not None]
            writer.write(rows)
    err.print(f"{writer.count:,} of {plan.scope:,} tiles in scope detected; wrote {out_file}", highlight=False)
    from ftfsearch.classify import merge_footprints

    merged = merge_footprints(footprints) if merge else []
    if objects is not None:
        with open_writer(objects, {"area_m2": "float", "tiles": "int"}, ("Polygon",), param="objects") as w:
            w.write([Row(geometry, {"area_m2": area, "tiles": tiles}) for geometry, area, tiles in merged])
        total = sum(a for _, a, _ in merged)
        err.print(f"{len(merged):,} objects ({total:,.0f} m2 in all); wrote {objects}", highlight=False)
    counts = None
    if plan.estimate is not None:
        from ftfsearch.estimate import Estimate

        tiles = Estimate(plan.estimate.count, plan.estimate.low, plan.estimate.high, plan.estimate.reviewed)
        in_objects = tiles.scaled(len(merged) / len(footprints)) if footprints else None
        counts = {"tiles": {**plan.estimate.model_dump(), "text": str(tiles)},
                  "objects": None if in_objects is None else {**_estimate_json(in_objects), "text": str(in_objects)}}
        if not as_json:
            out.print(f"hit tiles {tiles}", highlight=False)
            if in_objects is not None:
                out.print(f"objects {in_objects} ({len(merged):,} merged detections per {len(footprints):,} tiles "
                          "applied to the tile count)", highlight=False)
    if as_json:
        out.print_json(json.dumps({"quality": plan.model_dump(exclude={"estimate"}), "detections": writer.count,
                                   "objects": len(merged) if merge else None, "estimate": counts}))


def _estimate_json(est: Any) -> dict[str, Any]:
    return {"count": round(est.count, 2), "low": round(est.low, 2), "high": round(est.high, 2),
            "reviewed": est.reviewed}


ANSWER_WORDS = {"y": True, "yes": True, "n": False, "no": False, "s": None, "skip": None}


def _parse_answer(value: str) -> dict[str, Any]:
    """``TILE=y|n|s`` -> a review answer."""
    from ftfsearch.errors import BadInput

    tile, sep, word = value.rpartition("=")
    if not sep or word.strip().lower() not in ANSWER_WORDS:
        raise BadInput(f"`answer` {value[:80]!r}: expected TILE=y (a hit), TILE=n (a miss) or TILE=s (skip)")
    return {"id": tile.strip(), "hit": ANSWER_WORDS[word.strip().lower()]}


def _show_item(item: Any) -> None:
    kind = ("random draw of stratum " + str(item.stratum)) if item.kind == "estimate" else "least sure"
    box_ = "no CRS" if item.bbox is None else ",".join(f"{v:.5f}" for v in item.bbox)
    w = item.window
    out.print(f"check tile {item.id} ({kind}; p {item.probability:.2f}) scene {item.scene_id} level {item.level} "
              f"window {w.get('col')},{w.get('row')},{w.get('width')},{w.get('height')} bbox {box_}", highlight=False)


@app.command()
@handles_errors
def review(
    path: Path = typer.Argument(..., help="The review file: a labels GeoJSON that holds the marks, the answers and "
                                "the sampling design; rewritten in place after every answer."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Start a new review file from these marks "
                                          "(at least 3 hits); without it, PATH is continued (or, a plain labels "
                                          "file, started)."),
    answer: Optional[list[str]] = typer.Option(None, "--answer", help="TILE=y (a hit), TILE=n (a miss) or TILE=s "
                                               "(cannot tell); repeatable. Without it, on a terminal, the tiles "
                                               "are asked one by one."),
    bbox: Optional[str] = typer.Option(None, "--bbox", help="Review scope when starting: minlon,minlat,maxlon,maxlat."),
    aoi: Optional[Path] = AoiOpt,
    scene: Optional[list[str]] = typer.Option(None, "--scene", help="Only these scene ids (repeatable)."),
    after: Optional[str] = typer.Option(None, "--after", help="Only scenes acquired at or after this time (ISO 8601)."),
    before: Optional[str] = typer.Option(None, "--before", help="Only scenes acquired before this time."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the random draws when starting (recorded)."),
    cross_validate: bool = typer.Option(False, "--cross-validate", help="Cross-validate the classifier now "
                                        "(otherwise every 10 marks; each answer refits it)."),
    as_json: bool = typer.Option(False, "--json", help="Print the next tile, the estimate and the strata as JSON "
                                 "(never asks)."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
) -> None:
    """Check tiles one by one (y/n): random draws across score strata for the count, and the tiles the classifier is least sure of; every answer retrains it."""
    from ftfsearch.commands import ReviewRequest
    from ftfsearch.labels import write_labels

    if labels is not None and path.exists():
        _fail(f"--labels: {str(path)!r} exists; name a new review file, or drop --labels to continue it", 2)
    source = labels if labels is not None else path
    try:
        content = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        what = "--labels" if labels is not None else "review file"
        hint = "" if labels is not None or path.exists() else "; start one with --labels MARKS.geojson"
        _fail(f"{what} {str(source)!r}: cannot be read as GeoJSON ({getattr(exc, 'strerror', None) or exc}){hint}", 2)
    answers = [_parse_answer(a) for a in answer or ()]
    scope = {"bbox": bbox, "aoi": _read_aoi(aoi), "scenes": tuple(scene or ()), "after": after, "before": before}
    request = ReviewRequest.model_validate({"labels": content, "answers": answers, "seed": seed,
                                            "cross_validate": cross_validate, **scope})
    commands = _commands(_settings(store_dir=store, qdrant_url=qdrant_url, collection=collection))
    interactive = not answer and not as_json and sys.stdin.isatty()
    while True:
        outcome = commands.review(request)
        write_labels(path, outcome.labels, "path")
        if as_json:
            out.print_json(json.dumps(outcome.model_dump(mode="json", exclude={"labels"})))
            return
        q = outcome.quality
        marks = q.positives + q.negatives
        fresh = "now" if q.validated_marks in (None, marks) else f"at {q.validated_marks} marks, now {marks}"
        err.print(f"retrained on {q.positives} hits, {q.negatives} misses in {q.train_ms:.0f} ms; cross-validated "
                  f"({fresh}) precision {q.precision:.2f}, recall {q.recall:.2f}", highlight=False)
        out.print(f"hit tiles {outcome.estimate.text} of {q.scope:,} in scope", highlight=False)
        if outcome.item is None:
            out.print("nothing left to check", highlight=False)
            return
        _show_item(outcome.item)
        if not interactive:
            err.print(f"answer with: ftfsearch review {path} --answer {outcome.item.id}=y (or =n, =s)", highlight=False)
            return
        reply = ""
        while reply not in ANSWER_WORDS and reply != "q":
            reply = typer.prompt("a hit? [y]es / [n]o / [s]kip / [q]uit", default="q", show_default=False,
                                 err=True).strip().lower()
        if reply == "q":
            err.print(f"saved in {path}; continue with: ftfsearch review {path}", highlight=False)
            return
        request = ReviewRequest.model_validate({"labels": outcome.labels,
                                                "answers": [{"id": outcome.item.id, "hit": ANSWER_WORDS[reply]}]})


@app.command()
@handles_errors
def change(
    text: Optional[str] = typer.Argument(
        None, help="What appeared (or disappeared), in plain words; none ranks places by how much they changed."),
    before: str = typer.Option(..., "--before", help="The earlier range, ISO 8601 START/END, either end '..' "
                               "(e.g. 2009-01-01/2010-01-01)."),
    after: str = typer.Option(..., "--after", help="The later range, START/END (e.g. 2020-01-01/..)."),
    like: Optional[list[str]] = LikeOpt,
    unlike: Optional[list[str]] = UnlikeOpt,
    like_region: Optional[list[str]] = LikeRegionOpt,
    unlike_region: Optional[list[str]] = UnlikeRegionOpt,
    disappeared: bool = typer.Option(False, "--disappeared", help="Rank by how much the score fell, not rose."),
    k: int = typer.Option(10, "--k", help="Number of places."),
    bbox: Optional[str] = BboxOpt,
    aoi: Optional[Path] = AoiOpt,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array of places, both tiles each."),
    geojson: Optional[Path] = typer.Option(
        None, "--geojson", help="Write the later tile of each place as GeoJSON (its rank and score)."),
    chips: Optional[Path] = typer.Option(
        None, "--chips", help="Write a before/after PNG of each place, matched regions outlined, into this directory."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
    model: Optional[str] = ModelOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """What changed between two dates: places covered in both ranges, ranked by the rise of the query's score,
    or without a query by how far their vectors moved."""
    from ftfsearch.commands import ChangeRequest

    settings = _settings(store_dir=store, qdrant_url=qdrant_url, collection=collection, model=model, device=device)
    refs = _example_refs(like, unlike, like_region, unlike_region)
    request = ChangeRequest.model_validate({  # checked here, before a model loads or the store opens
        "text": text, "examples": tuple(refs), "k": k, "bbox": bbox, "before": before, "after": after,
        "disappeared": disappeared, "aoi": _read_aoi(aoi),
    })
    _single_thread_queries()
    response = _commands(settings).change(request)
    for warning in response.warnings:
        err.print(Text(f"warning: {warning}"), highlight=False)
    if geojson is not None:
        from ftfsearch.export import write_geojson

        n = write_geojson([h.after for h in response.hits], geojson, query=f"change {text or 'any'}")
        err.print(f"wrote {n} features to {geojson}", highlight=False)
    if chips is not None:
        from ftfsearch.chips import write_pair_chips

        pairs = write_pair_chips([(h.rank, h.before, h.after) for h in response.hits], chips)
        for message in pairs.skipped:
            err.print(Text(f"warning: no chip for {message}"), highlight=False)
        err.print(f"wrote {len(pairs.paths)} before/after chips to {chips}", highlight=False)
    if as_json:
        out.print_json(json.dumps([h.to_dict() for h in response.hits]))
        return
    scored = bool(response.hits) and response.hits[0].scored
    table = Table(title=f"change {text!r}" if text else "change (vectors moved)", title_justify="left")
    for col in ("#", "rise" if scored and not disappeared else "fall" if scored else "moved",
                *(("before", "after") if scored else ()), "before scene", "acquired", "after scene", "acquired",
                "level", "bbox W,S,E,N", "region"):
        table.add_column(col, no_wrap=True)
    for h in response.hits:
        b, a = h.before, h.after
        table.add_row(
            str(h.rank), f"{h.change:.4f}", *((f"{b.score:.4f}", f"{a.score:.4f}") if scored else ()),
            b.scene_id, b.acquired or "-", a.scene_id, a.acquired or "-", str(a.level),
            "no CRS" if a.bbox is None else ",".join(f"{v:.4f}" for v in a.bbox),
            "-" if a.region is None else ",".join(f"{v:.2f}" for v in a.region),
        )
    _print_whole(table, "before scene", "after scene", "acquired")
    err.print(", ".join(f"{stage} {ms:.1f} ms" for stage, ms in response.timings_ms.items()), highlight=False)


# watch -------------------------------------------------------------------------------------------
watch_app = typer.Typer(help="Standing queries: every ingest scores the tiles it writes against them and "
                        "records the hits (and POSTs them to a webhook).")
app.add_typer(watch_app, name="watch")


@watch_app.command("add")
@handles_errors
def watch_add(
    name: str = typer.Argument(..., help="The watch's name (letters, digits, '.', '_', '-')."),
    text: Optional[str] = typer.Argument(None, help="What to watch for, in plain words (optional with --like)."),
    like: Optional[list[str]] = LikeOpt,
    unlike: Optional[list[str]] = UnlikeOpt,
    like_region: Optional[list[str]] = LikeRegionOpt,
    unlike_region: Optional[list[str]] = UnlikeRegionOpt,
    labels: Optional[Path] = LabelsOpt,
    aoi: Optional[Path] = AoiOpt,
    min_score: Optional[float] = typer.Option(
        None, "--min-score", help="Fire at this two-stage score or above (the score 'query' ranks by and prints, "
        "not find's coarse one). Default: just above the best score of the stored tiles in the watch's area (a "
        "sample of up to 4096), so it fires on a new tile that matches better than any stored one; the chosen "
        "value is printed.", show_default=False),
    webhook: Optional[str] = typer.Option(None, "--webhook", help="POST new hits to this http(s) URL as GeoJSON."),
    as_json: bool = typer.Option(False, "--json", help="Print the watch as JSON."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
    model: Optional[str] = ModelOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Add a standing query: the tiles every later ingest writes are scored against it as they are written."""
    from ftfsearch.commands import WatchAddRequest

    settings = _settings(store_dir=store, qdrant_url=qdrant_url, collection=collection, model=model, device=device)
    refs, text = _query_refs(like, unlike, like_region, unlike_region, labels, text)
    request = WatchAddRequest.model_validate({
        "name": name, "text": text, "examples": tuple(refs), "aoi": _read_aoi(aoi), "min_score": min_score,
        "webhook": webhook})
    row = _commands(settings).watch_add(request)
    if as_json:
        out.print_json(row.model_dump_json())
        return
    err.print(f"watch {row.name!r} added: {row.query}, fires at score >= {row.min_score:.4f} "
              f"({row.threshold_source})" + (f", POSTs hits to {row.webhook}" if row.webhook else ""), highlight=False)


@watch_app.command("list")
@handles_errors
def watch_list(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
) -> None:
    """The watches, their thresholds and how many hits each has (and owes its webhook)."""
    from ftfsearch.commands import WatchListRequest

    rows = _commands(_settings(store_dir=store, qdrant_url=qdrant_url, collection=collection)).watch_list(
        WatchListRequest())
    if as_json:
        out.print_json(json.dumps([r.model_dump(mode="json") for r in rows]))
        return
    table = Table("name", "query", "min score", "area", "webhook", "hits", "pending", "created")
    for r in rows:
        table.add_row(r.name, r.query, f"{r.min_score:.4f}", "yes" if r.aoi else "-", r.webhook or "-", str(r.hits),
                      str(r.pending), r.created)
    out.print(table)


@watch_app.command("rm")
@handles_errors
def watch_rm(
    name: str = typer.Argument(..., help="The watch to remove (with its hits)."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
) -> None:
    """Remove a watch and its hits."""
    from ftfsearch.commands import WatchRmRequest

    request = WatchRmRequest(name=name)
    done = _commands(_settings(store_dir=store, qdrant_url=qdrant_url, collection=collection)).watch_rm(request)
    err.print(f"watch {done.name!r} removed with {done.hits_removed} hits", highlight=False)


@watch_app.command("hits")
@handles_errors
def watch_hits(
    name: str = typer.Argument(..., help="The watch."),
    since: Optional[str] = typer.Option(None, "--since", help="Only hits found at or after this time (ISO 8601)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array of hits."),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the hits as GeoJSON to this file."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
) -> None:
    """A watch's hits, newest first: the tile, its scene and time, its score and matched region."""
    from ftfsearch.commands import WatchHitsRequest
    from ftfsearch.errors import BadInput
    from ftfsearch.watch import hits_geojson

    if out_file is not None and out_file.suffix.lower() not in (".geojson", ".json"):
        raise BadInput(f"`out` {out_file}: watch hits are written as GeoJSON; name a .geojson file")
    request = WatchHitsRequest.model_validate({"name": name, "since": since})
    found = _commands(_settings(store_dir=store, qdrant_url=qdrant_url, collection=collection)).watch_hits(request)
    if out_file is not None:
        tmp = out_file.with_name(out_file.name + ".tmp")
        try:
            tmp.write_text(json.dumps(hits_geojson(found.hits)), encoding="utf-8")
            tmp.replace(out_file)
        except OSError as exc:
            raise BadInput(f"`out` {out_file}: cannot write it ({exc.strerror})") from exc
        err.print(f"wrote {len(found.hits)} hits to {out_file}", highlight=False)
    if as_json:
        out.print_json(json.dumps([h.to_payload() for h in found.hits]))
        return
    table = Table("found", "score", "scene", "acquired", "level", "window col,row,w,h", "bbox W,S,E,N", "delivery",
                  title=f"watch {found.watch.name!r}: {found.watch.query}", title_justify="left")
    for h in found.hits:
        w = h.window
        delivery = ("pending" + (f" ({h.last_error})" if h.last_error else "")) if h.pending else \
            (h.delivered_at or "-")
        table.add_row(h.found_at, f"{h.score:.4f}", h.scene_id, h.acquired or "-", str(h.level),
                      f"{w.get('col')},{w.get('row')},{w.get('width')},{w.get('height')}",
                      "no CRS" if h.bbox is None else ",".join(f"{v:.4f}" for v in h.bbox), delivery)
    out.print(table)


@watch_app.command("deliver")
@handles_errors
def watch_deliver(
    name: Optional[str] = typer.Argument(None, help="Only this watch's hits (default: every watch's)."),
    timeout: float = typer.Option(5.0, "--timeout", help="Seconds to wait for a webhook's answer."),
    tries: int = typer.Option(3, "--tries", help="Tries per POST (waiting 1, 2, 4 ... s between)."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
) -> None:
    """POST the hits their webhooks are still owed (ingest sends new ones itself; run this from cron too)."""
    from ftfsearch.commands import WatchDeliverRequest

    request = WatchDeliverRequest.model_validate({"name": name, "timeout": timeout, "tries": tries})
    report = _commands(_settings(store_dir=store, qdrant_url=qdrant_url, collection=collection)).watch_deliver(
        request)
    err.print(f"delivered {report.delivered} hits, {report.failed} still pending", highlight=False)
    for watch, why in report.errors.items():
        err.print(Text(f"warning: watch {watch!r}: {why}"), highlight=False)
    if report.failed:
        raise typer.Exit(code=1)


# labels ------------------------------------------------------------------------------------------
labels_app = typer.Typer(help="Marked tiles (hits and misses) as GeoJSON: for a later search, a detector or QGIS.")
app.add_typer(labels_app, name="labels")


@labels_app.command("export")
@handles_errors
def labels_export(
    text: Optional[str] = typer.Argument(None, help="The query the marks belong to (recorded in the file)."),
    like: Optional[list[str]] = typer.Option(None, "--like", help="A hit: tile id or point lon,lat (repeatable)."),
    unlike: Optional[list[str]] = typer.Option(None, "--unlike", help="A miss: tile id or point lon,lat (repeatable)."),
    like_region: Optional[list[str]] = LikeRegionOpt,
    unlike_region: Optional[list[str]] = UnlikeRegionOpt,
    output: Path = typer.Option(..., "--output", "-o", help="GeoJSON file to write."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
) -> None:
    """Write marked tiles as a GeoJSON FeatureCollection with label positive|negative."""
    from ftfsearch.commands import MarksRequest
    from ftfsearch.labels import write_labels

    settings = _settings(store_dir=store, qdrant_url=qdrant_url, collection=collection)
    refs = _example_refs(like, unlike, like_region, unlike_region)
    if not refs:
        _fail("give the marked tiles with --like and --unlike", 2)
    collection_json = _commands(settings).labels(MarksRequest(examples=tuple(refs), query=text))
    write_labels(output, collection_json)
    err.print(f"wrote {len(collection_json['features'])} labels to {output}", highlight=False)


@labels_app.command("import")
@handles_errors
def labels_import(
    path: Path = typer.Argument(..., help="A labels GeoJSON file (labels export, or the map page's export)."),
    as_json: bool = typer.Option(False, "--json", help="Print the marks as JSON."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
) -> None:
    """Check a labels file against the store and list its marks; 'query --labels FILE' searches with them."""
    from ftfsearch.commands import MarksRequest
    from ftfsearch.labels import read_labels

    marks = read_labels(path)
    settings = _settings(store_dir=store, qdrant_url=qdrant_url, collection=collection)
    checked = _commands(settings).labels(MarksRequest(examples=tuple(marks.refs()), query=marks.query))
    rows = [f["properties"] for f in checked["features"]]
    if as_json:
        out.print_json(json.dumps({"query": marks.query, "model_id": marks.model_id, "labels": rows}))
        return
    table = Table(title=f"{len(rows)} labels" + (f" for {marks.query!r}" if marks.query else ""), title_justify="left")
    for col in ("label", "id", "region", "scene", "level", "window"):
        table.add_column(col, no_wrap=True)
    for p in rows:
        table.add_row(p["label"], p["id"], "-" if p["region"] is None else str(p["region"]), str(p["scene_id"]),
                      str(p["level"]), str(p["window"]))
    out.print(table)
    err.print(f"search with them: ftfsearch query --labels {path}", highlight=False)


# scenes, drop, info ------------------------------------------------------------------------------
@app.command()
@handles_errors
def scenes(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
) -> None:
    """List scenes with their tile counts (counted in the store) and state."""
    from ftfsearch.commands import ScenesRequest

    settings = _settings(store_dir=store, qdrant_url=qdrant_url, collection=collection)
    rows = [row.to_dict() for row in _commands(settings).scenes(ScenesRequest())]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    timed = any(row.get("acquired") for row in rows)
    stac = any(row.get("stac") for row in rows)
    table = Table()
    for col in ("scene_id", "tiles", "state") + ("acquired",) * timed + ("stac item",) * stac + ("path",):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(row["scene_id"], str(row["tiles"]), row["state"], *[row.get("acquired") or "-"] * timed,
                      *[_stac_summary(row.get("stac"))] * stac, row["path"])
    out.print(table)


def _stac_summary(stac: Optional[dict[str, Any]]) -> str:
    """``collection/item, cloud 12.5%, gsd 10 m, sentinel-2b`` of a STAC scene's stored properties."""
    if not stac:
        return "-"
    parts = ["/".join(str(v) for v in (stac.get("collection"), stac.get("item")) if v)]
    if stac.get("cloud_cover") is not None:
        parts.append(f"cloud {stac['cloud_cover']}%")
    if stac.get("gsd") is not None:
        parts.append(f"gsd {stac['gsd']} m")
    parts += [str(stac[k]) for k in ("platform", "constellation") if stac.get(k)]
    return ", ".join(parts)


@app.command()
@handles_errors
def drop(
    scene_id: str = typer.Argument(..., help="Scene id to remove with all its tiles."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
) -> None:
    """Remove a scene and its tiles."""
    from ftfsearch.commands import DropRequest

    settings = _settings(store_dir=store, qdrant_url=qdrant_url, collection=collection)
    removed = _commands(settings).drop(DropRequest(scene_id=scene_id)).removed
    err.print(f"dropped {scene_id}: {removed} tiles removed", highlight=False)


@app.command()
@handles_errors
def info(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
) -> None:
    """Show the store, the collection, its model and counts (never the API key)."""
    from ftfsearch.commands import InfoRequest

    settings = _settings(store_dir=store, qdrant_url=qdrant_url, collection=collection)
    data: dict[str, Any] = _commands(settings).info(InfoRequest())
    if as_json:
        out.print_json(json.dumps(data, default=str))
        return
    out.print(_info_table(data))


def _info_table(data: dict[str, Any]) -> Table:
    """``info`` for a person: the model and the vector layout in words, nested values as ``k=v``."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", justify="right", no_wrap=True)
    table.add_column(overflow="fold")
    rest = dict(data)
    meta = rest.pop("meta", None)
    for key, value in rest.items():
        shown = "yes" if value is True else "no" if value is False else value
        if isinstance(value, dict):
            shown = ", ".join(f"{k}={v}" for k, v in value.items())
        table.add_row(key.replace("_", " "), Text(str(shown)))
    if isinstance(meta, dict):
        table.add_row("model", Text(str(meta.get("model_id", "-"))))
        table.add_row("vectors", Text(f"{meta.get('dim')}-d coarse and {meta.get('num_regions')} regions "
                                      f"({meta.get('region_layout')}), schema {meta.get('schema_version')}"))
    elif "meta" in data:
        table.add_row("model", Text("none yet (nothing ingested)"))
    return table


@app.command("export-embeddings")
@handles_errors
def export_embeddings(
    out_path: Path = typer.Option(..., "-o", "--out", help="The GeoParquet file to write (.parquet)."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
) -> None:
    """Write every tile's vector and footprint as GeoParquet with STAC embeddings-extension metadata."""
    from ftfsearch.commands import ExportRequest

    settings = _settings(store_dir=store, qdrant_url=qdrant_url, collection=collection)
    n = _commands(settings).export_embeddings(ExportRequest(out=out_path)).tiles
    err.print(f"{out_path}: {n} tiles", highlight=False)


# push --------------------------------------------------------------------------------------------
@app.command()
@handles_errors
def push(
    to: str = typer.Option(
        ..., "--to", help="Where to copy to: a Qdrant server URL (key from QDRANT_API_KEY) or an embedded store directory."
    ),
    collection: Optional[str] = typer.Option(
        None, "--collection", help="Collection on the target (default: the source collection's name)."
    ),
    source_collection: Optional[str] = typer.Option(
        None, "--source-collection", help="Collection to copy (env FTF_COLLECTION; default tiles)."
    ),
    shards: Optional[int] = typer.Option(None, "--shards", help="Shards when creating a server collection."),
    replication_factor: Optional[int] = typer.Option(
        None, "--replication-factor", help="Replicas when creating a server collection."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = typer.Option(
        None, "--qdrant-url", help="Copy from this Qdrant server (default: the embedded store; QDRANT_URL is not read)."
    ),
) -> None:
    """Copy a store's collection into another store: a Qdrant server or an embedded store (resumable; counts verified)."""
    from ftfsearch.commands import PushRequest

    settings = _settings(store_dir=store, collection=source_collection).push_source(qdrant_url)
    request = PushRequest(to=to, collection=collection, shards=shards, replication_factor=replication_factor)
    _print_push(_commands(settings).push(request), as_json)


def _print_push(summary: Any, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(summary.to_dict()))
        return
    for s in summary.scenes:
        how = "already there" if s.skipped else f"{s.copied} copied, {s.already_there} already there"
        err.print(f"{s.scene_id}: {s.target_tiles} tiles ({how}), {s.state}", highlight=False)
    err.print(
        f"pushed {summary.source_tiles} tiles in {len(summary.scenes)} scenes to {summary.target} "
        f"(collection {summary.collection!r}), counts verified, in {summary.seconds:.1f} s",
        highlight=False,
    )


# serve -------------------------------------------------------------------------------------------
def _check_port_free(host: str, port: int) -> None:
    """Fail in one line before loading the model when the address cannot be bound."""
    import socket

    from ftfsearch.errors import BadInput

    if not 1 <= port <= 65535:
        raise BadInput(f"--port {port}: must be between 1 and 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BadInput(f"--host {host}: not an address of this machine ({exc.strerror})") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise BadInput(
                f"--host {host} --port {port}: cannot listen there ({exc.strerror}); pick another --port"
            ) from exc


@app.command()
@handles_errors
def serve(
    host: str = typer.Option(LOOPBACK_IP, "--host", help="Address to bind; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    cors_origin: Optional[list[str]] = typer.Option(
        None, "--cors-origin", help="Let pages of this origin call the API (repeatable); default: CORS off."
    ),
    basemap_url: Optional[str] = typer.Option(
        None, "--basemap-url", envvar="FTF_BASEMAP_URL",
        help="Tile URL template for a basemap, e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png (default: none, "
        "the page works offline with scene previews).",
    ),
    basemap_attribution: Optional[str] = typer.Option(
        None, "--basemap-attribution", envvar="FTF_BASEMAP_ATTRIBUTION", help="Attribution shown for the basemap."
    ),
    chip_cache_mb: int = typer.Option(64, "--chip-cache-mb", help="Memory for cached chips and previews, each (MiB)."),
    vector_cache_mb: int = typer.Option(
        256, "--vector-cache-mb", help="Memory for the vectors and payloads of recalled tiles, so repeat candidates are not fetched again (MiB; 0: off)."
    ),
    store: Optional[Path] = StoreOpt,
    qdrant_url: Optional[str] = UrlOpt,
    collection: Optional[str] = CollectionOpt,
    model: Optional[str] = ModelOpt,
    device: Optional[str] = DeviceOpt,
    keys: Optional[Path] = KeysOpt,
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth", help="Serve a non-loopback --host without --keys: anyone on the network reads and writes."
    ),
    rate_limit: str = typer.Option(DEFAULT_RATE_LIMIT, "--rate-limit", envvar="FTF_RATE_LIMIT",
                                   help="Requests per key with --keys, e.g. 1200/minute or 20/second;600/minute."),
    root_path: str = typer.Option("", "--root-path", envvar="FTF_ROOT_PATH",
                                  help="The path prefix a reverse proxy serves this under, e.g. /ftfsearch."),
    deliver_every: float = typer.Option(
        60.0, "--deliver-every", help="Seconds between sends of the watches' pending webhook hits while serving "
        "a store this server writes (0: never; 'watch deliver' sends them on demand)."),
) -> None:
    """Serve the HTTP API (/api/search, /api/scenes, /api/info, chips) and the map page at /."""
    from ftfsearch.errors import BadInput
    from ftfsearch.keys import parse_rate_limit, read_keys

    for option, value in (("--chip-cache-mb", chip_cache_mb), ("--vector-cache-mb", vector_cache_mb),
                          ("--deliver-every", deliver_every)):
        if not value >= 0:
            raise BadInput(f"{option} {value:g}: must be 0 or more")
    settings = _settings(store_dir=store, qdrant_url=qdrant_url, collection=collection, model=model, device=device)
    if keys is not None:
        read_keys(keys)  # a missing or broken file: one line now, not at the first request
        parse_rate_limit(rate_limit)
    elif host not in LOOPBACK_HOSTS and not insecure_no_auth:
        raise BadInput(f"--host {host}: without --keys the server has no authentication and binds loopback only; "
                       "make keys with 'ftfsearch keys add' and pass --keys, or say --insecure-no-auth")
    if host not in LOOPBACK_HOSTS:
        err.print(Text(
            f"warning: --host {host} " + ("answers in plain HTTP: put a TLS proxy in front (README: Serving a team)"
                                          if keys is not None else "makes the search, the scene file paths and their "
                                          "pixels reachable from the network without authentication")
        ), highlight=False)
    if root_path and (not root_path.startswith("/") or root_path.endswith("/")):
        raise BadInput(f"--root-path {root_path}: a path like /ftfsearch (a leading slash, none at the end)")
    _check_port_free(host, port)  # before the slow imports and the model load
    _single_thread_queries()

    import uvicorn

    from ftfsearch.web import ServeOptions, create_app
    from ftfsearch.web.holder import open_served

    options = ServeOptions(
        cors_origins=tuple(cors_origin or ()),
        basemap_url=basemap_url or None,
        basemap_attribution=basemap_attribution,
        chip_cache_bytes=chip_cache_mb << 20,
        preview_cache_bytes=chip_cache_mb << 20,
        vector_cache_bytes=vector_cache_mb << 20,
        keys_file=keys,
        rate_limit=rate_limit,
        deliver_every_s=deliver_every,
    )
    logging.getLogger("ftfsearch.audit").setLevel(logging.INFO)  # every write, in the server log
    logging.getLogger("ftfsearch.web.courier").setLevel(logging.INFO)  # hits a webhook was sent
    resources, empty = open_served(settings, options)
    if empty is not None:
        err.print(Text(f"warning: {_as_flags(empty)}"), highlight=False)
    shown = f"[{host}]" if ":" in host else host
    err.print(f"serving on http://{shown}:{port}/ (Ctrl+C stops)", highlight=False)
    verbose = logging.getLogger().getEffectiveLevel() <= logging.INFO
    uvicorn.run(
        create_app(settings, options, resources),
        host=host,
        port=port,
        root_path=root_path,
        log_level="info" if verbose else "warning",
        access_log=verbose,
    )


# keys --------------------------------------------------------------------------------------------
keys_app = typer.Typer(help="API keys of 'serve --keys': named, each with a role (read or write), stored hashed.")
app.add_typer(keys_app, name="keys")
KeysRequired = typer.Option(..., "--keys", envvar=KEYS_ENV, help=f"The keys file (env {KEYS_ENV}).")


@keys_app.command("add")
@handles_errors
def keys_add(
    name: str = typer.Argument(..., help="Who the key is for (letters, digits, _ . @ -)."),
    role: str = typer.Option("read", "--role", help="read: search, chips, scenes, labels; write: also drop."),
    keys: Path = KeysRequired,
) -> None:
    """Make a key; it is printed once, alone on the last line, and stored only as a hash."""
    from ftfsearch.keys import add_key

    key = add_key(keys, name, role)
    err.print(f"key {name!r} ({role}) added to {keys}; give it to its user now, it is not shown again:",
              highlight=False)
    print(key)


@keys_app.command("list")
@handles_errors
def keys_list(keys: Path = KeysRequired) -> None:
    """The keys' names, roles and when they were made (never the keys)."""
    from ftfsearch.keys import read_keys

    table = Table("name", "role", "created")
    for e in read_keys(keys):
        table.add_row(e.name, e.role, e.created)
    out.print(table)


@keys_app.command("rm")
@handles_errors
def keys_rm(name: str = typer.Argument(..., help="The key to revoke."), keys: Path = KeysRequired) -> None:
    """Revoke a key: a running 'serve --keys' refuses it within a few seconds."""
    from ftfsearch.keys import remove_key

    remove_key(keys, name)
    err.print(f"key {name!r} removed from {keys}", highlight=False)


# train, eval -------------------------------------------------------------------------------------
def _by_family(field: str) -> str:
    """`` (default: 0.001 pretrained, 0.002 scratch).``: a ``train`` flag's defaults, from the families' table."""
    given = [(f.name, getattr(f.train, field)) for f in FAMILIES.values() if getattr(f.train, field) is not None]
    return " (default: " + ", ".join(f"{value:g} {name}" for name, value in given) + ")."


@app.command()
@handles_errors
def train(
    data: list[Path] = typer.Option(..., "--data", help="Caption dataset json (dataset_*.json layout); repeatable."),
    out_dir: Path = typer.Option(..., "--out", help="Directory to write the trained model to."),
    images: Optional[list[Path]] = typer.Option(
        None, "--images", help="Image folder per --data, in the same order (default: images/ beside the json)."
    ),
    base: Optional[str] = typer.Option(None, "--base", help="Fine-tune this CLIP model instead of training FTF."),
    arch: str = typer.Option(DEFAULT_FAMILY, "--arch", help="; ".join(f"{f.name}: {f.summary}" for f in FAMILIES.values())),
    epochs: int = typer.Option(20, "--epochs", help="Training epochs."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate of the heads" + _by_family("lr")),
    batch_size: int = typer.Option(96, "--batch-size", help="Images per batch (in-batch negatives)."),
    device: Optional[str] = DeviceOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
    cache_dir: Path = typer.Option(Path(".cache/pixels"), "--cache-dir", help="Decoded-image cache."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    threads: int = typer.Option(2, "--threads", help="Torch CPU threads (1 is faster on a busy machine)."),
    views: Optional[int] = typer.Option(
        None, "--views", help="Augmented views per image cached from the frozen trunk" + _by_family("feature_views")),
    probe_epochs: int = typer.Option(0, "--probe-epochs", help="First epochs train only the heads and region branch on the frozen towers."),
    finetune_lr: Optional[float] = typer.Option(None, "--finetune-lr", help="Peak learning rate of the heads while fine-tuning (default: --lr)."),
    base_lr_scale: Optional[float] = typer.Option(
        None, "--base-lr-scale", help="Learning rate of the unfrozen base blocks relative to the heads"
        + _by_family("base_lr_scale")),
    patience: Optional[int] = typer.Option(None, "--patience", help="Stop after this many fine-tuning epochs without a better validation FTF mR."),
    prompt_rate: Optional[float] = typer.Option(
        None, "--prompt-rate", help="Share of images whose second text is a class prompt, 0: none" + _by_family("prompt_rate")),
    hard_negatives: int = typer.Option(0, "--hard-negatives", help="Images from each anchor's mined coarse top-K added to its batch."),
    ema: float = typer.Option(0.0, "--ema", help="Decay of the weight average that is validated and saved (0: off)."),
    head_norm: bool = typer.Option(False, "--head-norm", help="Pretrained arch: LayerNorm on the heads' inputs."),
    single_positive: bool = typer.Option(False, "--single-positive", help="Treat identical captions of other images as negatives (ablation)."),
    loss_weights: Optional[str] = typer.Option(
        None, "--loss-weights", help="TERM=WEIGHT,...: reweight the loss terms coarse, fine, text, region, rerank "
        f"(default: {LossWeights().as_text()}; 0 removes a term, for ablations)."),
) -> None:
    """Train the FTF dual encoder (or fine-tune a CLIP) on caption datasets; the result loads with --model."""
    import time

    from ftfsearch.training.train import TrainConfig, TrainProgress
    from ftfsearch.training.train import train as run_training

    from ftfsearch.model.sources import device_label, resolve_device

    where = resolve_device(_settings(device=device).device)  # the flag, FTF_DEVICE or the config file
    config = TrainConfig.for_family(
        arch, data=list(data), out=out_dir, images=list(images) if images else None, base=base, epochs=epochs, lr=lr,
        batch_size=batch_size, device=str(where), resume=resume, cache_dir=cache_dir, seed=seed,
        num_threads=threads, feature_views=views, probe_epochs=probe_epochs, base_lr_scale=base_lr_scale, finetune_lr=finetune_lr,
        patience=patience, prompt_rate=prompt_rate, hard_negatives=hard_negatives, ema_decay=ema,
        multi_positive=not single_positive, head_norm=head_norm, loss_weights=loss_weights,
    )
    err.print(f"training on {device_label(where)}", highlight=False)
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=err)
    task = bar.add_task("train", total=None, status="")
    last_epoch = [0]

    def show(p: TrainProgress) -> None:
        if p.phase == "train":
            bar.update(task, description=f"epoch {p.epoch}/{p.epochs}", total=p.steps, completed=p.step,
                       status="" if p.loss is None else f"loss {p.loss:.3f}")
        elif p.phase == "features":
            bar.update(task, description=p.message, total=p.steps, completed=p.step, status="")
        else:
            bar.update(task, status=f"{p.phase}: {p.message}")
        if p.phase == "epoch" and p.epoch != last_epoch[0]:
            last_epoch[0] = p.epoch
            bar.console.print(p.message, highlight=False)

    started = time.perf_counter()
    with bar:
        result = run_training(config, show)
    for h in result.history:
        err.print(f"epoch {h.epoch}: loss {h.loss:.4f}, val mR {h.val_mR:.2f}, {h.seconds:.0f} s", highlight=False)
    err.print(
        f"model written to {result.out_dir} in {time.perf_counter() - started:.0f} s "
        f"(tau={result.rerank.tau:g}, alpha={result.rerank.alpha:g})",
        highlight=False,
    )


@app.command(name="eval")
@handles_errors
def evaluate_cmd(
    data: list[Path] = typer.Option(
        ..., "--data", help="Caption dataset json (dataset_*.json layout); repeatable, each evaluated on its own."
    ),
    split: str = typer.Option("test", "--split", help="Split to evaluate."),
    images: Optional[list[Path]] = typer.Option(
        None, "--images", help="Image folder per --data, in the same order (default: images/ beside the json)."
    ),
    recall_k: Optional[int] = typer.Option(None, "--recall-k", help="Coarse candidates reranked by FTF (default: the K the model chose on validation)."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the report as JSON: an object, or an array of them for several --data."
    ),
    ablation: bool = typer.Option(
        False, "--ablation", help="Also score FTF without balancing and at K=20/50/100 (same embeddings)."
    ),
    cache_dir: Path = typer.Option(Path(".cache/pixels"), "--cache-dir", help="Decoded-image cache."),
    model: Optional[str] = ModelOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """R@1/5/10 both directions and mR on a caption set, coarse recall alone vs FTF."""
    from ftfsearch.training.evaluate import evaluate_files, format_report

    settings = _settings(model=model, device=device)
    reports = evaluate_files(settings.model, settings.device, data, images, split, recall_k, cache_dir, ablation)
    if as_json:
        dicts = [r.to_dict() for r in reports]
        out.print_json(json.dumps(dicts[0] if len(dicts) == 1 else dicts))
    else:
        out.print("\n\n".join(format_report(r) for r in reports), highlight=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
