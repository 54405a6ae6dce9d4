"""The transports to ``ftfsearch serve``: the holder's (a command that finds the embedded store
held by ``serve`` sends its work there; :mod:`ftfsearch.commands.remote` speaks the commands over
it, the routes are :mod:`ftfsearch.web.holder`'s) and the public API's, with an API key; both over
one :class:`HttpClient`."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ftfsearch import errors
from ftfsearch.errors import BadInput, FtfError, PermissionDenied, RemoteError, StoreUnavailable
from ftfsearch.store.holder_record import HolderRecord, holder_path, read_holder

SECRET_HEADER = "X-Ftfsearch-Holder-Secret"
"""The header that carries the secret of the holder file (ftfsearch.web.holder checks it)."""


def remote_error(body: dict[str, Any], status: int = 0) -> FtfError:
    """The library error the server raised, rebuilt from its JSON body (the holder's ``message``
    keeps the parameters marked, so this CLI names them as flags; the public API's ``error`` is
    classed by its status: 401/403 a refusal, 400/413/422 bad input)."""
    message = str(body.get("message") or body.get("error") or "the server holding the store failed")
    cls = getattr(errors, str(body.get("kind", "")), None)
    if isinstance(cls, type) and issubclass(cls, FtfError) and cls not in (FtfError, RemoteError):
        return cls(message)
    if status in (401, 403):
        return PermissionDenied(message)
    if status in (400, 413, 422):
        return BadInput(message)
    return RemoteError(message, int(body.get("exit_code") or 1))


class HttpClient:
    """JSON over HTTP to an ``ftfsearch serve``: the one transport of its clients. ``api_key`` is
    sent as ``Authorization: Bearer`` (``serve --keys``), never in a URL; ``headers`` are added to
    every request; ``loopback`` ignores proxies named in the environment; ``unreachable`` is the
    message when the server does not answer, with ``{reason}``."""

    def __init__(self, url: str, api_key: str | None = None, headers: dict[str, str] | None = None,
                 loopback: bool = False, unreachable: str = "") -> None:
        self.url = url.rstrip("/")
        self._headers = dict(headers or {})
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._unreachable = unreachable or f"ftfsearch serve at {self.url} does not answer ({{reason}}); check the URL"
        handlers = [urllib.request.ProxyHandler({})] if loopback else []
        self._opener = urllib.request.build_opener(*handlers)

    def request(self, method: str, path: str, body: Any = None, timeout: float | None = 600.0) -> Any:
        """The open response (a context manager), or the server's error raised as a library error."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=self._headers)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            return self._opener.open(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read() or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                payload = {}
            raise remote_error(payload if isinstance(payload, dict) else {}, exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StoreUnavailable(self._unreachable.replace("{reason}", str(reason))) from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        with self.request(method, path, body) as resp:
            return json.loads(resp.read())


class ServeClient:
    """The public API of an ``ftfsearch serve`` (what the QGIS plugin and the notebook API speak),
    with the caller's API key."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.http = HttpClient(url, api_key=api_key)

    def info(self) -> dict[str, Any]:
        return self.http.call("GET", "/api/info")

    def scenes(self) -> list[dict[str, Any]]:
        return list(self.http.call("GET", "/api/scenes")["scenes"])

    def search(self, q: str, k: int = 10, **params: Any) -> dict[str, Any]:
        query = urllib.parse.urlencode({"q": q, "k": k, **params}, doseq=True)
        return self.http.call("GET", f"/api/search?{query}")

    def drop(self, scene_id: str) -> int:
        return int(self.http.call("DELETE", f"/api/scenes/{urllib.parse.quote(scene_id, safe='')}")["removed"])


class HolderClient:
    """Talks to the process holding an embedded store, on 127.0.0.1 with its secret."""

    def __init__(self, record: HolderRecord, store_dir: Path) -> None:
        self.record = record
        self.store_dir = store_dir
        self.http = HttpClient(
            record.url, headers={SECRET_HEADER: record.secret}, loopback=True,
            unreachable=f"embedded store {store_dir} is held by 'ftfsearch serve' (pid {record.pid}), which does "
                        f"not answer on {record.url} ({{reason}}); try again, or stop that server",
        )

    @classmethod
    def find(cls, store_dir: Path, collection: str) -> "HolderClient | None":
        """The client of the live holder of this store, None when none has recorded itself."""
        record = read_holder(holder_path(store_dir, collection))
        return None if record is None else cls(record, store_dir)

    def _request(self, method: str, path: str, body: Any = None, timeout: float | None = 600.0) -> Any:
        return self.http.request(method, path, body, timeout)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return self.http.call(method, path, body)

    def events(self, job: str, start: int = 0) -> Iterator[dict[str, Any]]:
        """The NDJSON events of an ingest job from ``start`` on, heartbeats left out."""
        return self.stream("GET", f"/api/holder/jobs/{job}/events?start={start}")

    def stream(self, method: str, path: str, body: Any = None) -> Iterator[dict[str, Any]]:
        """The NDJSON lines of a streamed answer, heartbeats (``tick``) left out."""
        resp = self._request(method, path, body, timeout=60.0)
        with resp:
            for line in resp:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") != "tick":
                    yield event
