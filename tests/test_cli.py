"""The installed ``ftfsearch`` command end to end: ingest, query, scenes, info, drop, and bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _cli import InProcess, assert_one_line_error, run
from _data import TINY_CAPTIONS

SCENE = Path(__file__).resolve().parent / "data" / "RGB.byte.tif"
AUTO = "cuda:0" if torch.cuda.is_available() else "cpu"
"""Where ``auto`` puts an ingest on this host."""
MISSING_DEVICE = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
"""A device this host does not have."""


@pytest.fixture(params=["edge", pytest.param("server", marks=pytest.mark.server)])
def target(request, tmp_path, tiny_clip_dir) -> dict[str, str]:
    """Environment selecting a store on each backend and the tiny model."""
    env = {"FTF_MODEL": str(tiny_clip_dir), "FTF_CONFIG": str(tmp_path / "none.toml")}
    if request.param == "edge":
        env["FTF_STORE"] = str(tmp_path / "store")
    else:
        env["QDRANT_URL"] = request.getfixturevalue("qdrant_server")
        env["FTF_COLLECTION"] = f"cli_{tmp_path.name[-20:].replace('-', '_')}"
    return env


def test_ingest_query_scenes_info_drop(target, tmp_path):
    ing = run("ingest", str(SCENE), "--levels", "1,2", "--batch-size", "8", env=target)
    assert ing.returncode == 0, ing.stderr
    assert "RGB.byte: complete" in ing.stderr and f"tiles/s on {AUTO}" in ing.stderr
    assert re.search(r"read \d+\.\d s · encode \d+\.\d s · write \d+\.\d s", ing.stderr), ing.stderr

    scenes = json.loads(run("scenes", "--json", env=target).stdout)
    assert len(scenes) == 1 and scenes[0]["scene_id"] == "RGB.byte" and scenes[0]["state"] == "complete"
    tiles = scenes[0]["tiles"]
    assert tiles > 0

    again = run("ingest", str(SCENE), "--levels", "1,2", "--json", env=target)
    assert again.returncode == 0
    assert json.loads(again.stdout)["scenes"][0]["written"] == 0
    assert set(json.loads(again.stdout)["scenes"][0]["stages"]) == {"read", "encode", "write"}
    assert json.loads(again.stdout)["scenes"][0]["device"] == AUTO

    geo = tmp_path / "out" / "results.geojson"
    q = run("query", "ships near a harbor", "--k", "5", "--json", "--geojson", str(geo), env=target)
    assert q.returncode == 0, q.stderr
    results = json.loads(q.stdout)
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    for key in ("score", "coarse_score", "scene_id", "path", "level", "window", "bbox", "region"):
        assert key in results[0]
    assert set(results[0]["window"]) == {"col", "row", "width", "height"}
    assert results[0]["score"] >= results[-1]["score"]
    fc = json.loads(geo.read_text())
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 5
    ring = fc["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and all(-79.1 < x < -76.4 and 23.4 < y < 25.7 for x, y in ring)

    table = run("query", "ships near a harbor", "--k", "3", "--no-rerank", env=target)
    assert table.returncode == 0 and "RGB.byte" in table.stdout
    assert table.stderr.rstrip().endswith(" ms on cpu"), table.stderr  # one query: auto is the CPU

    info = json.loads(run("info", "--json", env=target).stdout)
    assert info["tiles"] == tiles and info["scenes"] == 1
    assert info["collection"] == target.get("FTF_COLLECTION", "tiles")
    assert info["device"] == AUTO
    assert json.loads(run("info", "--json", env={**target, "FTF_DEVICE": "banana"}).stdout)["device"] == (
        "banana (not available here)"
    )

    dropped = run("drop", "RGB.byte", env=target)
    assert dropped.returncode == 0 and f"{tiles} tiles removed" in dropped.stderr
    assert json.loads(run("scenes", "--json", env=target).stdout) == []
    assert_one_line_error(run("drop", "RGB.byte", env=target), "RGB.byte", "ftfsearch scenes")


def test_bad_input_gives_one_line(tmp_path, tiny_clip_dir):
    env = {"FTF_STORE": str(tmp_path / "store"), "FTF_MODEL": str(tiny_clip_dir),
           "FTF_CONFIG": str(tmp_path / "none.toml")}
    # Through the installed command once, to see that the entry point maps errors too.
    assert_one_line_error(run("ingest", str(tmp_path / "missing.tif"), env=env), "missing.tif")
    cli = InProcess(env)
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    assert_one_line_error(cli("ingest", str(text)), "notes.tif")
    assert_one_line_error(cli("ingest", str(SCENE), "--overlap", "1.5"), "--overlap")
    assert_one_line_error(cli("ingest", str(SCENE), "--bands", "4,2,1"), "--bands")
    assert_one_line_error(cli("query", "ships"), "does not exist", "ingest")
    assert cli("ingest", str(SCENE), "--levels", "2").returncode == 0
    assert_one_line_error(cli("query", "   "), "query")
    assert_one_line_error(cli("query", "ships", "--bbox", "10,0,5,1"), "--bbox")
    assert_one_line_error(cli("query", "ships", "--bbox", "a,b"), "--bbox")
    assert_one_line_error(cli("query", "ships", "--k", "0"), "--k")
    long = cli("query", "ships " * 200, "--k", "2", "--json")
    assert long.returncode == 0 and "truncated" in long.stderr
    assert_one_line_error(cli("query", "ships", "--model", "no-such-model-xyz"), "no-such-model-xyz")
    assert_one_line_error(cli("query", "ships", "--device", MISSING_DEVICE), "--device")
    assert_one_line_error(run("query", "ships", "--bbox", "0,1,0,0", env=env), "--bbox")


def test_query_by_example_and_labels(target, tmp_path):
    """--like/--unlike/--like-region by tile id, point and image file; labels export, import and
    query --labels; every bad example is one line naming the flag, and the store is unchanged."""
    cli = InProcess(target)
    assert cli("ingest", str(SCENE), "--levels", "1,2", "--batch-size", "8").returncode == 0
    tiles = json.loads(cli("scenes", "--json").stdout)[0]["tiles"]
    text = json.loads(cli("query", "ships near a harbor", "--k", "4", "--json").stdout)
    a, b = text[0]["id"], text[1]["id"]
    like = json.loads(cli("query", "--like", a, "--k", "4", "--json").stdout)
    assert len(like) == 4 and a not in [r["id"] for r in like]
    both = cli("query", "ships near a harbor", "--like", a, "--unlike", b, "--k", "4", "--json")
    assert both.returncode == 0 and not {a, b} & {r["id"] for r in json.loads(both.stdout)}
    w, s, e, n = text[0]["bbox"]
    point = cli("query", f"--like={(w + e) / 2},{(s + n) / 2}", "--k", "3", "--json")
    assert point.returncode == 0, point.stderr
    region = cli("query", "--like-region", f"{a}:4", "--k", "3")
    assert region.returncode == 0 and "+1 like" in region.stdout

    labels = tmp_path / "labels.geojson"
    exported = cli("labels", "export", "ships near a harbor", "--like", a, "--unlike", b, "-o", str(labels))
    assert exported.returncode == 0 and "wrote 2 labels" in exported.stderr
    fc = json.loads(labels.read_text())
    assert {f["properties"]["id"]: f["properties"]["label"] for f in fc["features"]} == {a: "positive", b: "negative"}
    listed = json.loads(cli("labels", "import", str(labels), "--json").stdout)
    assert listed["query"] == "ships near a harbor" and len(listed["labels"]) == 2
    again = json.loads(cli("query", "--labels", str(labels), "--k", "4", "--json").stdout)
    assert [r["id"] for r in again] == [r["id"] for r in json.loads(both.stdout)]

    bad_png = tmp_path / "empty.png"
    bad_png.write_bytes(b"")
    not_labels = tmp_path / "x.geojson"
    not_labels.write_text('{"type": "Feature"}')
    for args, needles in [
        (("query", "--like", "00000000-0000-0000-0000-000000000000"), ("--like", "not in collection")),
        (("query", "--like", "10,10"), ("--like '10,10'", "no stored tile contains this point")),
        (("query", "--like", str(bad_png)), ("--like", "is not an image")),
        (("query", "--like", "no-such-file.png"), ("--like", "not a tile id")),
        (("query", "--like", a, "--unlike", a), ("--unlike", "either liked or unliked")),
        (("query", "--like-region", f"{a}:99"), ("--like-region", "out of range")),
        (("query", "--unlike", a), ("--unlike:", "needs a text or at least one --like example")),
        (("query",), ("TEXT", "--like")),
        (("query", "--labels", str(not_labels)), ("--labels", "FeatureCollection")),
        (("labels", "import", str(not_labels)), ("labels", "FeatureCollection")),
        (("labels", "export", "-o", str(tmp_path / "o.geojson")), ("--like",)),
    ]:
        assert_one_line_error(cli(*args), *needles)
    assert json.loads(cli("scenes", "--json").stdout)[0]["tiles"] == tiles


def test_unreachable_server_is_one_line(tmp_path, tiny_clip_dir):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"QDRANT_URL": f"http://127.0.0.1:{port}", "FTF_MODEL": str(tiny_clip_dir), "FTF_TIMEOUT": "3",
           "QDRANT_API_KEY": "secret-key-123", "FTF_CONFIG": str(tmp_path / "none.toml")}
    proc = run("scenes", env=env, timeout=60)
    assert_one_line_error(proc, f"127.0.0.1:{port}")
    assert "secret-key-123" not in proc.stderr + proc.stdout


def test_second_process_on_the_embedded_store_gets_a_clear_error(tmp_path, tiny_clip_dir):
    """Hold the store open in one process; the CLI in another is refused with one line."""
    store_dir = tmp_path / "store"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from ftfsearch.store import open_store; "
         f"s = open_store(collection='tiles', store_dir=__import__('pathlib').Path({str(store_dir)!r}), "
         "qdrant_url=None, api_key=None, timeout=5); print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        env = {"FTF_STORE": str(store_dir), "FTF_MODEL": str(tiny_clip_dir), "FTF_CONFIG": str(tmp_path / "n.toml")}
        assert_one_line_error(run("scenes", env=env), str(store_dir))
    finally:
        holder.kill()
        holder.wait()


def test_eval_and_train_commands_on_a_tiny_real_split(tmp_path):
    """`ftfsearch eval --json` with the shipped model, and `train` for one short epoch, in process."""
    ucm = TINY_CAPTIONS.parent  # the committed cut of UCM-Captions: runs without ../shared
    data = json.loads(TINY_CAPTIONS.read_text())
    images = [im for im in data["images"] if im["split"] == "test"][:8]
    images += [dict(im, split="train") for im in data["images"] if im["split"] == "train"][:16]
    images += [dict(im, split="val") for im in data["images"] if im["split"] == "val"][:8]
    tiny = tmp_path / "dataset_tiny.json"
    tiny.write_text(json.dumps({"dataset": "tiny", "images": images}))
    cli = InProcess({"FTF_CONFIG": str(tmp_path / "none.toml")})
    common = ["--data", str(tiny), "--images", str(ucm / "images"), "--cache-dir", str(tmp_path / "cache")]
    ev = cli("eval", *common, "--split", "test", "--recall-k", "5", "--json")
    assert ev.returncode == 0, ev.stderr
    report = json.loads(ev.stdout)
    for stage in ("coarse", "ftf"):
        assert set(report[stage]["t2i"]) >= {"r1", "r5", "r10"} and 0 <= report[stage]["mR"] <= 100
    assert report["num_images"] == 8 and report["num_captions"] == 40
    assert report["device"] == AUTO
    out = tmp_path / "model"
    tr = cli("train", *common, "--out", str(out), "--epochs", "1", "--batch-size", "8", "--threads", "1")
    assert tr.returncode == 0, tr.stderr
    assert (out / "ftf_config.json").is_file() and "model written to" in tr.stderr
    assert f"training on {AUTO}" in tr.stderr
    again = cli("eval", *common, "--split", "test", "--model", str(out), "--recall-k", "5")
    assert again.returncode == 0 and "FTF" in again.stdout
    assert_one_line_error(cli("eval", "--data", str(tmp_path / "missing.json")), "missing.json")
    # train takes its device as the other commands do: flag, FTF_DEVICE, then the config file
    config = tmp_path / "config.toml"
    config.write_text('device = "banana"\n')
    for env in ({"FTF_CONFIG": str(tmp_path / "none.toml"), "FTF_DEVICE": "banana"}, {"FTF_CONFIG": str(config)}):
        assert_one_line_error(InProcess(env)("train", *common, "--out", str(tmp_path / "never"), "--epochs", "1"),
                              "banana")
    assert not (tmp_path / "never" / "ftf_config.json").exists()

    # several --data: each evaluated on its own, in order (a repeated option once kept only the last)
    other = tmp_path / "dataset_other.json"
    other.write_text(json.dumps({"dataset": "other", "images": images[:4] + images[8:24]}))
    both = cli("eval", "--data", str(tiny), "--data", str(other), "--images", str(ucm / "images"),
               "--images", str(ucm / "images"), "--cache-dir", str(tmp_path / "cache"), "--split", "test",
               "--recall-k", "5", "--json")
    assert both.returncode == 0, both.stderr
    reports = json.loads(both.stdout)
    assert [(r["dataset"], r["num_images"]) for r in reports] == [("tiny", 8), ("other", 4)]
    assert reports[0]["coarse"] == report["coarse"]
    assert_one_line_error(cli("eval", "--data", str(tiny), "--data", str(other), "--images", str(ucm / "images")),
                          "--images given 1 times for 2 --data files")
