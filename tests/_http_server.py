"""A real HTTP file server on loopback for the remote-raster tests: it honours single byte
ranges (``Range: bytes=a-b``, ``bytes=a-``, ``bytes=-n``), answers HEAD with an ETag and a
Last-Modified, and counts the body bytes it serves per file, so a test can assert what GDAL's
``/vsicurl/`` actually fetched. Started and stopped by the test (a context manager), on a free
port of 127.0.0.1, in a child process (its own interpreter: rasterio holds the GIL during some
GDAL calls that fetch over HTTP, which would stall a server thread of the reading process);
the test reads the counters and sets ``vanish_after`` through ``/_stats`` and ``/_control``.
The child is terminated and waited for on exit: nothing is left behind."""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    """Serves the files of ``state.root`` and its counters; ``state`` is set per self.state."""

    state: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def _file(self) -> Path | None:
        name = self.path.split("?", 1)[0].lstrip("/")
        p = (self.state.root / name).resolve()
        if not (p.is_file() and self.state.root.resolve() in p.parents):
            return None
        gone = self.state.vanish_after is not None and self.state.served[p.name] >= self.state.vanish_after
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

    def _control(self) -> bool:
        if not self.path.startswith("/_"):
            return False
        if self.path.startswith("/_control"):
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query, keep_blank_values=True))
            with self.state._lock:
                if "reset" in query:
                    self.state.served.clear()
                    self.state.requests.clear()
                if "vanish_after" in query:
                    v = query["vanish_after"]
                    self.state.vanish_after = int(v) if v else None
        with self.state._lock:
            body = json.dumps({"served": dict(self.state.served), "requests": self.state.requests}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)
        return True

    def do_HEAD(self) -> None:  # noqa: N802
        p = self._file()
        with self.state._lock:
            self.state.requests.append(("HEAD", self.path, None))
        if p is None:
            return self._not_found()
        self._headers(p, 200, p.stat().st_size, {})

    def do_GET(self) -> None:  # noqa: N802
        if self._control():
            return
        p = self._file()
        rng = self.headers.get("Range")
        with self.state._lock:
            self.state.requests.append(("GET", self.path, rng))
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
        with self.state._lock:
            self.state.served[p.name] += len(body)


class _Server:
    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = root
        self.served: Counter[str] = Counter()
        """Body bytes sent per file name."""
        self.requests: list[tuple[str, str, str | None]] = []
        """``(method, name, range header)`` of every request."""
        self.vanish_after: int | None = None
        """Once this many bytes of a file were served, the file is gone (404): a source that
        disappears mid-ingest."""
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"state": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True


def _serve(root: str) -> None:
    """The child: serve ``root``, tell the parent the port on stdout, run until terminated."""
    server = _Server(Path(root))
    print(server.httpd.server_address[1], flush=True)
    try:
        server.httpd.serve_forever()
    finally:
        server.httpd.server_close()


class RangeServer:
    """The server in a child process, and its counters read over HTTP."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ask(self, query: str = "") -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_control?{query}", timeout=10) as resp:  # noqa: S310
            return json.loads(resp.read())

    @property
    def served(self) -> Counter[str]:
        """Body bytes sent per file name."""
        return Counter(self._ask()["served"])

    @property
    def requests(self) -> list[tuple[str, str, str | None]]:
        """``(method, path, range header)`` of every request."""
        return [tuple(r) for r in self._ask()["requests"]]

    @property
    def vanish_after(self) -> None:
        raise AttributeError("write-only")

    @vanish_after.setter
    def vanish_after(self, n: int | None) -> None:
        """Once ``n`` bytes of a file were served, the file is gone (404); None: back."""
        self._ask(f"vanish_after={'' if n is None else n}")

    def reset(self) -> None:
        self._ask("reset=1")

    def __enter__(self) -> "RangeServer":
        self._proc = subprocess.Popen(
            [sys.executable, __file__, str(self.root)], stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.strip().isdigit():
            self.__exit__(None, None, None)
            raise RuntimeError("the range server did not start")
        self.port = int(line)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


if __name__ == "__main__":
    _serve(sys.argv[1])
