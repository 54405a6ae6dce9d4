"""The HTTP API and the web page of ``ftfsearch serve``.

One app holds one store, one encoder, one :class:`~ftfsearch.search.Searcher` and one
:class:`~ftfsearch.chips.ChipRenderer` for its lifetime (:class:`~ftfsearch.web.resources.Resources`,
opened in the lifespan, or handed in already open by the CLI so that startup errors are one line).
Searches are serialised by a lock: the embedded store and the fast tokenizers are not made for
concurrent calls, and a search is a few milliseconds; chips and previews render in parallel
(rasterio releases the GIL) and are cached. Every error is a JSON body ``{"error": "..."}`` with a
4xx status (5xx only for an unreachable store or a bug), never a traceback.

The endpoints are :mod:`ftfsearch.web.api`'s, their models :mod:`ftfsearch.web.schemas`'s, the
error statuses :mod:`ftfsearch.web.http_errors`'.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ftfsearch.config import Settings
from ftfsearch.keys import KeyRing
from ftfsearch.web import api, watch_api
from ftfsearch.web.auth import Guard, check_routes
from ftfsearch.web.http_errors import install_error_handlers
from ftfsearch.web.resources import Resources, ServeOptions

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
LEAFLET_JS = STATIC_DIR / "vendor" / "leaflet" / "leaflet.js"


def _lifespan(
    settings: Settings, options: ServeOptions, resources: Resources | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Resources handed in are taken over, else opened from ``settings``; closed at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        res = resources if resources is not None else await run_in_threadpool(Resources.open, settings, options)
        app.state.resources = res
        try:
            yield
        finally:
            await run_in_threadpool(res.close)

    return lifespan


def _add_page(app: FastAPI) -> None:
    """The map page at / and its assets under /static."""
    if not LEAFLET_JS.is_file():
        log.warning("Leaflet is missing from the package (%s): reinstall ftfsearch; the map stays empty", LEAFLET_JS)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def create_app(
    settings: Settings, options: ServeOptions | None = None, resources: Resources | None = None
) -> FastAPI:
    """The FastAPI app. ``resources`` already open are taken over (closed at shutdown); without
    them the lifespan opens them from ``settings``."""
    options = options or ServeOptions()
    app = FastAPI(
        title="ftfsearch",
        version=api.package_version(),
        description="Text search over remote-sensing scenes: coarse recall, then a text-guided region rerank.",
        lifespan=_lifespan(settings, options, resources),
        docs_url=None,  # Swagger UI loads from a CDN; the page must work offline. /openapi.json stays.
        redoc_url=None,
    )
    app.state.options = options
    ring = None if options.keys_file is None else KeyRing(options.keys_file)
    app.add_middleware(Guard, ring=ring, rate_limit=options.rate_limit)
    if options.cors_origins:  # outside the guard: a preflight carries no key
        app.add_middleware(
            CORSMiddleware, allow_origins=list(options.cors_origins), allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(watch_api.router)
    _add_page(app)
    check_routes(app.routes)
    return app
