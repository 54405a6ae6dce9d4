"""Who may call what on ``ftfsearch serve``: one table of every route's access, and the guard that
enforces it with the API keys of :mod:`ftfsearch.keys`.

Every route of the app is in :data:`ROUTE_ACCESS` as ``public`` (the page and its assets: they hold
no data), ``read`` or ``write``; a route that is not is refused to everyone, and the suite fails on
it (tests/test_serve_auth.py enumerates the app's routes). The guard, a plain ASGI middleware in
front of the app, also caps request bodies (413), limits each key's request rate (429 with
``Retry-After``, the ``limits`` library's moving window) and writes an audit line for every write.
Keys come as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, never in a URL (URLs are logged);
a key is never logged or echoed, and the answers for a missing and a wrong key are the same.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from typing import Literal

from limits import RateLimitItem
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ftfsearch.keys import DEFAULT_RATE_LIMIT, Caller, KeyRing, parse_rate_limit
from ftfsearch.web.http_errors import error_response

audit_log = logging.getLogger("ftfsearch.audit")
"""One line per write: the key's name, the route, the status and what changed."""

Access = Literal["public", "read", "write"]

ROUTE_ACCESS: dict[tuple[str, str], Access] = {
    ("GET", "/"): "public",
    ("GET", "/static/{path:path}"): "public",
    ("GET", "/openapi.json"): "read",
    ("GET", "/api/search"): "read",
    ("POST", "/api/search"): "read",
    ("POST", "/api/find"): "read",
    ("POST", "/api/classify"): "read",
    # A review step stores nothing on the server (the review file travels in the body and comes
    # back): a read key suffices, and reviewers need no key that could also drop scenes.
    ("POST", "/api/review"): "read",
    ("GET", "/api/change"): "read",
    ("POST", "/api/labels/export"): "read",
    ("POST", "/api/labels/import"): "read",
    ("GET", "/api/scenes"): "read",
    ("GET", "/api/info"): "read",
    ("GET", "/api/tiles/{tile_id}/chip.png"): "read",
    ("GET", "/api/scenes/{scene_id}/preview.png"): "read",
    ("DELETE", "/api/scenes/{scene_id}"): "write",
    ("GET", "/api/watches"): "read",
    ("POST", "/api/watches"): "write",
    ("DELETE", "/api/watches/{name}"): "write",
    ("GET", "/api/watches/{name}/hits"): "read",
}
"""(method, route path) -> who may call it: the one place a route's access is decided. The guard
matches requests against these paths itself (Starlette's own path patterns), so the decision never
depends on how a FastAPI version arranges its routers; a path that is no route needs a read key
and then gets its 404."""
_PATTERNS = [(method, path, compile_path(path)[0], access) for (method, path), access in ROUTE_ACCESS.items()]

MAX_BODY_BYTES = 32 << 20
"""Largest request body (an image chip, a labels file): larger ones are refused with 413."""

NO_KEY = ("an API key is required: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY' "
          "(the server's administrator makes one with 'ftfsearch keys add')")
READ_ONLY = "forbidden: this key has the read role; this request needs a key with the write role"


def app_routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, routers included whole (newer FastAPI keeps an included router as one entry)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from app_routes(inner.routes)
        else:
            yield route


def route_methods(route: BaseRoute) -> list[tuple[str, str]]:
    """The (method, path) pairs a route answers, as :data:`ROUTE_ACCESS` names them (HEAD is GET's)."""
    if isinstance(route, Mount):
        return [("GET", route.path + "/{path:path}")]
    methods = getattr(route, "methods", None) or {"GET"}
    return [(m, str(getattr(route, "path", ""))) for m in sorted(methods) if m != "HEAD"]


def unclassified(routes: list[BaseRoute]) -> list[tuple[str, str]]:
    """The app's routes that have no access decision."""
    return [pair for route in app_routes(routes) for pair in route_methods(route) if pair not in ROUTE_ACCESS]


def check_routes(routes: list[BaseRoute]) -> None:
    """Refuse to build an app with a route nobody classified."""
    missing = unclassified(routes)
    if missing:
        raise RuntimeError(f"routes without an access decision in ftfsearch.web.auth.ROUTE_ACCESS: {missing}")


def access_of(scope: Scope) -> tuple[str, Access]:
    """The route pattern a request matches and its access (unknown: read, then the app's 404)."""
    method = "GET" if scope["method"] == "HEAD" else scope["method"]
    path, root = scope["path"], scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root):] or "/"
    for m, template, pattern, access in _PATTERNS:
        if m == method and pattern.match(path):
            return template, access
    return "", "read"


def key_of(headers: dict[str, str]) -> str | None:
    """The key a request carries, from ``Authorization: Bearer`` or ``X-API-Key``."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key", "").strip() or None


def record_change(request: Request, change: str) -> None:
    """What a write route changed, for its audit line."""
    request.state.change = change


class Guard:
    """Access, body size, rate and audit, in front of the app. Without a key ring (``serve``
    without ``--keys``, loopback only) every route is open, and only the body cap applies."""

    def __init__(self, app: ASGIApp, ring: KeyRing | None, rate_limit: str = DEFAULT_RATE_LIMIT,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.ring = ring
        self.max_body_bytes = max_body_bytes
        self.limits: list[RateLimitItem] = parse_rate_limit(rate_limit)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path, access = access_of(scope)
        caller: Caller | None = None
        if self.ring is not None and access != "public":
            refusal, caller = self._check(headers, access)
            if refusal is not None:
                if access == "write":
                    audit_log.info("audit: key %s: %s %s -> %d: refused", caller.name if caller else "(none valid)",
                                   scope["method"], path, refusal.status_code)
                await refusal(scope, receive, send)
                return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await self._too_large(int(length))(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        await self._call(scope, receive, send, f"{scope['method']} {path}" if access == "write" else None, caller)

    def _check(self, headers: dict[str, str], access: Access) -> tuple[JSONResponse | None, Caller | None]:
        """A refusal (401, 403 or 429) or None, and the caller where the key is valid."""
        assert self.ring is not None
        key = key_of(headers)
        caller = None if key is None else self.ring.caller(key)
        if caller is None:
            response = error_response(401, NO_KEY)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response, None
        if access == "write" and caller.role != "write":
            return error_response(403, READ_ONLY), caller
        for item in self.limits:  # all tested before any is counted: a refused request uses up none
            if not self.limiter.test(item, caller.name):
                reset = self.limiter.get_window_stats(item, caller.name).reset_time
                wait = max(1, math.ceil(reset - time.time()))
                response = error_response(429, f"too many requests for this key (at most {item}); retry in {wait} s")
                response.headers["Retry-After"] = str(wait)
                return response, caller
        for item in self.limits:
            self.limiter.hit(item, caller.name)
        return None, caller

    def _too_large(self, size: int | None) -> JSONResponse:
        got = "more" if size is None else f"{size} bytes"
        return error_response(413, f"request body: {got}; at most {self.max_body_bytes >> 20} MB")

    async def _call(self, scope: Scope, receive: Receive, send: Send, audited: str | None,
                    caller: Caller | None) -> None:
        """The app, its body cut off at the cap with a 413, and an audit line after a write."""
        received = 0
        refused = False
        status = 0

        async def capped_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes and status == 0:
                    refused = True
                    await self._too_large(None)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message: Message) -> None:
            nonlocal status
            if refused:
                return  # the 413 went out; the app's answer to a cut-off body does not
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, capped_receive, watched_send)
        finally:
            if audited is not None:
                change = scope.get("state", {}).get("change") or "nothing"
                audit_log.info("audit: key %s: %s -> %s: %s", caller.name if caller else "(no auth)", audited,
                               413 if refused else status or 500, change)

