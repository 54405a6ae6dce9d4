"""Rasters over HTTP(S), read in place by GDAL's ``/vsicurl/`` with windowed range requests.

A cloud-optimised GeoTIFF keeps its header and tile index at the front, so GDAL opens it with
one or two small range requests and then fetches only the tiles (or overview tiles) a read
touches; GDAL's block cache and ``/vsicurl/``'s chunk cache keep those fetched once per
process, so a whole ingest reads such a file about once. The GDAL settings of every remote
read (:data:`ftfsearch.raster.GDAL_HTTP_OPTIONS`, shared with the chips) bound the wait for a
slow server, retry transient failures, and stop GDAL from probing the server for sidecar files
and directory listings that a COG does not have.

The same timeouts and retries bound this module's own requests (the fingerprint's, and the STAC
JSON that :mod:`ingest.stac` reads through :func:`fetch_text`), so a STAC item and its COGs wait
for a server alike.

The scene fingerprint of a URL covers the size, the server's ETag and Last-Modified and the
first :data:`HEADER_BYTES` (the TIFF header and IFDs of a COG): never the whole file. A file
replaced on the server gets a new ETag or Last-Modified, hence a new fingerprint.
"""

from __future__ import annotations

import hashlib
import time
import urllib.error
import urllib.request

from ftfsearch.errors import BadInput
from ftfsearch.raster import GDAL_HTTP_OPTIONS

URL_FINGERPRINT_VERSION = "ftf-fp-url1"
HEADER_BYTES = 64 << 10
"""Bytes from the start of a remote file that its fingerprint hashes."""
HTTP_TIMEOUT_S = int(GDAL_HTTP_OPTIONS["GDAL_HTTP_TIMEOUT"])
"""Seconds without an answer after which one request fails (GDAL's ``GDAL_HTTP_TIMEOUT``)."""
HTTP_MAX_RETRY = int(GDAL_HTTP_OPTIONS["GDAL_HTTP_MAX_RETRY"])
HTTP_RETRY_DELAY_S = float(GDAL_HTTP_OPTIONS["GDAL_HTTP_RETRY_DELAY"])
TRANSIENT_HTTP_CODES = frozenset({429, 502, 503, 504})
"""Answers retried, as GDAL retries them: the server is busy or a gateway hiccuped."""


def _request(url: str, method: str, headers: dict[str, str] | None = None) -> tuple[dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    for attempt in range(HTTP_MAX_RETRY + 1):
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:  # noqa: S310 (http(s) only)
                return {k.lower(): v for k, v in resp.headers.items()}, resp.read() if method == "GET" else b""
        except urllib.error.HTTPError as exc:
            exc.close()  # the error is the response: its socket goes now, not with the exception
            if exc.code in TRANSIENT_HTTP_CODES and attempt < HTTP_MAX_RETRY:
                time.sleep(HTTP_RETRY_DELAY_S * 2**attempt)  # GDAL's back-off: the delay doubles
                continue
            raise BadInput(f"{url}: the server answered HTTP {exc.code} {exc.reason}; check the URL") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BadInput(f"{url}: cannot be reached ({reason}); check the URL and the network") from exc
    raise AssertionError("unreachable: the last attempt returns or raises")


def fetch_text(url: str) -> str:
    """The body of ``url`` as text (UTF-8), with the timeouts and retries of every remote read.

    Raises :class:`BadInput` naming the URL when it cannot be reached, answers an error, or is
    not UTF-8 text.
    """
    _, body = _request(url, "GET")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{url}: not UTF-8 text ({exc.reason}); check the URL") from exc


def url_fingerprint(url: str) -> str:
    """Identity of a remote raster from its size, ETag, Last-Modified and first bytes.

    Raises :class:`BadInput` naming the URL when the server cannot be reached, answers an
    error, or the file is empty.
    """
    head, _ = _request(url, "HEAD")
    size = head.get("content-length", "")
    if size == "0":
        raise BadInput(f"{url}: the file is empty")
    headers, first = _request(url, "GET", {"Range": f"bytes=0-{HEADER_BYTES - 1}"})
    if len(first) > HEADER_BYTES:  # a server that ignores Range sent the whole file
        first = first[:HEADER_BYTES]
    h = hashlib.sha256()
    h.update(
        f"{URL_FINGERPRINT_VERSION}:{size}:{head.get('etag', '')}:{head.get('last-modified', '')}:".encode()
    )
    h.update(first)
    return h.hexdigest()
