"""A small STAC API on loopback for the ``ingest --stac-api`` tests: a landing page that declares
item search, ``/search`` by GET or POST (collections, bbox, the query extension's ``lt``/``gt`` on
numbers), ``page_size`` items a page with ``next`` links, and switches a test sets: answer 503 to
the first request for a page (``fail_once``), page forever with fresh items (``forever``), answer
JSON that is not STAC (``not_stac``), or stall a page past the client's timeout (``slow_page``).
Served by a thread of the test process (pystac-client runs in the CLI's own process)."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

ITEM_SEARCH = "https://api.stacspec.org/v1.0.0/item-search"
QUERY = "https://api.stacspec.org/v1.0.0/item-search#query"
CORE = "https://api.stacspec.org/v1.0.0/core"


class StacApi:
    def __init__(self, items: list[dict[str, Any]], page_size: int = 1) -> None:
        self.items = items
        self.page_size = page_size
        self.fail_once: set[int] = set()
        self.forever = False
        self.not_stac = False
        self.slow_page: int | None = None
        self.slow_seconds = 5.0
        self.requests: list[str] = []
        self._failed: set[int] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "StacApi":
        self._thread.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def landing(self) -> dict[str, Any]:
        if self.not_stac:
            return {"status": "ok", "service": "not a STAC API"}
        return {"type": "Catalog", "stac_version": "1.0.0", "id": "loopback", "description": "test STAC API",
                "conformsTo": [CORE, ITEM_SEARCH, QUERY],
                "links": [{"rel": "self", "href": self.url + "/"}, {"rel": "root", "href": self.url + "/"},
                          {"rel": "search", "href": self.url + "/search", "type": "application/geo+json",
                           "method": "GET"},
                          {"rel": "search", "href": self.url + "/search", "type": "application/geo+json",
                           "method": "POST"}]}

    def matching(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        collections = params.get("collections") or []
        if isinstance(collections, str):
            collections = collections.split(",")
        query = params.get("query") or {}
        if isinstance(query, str):
            query = json.loads(query)
        out = []
        for item in self.items:
            if collections and item.get("collection") not in collections:
                continue
            ok = True
            for prop, ops in query.items():
                value = item["properties"].get(prop)
                for op, given in ops.items():
                    bound = float(given)  # pystac-client sends "eo:cloud_cover<20" as {"lt": "20"}
                    ok = ok and value is not None and {"lt": value < bound, "gt": value > bound,
                                                       "lte": value <= bound, "gte": value >= bound,
                                                       "eq": value == bound}[op]
            if ok:
                out.append(item)
        return out

    def page(self, params: dict[str, Any], number: int) -> dict[str, Any]:
        if self.forever:
            base = self.items[0]
            features = [{**base, "id": f"{base['id']}-p{number}"}]
            more = True
        else:
            found = self.matching(params)
            features = found[(number - 1) * self.page_size: number * self.page_size]
            more = number * self.page_size < len(found)
        links = []
        if more:
            query = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in params.items() if k != "page"}
            if isinstance(params.get("collections"), list):
                query["collections"] = ",".join(params["collections"])
            query["page"] = str(number + 1)
            links.append({"rel": "next", "href": self.url + "/search?" + urllib.parse.urlencode(query),
                          "type": "application/geo+json", "method": "GET"})
        return {"type": "FeatureCollection", "features": features, "links": links}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _answer(self, params: dict[str, Any]) -> None:
                path = urllib.parse.urlsplit(self.path).path.rstrip("/")
                api.requests.append(f"{self.command} {self.path}")
                if path == "":
                    return self._send(200, api.landing())
                if path == "/conformance":
                    return self._send(200, {"conformsTo": [CORE, ITEM_SEARCH, QUERY]})
                if path != "/search":
                    return self._send(404, {"code": "NotFound", "description": path})
                number = int(params.get("page") or 1)
                if number in api.fail_once and number not in api._failed:
                    api._failed.add(number)
                    return self._send(503, {"code": "Unavailable", "description": "try again"})
                if api.slow_page == number:
                    time.sleep(api.slow_seconds)
                self._send(200, api.page(params, number))

            def do_GET(self) -> None:
                query = urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query)
                self._answer(dict(query))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                self._answer({**body, **query})

        return Handler
