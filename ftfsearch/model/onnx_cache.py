"""ONNX exports of the shipped model's towers, kept on disk so a process does not export again.

Exporting the image tower takes seconds and the text tower needs torch and transformers, which a
query must not import; the export of a given model is the same in every process, so it is written
once to the user cache directory (``FTF_ONNX_CACHE`` overrides it) and read by the next process.

- Keyed by what the export depends on: the tower, the model id (its weights digest), and the
  versions of onnxruntime, onnx and torch (the exporter); another key is another file.
- Written atomically: a temporary file in the same directory, then ``os.replace``; two processes
  that export at once both write whole files, and a reader sees one of them, never half of one.
- The graph is a plain ``.onnx`` file, so ONNX Runtime reads it itself (a query process saves the
  0.2 s of reading 93 MB into Python and copying it into the runtime); a ``.json`` header beside it
  names the key, the length and the CRC-32 of the graph, and the file's identity (inode, size,
  mtime) when it was written.
- Checked when read: a graph that is still the file its header describes is used as it is; one that
  was replaced or rewritten since is checked against the CRC-32; one that is truncated, altered or
  of another key is rebuilt, with one warning. (Damage that keeps the size and the mtime, bit rot,
  is not detected: the price of not reading 93 MB on every query.)
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
HEADER_VERSION = 2
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

    def header_path(self, root: Path | None = None) -> Path:
        return self.path(root).with_suffix(".json")


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _warn_once(kind: str, message: str) -> None:
    if kind not in _warned:
        _warned.add(kind)
        log.warning("%s", message)


def read_path(key: ExportKey) -> Path | None:
    """The cached graph's file, checked; None when there is none, or (with a warning) when it is
    stale or corrupt."""
    checked = _checked(key)
    return None if checked is None else checked[0]


def read(key: ExportKey) -> bytes | None:
    """The cached graph; None when there is none, or (with a warning) when it is stale or corrupt."""
    checked = _checked(key)
    if checked is None:
        return None
    path, graph = checked
    try:
        return graph if graph is not None else path.read_bytes()
    except OSError as exc:
        _warn_once(f"read:{path}", f"ONNX cache {path}: cannot be read ({exc.strerror or exc}); exporting again")
        return None


def _checked(key: ExportKey) -> tuple[Path, bytes | None] | None:
    """The graph's path if it can be used, with its bytes when checking them read them."""
    path, header_path = key.path(), key.header_path()
    try:
        header = header_path.read_bytes()
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        _warn_once(f"read:{path}", f"ONNX cache {path}: cannot be read ({exc.strerror or exc}); exporting again")
        return None
    why, graph = _invalid(header, path, st, key)
    if why is None:
        log.info("ONNX cache: %s (%.1f MB)", path, st.st_size / 1e6)
        if graph is not None:  # checked against its CRC: stamped, so the next process need not read it again
            _restamp(key, header, st)
        return path, graph
    _warn_once(f"bad:{path}", f"ONNX cache {path}: {why}; rebuilding it")
    return None


def _invalid(header: bytes, path: Path, st: os.stat_result, key: ExportKey) -> tuple[str | None, bytes | None]:
    """Why a cache file cannot be used (None: it can), and its bytes when the check read them."""
    try:
        fields = json.loads(header)
        version, parts = int(fields["version"]), fields["key"]
        length, crc, written = int(fields["length"]), int(fields["crc32"]), list(fields["identity"])
    except (ValueError, KeyError, TypeError):
        return "its header is unreadable (corrupt)", None
    if version != HEADER_VERSION:
        return "written by another version of ftfsearch (stale)", None
    if parts != key.parts():
        return "made for another model or library version (stale)", None
    if st.st_size != length:
        return f"{st.st_size} bytes where {length} were written (truncated or corrupt)", None
    if _identity(st) == written:
        return None, None  # the very file the header was written for
    try:
        graph = path.read_bytes()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})", None
    if zlib.crc32(graph) != crc:  # a checksum against damage, not a signature: 3x faster than sha256
        return "its contents do not match their checksum (corrupt)", None
    return None, graph


def write(key: ExportKey, graph: bytes) -> bool:
    """Store a graph atomically, then its header; False (said once) when the directory cannot take it."""
    root = cache_dir()
    path = key.path(root)
    tmps: list[str] = []
    try:
        root.mkdir(parents=True, exist_ok=True)
        _replace_with(path, graph, tmps)
        header = {"version": HEADER_VERSION, "key": key.parts(), "length": len(graph), "crc32": zlib.crc32(graph),
                  "identity": _identity(path.stat())}
        _replace_with(key.header_path(root), json.dumps(header).encode(), tmps)
        return True
    except OSError as exc:
        for tmp in tmps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        _warn_once(f"write:{root}", f"ONNX cache {root}: cannot be written ({exc.strerror or exc}); using the "
                   f"export from memory, so each process exports again (set {CACHE_ENV} to a writable directory)")
        return False


def _restamp(key: ExportKey, header: bytes, st: os.stat_result) -> None:
    """The header rewritten with the identity of the graph file just checked (a copied cache
    directory, say); best effort: a directory that cannot be written keeps checking the CRC."""
    fields = {**json.loads(header), "identity": _identity(st)}
    tmps: list[str] = []
    try:
        _replace_with(key.header_path(), json.dumps(fields).encode(), tmps)
    except OSError:
        for tmp in tmps:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _replace_with(path: Path, data: bytes, tmps: list[str]) -> None:
    """``path`` becomes a whole file of ``data`` at once (a temporary file, then ``os.replace``)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmps.append(tmp)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from other users of a shared cache
    os.replace(tmp, path)
    tmps.remove(tmp)


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
