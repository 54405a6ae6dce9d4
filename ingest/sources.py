"""What ``ingest`` reads: one :class:`Source` protocol for every kind of scene, and the one resolver
from what the user named (raster paths, directories, globs and URLs, STAC items, catalogs and
collections, band stacks, a STAC API search) to sources. The CLI, ``--from`` lists
(:func:`ingest.batch.expand_list`, entry by entry), the notebook API and ``serve``'s holder (which
receives sources as JSON, :func:`as_source`) all go through here.

A new kind of source is one class with the protocol's members and one branch in
:func:`resolve_entry` (what names it) and in :func:`as_source` (its JSON form).

STAC JSON is read here, before any model loads: a catalog that is not STAC or loops leaves the
store untouched."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from ftfsearch.errors import BadInput
from ftfsearch.raster import is_url
from ftfsearch.store.base import SceneRecord
from ingest.scenes import default_scene_id, expand_paths, fingerprint, is_stac
from ingest.stac import StacScene
from ingest.stac_api import ApiSearch

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class Source(Protocol):
    """One scene to ingest, whatever names it (a raster file or URL, a STAC item, a band stack)."""

    @property
    def key(self) -> str:
        """How the store and messages name it: a file's absolute path, a URL, a STAC item's href."""
        ...

    @property
    def scene_id(self) -> str: ...

    @property
    def acquired(self) -> str | None:
        """The time the source gives (None: the raster's own tags decide); ``--acquired`` wins over both."""
        ...

    @property
    def properties(self) -> dict[str, Any]:
        """What the scene record keeps of it (a STAC item's id, collection, cloud cover; empty for a file)."""
        ...

    @property
    def bands(self) -> tuple[int, int, int] | None:
        """The 1-based red, green and blue bands the source names (None: the raster's colour interpretation)."""
        ...

    def open(self) -> tuple[Path | str, str | None]:
        """The raster to tile and its fingerprint when taking it was part of opening (else None).
        Raises :class:`BadInput` naming the source when it cannot be read."""
        ...

    def is_scene(self, record: SceneRecord) -> bool:
        """Whether ``record`` (a stored scene of the same id) is this source's scene."""
        ...

    def to_json(self) -> str | dict[str, Any]:
        """Its form on the wire to the holder; :func:`as_source` reads it back."""
        ...


@dataclass(frozen=True)
class RasterSource:
    """A raster file (its absolute path) or an http(s) URL read in place (a string)."""

    path: Path | str

    def __post_init__(self) -> None:
        if isinstance(self.path, Path):  # as the holder (another working directory) finds it
            object.__setattr__(self, "path", self.path.absolute())

    def __str__(self) -> str:
        return str(self.path)

    @property
    def key(self) -> str:
        return str(self.path)

    @property
    def scene_id(self) -> str:
        return default_scene_id(self.path)

    @property
    def acquired(self) -> str | None:
        return None

    @property
    def properties(self) -> dict[str, Any]:
        return {}

    @property
    def bands(self) -> tuple[int, int, int] | None:
        return None

    def open(self) -> tuple[Path | str, str | None]:
        return self.path, None

    def is_scene(self, record: SceneRecord) -> bool:
        """Same path, or (a copy) the same content."""
        if record.path == self.key:
            return True
        try:
            return fingerprint(self.path) == record.fingerprint
        except BadInput:
            return False

    def to_json(self) -> str:
        return str(self.path)


def as_source(value: Source | Path | str | dict[str, Any]) -> Source:
    """A source from its JSON form (:meth:`Source.to_json`) or a path: a dict is a STAC item, a
    string an http(s) URL or a file."""
    if isinstance(value, dict):
        return StacScene.from_dict(value)
    if isinstance(value, (Path, str)):
        return RasterSource(value if isinstance(value, str) and is_url(value) else Path(value))
    return value


def parse_assets(value: str | None) -> tuple[str, ...] | None:
    """``--assets``: one RGB asset key, or three distinct ones (red, green, blue)."""
    if value is None:
        return None
    keys = tuple(k.strip() for k in value.split(","))
    if len(keys) not in (1, 3) or not all(keys) or len(set(keys)) != len(keys):
        raise BadInput(f"`assets` {value!r}: give one RGB asset key or three distinct keys, red,green,blue "
                       "(e.g. B04,B03,B02)")
    return keys


def resolve_entry(entry: str, stack_dir: Path, assets: tuple[str, ...] | None = None, limit: int | None = None,
                  base: Path | None = None) -> list[Source]:
    """The scenes one argument or list line names: the items of a STAC item, catalog or collection
    (``.json``, at most ``limit``), an http(s) URL, or the rasters of a file, directory or glob
    (relative ones against ``base``, default the working directory). Raises :class:`BadInput`
    naming the entry when it names nothing readable."""
    local = entry if is_url(entry) or base is None else str(_absolute(entry, base))
    if is_stac(entry):
        from ingest.stac import read_stac

        return list(read_stac(local, stack_dir, assets, limit))
    if _URL.match(entry) and not is_url(entry):
        raise BadInput(f"{entry}: only http(s) URLs are read in place (local files, globs and http(s) URLs): use "
                       "the store's https address, or mount its storage and list the path")
    return [RasterSource(p) for p in expand_paths([local])]


def _absolute(entry: str, base: Path) -> Path:
    target = Path(entry).expanduser()
    return target if target.is_absolute() else base / target


def resolve_sources(paths: list[str], stack: list[str], stack_dir: Path, assets: str | None = None,
                    limit: int | None = None, api: ApiSearch | None = None, shard: str | None = None,
                    warn: Callable[[str], None] = lambda _: None) -> list[Source]:
    """The scenes of ``paths`` and ``stack``, in order: rasters of the paths, the items of the STAC
    paths (``.json``), then the stacks' VRTs (written under ``stack_dir``); or the items a STAC API
    search (``api``) finds, ``shard``'s part of them. A search cut short is a line to ``warn``."""
    if api is not None:
        return _api_sources(paths, stack, stack_dir, assets, api, shard, warn)
    if shard is not None:
        raise BadInput("`shard` splits a --from list or a STAC API search: give --from LIST or --stac-api URL")
    stac_args = [p for p in paths if is_stac(p)]
    keys = parse_assets(assets)
    if (keys is not None or limit is not None) and not stac_args:
        raise BadInput(f"{'`assets`' if keys is not None else '`limit`'}: applies to STAC items: give an item, "
                       "catalog or collection (.json) to ingest")
    if limit is not None and limit < 1:
        raise BadInput(f"`limit` {limit}: give at least 1")
    rasters = [p for p in paths if not is_stac(p)]
    if not rasters and not stack and not stac_args:
        expand_paths([])  # BadInput: no input paths
    found: dict[str, Source] = {}  # each scene once, the first mention's place
    for arg in rasters:
        for source in resolve_entry(arg, stack_dir):
            found.setdefault(source.key, source)
    items: list[Source] = []
    for arg in stac_args:
        left = None if limit is None else limit - len(items)
        if left == 0:
            break
        items += resolve_entry(arg, stack_dir, keys, left)
    files = list(found.values()) + items
    if stack:
        from ingest.stack import build_stack

        files += [RasterSource(build_stack(value, stack_dir)) for value in stack]
    return files


def _api_sources(paths: list[str], stack: list[str], stack_dir: Path, assets: str | None, api: ApiSearch,
                 shard: str | None, warn: Callable[[str], None]) -> list[Source]:
    """``--stac-api``: the items found, each a scene; with ``shard``, the part K of N of them by item
    id (the same split on every worker that runs the same search)."""
    from ingest.batch import Shard, partition
    from ingest.stac_api import search_stac_api

    if paths or stack:
        raise BadInput("give raster or STAC paths, or `stac_api`, not both")
    part = Shard.parse(shard) if shard is not None else None
    found = search_stac_api(api, stack_dir, parse_assets(assets))
    if found.stopped is not None:
        warn(found.stopped)
    if not found.scenes:
        raise BadInput(f"`stac_api` {api.url}: the search found no items in {','.join(api.collections)}; "
                       "widen `bbox`, `datetime` or `query`")
    scenes: list[Source] = list(found.scenes)
    return partition(scenes, part, name=lambda s: str(s)) if part is not None else scenes
