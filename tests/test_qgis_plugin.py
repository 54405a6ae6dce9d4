"""The QGIS plugin (qgis_plugin/ftfsearch_qgis) in a real, headless QGIS against a real
``ftfsearch serve`` with API keys: built into its zip by ``make qgis-plugin``'s script, installed
and started as QGIS does, its buttons clicked (tests/_qgis_checks.py, run by the system Python
that Debian's python3-qgis belongs to). What its layers show is compared with serve's own answer
to the same request; a mark changes the next search; a wrong key, serve down, serve slow and an
error answer are each one message in the message bar, never a traceback.

Without python3-qgis the QGIS tests skip (``apt-get install -y qgis python3-qgis``); under CI
(``.ci/run`` installs it) they fail instead. The package checks at the top need no QGIS."""

from __future__ import annotations

import ast
import configparser
import json
import os
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from _holder import get_json
from _web_fixtures import SCENES, demo_store, free_port, ftfsearch_command, running_serve
from ftfsearch import __version__
from scripts.build_qgis_plugin import PLUGIN, build_zip

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")
CHECKS = Path(__file__).resolve().parent / "_qgis_checks.py"
QUERY = "a river"
K = 6


# -- the package, without QGIS ------------------------------------------------------------------


def test_zip_is_one_plugin_folder_with_metadata_icon_and_class_factory(tmp_path: Path) -> None:
    out = build_zip(tmp_path / "ftfsearch_qgis.zip")
    again = build_zip(tmp_path / "again.zip")
    assert out.read_bytes() == again.read_bytes()  # reproducible
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        meta = configparser.ConfigParser()
        meta.read_string(zf.read("ftfsearch_qgis/metadata.txt").decode())
        init = zf.read("ftfsearch_qgis/__init__.py").decode()
    assert {n.split("/")[0] for n in names} == {"ftfsearch_qgis"}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    general = meta["general"]
    assert general["qgisMinimumVersion"] == "3.22" and general["version"] == __version__
    assert f"ftfsearch_qgis/{general['icon']}" in names
    assert "def classFactory(iface" in init


def test_plugin_imports_only_the_standard_library_and_qgis_and_parses_as_python_3_9() -> None:
    """No torch, no model, no third-party package inside QGIS; QGIS 3.22's Windows build has Python 3.9."""
    allowed = set(sys.stdlib_module_names) | {"qgis"}
    for path in sorted(PLUGIN.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = {node.module.split(".")[0]}
            else:
                continue
            assert tops <= allowed | {"__future__"}, f"{path.name} imports {tops - allowed}"


def test_the_plugin_is_not_in_the_wheel_packages() -> None:
    """It installs into QGIS from its zip, not with pip: setuptools' package search must not take it."""
    from setuptools import find_packages

    found = find_packages(where=str(REPO), include=["ftfsearch*", "ingest*"])
    assert found and not [p for p in found if "qgis" in p]


# -- in QGIS ------------------------------------------------------------------------------------


def _qgis_version() -> str | None:
    if not SYSTEM_PYTHON.is_file():
        return None
    probe = subprocess.run([str(SYSTEM_PYTHON), "-c", "from qgis.core import Qgis; print(Qgis.QGIS_VERSION)"],
                           capture_output=True, text=True, timeout=120, env=_qgis_env(None))
    return probe.stdout.strip() or None if probe.returncode == 0 else None


def _qgis_env(home: Path | None) -> dict[str, str]:
    """The system Python's environment: none of this venv's variables; its own HOME (QGIS settings)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    if home is not None:
        runtime = home / "xdg-runtime"
        runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_RUNTIME_DIR=str(runtime))
    return env


@dataclass
class Run:
    url: str
    key: str
    out: dict[str, Any]
    png: Path


def _api_search(run: Run, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Serve's own answer to a search: GET with the parameters in the URL, or (an area object) POST."""
    auth = {"Authorization": f"Bearer {run.key}"}
    if "aoi" in params:
        req = urllib.request.Request(run.url + "/api/search", data=json.dumps(params).encode(), method="POST",
                                     headers={**auth, "Content-Type": "application/json"})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=120) as resp:
            return json.loads(resp.read())["results"]
    status, body = get_json(run.url + "/api/search?" + urllib.parse.urlencode(params, doseq=True), auth)
    assert status == 200, body
    return body["results"]  # type: ignore[index,no-any-return]


def _same(layer_rows: list[dict[str, Any]], hits: list[dict[str, Any]]) -> None:
    """The results layer holds the API's hits: same ranks, tiles, scores, dates and footprints."""
    assert [(r["rank"], r["tile_id"], r["scene_id"], r["level"], r["region_index"]) for r in layer_rows] == [
        (h["rank"], h["id"], h["scene_id"], h["level"], h["region_index"]) for h in hits]
    for row, hit in zip(layer_rows, hits):
        assert row["score"] == pytest.approx(hit["score"], abs=1e-9)
        assert row["coarse_score"] == pytest.approx(hit["coarse_score"], abs=1e-9)
        assert row["acquired"] == (hit["acquired"][:19] if hit["acquired"] else None)
        west, south, east, north = (float(v) for v in row["wkt_bbox"].replace(":", ",").split(","))
        assert [west, south, east, north] == pytest.approx(hit["bbox"], abs=1e-7)


@pytest.fixture(scope="module")
def qgis_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    version = _qgis_version()
    if version is None:
        why = f"{SYSTEM_PYTHON} cannot import qgis.core: apt-get install -y qgis python3-qgis (CI installs them)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the QGIS plugin test: {why}")
        pytest.skip(why)
    demo = demo_store(tmp_path_factory)
    root = tmp_path_factory.mktemp("qgis")
    env = {**os.environ, "FTF_CONFIG": str(root / "none.toml")}
    env.pop("FTF_KEYS_FILE", None)
    keys = root / "keys.json"
    made = subprocess.run([ftfsearch_command(), "keys", "add", "qgis-analyst", "--role", "read", "--keys", str(keys)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    command = [ftfsearch_command(), "serve", "--store", str(demo.store_dir), "--model", str(demo.model_dir),
               "--device", "cpu"]
    slow = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    slow.bind(("127.0.0.1", 0))
    slow.listen(8)
    try:
        with running_serve(command, {**env, "FTF_KEYS_FILE": str(keys)}, root / "serve.log", timeout=600,
                           ready=401) as (_, url):
            status, scenes = get_json(url + "/api/scenes", {"Authorization": f"Bearer {key}"})
            assert status == 200
            west, south, east, north = scenes["scenes"][0]["bbox"]  # type: ignore[index]
            png = root / "map.png"
            config = {
                "zip": str(build_zip(root / "dist" / "ftfsearch_qgis.zip")), "plugins_dir": str(root / "plugins"),
                "work": str(root), "url": url, "key": key, "query": QUERY, "k": K,
                "down_url": f"http://127.0.0.1:{free_port()}", "slow_url": f"http://127.0.0.1:{slow.getsockname()[1]}",
                "area_lonlat": [west, south, (west + east) / 2, north],
                "like_point": [(west + east) / 2, (south + north) / 2],
                "render": {"rasters": [str(p) for p in SCENES], "query": QUERY, "k": 10, "size": [480, 320],
                           "out": str(png), "fit": "scene"},
            }
            (root / "config.json").write_text(json.dumps(config))
            proc = subprocess.run([str(SYSTEM_PYTHON), str(CHECKS), str(root / "config.json"), str(root / "out.json")],
                                  capture_output=True, text=True, env=_qgis_env(root / "home"), timeout=600)
            assert proc.returncode == 0 and (root / "out.json").is_file(), proc.stderr[-3000:]
            out = json.loads((root / "out.json").read_text())
            assert "failed" not in out, out.get("failed")
            yield Run(url, key, out, png)
    finally:
        slow.close()


def test_plugin_installs_from_its_zip_and_loads(qgis_run: Run) -> None:
    loaded = qgis_run.out["loaded"]
    assert loaded["error"] == "" and loaded["version"] == __version__, loaded
    assert loaded["available"] and loaded["loaded"] and loaded["started"] and loaded["class"] == "FtfSearchPlugin"
    assert loaded["dock"] == "ftfsearchDock" and loaded["toolbar"] == 1 and loaded["menus"] == {"ftfsearch": 1}
    assert qgis_run.out["unloaded"] and qgis_run.out["toolbar_after_unload"] == 0


def test_a_search_fills_the_layers_with_the_apis_results(qgis_run: Run) -> None:
    search = qgis_run.out["search"]
    assert search["params"] == {"k": K, "q": QUERY}
    hits = _api_search(qgis_run, search["params"])
    assert len(hits) == K
    _same(search["results"], hits)
    regions = [(r["rank"], r["tile_id"], r["region_index"]) for r in search["regions"]]
    assert regions == [(h["rank"], h["id"], h["region_index"]) for h in hits if h["region_footprint"]] and regions
    assert search["messages"] == [{"title": "ftfsearch", "text": f"{K} results for {QUERY!r}", "level": 3}]


def test_a_mark_changes_the_next_search(qgis_run: Run) -> None:
    first, hit, miss = (qgis_run.out[k] for k in ("search", "hit", "miss_region"))
    top = first["results"][0]["tile_id"]
    assert hit["params"] == {"k": K, "q": QUERY, "like": [top]}
    hits = _api_search(qgis_run, hit["params"])
    _same(hit["results"], hits)
    assert [(r["tile_id"], r["score"]) for r in hit["results"]] != [(r["tile_id"], r["score"]) for r in first["results"]]
    assert [r["mark"] for r in hit["results"]] == ["hit" if r["tile_id"] == top else "" for r in hit["results"]]
    second = next(r for r in hit["regions"] if r["rank"] == 2)
    region_ref = f"{second['tile_id']}:{second['region_index']}"
    assert miss["params"] == {"k": K, "q": QUERY, "like": [top], "unlike_region": [region_ref]}
    _same(miss["results"], _api_search(qgis_run, miss["params"]))
    # the layers show the marks where the marked tiles and regions are among the results
    missed = (second["tile_id"], second["region_index"])
    assert [r["mark"] for r in miss["regions"]] == [
        "miss" if (r["tile_id"], r["region_index"]) == missed else "" for r in miss["regions"]]
    assert miss["marks_label"] == "1 hits, 1 misses"
    labels = qgis_run.out["labels"]
    marks = [{"id": top, "label": "positive", "region": None},
             {"id": second["tile_id"], "label": "negative", "region": second["region_index"]}]
    status, want = _post_json(qgis_run, "/api/labels/export", {"query": QUERY, "marks": marks})
    in_order = lambda c: {**c, "features": sorted(c["features"], key=lambda f: f["id"])}  # noqa: E731
    assert status == 200 and in_order(labels) == in_order(want) and len(want["features"]) == 2
    assert qgis_run.out["cleared_marks"] == "no marks"


def _post_json(run: Run, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(run.url + path, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {run.key}", "Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=120) as resp:
        return resp.status, json.loads(resp.read())


def test_the_map_extent_a_polygon_layer_and_a_selected_feature(qgis_run: Run) -> None:
    out = qgis_run.out
    extent = out["extent"]
    bbox = [float(v) for v in extent["params"]["bbox"].split(",")]
    assert set(extent["params"]) == {"k", "q", "bbox"}
    _same(extent["results"], _api_search(qgis_run, extent["params"]))
    for row in extent["results"]:
        west, south, east, north = (float(v) for v in row["wkt_bbox"].replace(":", ",").split(","))
        assert west <= bbox[2] and east >= bbox[0] and south <= bbox[3] and north >= bbox[1]
    polygon = out["polygon"]
    assert polygon["params"]["aoi"]["type"] in ("Polygon", "MultiPolygon") and "bbox" not in polygon["params"]
    _same(polygon["results"], _api_search(qgis_run, polygon["params"]))
    like = out["like_point"]
    assert set(like["params"]) == {"k", "like"}
    lon, lat = (float(v) for v in like["params"]["like"][0].split(","))
    assert lon == pytest.approx(qgis_run_point(qgis_run)[0], abs=1e-6)
    assert lat == pytest.approx(qgis_run_point(qgis_run)[1], abs=1e-6)
    _same(like["results"], _api_search(qgis_run, like["params"]))
    chosen = out["like_result"]
    assert chosen["params"] == {"k": K, "like": [like["results"][0]["tile_id"]]}
    _same(chosen["results"], _api_search(qgis_run, chosen["params"]))


def qgis_run_point(run: Run) -> list[float]:
    status, scenes = get_json(run.url + "/api/scenes", {"Authorization": f"Bearer {run.key}"})
    west, south, east, north = scenes["scenes"][0]["bbox"]  # type: ignore[index]
    return [(west + east) / 2, (south + north) / 2]


@pytest.mark.parametrize(("step", "says"), [
    ("wrong_key", "refused the API key: set a valid key in ftfsearch ▸ Settings"),
    ("down", "cannot reach ftfsearch serve at http://127.0.0.1:"),
    ("slow", "did not answer within 2 s"),
    ("bad_time", "ftfsearch serve: after 'not a time': not a date"),
])
def test_a_failure_is_one_message_in_the_bar_never_a_traceback(qgis_run: Run, step: str, says: str) -> None:
    seen = qgis_run.out[step]
    assert len(seen["messages"]) == 1, seen["messages"]
    (message,) = seen["messages"]
    assert says in message["text"] and message["level"] == 1, message  # Qgis.Warning
    assert "Traceback" not in message["text"] and "\n" not in message["text"]
    assert qgis_run.out["uncaught"] == [] and qgis_run.out["critical_log"] == []
    if step == "slow":
        assert seen["seconds"] < 30


def test_the_map_renders_the_scenes_under_the_results(qgis_run: Run) -> None:
    from PIL import Image

    render = qgis_run.out["render"]
    assert render["saved"] and all(render["rasters_valid"]) and render["results"] == 10
    with Image.open(qgis_run.png) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (480, 320)
        colours = rgb.getcolors(480 * 320) or []
    assert len(colours) > 200  # a scene drawn, not a blank canvas
