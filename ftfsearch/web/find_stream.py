"""A streamed command over HTTP (``find``, ``classify``; the API's routes and the holder's):
NDJSON, its plan first.

The plan is computed before the response starts, so a refused command (too many hits, an area
outside every scene, unusable labels) answers with its 4xx status; the pages then stream one line
each, and an error met after the first line comes as an ``error`` line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi.responses import StreamingResponse

from pydantic import BaseModel

from ftfsearch.errors import FtfError


def error_body(exc: FtfError) -> dict[str, Any]:
    """An error as JSON: ``error`` in the API's words, ``message`` with its parameters still
    marked (the CLI that sent the request names them as its flags), its class and exit code."""
    return {"error": str(exc), "message": exc.message, "kind": type(exc).__name__, "exit_code": exc.exit_code}


def _line(kind: str, item: BaseModel) -> bytes:
    return (json.dumps({"type": kind, kind: item.model_dump(mode="json")}) + "\n").encode()


def _lines(first: BaseModel, rest: Iterator[BaseModel]) -> Iterator[bytes]:
    yield _line("plan", first)
    try:
        for item in rest:
            yield _line("page", item)
        yield b'{"type": "done"}\n'
    except FtfError as exc:
        yield (json.dumps({"type": "error", **error_body(exc)}) + "\n").encode()


def find_response(items: Iterator[Any]) -> StreamingResponse:
    """Run the command up to its plan (raising here, as the route's error), then stream the pages."""
    first = next(items)
    return StreamingResponse(_lines(first, items), media_type="application/x-ndjson")
