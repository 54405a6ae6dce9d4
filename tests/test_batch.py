"""Batches: the source list, its partition, failure records on both backends, and the CLI's bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import rasterio

from _data import SHARED_DATA
from ftfsearch.errors import BadInput
from ftfsearch.store.base import CollectionMeta, SourceFailure
from ingest.batch import ListEntry, Shard, expand_list, partition, read_list
from _cli import InProcess, assert_one_line_error

DATA = SHARED_DATA / "geotiffs"
SCENE = Path(__file__).resolve().parent / "data" / "RGB.byte.tif"
OTHER = DATA / "rasterio" / "rgb1.tif"
SMALL = DATA / "rio-tiler" / "cog_rgb.tif"


def _sources(n: int) -> list[ListEntry]:
    return [ListEntry(key=f"/data/scene_{i:04d}.tif", name=f"scene_{i:04d}.tif", line=i + 1) for i in range(n)]


# -- shard -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "1", "a/b", "1/2/3", "1.0/2", "/3", "3/"])
def test_malformed_shard_is_refused(text):
    with pytest.raises(BadInput, match=r"^shard .*K/N"):
        Shard.parse(text)


@pytest.mark.parametrize("text,why", [("3/3", "between 0 and N-1 = 2"), ("-1/3", "between 0 and N-1"),
                                      ("0/0", "N must be at least 1"), ("5/-2", "N must be at least 1")])
def test_out_of_range_shard_is_refused(text, why):
    with pytest.raises(BadInput, match=why):
        Shard.parse(text)


def test_shard_parses_with_spaces():
    assert Shard.parse(" 2 / 8 ") == Shard(2, 8) and str(Shard(2, 8)) == "2/8"


# -- partition ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_sources", [0, 1, 2, 5, 7, 100, 1001])
@pytest.mark.parametrize("n_parts", [1, 2, 3, 8])
def test_partition_covers_each_source_once_and_is_balanced(n_sources, n_parts):
    sources = _sources(n_sources)
    parts = [partition(sources, Shard(k, n_parts)) for k in range(n_parts)]
    keys = [s.key for part in parts for s in part]
    assert sorted(keys) == sorted(s.key for s in sources)  # union is everything, nothing twice
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1, sizes
    for part in parts:  # each part keeps the list's order
        assert [s.line for s in part] == sorted(s.line for s in part)


def test_partition_is_deterministic_and_independent_of_list_order():
    sources = _sources(50)
    shuffled = sources[::-1][25:] + sources[::-1][:25]
    for k in range(4):
        a = {s.key for s in partition(sources, Shard(k, 4))}
        assert a == {s.key for s in partition(shuffled, Shard(k, 4))}
        assert a == {s.key for s in partition(list(sources), Shard(k, 4))}
    # a fixed assignment: a change of hash or of dealing shows here, and would split reruns
    assert [s.name for s in partition(_sources(6), Shard(0, 3))] == ["scene_0000.tif", "scene_0004.tif"]


@pytest.mark.usefixtures("shared_data")
def test_partition_hashes_names_so_another_mount_point_agrees(tmp_path):
    for root in ("a", "b/c"):
        d = tmp_path / root / "scenes"
        d.mkdir(parents=True)
        for f in (SCENE, OTHER, SMALL):
            shutil.copy(f, d / f.name)
        (tmp_path / root / "list.txt").write_text("scenes/*.tif\n")
    a = [partition(expand_list(tmp_path / "a" / "list.txt"), Shard(k, 2)) for k in range(2)]
    b = [partition(expand_list(tmp_path / "b/c" / "list.txt"), Shard(k, 2)) for k in range(2)]
    assert [[s.name for s in p] for p in a] == [[s.name for s in p] for p in b]
    assert all(s.name.startswith("scenes/") for p in a for s in p)


# -- the list ------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("shared_data")
def test_list_skips_comments_and_blanks_resolves_against_its_directory_and_expands_globs(tmp_path, monkeypatch):
    d = tmp_path / "batch"
    (d / "scenes" / "sub").mkdir(parents=True)
    shutil.copy(SCENE, d / "scenes" / "b.tif")
    shutil.copy(OTHER, d / "scenes" / "a.tif")
    shutil.copy(SMALL, d / "scenes" / "sub" / "c.tif")
    (d / "scenes" / "a.tif.aux.xml").write_text("<PAMDataset/>")
    lst = d / "list.txt"
    lst.write_text(
        "# scenes of the batch\n\n   \n"
        "scenes/*.tif\n"                    # relative glob: against the list's directory
        "  scenes/b.tif  \n"                # again, and padded: listed once
        f"{d / 'scenes' / 'sub'}\n"         # a directory, absolute
        "scenes/missing.tif\n"
        "scenes/*.jp2\n"
        "https://example.com/scene.tif\n"  # read in place when ingested (test_remote.py)
        "s3://bucket/scene.tif\n"
    )
    monkeypatch.chdir(tmp_path)  # the working directory plays no part
    assert [n for n, _ in read_list(lst)] == [4, 5, 6, 7, 8, 9, 10]
    sources = expand_list(lst)
    assert [s.key for s in sources] == [
        str(d / "scenes" / "a.tif"), str(d / "scenes" / "b.tif"), str(d / "scenes" / "sub" / "c.tif"),
        str(d / "scenes" / "missing.tif"), str(d / "scenes" / "*.jp2"), "https://example.com/scene.tif",
        "s3://bucket/scene.tif",
    ]
    assert [s.name for s in sources][:3] == ["scenes/a.tif", "scenes/b.tif", "scenes/sub/c.tif"]
    assert [s.line for s in sources] == [4, 4, 6, 7, 8, 9, 10]
    assert [s.problem is None for s in sources] == [True, True, True, False, False, True, False]
    assert "line 7" in sources[3].problem and "no such file" in sources[3].problem
    assert "matches no raster" in sources[4].problem
    assert sources[5].source.key == "https://example.com/scene.tif" and sources[5].scene_id == "scene"
    assert "only http(s) URLs are read in place" in sources[6].problem and sources[6].source is None


@pytest.mark.parametrize("content,why", [
    (None, "no such file"), ("", "holds no sources"), ("# only\n\n  # comments\n", "holds no sources"),
    (b"\xff\xfe\x00binary", "not UTF-8"), ("dir", "is a directory"),
])
def test_unusable_list_is_one_clear_error(tmp_path, content, why):
    lst = tmp_path / "list.txt"
    if content == "dir":
        lst.mkdir()
    elif isinstance(content, bytes):
        lst.write_bytes(content)
    elif content is not None:
        lst.write_text(content)
    with pytest.raises(BadInput, match=why) as info:
        expand_list(lst)
    assert str(info.value).startswith(f"list_path {lst}")


# -- failure records, on both backends --------------------------------------------------------------


META = CollectionMeta(model_id="test:model", dim=8, num_regions=2, region_layout="grid-test")


def test_failure_records_round_trip_and_stay_out_of_the_scene_list(store):
    assert store.list_failures() == []  # no collection yet: nothing, no error
    store.ensure_collection(META)
    a = SourceFailure(source="/data/a.tif", message="/data/a.tif: no such file", scene_id="a", recorded_at="t1")
    b = SourceFailure(source="/data/*.jp2", message="matches no raster file")
    store.put_failure(b)
    store.put_failure(a)
    assert store.list_failures() == [b, a]  # by source
    store.put_failure(SourceFailure(source="/data/a.tif", message="again", scene_id="a", recorded_at="t2"))
    assert [f.message for f in store.list_failures()] == ["matches no raster file", "again"]
    assert store.list_scenes() == [] and store.get_scene("a") is None
    store.delete_failure("/data/a.tif")
    store.delete_failure("/data/never.tif")  # nothing recorded: no error
    assert store.list_failures() == [b]


# -- the CLI, embedded store ------------------------------------------------------------------------------


def _corrupt_copy(path: Path) -> Path:
    """A tiled, compressed GeoTIFF whose middle tiles are overwritten: it opens, then a read fails."""
    with rasterio.open(OTHER) as ds:
        profile, pixels = ds.profile, ds.read()
    # no nodata: an all-valid 8-bit raster opens without reading its pixels
    profile.update(driver="GTiff", tiled=True, blockxsize=64, blockysize=64, compress="deflate", nodata=None)
    with rasterio.open(path, "w", **profile) as out:
        out.write(pixels)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 20000] = b"\xff" * 20000
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture
def cli(tmp_path, tiny_clip_dir):
    env = {"FTF_STORE": str(tmp_path / "store"), "FTF_MODEL": str(tiny_clip_dir),
           "FTF_CONFIG": str(tmp_path / "none.toml")}
    return InProcess(env)


def _status(cli, lst: Path, *extra: str) -> tuple[int, dict]:
    proc = cli("batch", "status", "--from", str(lst), "--json", *extra)
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.usefixtures("shared_data")
def test_failed_entries_are_one_line_each_recorded_and_the_others_ingest(cli, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(SCENE, d / "good.tif")
    shutil.copy(SMALL, d / "small.tif")
    (d / "notes.tif").write_text("not a raster")
    _corrupt_copy(d / "damaged.tif")
    lst = d / "list.txt"
    lst.write_text("good.tif\nnotes.tif\nmissing.tif\ndamaged.tif\nnone-*.tif\nsmall.tif\n")
    tiling = ("--tile-size", "64", "--levels", "1", "--batch-size", "8")

    code, before = _status(cli, lst)
    assert code == 1 and before["counts"] == {"complete": 0, "ingesting": 0, "failed": 0, "not_started": 6}

    proc = cli("ingest", "--from", str(lst), *tiling)
    assert proc.returncode == 1, proc.stderr  # some failed, the others ingested
    assert "Traceback" not in proc.stderr
    failed_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("failed: ")]
    assert len(failed_lines) == 4, proc.stderr
    for needle in ("notes.tif", "missing.tif", "damaged.tif", "none-*.tif"):
        assert sum(needle in ln for ln in failed_lines) == 1, (needle, failed_lines)
    assert "good: complete" in proc.stderr and "small: complete" in proc.stderr
    assert "6 sources, 2 complete, 4 failed" in proc.stderr

    code, status = _status(cli, lst)
    assert code == 1
    assert status["counts"] == {"complete": 2, "ingesting": 0, "failed": 4, "not_started": 0}
    by_name = {Path(s["source"]).name: s for s in status["sources"]}
    assert by_name["good.tif"]["state"] == "complete" and by_name["good.tif"]["tiles"] > 0
    assert "not a readable raster" in by_name["notes.tif"]["error"]
    assert "no such file" in by_name["missing.tif"]["error"]
    assert "matches no raster" in by_name["none-*.tif"]["error"]
    assert "may be damaged" in by_name["damaged.tif"]["error"]
    # the damaged file failed part-way: its error sits on its scene record, which stays 'ingesting'
    scenes = {s["scene_id"]: s for s in json.loads(cli("scenes", "--json").stdout)}
    assert scenes["damaged"]["state"] == "ingesting" and scenes["damaged"]["tiles"] > 0
    assert set(scenes) == {"good", "small", "damaged"}  # failures of unopened files are no scenes

    pending = cli("batch", "status", "--from", str(lst), "--pending")
    assert pending.returncode == 1
    assert [Path(p).name for p in pending.stdout.split()] == ["notes.tif", "missing.tif", "damaged.tif", "none-*.tif"]
    text = cli("batch", "status", "--from", str(lst))
    assert "6 sources: 2 complete, 0 ingesting, 4 failed, 0 not started" in text.stderr
    assert "not a readable raster" in text.stdout

    # fix the inputs and rerun the same list: the failures clear, the rest is skipped
    lst.write_text("good.tif\nsmall.tif\n" + str(OTHER) + "\n")
    again = cli("ingest", "--from", str(lst), *tiling, "--json")
    assert again.returncode == 0, again.stderr
    written = {s["scene_id"]: s["written"] for s in json.loads(again.stdout)["scenes"]}
    assert written == {"good": 0, "small": 0, "rgb1": written["rgb1"]} and written["rgb1"] > 0
    code, status = _status(cli, lst)
    assert code == 0 and status["complete"] and status["counts"]["complete"] == 3
    assert cli("batch", "status", "--from", str(lst)).returncode == 0


@pytest.mark.usefixtures("shared_data")
def test_failure_is_cleared_when_the_source_later_succeeds(cli, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("late.tif\n")
    assert cli("ingest", "--from", str(lst), "--tile-size", "64", "--levels", "1").returncode == 1
    code, status = _status(cli, lst)
    assert status["sources"][0]["state"] == "failed"
    shutil.copy(SMALL, tmp_path / "late.tif")
    assert cli("ingest", "--from", str(lst), "--tile-size", "64", "--levels", "1").returncode == 0
    code, status = _status(cli, lst)
    assert code == 0 and status["sources"][0]["state"] == "complete"
    from ftfsearch.store import open_store

    db = open_store(collection="tiles", store_dir=tmp_path / "store", qdrant_url=None, api_key=None, timeout=5.0)
    try:
        assert db.list_failures() == []
    finally:
        db.close()


@pytest.mark.usefixtures("shared_data")
def test_bad_shard_and_list_arguments_give_one_line(cli, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(f"{SMALL}\n{SCENE}\n")
    for shard, needle in (("a/b", "K/N"), ("3/3", "N-1 = 2"), ("1/0", "at least 1"), ("-1/2", "between 0")):
        for cmd in (("ingest",), ("batch", "status")):
            assert_one_line_error(cli(*cmd, "--from", str(lst), "--shard", shard), f"--shard {shard!r}", needle)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    for cmd in (("ingest",), ("batch", "status")):
        assert_one_line_error(cli(*cmd, "--from", str(empty)), "--from", "empty.txt", "holds no sources")
        assert_one_line_error(cli(*cmd, "--from", str(tmp_path / "nope.txt")), "nope.txt", "no such file")
        assert_one_line_error(cli(*cmd, "--from", str(tmp_path)), "is a directory")
    assert_one_line_error(cli("ingest", str(SCENE), "--from", str(lst)), "not both")
    assert_one_line_error(cli("ingest", str(SCENE), "--shard", "0/2"), "--shard", "--from")
    assert_one_line_error(cli("ingest", "--from", str(lst), "--scene-id", "x"), "--scene-id")
    assert not (tmp_path / "store").exists()  # nothing was created by refused input


@pytest.mark.usefixtures("shared_data")
def test_a_part_with_no_sources_succeeds(cli, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(f"{SMALL}\n")
    parts = [cli("ingest", "--from", str(lst), "--shard", f"{k}/3", "--tile-size", "64", "--levels", "1")
             for k in range(3)]
    assert [p.returncode for p in parts] == [0, 0, 0]
    assert sum("no sources in this part" in p.stderr for p in parts) == 2
    assert cli("batch", "status", "--from", str(lst)).returncode == 0
