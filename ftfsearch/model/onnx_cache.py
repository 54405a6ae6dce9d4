"""ONNX exports of the shipped model's towers, kept on disk so a process does not export again.

Exporting the image tower takes seconds and the text tower needs torch and transformers, which a
query must not import; the export of a given model is the same in every process, so it is written
once to the user cache directory (``FTF_ONNX_CACHE`` overrides it) and read by the next process.

- Keyed by what the export depends on: the tower, the model id (its weights digest), and the
  versions of onnxruntime, onnx and torch (the exporter); another key is another file.
- Written atomically: a temporary file in the same directory, then ``os.replace``; two processes
  that export at once both write whole files, and a reader sees one of them, never half of one.
- Checked when read: a header names the key, the length and the CRC-32 of the graph; a file that
  is truncated, altered or of another key is rebuilt, with one warning.
- A directory that cannot be written (read-only, full): the export is used from memory, and the
  process says so once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "FTF_ONNX_CACHE"
"""A directory for the cached exports, instead of the user cache directory's ``onnx/``."""
MAGIC = b"FTF-ONNX 1\n"
_warned: set[str] = set()


def cache_dir() -> Path:
    """Where exports are kept: ``FTF_ONNX_CACHE``, else ``<user cache dir>/ftfsearch/onnx``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ftfsearch")) / "onnx"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


@dataclass(frozen=True)
class ExportKey:
    """What one export depends on. ``tower`` names the graph (``text``, ``image-224``)."""

    tower: str
    model_id: str

    def parts(self) -> dict[str, str]:
        return {"tower": self.tower, "model": self.model_id, "onnxruntime": _version("onnxruntime"),
                "onnx": _version("onnx"), "torch": _version("torch")}

    def path(self, root: Path | None = None) -> Path:
        digest = hashlib.sha256(json.dumps(self.parts(), sort_keys=True).encode()).hexdigest()[:20]
        return (root if root is not None else cache_dir()) / f"{self.tower}-{digest}.onnx"


def _warn_once(kind: str, message: str) -> None:
    if kind not in _warned:
        _warned.add(kind)
        log.warning("%s", message)


def read(key: ExportKey) -> bytes | None:
    """The cached graph; None when there is none, or (with a warning) when it is stale or corrupt."""
    path = key.path()
    try:
        with path.open("rb") as f:
            magic, header, graph = f.readline(), f.readline(), f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        _warn_once(f"read:{path}", f"ONNX cache {path}: cannot be read ({exc.strerror or exc}); exporting again")
        return None
    why = _invalid(magic, header, graph, key)
    if why is None:
        log.info("ONNX cache: read %s (%.1f MB)", path, len(graph) / 1e6)
        return graph
    _warn_once(f"bad:{path}", f"ONNX cache {path}: {why}; rebuilding it")
    return None


def _invalid(magic: bytes, header: bytes, graph: bytes, key: ExportKey) -> str | None:
    """Why a cache file cannot be used, or None."""
    if magic != MAGIC:
        return "not an ftfsearch ONNX cache file (corrupt)"
    try:
        fields = json.loads(header)
        parts, length, crc = fields["key"], int(fields["length"]), int(fields["crc32"])
    except (ValueError, KeyError, TypeError):
        return "its header is unreadable (corrupt)"
    if parts != key.parts():
        return "made for another model or library version (stale)"
    if len(graph) != length:
        return f"{len(graph)} bytes where {length} were written (truncated or corrupt)"
    if zlib.crc32(graph) != crc:  # a checksum against damage, not a signature: 3x faster than sha256
        return "its contents do not match their checksum (corrupt)"
    return None


def write(key: ExportKey, graph: bytes) -> bool:
    """Store a graph atomically; False (said once) when the directory cannot take it."""
    root = cache_dir()
    path = key.path(root)
    header = json.dumps({"key": key.parts(), "length": len(graph), "crc32": zlib.crc32(graph)})
    tmp: str | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + header.encode() + b"\n")  # one line: json.dumps escapes newlines
            f.write(graph)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from other users of a shared cache
        os.replace(tmp, path)
        return True
    except OSError as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        _warn_once(f"write:{root}", f"ONNX cache {root}: cannot be written ({exc.strerror or exc}); using the "
                   f"export from memory, so each process exports again (set {CACHE_ENV} to a writable directory)")
        return False


def cached_export(key: ExportKey, export: Callable[[], bytes]) -> bytes:
    """The graph for ``key``: from the cache, else exported now and stored for the next process."""
    graph = read(key)
    if graph is None:
        t0 = time.perf_counter()
        graph = export()
        log.info("ONNX cache: exported the %s tower of %s in %.1f s", key.tower, key.model_id, time.perf_counter() - t0)
        if write(key, graph):
            log.info("ONNX cache: stored %s", key.path())
    return graph
