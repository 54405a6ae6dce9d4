"""The plugin's only way to ``ftfsearch serve``: its HTTP API through the standard library, so QGIS
needs no torch, no model and no third-party package. Every failure (serve down, slow, a refused
key, an error answer, something that is not serve) becomes one :class:`ServeError` whose text is
the message the user reads; nothing here touches Qt, so it runs in a QgsTask's thread."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0
KEYS_HINT = "ftfsearch ▸ Settings (the server's administrator makes a key with 'ftfsearch keys add')"


class ServeError(Exception):
    """A failed call, its text written for the message bar; ``status`` is the HTTP status (0: none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def check_url(url: str) -> str:
    """The serve URL without a trailing slash; a message for one that cannot be a serve URL."""
    text = (url or "").strip().rstrip("/")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ServeError(f"serve URL {text!r}: give an http(s) URL such as {DEFAULT_URL} in ftfsearch ▸ Settings")
    return text


class ServeClient:
    """Calls to one serve with one key (``Authorization: Bearer``, as serve's guard reads it)."""

    def __init__(self, url: str, key: str = "", timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = check_url(url)
        self.key = (key or "").strip()
        self.timeout = timeout
        # the QGIS user's proxy environment applies to remote servers; loopback goes direct
        host = urllib.parse.urlsplit(self.url).hostname or ""
        proxies: Optional[Dict[str, str]] = {} if host in ("127.0.0.1", "localhost", "::1") else None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies))

    def info(self) -> Dict[str, Any]:
        """``GET /api/info``: the store, model and counts (the settings dialog's connection test)."""
        return self._json("GET", "/api/info")

    def search(self, params: Dict[str, Any]) -> Dict[str, Any]:
        """``POST /api/search`` with the parameters as a JSON body (an area's outline fits in it)."""
        return self._json("POST", "/api/search", params)

    def export_labels(self, query: Optional[str], marks: List[Dict[str, Any]]) -> Dict[str, Any]:
        """``POST /api/labels/export``: the marks as the labels GeoJSON that ``ftfsearch`` reads."""
        return self._json("POST", "/api/labels/export", {"query": query, "marks": marks})

    def _json(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.key:
            request.add_header("Authorization", f"Bearer {self.key}")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw, status, kind = response.read(), response.status, response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc) from None
        except (socket.timeout, TimeoutError):
            raise ServeError(f"ftfsearch serve at {self.url} did not answer within {self.timeout:g} s: "
                             "it may be busy; try again, or raise the timeout in ftfsearch ▸ Settings") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise ServeError(f"ftfsearch serve at {self.url} did not answer within {self.timeout:g} s: "
                                 "it may be busy; try again, or raise the timeout in ftfsearch ▸ Settings") from None
            raise ServeError(f"cannot reach ftfsearch serve at {self.url} ({reason}): start 'ftfsearch serve' "
                             "or correct the URL in ftfsearch ▸ Settings") from None
        return self._parsed(raw, status, kind)

    def _parsed(self, raw: bytes, status: int, kind: str) -> Dict[str, Any]:
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ServeError(f"{self.url} answered HTTP {status} with {kind or 'no content type'}, not ftfsearch "
                             "serve's JSON: check the serve URL in ftfsearch ▸ Settings", status)
        return answer

    def _refusal(self, exc: urllib.error.HTTPError) -> ServeError:
        """The message for an error answer: serve's own ``{"error": ...}`` text where it sent one."""
        try:
            said = json.loads(exc.read() or b"{}").get("error")
        except (ValueError, AttributeError, OSError):
            said = None
        if exc.code == 401:
            problem = "refused the API key" if self.key else "needs an API key"
            return ServeError(f"ftfsearch serve at {self.url} {problem}: set a valid key in {KEYS_HINT}", 401)
        if said:
            return ServeError(f"ftfsearch serve: {said}", exc.code)
        return ServeError(f"ftfsearch serve at {self.url} answered HTTP {exc.code} {exc.reason}: check the "
                          "serve URL in ftfsearch ▸ Settings, or serve's log", exc.code)
