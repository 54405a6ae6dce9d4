"""The transport to the holder: a command that finds the embedded store held by ``ftfsearch
serve`` sends its work there (:mod:`ftfsearch.commands.remote` speaks the commands over it; the
routes are :mod:`ftfsearch.web.holder`)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ftfsearch import errors
from ftfsearch.errors import FtfError, RemoteError, StoreUnavailable
from ftfsearch.store.holder_record import HolderRecord, holder_path, read_holder

SECRET_HEADER = "X-Ftfsearch-Holder-Secret"
"""The header that carries the secret of the holder file (ftfsearch.web.holder checks it)."""


def remote_error(body: dict[str, Any]) -> FtfError:
    """The library error the holder raised, rebuilt from its JSON body (its ``message`` keeps the
    parameters marked, so this CLI names them as flags)."""
    message = str(body.get("message") or body.get("error") or "the server holding the store failed")
    cls = getattr(errors, str(body.get("kind", "")), None)
    if isinstance(cls, type) and issubclass(cls, FtfError) and cls not in (FtfError, RemoteError):
        return cls(message)
    return RemoteError(message, int(body.get("exit_code") or 1))


class HolderClient:
    """Talks to the process holding an embedded store, on 127.0.0.1 with its secret."""

    def __init__(self, record: HolderRecord, store_dir: Path) -> None:
        self.record = record
        self.store_dir = store_dir
        # Loopback: never through a proxy named in the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def find(cls, store_dir: Path, collection: str) -> "HolderClient | None":
        """The client of the live holder of this store, None when none has recorded itself."""
        record = read_holder(holder_path(store_dir, collection))
        return None if record is None else cls(record, store_dir)

    def _request(self, method: str, path: str, body: Any = None, timeout: float | None = 600.0) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.record.url + path, data=data, method=method)
        req.add_header(SECRET_HEADER, self.record.secret)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            return self._opener.open(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read() or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                payload = {}
            raise remote_error(payload if isinstance(payload, dict) else {}) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StoreUnavailable(
                f"embedded store {self.store_dir} is held by 'ftfsearch serve' (pid {self.record.pid}), which "
                f"does not answer on {self.record.url} ({reason}); try again, or stop that server"
            ) from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        with self._request(method, path, body) as resp:
            return json.loads(resp.read())

    def events(self, job: str, start: int = 0) -> Iterator[dict[str, Any]]:
        """The NDJSON events of an ingest job from ``start`` on, heartbeats left out."""
        resp = self._request("GET", f"/api/holder/jobs/{job}/events?start={start}", timeout=60.0)
        with resp:
            for line in resp:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") != "tick":
                    yield event
