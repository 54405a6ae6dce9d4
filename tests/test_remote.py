"""Rasters over HTTP read in place through GDAL's ``/vsicurl/``, against a real loopback server
that honours Range requests and counts the bytes it serves: opening, fingerprinting and the
stretch statistics read a small share of a COG, a whole ingest reads it about once, and a 404
or a file that disappears mid-ingest is one line (and a re-run resumes)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from _data import SHARED_DATA
from _http_server import RangeServer
from ftfsearch.errors import BadInput
from ingest.scenes import default_scene_id, expand_paths, fingerprint
from ingest.tiling import SceneReader, TilingSpec
from _cli import assert_one_line_error, run

SHARED = SHARED_DATA / "geotiffs"
COG = SHARED / "rio-tiler" / "cog.tif"  # 2658 x 2667 uint16, 256 px tiles, overviews 2..16, 0.8 MB


@pytest.fixture
def served(tmp_path: Path) -> Iterator[RangeServer]:
    root = tmp_path / "www"
    root.mkdir()
    shutil.copyfile(COG, root / "scene.tif")
    with RangeServer(root) as server:
        yield server


def env_for(tmp_path: Path, tiny_clip_dir: Path) -> dict[str, str]:
    return {"FTF_MODEL": str(tiny_clip_dir), "FTF_CONFIG": str(tmp_path / "none.toml"),
            "FTF_STORE": str(tmp_path / "store")}


@pytest.mark.usefixtures("shared_data")
def test_open_fingerprint_and_stretch_read_a_small_share(served: RangeServer) -> None:
    url = f"{served.url}/scene.tif"
    size = COG.stat().st_size
    fp = fingerprint(url)
    with SceneReader(url, TilingSpec()) as remote, SceneReader(COG, TilingSpec()) as local:
        assert (remote.width, remote.height, remote.crs, remote.gsd) == (local.width, local.height, local.crs, local.gsd)
        assert remote.style == local.style  # the same stretch, from the same overview
        assert remote.path == url and remote.bbox == local.bbox
    assert 0 < served.served["scene.tif"] < 0.2 * size, served.served
    assert all(rng is not None for method, _, rng in served.requests if method == "GET")  # ranges only
    assert fingerprint(url) == fp and len(fp) == 64
    assert fp != fingerprint(COG)  # a URL is identified by what its server says, not by a hash of all of it


@pytest.mark.usefixtures("shared_data")
def test_fingerprint_follows_the_servers_file(served: RangeServer) -> None:
    url = f"{served.url}/scene.tif"
    fp = fingerprint(url)
    target = served.root / "scene.tif"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # the last byte only: outside the hashed header, but a new ETag / Last-Modified
    target.write_bytes(bytes(data))
    assert fingerprint(url) != fp


def test_urls_pass_through_expansion_and_name_their_scene() -> None:
    url = "https://example.com/data/S2A_T31UDQ.tif?token=x"
    assert expand_paths([url, url]) == [url]
    assert default_scene_id(url) == "S2A_T31UDQ"


@pytest.mark.usefixtures("shared_data")
def test_a_whole_ingest_reads_the_file_about_once(served: RangeServer, tmp_path: Path, tiny_clip_dir: Path) -> None:
    env = env_for(tmp_path, tiny_clip_dir)
    url = f"{served.url}/scene.tif"
    proc = run("ingest", url, "--levels", "1", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)["scenes"][0]
    assert summary["scene_id"] == "scene" and summary["state"] == "complete" and summary["path"] == url
    assert summary["tiles"] == 11 * 11
    size = COG.stat().st_size
    # every full-resolution tile once, the header and the stretch overview: about one file's worth
    assert 0.8 * size < served.served["scene.tif"] < 1.3 * size, served.served

    # the tiles are those of the same file read locally
    with SceneReader(url, TilingSpec(levels=(1,))) as remote, SceneReader(COG, TilingSpec(levels=(1,))) as local:
        w = remote.windows()[60]
        assert np.array_equal(remote.read(w).pixels, local.read(w).pixels)

    chips = tmp_path / "chips"
    q = run("query", "a river", "--k", "2", "--json", "--chips", str(chips), env=env)
    assert q.returncode == 0, q.stderr
    assert all(r["path"] == url for r in json.loads(q.stdout)) and len(list(chips.glob("*.png"))) == 2

    served.reset()
    again = run("ingest", url, "--levels", "1", "--json", env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["scenes"][0]["written"] == 0
    assert served.served["scene.tif"] < 0.2 * size  # a complete scene is not read again


@pytest.mark.usefixtures("shared_data")
def test_a_missing_url_is_one_line(served: RangeServer, tmp_path: Path, tiny_clip_dir: Path) -> None:
    env = env_for(tmp_path, tiny_clip_dir)
    proc = run("ingest", f"{served.url}/nope.tif", env=env)
    assert_one_line_error(proc, "nope.tif", "404")
    assert json.loads(run("scenes", "--json", env=env).stdout) == []
    with pytest.raises(BadInput, match="HTTP 404"):
        fingerprint(f"{served.url}/nope.tif")
    with pytest.raises(BadInput, match="cannot be reached"):
        fingerprint("http://127.0.0.1:9/scene.tif")  # the discard port: nothing listens


@pytest.mark.usefixtures("shared_data")
def test_a_file_that_vanishes_mid_ingest_is_one_line_and_a_rerun_resumes(
    served: RangeServer, tmp_path: Path, tiny_clip_dir: Path
) -> None:
    env = env_for(tmp_path, tiny_clip_dir)
    url = f"{served.url}/scene.tif"
    served.vanish_after = COG.stat().st_size // 3
    proc = run("ingest", url, "--levels", "1", "--batch-size", "8", env=env)
    assert_one_line_error(proc, "scene.tif")
    assert proc.stderr.count("\n") <= 3, proc.stderr  # the skipped scene and the summary line
    scenes = json.loads(run("scenes", "--json", env=env).stdout)
    assert [s["state"] for s in scenes] in ([], ["ingesting"])
    stored = scenes[0]["tiles"] if scenes else 0

    served.vanish_after = None  # the file is back
    again = run("ingest", url, "--levels", "1", "--batch-size", "8", "--json", env=env)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)["scenes"][0]
    assert summary["state"] == "complete" and summary["already_stored"] == stored
    assert summary["tiles"] == 11 * 11


@pytest.mark.usefixtures("shared_data")
def test_a_source_list_ingests_urls(served: RangeServer, tmp_path: Path, tiny_clip_dir: Path) -> None:
    env = env_for(tmp_path, tiny_clip_dir)
    lst = tmp_path / "list.txt"
    lst.write_text(f"{served.url}/scene.tif\n{served.url}/gone.tif\n")
    proc = run("ingest", "--from", str(lst), "--levels", "2", "--json", env=env)
    assert proc.returncode == 1, proc.stderr  # one source failed, the other is complete
    status = json.loads(run("batch", "status", "--from", str(lst), "--json", env=env).stdout)
    states = {s["source"]: s["state"] for s in status["sources"]}
    assert states == {f"{served.url}/scene.tif": "complete", f"{served.url}/gone.tif": "failed"}
