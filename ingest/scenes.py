"""Scene identity: content fingerprints, default scene ids, and input path expansion."""

from __future__ import annotations

import glob
import hashlib
import re
import unicodedata
from pathlib import Path
from urllib.parse import urlsplit

from ftfsearch.errors import BadInput
from ftfsearch.raster import is_url
from ingest.remote import url_fingerprint

FINGERPRINT_VERSION = "ftf-fp1"
"""Bumped whenever the sampling below changes, so old and new fingerprints never collide."""
HEAD_TAIL_BYTES = 1 << 20
SAMPLE_BYTES = 64 << 10
SAMPLE_COUNT = 8
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".vrt", ".jp2", ".img"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
"""Plain images (drone and dataset chips): ingested like rasters, without a CRS unless a world
file or an .aux.xml gives them one."""
SIDECAR_SUFFIXES = (".ovr", ".aux.xml", ".msk", ".tfw", ".prj", ".xml")
_GLOB_CHARS = re.compile(r"[*?\[]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def fingerprint(path: str | Path) -> str:
    """A stable content identity of a raster file, without reading all of a large one.

    The hash covers the file size, the first and last MiB and ``SAMPLE_COUNT`` 64 KiB blocks
    at evenly spaced offsets. Why these bytes: a GeoTIFF's header, IFDs, georeferencing and
    tile offsets sit at the start (COG) or the end (many writers), so any re-encoding, crop,
    reprojection or metadata change moves them; the sampled blocks catch pixel edits that keep
    the layout. Files up to ``2 MiB + SAMPLE_COUNT * 64 KiB`` are hashed whole. The path and
    mtime are left out on purpose: a copy of a scene elsewhere is the same scene, and touching
    a file does not make it another one. The limit, stated honestly: an in-place edit of
    pixels confined to unsampled bytes of a large file, same size, keeps the fingerprint (such
    a file needs a new scene id). A VRT is hashed as its XML text, not its sources. A URL is
    identified without reading it whole (:func:`ingest.remote.url_fingerprint`).
    """
    if is_url(path):
        return url_fingerprint(str(path))
    p = Path(path)
    if not p.exists():
        raise BadInput(f"{p}: no such file")
    if p.is_dir():
        raise BadInput(f"{p}: is a directory, not a raster file")
    size = p.stat().st_size
    h = hashlib.sha256()
    h.update(f"{FINGERPRINT_VERSION}:{size}:".encode())
    try:
        with p.open("rb") as f:
            if size <= 2 * HEAD_TAIL_BYTES + SAMPLE_COUNT * SAMPLE_BYTES:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            else:
                h.update(f.read(HEAD_TAIL_BYTES))
                middle = size - 2 * HEAD_TAIL_BYTES - SAMPLE_BYTES
                for i in range(SAMPLE_COUNT):
                    f.seek(HEAD_TAIL_BYTES + middle * i // max(1, SAMPLE_COUNT - 1))
                    h.update(f.read(SAMPLE_BYTES))
                f.seek(size - HEAD_TAIL_BYTES)
                h.update(f.read(HEAD_TAIL_BYTES))
    except OSError as exc:
        raise BadInput(f"{p}: cannot be read ({exc.strerror or exc})") from exc
    return h.hexdigest()


def default_scene_id(path: str | Path) -> str:
    """The file stem as an id made of ``[A-Za-z0-9._-]`` (accents folded, others to ``_``)."""
    stem = Path(urlsplit(str(path)).path if is_url(path) else path).name
    for suffix in sorted(RASTER_SUFFIXES, key=len, reverse=True):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        stem = Path(stem).stem
    return safe_id(stem)


def safe_id(text: str) -> str:
    """``text`` as a scene id made of ``[A-Za-z0-9._-]`` (accents folded, others to ``_``)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    safe = _UNSAFE.sub("_", ascii_text).strip("_.-")
    return safe or "scene"


def is_stac(arg: str | Path) -> bool:
    """A STAC item, catalog or collection to ingest: a ``.json`` file or URL (ingest/stac.py)."""
    path = urlsplit(str(arg)).path if is_url(arg) else str(arg)
    return path.lower().endswith(".json")


def _is_raster(p: Path) -> bool:
    return p.suffix.lower() in RASTER_SUFFIXES or p.suffix.lower() in IMAGE_SUFFIXES


def _is_sidecar(p: Path) -> bool:
    return p.name.lower().endswith(SIDECAR_SUFFIXES)


def _visible(p: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in p.relative_to(root).parts)


def _directory_rasters(d: Path) -> list[Path]:
    return sorted(
        p for p in d.rglob("*") if p.is_file() and _is_raster(p) and _visible(p, d)
    )


def expand_paths(args: list[str]) -> list[Path | str]:
    """Raster files named by ``args``: files as given, directories searched recursively for
    ``*.tif *.tiff *.vrt *.jp2 *.img`` and the images ``*.jpg *.jpeg *.png *.webp`` (any case,
    hidden entries skipped), globs expanded
    (sidecars such as ``.ovr``/``.aux.xml`` dropped), ``http(s)://`` URLs kept as they are
    (strings). Sorted within each argument, duplicates
    removed, order of arguments kept; paths are absolute. A path or glob naming nothing is a
    :class:`BadInput` naming it.
    """
    if not args:
        raise BadInput("no input paths: give raster files, directories or globs")
    out: dict[Path | str, None] = {}
    for arg in args:
        if is_url(arg):  # read in place by GDAL; whether it is a raster shows when it opens
            out.setdefault(arg, None)
            continue
        p = Path(arg).expanduser()
        if p.is_file():
            found = [p]
        elif p.is_dir():
            found = _directory_rasters(p)
            if not found:
                raise BadInput(
                    f"{arg}: directory holds no rasters or images "
                    f"({', '.join(sorted(RASTER_SUFFIXES | IMAGE_SUFFIXES))})"
                )
        elif _GLOB_CHARS.search(arg):
            found = []
            for match in sorted(glob.glob(str(p), recursive=True)):
                m = Path(match)
                if m.is_dir():
                    found.extend(_directory_rasters(m))
                elif m.is_file() and not _is_sidecar(m):
                    found.append(m)
            if not found:
                raise BadInput(f"{arg}: matches no raster file")
        else:
            raise BadInput(f"{arg}: no such file or directory")
        for f in found:
            out.setdefault(f.resolve(), None)
    return list(out)
