"""What an ingest was told to read, from whoever asked (the CLI's arguments and flags, the notebook
API): raster paths and band stacks, a ``--from`` list (its ``--shard``), or a STAC API search.
Checked together once, then resolved by the one resolver (:mod:`ingest.sources`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ftfsearch.errors import BadInput


def stac_api_search(url: str | None, collections: str | None = None, bbox: str | None = None,
                    when: str | None = None, query: tuple[str, ...] = (), limit: int | None = None,
                    max_pages: int | None = None, timeout: float = 30.0) -> Any:
    """The STAC API search (an :class:`ingest.stac_api.ApiSearch`) the arguments ask for; None
    without ``stac_api``, where its filters alone are refused."""
    if url is None:
        given = [name for name, value in (("collections", collections), ("bbox", bbox), ("datetime", when),
                                          ("query", query)) if value]
        if given:
            raise BadInput(f"`{given[0]}` filters a STAC API search: give `stac_api` URL with it")
        return None
    from ftfsearch.search import parse_bbox
    from ingest.stac_api import DEFAULT_MAX_PAGES, ApiSearch

    return ApiSearch(url=url, collections=tuple(c.strip() for c in (collections or "").split(",") if c.strip()),
                     bbox=parse_bbox(bbox), datetime=when or None, query=tuple(query), limit=limit,
                     max_pages=DEFAULT_MAX_PAGES if max_pages is None else max_pages, timeout=timeout)


@dataclass(frozen=True)
class IngestInput:
    """The sources an ingest names: ``paths`` and ``stack`` (with ``assets``, ``limit`` for STAC),
    or a ``list_path`` (``--from``), or a STAC API search (``stac_api``); ``shard`` takes part of a
    list or a search. The combinations are checked when it is built."""

    paths: tuple[str, ...] = ()
    stack: tuple[str, ...] = ()
    list_path: Path | None = None
    shard: str | None = None
    assets: str | None = None
    limit: int | None = None
    stac_api: Any = None
    """An :class:`ingest.stac_api.ApiSearch` (:func:`stac_api_search`), or None."""
    scene_id: str | None = None
    """The scene id the caller asked for (a list names its scenes after their files)."""

    def __post_init__(self) -> None:
        if self.list_path is not None:
            if self.stac_api is not None:
                raise BadInput("give `list_path` LIST or `stac_api` URL, not both")
            if self.paths or self.stack:
                raise BadInput("give raster paths and `stack`, or `list_path` LIST, not both")
            if self.scene_id is not None:
                raise BadInput("`scene_id` names one raster: a --from list names its scenes after their files")
            if self.assets is not None or self.limit is not None:
                raise BadInput("`assets` and `limit` apply to STAC items given as PATHS, not to a --from list")
        elif self.shard is not None and self.stac_api is None:
            raise BadInput("`shard` splits a --from list or a `stac_api` search: give one with it")

    def sources(self, stack_dir: Path, warn: Callable[[str], None] = lambda _: None) -> list[Any]:
        """The scenes of the paths, stacks or search (:func:`ingest.sources.resolve_sources`); a
        search cut short is a line to ``warn``. Not for a list: :meth:`entries`."""
        from ingest.sources import resolve_sources

        assert self.list_path is None
        return resolve_sources(list(self.paths), list(self.stack), stack_dir, self.assets,
                               None if self.stac_api is not None else self.limit, api=self.stac_api,
                               shard=self.shard, warn=warn)

    def entries(self, stack_dir: Path | None = None) -> tuple[list[Any], Any]:
        """A list's sources (:class:`ingest.batch.ListEntry`), ``shard``'s part of them, and that part."""
        from ftfsearch.commands.batch import list_sources

        assert self.list_path is not None
        return list_sources(self.list_path, self.shard, stack_dir)
