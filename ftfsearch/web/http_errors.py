"""Library errors as HTTP answers: a status per error class and a JSON body ``{"error": "..."}``,
never a traceback (shared by the public app and the holder)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ftfsearch.errors import (
    BadInput,
    CollectionNotFound,
    FtfError,
    ModelMismatch,
    ModelNotFound,
    PermissionDenied,
    PushVerificationFailed,
    RemoteError,
    SceneNotFound,
    SourceUnavailable,
    StoreUnavailable,
    TileNotFound,
    WatchNotFound,
)

log = logging.getLogger(__name__)

# Most specific first: StoreLocked is a StoreUnavailable, DatasetError a BadInput.
ERROR_STATUS: tuple[tuple[type[FtfError], int], ...] = (
    (BadInput, 400),
    (PermissionDenied, 403),
    (SceneNotFound, 404),
    (TileNotFound, 404),
    (WatchNotFound, 404),
    (CollectionNotFound, 404),
    (SourceUnavailable, 404),
    (ModelMismatch, 409),
    (StoreUnavailable, 503),
    (ModelNotFound, 503),
    (PushVerificationFailed, 502),  # the target store did not keep what it was sent
    (RemoteError, 502),  # the server holding the store failed in a way it could not name
)


def status_of(exc: FtfError) -> int:
    """The HTTP status of a library error (500 only for a class nobody mapped: a bug)."""
    for cls, status in ERROR_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def validation_message(exc: RequestValidationError | ValidationError) -> str:
    """``k: Input should be ...; bbox: ...``: the parameter names, without FastAPI's locations."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _library_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FtfError)  # registered for FtfError only
    status = status_of(exc)
    if status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
    return error_response(status, str(exc))


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    """A request FastAPI checked, or a JSON body a route checked itself with ``model_validate``."""
    assert isinstance(exc, (RequestValidationError, ValidationError))
    return error_response(422, validation_message(exc))


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404:
        message = f"{request.url.path[:200]}: not found; the API is under /api (see /openapi.json)"
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    """Every failure of the public app as a JSON error body with its status."""
    app.add_exception_handler(FtfError, _library_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(ValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _bug)
