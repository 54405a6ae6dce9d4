"""A real HTTP file server on loopback for the remote-raster tests: it honours single byte
ranges (``Range: bytes=a-b``, ``bytes=a-``, ``bytes=-n``), answers HEAD with an ETag and a
Last-Modified, and counts the body bytes it serves per file, so a test can assert what GDAL's
``/vsicurl/`` actually fetched. Started and stopped by the test (a context manager), on a free
port of 127.0.0.1, in a thread of the test process: nothing is left behind."""

from __future__ import annotations

import email.utils
import hashlib
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.served: Counter[str] = Counter()
        """Body bytes sent per file name."""
        self.requests: list[tuple[str, str, str | None]] = []
        """``(method, name, range header)`` of every request."""
        self.vanish_after: int | None = None
        """Once this many bytes of a file were served, the file is gone (404): a source that
        disappears mid-ingest."""
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                pass

            def _file(self) -> Path | None:
                name = self.path.split("?", 1)[0].lstrip("/")
                p = (server.root / name).resolve()
                if not (p.is_file() and server.root.resolve() in p.parents):
                    return None
                gone = server.vanish_after is not None and server.served[p.name] >= server.vanish_after
                return None if gone else p

            def _headers(self, p: Path, status: int, length: int, extra: dict[str, str]) -> None:
                st = p.stat()
                self.send_response(status)
                self.send_header("Content-Length", str(length))
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", '"' + hashlib.md5(f"{st.st_size}-{st.st_mtime_ns}".encode()).hexdigest() + '"')
                self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()

            def _not_found(self) -> None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802
                p = self._file()
                with server._lock:
                    server.requests.append(("HEAD", self.path, None))
                if p is None:
                    return self._not_found()
                self._headers(p, 200, p.stat().st_size, {})

            def do_GET(self) -> None:  # noqa: N802
                p = self._file()
                rng = self.headers.get("Range")
                with server._lock:
                    server.requests.append(("GET", self.path, rng))
                if p is None:
                    return self._not_found()
                data = p.read_bytes()
                size = len(data)
                status, extra, body = 200, {}, data
                if rng:
                    m = _RANGE.match(rng.strip())
                    if m is None:  # several ranges: not needed by GDAL's /vsicurl/, refused plainly
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    a, b = m.groups()
                    start, end = (size - int(b), size - 1) if a == "" else (int(a), min(int(b or size - 1), size - 1))
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status, body = 206, data[start : end + 1]
                    extra = {"Content-Range": f"bytes {start}-{end}/{size}"}
                self._headers(p, status, len(body), extra)
                self.wfile.write(body)
                with server._lock:
                    server.served[p.name] += len(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="range-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def reset(self) -> None:
        with self._lock:
            self.served.clear()
            self.requests.clear()

    def __enter__(self) -> "RangeServer":
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
