"""A STAC API search as an ingest source (``ingest --stac-api URL --collections C ...``).

pystac-client runs the search (``/search``, paged through its ``next`` links) with retries on
503 and the like; each item found becomes a scene exactly as an item file does
(:func:`ingest.stac.item_scene`: asset choice, time, properties). The search is read before any
scene is written, page by page: an API that does not answer STAC on its first page is one line
and the store is untouched; a failure on a later page (a timeout, a page that is not STAC, more
pages than ``max_pages``) stops the search there, the items already found are ingested, and
:attr:`ApiSearchResult.stopped` says why, so a re-run (scenes resume) or a narrower search picks up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftfsearch.errors import BadInput
from ingest.stac import StacScene, item_scene

DEFAULT_MAX_PAGES = 100
"""Pages read before the search is cut short (an API that pages forever): ``--max-pages``."""
PAGE_SIZE = 100
RETRY_STATUSES = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class ApiSearch:
    """What ``--stac-api`` and its flags ask for."""

    url: str
    collections: tuple[str, ...]
    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    query: tuple[str, ...] = ()
    """``eo:cloud_cover<20`` and the like: STAC API query-extension filters, as pystac-client reads them."""
    limit: int | None = None
    max_pages: int = DEFAULT_MAX_PAGES
    page_size: int = PAGE_SIZE
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise BadInput(f"`stac_api` {self.url!r}: give the http(s) URL of a STAC API's landing page")
        if not self.collections or not all(c.strip() for c in self.collections):
            raise BadInput("`collections`: name the STAC API collections to search, comma-separated")
        if self.limit is not None and self.limit < 1:
            raise BadInput(f"`limit` {self.limit}: give at least 1")
        if self.max_pages < 1:
            raise BadInput(f"`max_pages` {self.max_pages}: give at least 1")


@dataclass
class ApiSearchResult:
    scenes: list[StacScene] = field(default_factory=list)
    pages: int = 0
    stopped: str | None = None
    """Why the search ended before its last page (the items found before are kept); None when complete."""


def _client(search: ApiSearch) -> Any:
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO
    from urllib3 import Retry

    retry = Retry(total=4, backoff_factor=0.2, status_forcelist=RETRY_STATUSES, allowed_methods=None,
                  raise_on_status=False)
    io = StacApiIO(max_retries=retry, timeout=search.timeout)
    # Client.open sets its own timeout on the io it is given (None unless passed here too)
    return Client.open(search.url, stac_io=io, timeout=search.timeout)


def _why(exc: Exception) -> str:
    """An exception of requests, pystac or pystac-client in a few words."""
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    name = type(exc).__name__
    if "Timeout" in name or "timeout" in text.lower() or "timed out" in text.lower():
        return "timed out"
    return f"{name}: {text}" if text else name


def _item_href(search: ApiSearch, d: dict[str, Any]) -> str:
    """Where an item lives: its ``self`` link, else the STAC API's items route for it."""
    for link in d.get("links") or ():
        if isinstance(link, dict) and link.get("rel") == "self" and link.get("href"):
            return str(link["href"])
    return f"{search.url.rstrip('/')}/collections/{d.get('collection')}/items/{d.get('id')}"


def _page_items(page: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(page, dict) or page.get("type") != "FeatureCollection" or not isinstance(
            page.get("features"), list):
        raise BadInput(f"{where}: not a STAC API search page (a FeatureCollection of items)")
    items = [f for f in page["features"] if isinstance(f, dict) and f.get("type") == "Feature" and f.get("id")]
    if len(items) != len(page["features"]):
        raise BadInput(f"{where}: a search page holds features that are not STAC items")
    return items


def search_stac_api(search: ApiSearch, stack_dir: Path, assets: tuple[str, ...] | None = None) -> ApiSearchResult:
    """The scenes of the items ``search`` finds, in the API's order, each item once."""
    import pystac
    from pystac_client.errors import ClientTypeError
    from pystac_client.exceptions import APIError

    where = f"`stac_api` {search.url}"
    errors = (APIError, ClientTypeError, pystac.STACError, OSError, ValueError, KeyError, TypeError,
              NotImplementedError, AttributeError)
    try:
        client = _client(search)
        pages = client.search(collections=list(search.collections), bbox=search.bbox, datetime=search.datetime,
                              query=list(search.query) or None, max_items=search.limit,
                              limit=search.page_size).pages_as_dicts()
    except errors as exc:
        raise BadInput(f"{where}: not a STAC API that can be searched ({_why(exc)}); give the landing page URL "
                       "of a STAC API with item search") from exc
    result = ApiSearchResult()
    seen: set[str] = set()
    while True:
        try:
            page = next(pages, None)
            if page is None:
                return result
            items = _page_items(page, where)
        except errors + (BadInput,) as exc:
            reason = exc.message if isinstance(exc, BadInput) else f"{where}: page {result.pages + 1}: {_why(exc)}"
            if result.pages == 0:
                raise BadInput(reason) from exc
            result.stopped = f"{reason}; the search stopped there, with the {len(result.scenes)} items found before"
            return result
        result.pages += 1
        fresh = [d for d in items if str(d["id"]) not in seen]
        if items and not fresh:
            result.stopped = (f"{where}: page {result.pages} repeats items already found (its next link loops); "
                              f"the search stopped there, with {len(result.scenes)} items")
            return result
        for d in fresh:
            seen.add(str(d["id"]))
            result.scenes.append(item_scene(_item_href(search, d), d, stack_dir, assets))
        if search.limit is not None and len(result.scenes) >= search.limit:
            del result.scenes[search.limit:]
            return result
        if result.pages >= search.max_pages:
            result.stopped = (f"{where}: still paging after {search.max_pages} pages ({len(result.scenes)} items); "
                              "capped there: narrow the search (`bbox`, `datetime`, `query`) or raise `max_pages`")
            return result
