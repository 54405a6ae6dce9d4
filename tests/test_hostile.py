"""Hostile and broken input through the installed ``ftfsearch`` command.

The corpus is generated here from real pixels (nothing binary is committed). Every file that
cannot be used must end in one stated skip naming it, the run in a non-zero exit when nothing
was ingested, never a traceback, and the store exactly as it was; files that can be used
(odd dtypes, band counts, GCPs, no CRS, odd paths) must be ingested completely.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.transform import from_origin

from ftfsearch.cli import app
from ftfsearch.model.loading import load_encoder
from ftfsearch.store import open_store
from ingest.pipeline import IngestOptions, ingest_paths
from ingest.tiling import TilingSpec

HERE = Path(__file__).resolve().parent
SCENE = HERE / "data" / "RGB.byte.tif"
FTF = Path(sys.executable).with_name("ftfsearch")
SPEC = TilingSpec(tile_size=64, levels=(1,))
CLI_SPEC = ["--tile-size", "64", "--levels", "1"]


def _write(path: Path, data: np.ndarray, **profile: object) -> Path:
    bands, h, w = data.shape
    base = dict(driver="GTiff", width=w, height=h, count=bands, dtype=data.dtype.name,
                crs=CRS.from_epsg(32618), transform=from_origin(101985.0, 2826915.0, 30.0, 30.0))
    base.update(profile)
    with rasterio.open(path, "w", **base) as ds:
        ds.write(data)
    return path


def _real_pixels(h: int = 128, w: int = 128) -> np.ndarray:
    """A window of real Landsat pixels (uint8, 3 bands) from the centre of the test scene."""
    with rasterio.open(SCENE) as ds:
        return ds.read(window=((300, 300 + h), (300, 300 + w)))


def _vrt(path: Path, width: int, height: int, source: Path, pixel: float = 300.0) -> Path:
    """A VRT of ``width x height`` pixels whose only source is the small test scene at its corner."""
    bands = "".join(
        f"""<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>
<SourceFilename relativeToVRT="0">{source}</SourceFilename><SourceBand>{b}</SourceBand>
<SrcRect xOff="0" yOff="0" xSize="791" ySize="718"/><DstRect xOff="0" yOff="0" xSize="791" ySize="718"/>
</SimpleSource></VRTRasterBand>"""
        for b in (1, 2, 3)
    )
    path.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
        f"<SRS>EPSG:32618</SRS><GeoTransform>101985.0, {pixel}, 0.0, 2826915.0, 0.0, -{pixel}</GeoTransform>"
        f"{bands}</VRTDataset>"
    )
    return path


def rejected_corpus(d: Path) -> list[Path]:
    """Files that cannot be ingested, each for its own reason."""
    d.mkdir(parents=True, exist_ok=True)
    raw = SCENE.read_bytes()
    pix = _real_pixels()
    files = []
    (d / "empty.tif").write_bytes(b"")
    files.append(d / "empty.tif")
    (d / "truncated.tif").write_bytes(raw[: len(raw) // 3])
    files.append(d / "truncated.tif")
    (d / "random.tif").write_bytes(np.random.default_rng(5).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    files.append(d / "random.tif")
    (d / "notes.tif").write_text("scene notes: ships near the harbour\n" * 50)
    files.append(d / "notes.tif")
    (d / "page.tif").write_text("<!DOCTYPE html><html><head><title>404</title></head><body>Not found</body></html>")
    files.append(d / "page.tif")
    files.append(_vrt(d / "zero_width.vrt", 0, 718, SCENE))
    files.append(_write(d / "one_pixel.tif", pix[:, :1, :1]))
    files.append(_write(d / "all_nodata.tif", np.zeros((3, 128, 128), np.uint8), nodata=0))
    files.append(_write(d / "all_nan.tif", np.full((1, 128, 128), np.nan, np.float32)))
    files.append(_write(d / "complex.tif", (pix[:1].astype(np.complex64) * (1 + 1j)), dtype="complex64"))
    # 2M x 2M pixels over a 791x718 source: at 0.1 m it fits its CRS but makes 61M windows;
    # at 300 m it reaches far outside the UTM zone's domain.
    files.append(_vrt(d / "huge.vrt", 2_000_000, 2_000_000, SCENE, pixel=0.1))
    files.append(_vrt(d / "huge_far.vrt", 2_000_000, 2_000_000, SCENE))
    return files


def accepted_corpus(d: Path) -> list[Path]:
    """Odd but usable rasters: each must be ingested completely."""
    d.mkdir(parents=True, exist_ok=True)
    pix = _real_pixels()
    five = np.concatenate([pix, pix[:2]]).astype(np.uint16) * 200
    files = [_write(d / "five_band_uint16.tif", five)]
    files.append(_write(d / "int8.tif", (pix.astype(np.int16) - 128).astype(np.int8)))
    gcps = [GroundControlPoint(row=r, col=c, x=-80.0 + c * 1e-3, y=25.0 - r * 1e-3)
            for r, c in ((0, 0), (0, 127), (127, 0), (127, 127))]
    gcp = _write(d / "gcp_only.tif", pix, crs=None, transform=None)
    with rasterio.open(gcp, "r+") as ds:
        ds.gcps = (gcps, CRS.from_epsg(4326))
    files.append(gcp)
    files.append(_write(d / "no_crs.tif", pix, crs=None, transform=from_origin(0, 128, 1, 1)))
    odd = d / "dir with spaces" / "Ålesund häfen 港.tif"
    odd.parent.mkdir()
    files.append(_write(odd, pix))
    return files


def _snapshot(store_dir: Path) -> dict:
    s = open_store(collection="tiles", store_dir=store_dir, qdrant_url=None, api_key=None, timeout=10.0,
                   read_only=True)
    try:
        scenes = {r.scene_id: (r.state, r.expected_tiles, r.fingerprint) for r in s.list_scenes()}
        return {"tiles": s.count_tiles(), "scenes": scenes}
    finally:
        s.close()


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The installed command, in its own process."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("FTF_DEBUG", None)
    return subprocess.run([str(FTF), *args], capture_output=True, env=env, timeout=300)


@dataclass
class _Run:
    returncode: int
    stdout: bytes
    stderr: bytes


def _cli_in_process(*args: str) -> _Run:
    """The same typer app in this process: the argument handling and error mapping under test,
    without paying the command's import time again (the batch tests above run the installed one)."""
    r = CliRunner().invoke(app, list(args), env={"NO_COLOR": "1", "FTF_DEBUG": None, "COLUMNS": "200"})
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"the CLI raised {r.exception!r}") from r.exception
    return _Run(r.exit_code, r.stdout_bytes, r.stderr_bytes)


def _lines(stream: bytes) -> list[str]:
    return [ln for ln in stream.decode("utf-8", "replace").splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def populated(tmp_path_factory, tiny_clip_dir) -> Path:
    """An embedded store holding one real scene, made in-process (the CLI is not under test here)."""
    store_dir = tmp_path_factory.mktemp("hostile") / "store"
    enc = load_encoder(str(tiny_clip_dir), device="cpu")
    s = open_store(collection="tiles", store_dir=store_dir, qdrant_url=None, api_key=None, timeout=10.0)
    try:
        done, failed = ingest_paths([SCENE], enc, s, IngestOptions(spec=SPEC))
        assert not failed and done[0].state == "complete"
    finally:
        s.close()
    return store_dir


def test_rejected_files_are_skipped_by_name_and_leave_the_store_unchanged(populated, tiny_clip_dir, tmp_path):
    files = rejected_corpus(tmp_path / "bad")
    before = _snapshot(populated)
    r = _cli("ingest", *map(str, files), "--store", str(populated), "--model", str(tiny_clip_dir), *CLI_SPEC)
    err = _lines(r.stderr)
    assert r.returncode == 2, r.stderr.decode()
    assert "Traceback" not in r.stderr.decode() and "internal error" not in r.stderr.decode()
    skipped = [ln for ln in err if ln.startswith("skipped: ")]
    for f in files:
        naming = [ln for ln in skipped if str(f) in ln]
        assert len(naming) == 1, (f.name, err)
    assert len(skipped) == len(files), err
    assert err[-1].startswith(f"error: nothing was ingested: {len(files)} of {len(files)} rasters skipped")
    assert _snapshot(populated) == before
    assert r.stdout.strip() == b""


def test_usable_odd_rasters_are_ingested_and_one_bad_file_gives_exit_1(tiny_clip_dir, tmp_path):
    files = accepted_corpus(tmp_path / "odd")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    store = tmp_path / "store"
    r = _cli_in_process("ingest", *map(str, files), str(empty), "--store", str(store), "--model",
                        str(tiny_clip_dir), *CLI_SPEC, "--json")
    text = r.stderr.decode()
    assert r.returncode == 1, text
    assert "Traceback" not in text
    summary = json.loads(r.stdout)
    assert [f["path"] for f in summary["failed"]] == [str(empty)]
    assert len(summary["scenes"]) == len(files)
    for s in summary["scenes"]:
        assert s["state"] == "complete" and s["tiles"] >= 4, s
    by_path = {s["path"]: s for s in summary["scenes"]}
    assert set(by_path) == {str(f) for f in files}
    # GCPs and missing CRS are stated, naming the file.
    for name in ("gcp_only.tif", "no_crs.tif"):
        assert any(ln.startswith("warning: ") and name in ln for ln in _lines(r.stderr)), (name, text)
    snap = _snapshot(store)
    assert snap["tiles"] == sum(s["tiles"] for s in summary["scenes"])
    assert all(state == "complete" for state, _, _ in snap["scenes"].values())
    assert "Alesund_hafen" in {sid for sid in snap["scenes"]}


@contextmanager
def _as_nobody() -> Iterator[None]:
    """Root reads any file: act as ``nobody`` (effective uid only, restored after)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.mark.parametrize("case", ["empty_directory", "symlink_loop", "missing", "unreadable"])
def test_paths_that_name_no_raster_fail_in_one_line(case, populated, tiny_clip_dir, tmp_path):
    before = _snapshot(populated)
    store = populated
    if case == "empty_directory":
        target = tmp_path / "nothing here"
        target.mkdir()
    elif case == "symlink_loop":
        target = tmp_path / "loop.tif"
        os.symlink(tmp_path / "loop2.tif", target)
        os.symlink(target, tmp_path / "loop2.tif")
    elif case == "missing":
        target = tmp_path / "gone.tif"
    else:
        # everything nobody must reach lives in a world-readable place; the raster itself is mode 000
        shared = Path(tempfile.mkdtemp(prefix="ftf-unreadable-"))
        os.chmod(shared, 0o777)
        target = _write(shared / "secret.tif", _real_pixels())
        os.chmod(target, 0)
        model = shared / tiny_clip_dir.name  # the model id includes the directory name
        shutil.copytree(tiny_clip_dir, model)
        store = shared / "store"
        shutil.copytree(populated, store)
        for p in [model, store, *model.rglob("*"), *store.rglob("*")]:
            os.chmod(p, 0o777 if p.is_dir() else 0o666)
    try:
        if case == "unreadable":
            # (nobody may not look into root's config directory either: name a config that is absent)
            with _as_nobody(), pytest.MonkeyPatch.context() as mp:
                mp.setenv("FTF_CONFIG", str(shared / "config.toml"))
                r = _cli_in_process("ingest", str(target), "--store", str(store), "--model", str(model), *CLI_SPEC)
        else:
            r = _cli_in_process("ingest", str(target), "--store", str(store), "--model", str(tiny_clip_dir), *CLI_SPEC)
        lines = _lines(r.stderr)
        text = r.stderr.decode()
        assert r.returncode == 2, text
        assert "Traceback" not in text and "internal error" not in text
        assert any(str(target) in ln for ln in lines), text
        assert lines[-1].startswith("error: "), text
        assert len([ln for ln in lines if ln.startswith(("error: ", "skipped: "))]) <= 2, text
        if case == "unreadable":
            assert any(ln.startswith("skipped: ") and "secret.tif" in ln for ln in lines), text
        assert _snapshot(store) == before
    finally:
        if case == "unreadable":
            shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["", "--k", "3"], "query"),
        (["  \t  "], "query"),
        (["ships", "--k", "0"], "--k"),
        (["ships", "--k", "-5"], "--k"),
        (["ships", "--k", str(10**12)], "--k"),
        (["ships", "--bbox", "10,10,0,0"], "--bbox"),
        (["ships", "--bbox", "1,2,3"], "--bbox"),
        (["ships", "--bbox", "nan,0,1,1"], "--bbox"),
    ],
)
def test_hostile_queries_fail_in_one_line(args, fragment, populated, tiny_clip_dir):
    r = _cli_in_process("query", *args, "--store", str(populated), "--model", str(tiny_clip_dir))
    text = r.stderr.decode()
    assert r.returncode == 2, text
    lines = _lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], text
    assert r.stdout == b""


@pytest.mark.parametrize(
    "query",
    [
        "x" * 20_000,
        "ships\x01\x1b[31m near\x7f a\u200b harbor\u202e",
        os.fsdecode(b"ships \xff\xfe near a harbor \xc3\x28"),
    ],
    ids=["20000_chars", "control_chars", "non_utf8_bytes"],
)
def test_odd_queries_answer_or_fail_cleanly(query, populated, tiny_clip_dir):
    r = _cli_in_process("query", query, "--k", "3", "--json", "--store", str(populated), "--model", str(tiny_clip_dir))
    text = r.stderr.decode("utf-8", "replace")
    assert "Traceback" not in text and "internal error" not in text, text
    assert r.returncode == 0, text
    results = json.loads(r.stdout)
    assert len(results) == 3 and all(res["scene_id"] == "RGB.byte" for res in results)
