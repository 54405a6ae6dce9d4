"""What ``ingest`` reads, resolved from what the user named: raster paths, directories, globs and
URLs, STAC items, catalogs and collections, and band stacks. One resolver for the CLI and ``serve``.

STAC JSON is read here, before any model loads: a catalog that is not STAC or loops leaves the
store untouched."""

from __future__ import annotations

from pathlib import Path

from ftfsearch.errors import BadInput
from ingest.scenes import expand_paths, is_stac
from ingest.stac import StacScene

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
                    limit: int | None = None) -> list[Source]:
    """The scenes of ``paths`` and ``stack``, in order: rasters of the paths, the items of the STAC
    paths (``.json``), then the stacks' VRTs (written under ``stack_dir``)."""
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
