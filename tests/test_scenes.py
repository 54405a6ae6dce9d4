"""Scene identity and input expansion."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from _data import SHARED_DATA
from ftfsearch.errors import BadInput
from ingest.scenes import (
    HEAD_TAIL_BYTES,
    SAMPLE_BYTES,
    SAMPLE_COUNT,
    default_scene_id,
    expand_paths,
    fingerprint,
)

GEOTIFFS = SHARED_DATA / "geotiffs"
FIXTURE = Path(__file__).resolve().parent / "data" / "RGB.byte.tif"
SHARED = sorted(GEOTIFFS.glob("*/*.tif")) if GEOTIFFS.is_dir() else []


def test_fingerprint_is_content_identity(tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "renamed.tif"
    copy.parent.mkdir()
    shutil.copyfile(FIXTURE, copy)
    fp = fingerprint(FIXTURE)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fingerprint(copy) == fp == fingerprint(str(FIXTURE))
    # a small file is hashed whole: any byte counts
    blob = bytearray(copy.read_bytes())
    blob[len(blob) // 3] ^= 1
    copy.write_bytes(bytes(blob))
    assert fingerprint(copy) != fp


@pytest.mark.usefixtures("shared_data")
def test_fingerprints_of_the_shared_rasters_are_distinct() -> None:
    prints = {fingerprint(p) for p in SHARED}
    assert len(prints) == len(SHARED)
    shared_rgb = next(p for p in SHARED if p.name == "RGB.byte.tif")
    assert fingerprint(shared_rgb) == fingerprint(FIXTURE)


def test_fingerprint_of_a_large_file_samples_head_tail_and_blocks(tmp_path: Path) -> None:
    size = 64 << 20
    path = tmp_path / "big.tif"
    with path.open("wb") as f:
        f.truncate(size)
    base = fingerprint(path)

    def flipped(offset: int) -> str:
        with path.open("r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
        try:
            return fingerprint(path)
        finally:
            with path.open("r+b") as f:
                f.seek(offset)
                f.write(byte)

    assert flipped(10) != base  # header
    assert flipped(size - 10) != base  # trailing IFD / tail
    middle = size - 2 * HEAD_TAIL_BYTES - SAMPLE_BYTES
    sampled = HEAD_TAIL_BYTES + middle * 3 // (SAMPLE_COUNT - 1) + 5
    assert flipped(sampled) != base  # a sampled block
    # the documented limit: a byte between samples in a same-size file is not seen
    unsampled = HEAD_TAIL_BYTES + middle // (2 * (SAMPLE_COUNT - 1))
    assert flipped(unsampled) == base
    assert fingerprint(path) == base
    with path.open("ab") as f:
        f.write(b"\0")
    assert fingerprint(path) != base  # the size is hashed


def test_fingerprint_does_not_read_a_huge_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "huge.tif"
    with path.open("wb") as f:
        f.truncate(8 << 30)  # 8 GiB, sparse: hashing it whole would take many seconds
    start = time.perf_counter()
    fingerprint(path)
    assert time.perf_counter() - start < 1.0


def test_fingerprint_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="missing.tif: no such file"):
        fingerprint(tmp_path / "missing.tif")
    with pytest.raises(BadInput, match="is a directory"):
        fingerprint(tmp_path)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("RGB.byte.tif", "RGB.byte"),
        ("/data/scenes/naip_2020-08-31.TIF", "naip_2020-08-31"),
        ("my scene (1).tiff", "my_scene_1"),
        ("Zürich Ost.jp2", "Zurich_Ost"),
        ("mosaic.vrt", "mosaic"),
        ("???.tif", "scene"),
        (".hidden.tif", "hidden"),
        ("no_suffix", "no_suffix"),
    ],
)
def test_default_scene_id_is_safe(name: str, expected: str) -> None:
    assert default_scene_id(name) == expected


def test_expand_paths(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "chips").mkdir()
    (tmp_path / ".cache").mkdir()
    files = {
        "a.tif": True,
        "sub/B.TIFF": True,
        "sub/deeper/c.vrt": True,
        "sub/d.jp2": True,
        "sub/e.img": True,
        "chips/f.jpg": True,
        "chips/g.JPEG": True,
        "chips/h.png": True,
        "chips/i.webp": True,
        "chips/f.jpg.aux.xml": False,
        "notes.txt": False,
        "a.tif.aux.xml": False,
        "a.tif.ovr": False,
        ".cache/x.tif": False,
        ".hidden.tif": False,
    }
    for rel in files:
        (tmp_path / rel).write_bytes(b"x")
    want = sorted((tmp_path / rel).resolve() for rel, keep in files.items() if keep)
    assert expand_paths([str(tmp_path)]) == want
    # duplicates across arguments are dropped, argument order is kept
    got = expand_paths([str(tmp_path / "sub" / "d.jp2"), str(tmp_path), str(tmp_path / "a.tif")])
    assert got[0] == (tmp_path / "sub" / "d.jp2").resolve()
    assert sorted(got) == want and len(got) == len(want)
    # globs: matched files minus sidecars; a matched directory is searched
    assert expand_paths([str(tmp_path / "a.*")]) == [(tmp_path / "a.tif").resolve()]
    assert expand_paths([str(tmp_path / "s*")]) == [p for p in want if "sub" in p.parts]
    assert expand_paths([str(tmp_path / "**" / "*.vrt")]) == [(tmp_path / "sub/deeper/c.vrt").resolve()]
    # an explicit file is taken whatever its suffix: the reader decides whether it is a raster
    assert expand_paths([str(tmp_path / "notes.txt")]) == [(tmp_path / "notes.txt").resolve()]


def test_expand_paths_refuses_what_names_nothing(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no input paths"):
        expand_paths([])
    with pytest.raises(BadInput, match="nope.tif: no such file"):
        expand_paths([str(FIXTURE), str(tmp_path / "nope.tif")])
    with pytest.raises(BadInput, match=r"\*.tif: matches no raster"):
        expand_paths([str(tmp_path / "*.tif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="empty: directory holds no rasters or images"):
        expand_paths([str(tmp_path / "empty")])
