"""A reverse proxy that serves an upstream under a path prefix, as the README's Caddy
(``handle_path /ftfsearch/*``) and nginx (``location /ftfsearch/ { proxy_pass http://up/; }``)
snippets do: ``/PREFIX/x`` goes upstream as ``/x``, ``/PREFIX`` redirects to ``/PREFIX/``, any other
path is a 404 of the proxy's own. Headers and bodies pass through; it runs in a thread of the test
process on a free loopback port, and counts what it forwarded."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
              "proxy-authenticate", "host", "content-length"}


class PrefixProxy:
    def __init__(self, upstream: str, prefix: str) -> None:
        self.upstream = urlsplit(upstream)
        self.prefix = prefix.rstrip("/")
        self.forwarded: list[str] = []
        """The upstream paths of every forwarded request."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                pass

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self) -> None:
                if self.path == proxy.prefix:
                    return self._reply(301, [("Location", proxy.prefix + "/")], b"")
                if not self.path.startswith(proxy.prefix + "/"):
                    return self._reply(404, [("Content-Type", "text/plain")], b"not under the prefix")
                path = self.path[len(proxy.prefix):]
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["X-Forwarded-Prefix"] = proxy.prefix
                conn = http.client.HTTPConnection(proxy.upstream.hostname or "127.0.0.1", proxy.upstream.port,
                                                  timeout=120)
                try:
                    conn.request(self.command, path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    proxy.forwarded.append(path)
                    self._reply(resp.status, resp.getheaders(), data)
                finally:
                    conn.close()

            do_GET = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="prefix-proxy", daemon=True)

    @property
    def url(self) -> str:
        """The prefixed base URL, with its trailing slash (where the page is)."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{self.prefix}/"

    def __enter__(self) -> "PrefixProxy":
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)
