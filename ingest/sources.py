"""What ``ingest`` reads, resolved from what the user named: raster paths, directories, globs and
URLs, STAC items, catalogs and collections, and band stacks. One resolver for the CLI and ``serve``.

STAC JSON is read here, before any model loads: a catalog that is not STAC or loops leaves the
store untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ftfsearch.errors import BadInput
from ingest.scenes import expand_paths, is_stac
from ingest.stac import StacScene
from ingest.stac_api import ApiSearch

Source = Path | str | StacScene
"""One scene to ingest: a raster file, an http(s) URL (a string), or a STAC item."""


def parse_assets(value: str | None) -> tuple[str, ...] | None:
    """``--assets``: one RGB asset key, or three distinct ones (red, green, blue)."""
    if value is None:
        return None
    keys = tuple(k.strip() for k in value.split(","))
    if len(keys) not in (1, 3) or not all(keys) or len(set(keys)) != len(keys):
        raise BadInput(f"`assets` {value!r}: give one RGB asset key or three distinct keys, red,green,blue "
                       "(e.g. B04,B03,B02)")
    return keys


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
    files: list[Source] = list(expand_paths(rasters)) if rasters or not (stack or stac_args) else []
    if stac_args:
        from ingest.stac import read_stac

        for arg in stac_args:
            left = None if limit is None else limit - sum(1 for f in files if isinstance(f, StacScene))
            if left == 0:
                break
            files += read_stac(arg, stack_dir, keys, left)
    if stack:
        from ingest.stack import build_stack

        files += [build_stack(value, stack_dir) for value in stack]
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
