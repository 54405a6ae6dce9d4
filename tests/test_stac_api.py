"""``ingest --stac-api``: a STAC API search as a source, through the real pystac-client against a
STAC API served on loopback by the test (tests/_stac_api.py, real HTTP), its items written around
real rasters of ``../shared/data`` (the Sentinel-2 bands, rasterio's RGB.byte.tif): paging over
several pages with a 503 retried, the query extension, ``--limit``, ``--shard``, a re-run that
resumes; and the APIs that must be one line (not STAC, paging forever, a page that times out), with
what was found before kept."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _cli import assert_one_line_error, run
from _http_server import RangeServer
from _data import SHARED_DATA
from _scenes import s2_bands
from _stac_api import StacApi
from ftfsearch.errors import BadInput
from ingest.stac_api import ApiSearch, search_stac_api

pytestmark = pytest.mark.usefixtures("shared_data")

EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
RGB = SHARED_DATA / "geotiffs" / "rasterio" / "RGB.byte.tif"
TILING = ["--levels", "1", "--tile-size", "128", "--batch-size", "16"]
COMMON = {"B04": "red", "B03": "green", "B02": "blue"}
SLOW = 900
"""Seconds for one CLI run (a model load and an ingest): generous, for a loaded CI machine."""


def s2_item(place: str, cloud: float, when: str) -> dict[str, Any]:
    assets = {name: {"href": f"{{www}}/{path.name}", "type": "image/tiff; application=geotiff", "roles": ["data"],
                     "eo:bands": [{"name": name, "common_name": COMMON[name]}]}
              for name, path in zip(COMMON, s2_bands(place, *COMMON))}
    return {"type": "Feature", "stac_version": "1.0.0", "stac_extensions": [EO], "id": f"S2_{place}",
            "collection": "sentinel-2-l2a", "geometry": None, "bbox": None,
            "properties": {"datetime": when, "eo:cloud_cover": cloud, "platform": "sentinel-2a"},
            "links": [], "assets": assets}


def visual_item(item_id: str, cloud: float) -> dict[str, Any]:
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": "sentinel-2-l2a",
            "geometry": None, "properties": {"datetime": "2023-05-01T10:00:00Z", "eo:cloud_cover": cloud},
            "links": [], "assets": {"visual": {"href": f"{{www}}/{RGB.name}", "type": "image/tiff; application=geotiff"}}}


ITEMS = [s2_item("casablanca", 1.5, "2023-04-26T10:50:31Z"), visual_item("rgb_byte", 60.0),
         s2_item("honolulu", 4.0, "2023-06-02T21:00:00Z")]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[StacApi]:
    """The STAC API, its items' assets served over real HTTP (Range requests) by a second loopback server."""
    root = tmp_path / "www"
    root.mkdir()
    for path in [RGB, *s2_bands("casablanca", *COMMON), *s2_bands("honolulu", *COMMON)]:
        shutil.copyfile(path, root / path.name)
    with RangeServer(root) as www:
        items = json.loads(json.dumps(ITEMS).replace("{www}", www.url))
        with StacApi(items, page_size=1) as server:
            yield server


def env_for(tmp_path: Path, tiny_clip_dir: Path, **extra: str) -> dict[str, str]:
    return {"FTF_MODEL": str(tiny_clip_dir), "FTF_CONFIG": str(tmp_path / "none.toml"),
            "FTF_STORE": str(tmp_path / "store"), "FTF_STACK_DIR": str(tmp_path / "stacks"), **extra}


def scene_ids(env: dict[str, str]) -> set[str]:
    return {row["scene_id"] for row in json.loads(run("scenes", "--json", env=env).stdout or "[]")}


def test_a_search_over_pages_with_a_503_retried_ingests_each_item(api: StacApi, tmp_path: Path,
                                                                   tiny_clip_dir: Path) -> None:
    env = env_for(tmp_path, tiny_clip_dir)
    api.fail_once = {2}
    proc = run("ingest", "--stac-api", api.url, "--collections", "sentinel-2-l2a", "--query", "eo:cloud_cover<20",
               *TILING, "--json", env=env, timeout=SLOW)
    assert proc.returncode == 0, proc.stderr
    done = {s["scene_id"]: s for s in json.loads(proc.stdout)["scenes"]}
    assert set(done) == {"S2_casablanca", "S2_honolulu"}  # the cloudy item filtered by the API
    assert all(s["state"] == "complete" and s["tiles"] > 0 for s in done.values())
    searches = [r for r in api.requests if "/search" in r]
    assert len([r for r in searches if "page=2" in r]) == 2  # the 503, then its retry
    assert any("page=3" not in r and "page=2" not in r for r in searches)  # page 1, then 2 after the retry
    rows = {r["scene_id"]: r for r in json.loads(run("scenes", "--json", env=env).stdout)}
    assert rows["S2_honolulu"]["acquired"] == "2023-06-02T21:00:00Z"
    assert rows["S2_casablanca"]["stac"]["cloud_cover"] == 1.5
    assert rows["S2_casablanca"]["stac"]["collection"] == "sentinel-2-l2a"

    again = run("ingest", "--stac-api", api.url, "--collections", "sentinel-2-l2a", "--query", "eo:cloud_cover<20",
                *TILING, "--json", env=env, timeout=SLOW)  # the same search resumes: nothing written twice
    assert again.returncode == 0, again.stderr
    assert [s["written"] for s in json.loads(again.stdout)["scenes"]] == [0, 0]


def test_limit_and_shards_split_the_items(api: StacApi, tmp_path: Path, tiny_clip_dir: Path) -> None:
    found = search_stac_api(ApiSearch(url=api.url, collections=("sentinel-2-l2a",)), tmp_path / "stacks")
    assert [s.scene_id for s in found.scenes] == ["S2_casablanca", "rgb_byte", "S2_honolulu"]
    assert found.pages == 3 and found.stopped is None
    limited = search_stac_api(ApiSearch(url=api.url, collections=("sentinel-2-l2a",), limit=2), tmp_path / "s")
    assert [s.scene_id for s in limited.scenes] == ["S2_casablanca", "rgb_byte"]
    env = env_for(tmp_path, tiny_clip_dir)
    parts = []
    for k in range(2):
        proc = run("ingest", "--stac-api", api.url, "--collections", "sentinel-2-l2a", "--shard", f"{k}/2",
                   *TILING, "--json", env=env, timeout=SLOW)
        assert proc.returncode == 0, proc.stderr
        parts.append({s["scene_id"] for s in json.loads(proc.stdout)["scenes"]})
    assert parts[0] and parts[1] and not parts[0] & parts[1]
    assert parts[0] | parts[1] == {"S2_casablanca", "rgb_byte", "S2_honolulu"} == scene_ids(env)


def test_an_api_that_answers_json_that_is_not_stac_is_one_line(api: StacApi, tmp_path: Path,
                                                               tiny_clip_dir: Path) -> None:
    api.not_stac = True
    env = env_for(tmp_path, tiny_clip_dir)
    proc = run("ingest", "--stac-api", api.url, "--collections", "sentinel-2-l2a", *TILING, env=env, timeout=SLOW)
    assert_one_line_error(proc, "--stac-api", api.url, "not a STAC API")
    assert not (tmp_path / "store").exists()  # read before any write


def test_paging_forever_is_capped_and_said(api: StacApi, tmp_path: Path) -> None:
    api.forever = True
    found = search_stac_api(ApiSearch(url=api.url, collections=("sentinel-2-l2a",), max_pages=4), tmp_path / "s")
    assert len(found.scenes) == 4 and found.pages == 4
    assert found.stopped is not None and "still paging after 4 pages" in found.stopped
    with pytest.raises(BadInput, match="max_pages"):
        ApiSearch(url=api.url, collections=("c",), max_pages=0)


def test_a_page_that_times_out_keeps_what_was_found_before(api: StacApi, tmp_path: Path,
                                                           tiny_clip_dir: Path) -> None:
    api.slow_page, api.slow_seconds = 2, 4.0
    env = env_for(tmp_path, tiny_clip_dir, FTF_TIMEOUT="1")
    proc = run("ingest", "--stac-api", api.url, "--collections", "sentinel-2-l2a", *TILING, env=env, timeout=SLOW)
    assert proc.returncode == 1, proc.stderr  # the run is not whole
    assert "Traceback" not in proc.stderr
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "page 2: timed out" in warning[0] and "--stac-api" in warning[0], proc.stderr
    assert scene_ids(env) == {"S2_casablanca"}  # page 1's item, ingested and kept
