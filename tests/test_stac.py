"""STAC items, catalogs and collections as scenes (``ingest ITEM.json | CATALOG.json``), on real
rasters from ``../shared/data``: the real Sentinel-2 L2A bands of ``sentinel2/`` (MIT, sen2ships)
as an item with separate band assets, a ``visual`` asset, ``--assets``, served from disk and from
a loopback HTTP server that honours Range requests; the time filter on the item's datetime; the
stored properties; ``--limit``; and the items and catalogs that must be one clear line (a link
loop, no RGB assets, an invalid datetime, not STAC, a 404 asset) with the store unchanged and a
re-run that resumes. The items and catalogs are written by the tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import rasterio
from fastapi.testclient import TestClient

from _http_server import RangeServer
from ftfsearch.config import Settings
from ftfsearch.errors import BadInput
from ftfsearch.web import create_app
from ingest.stac import StacScene, read_stac
from _cli import assert_one_line_error, run
from _data import SHARED_DATA
from _holder import Procs, cli, start_serve
from _scenes import s2_bands, split_bands

pytestmark = pytest.mark.usefixtures("shared_data")  # real scenes and the Sentinel-2 bands

RGB = SHARED_DATA / "geotiffs" / "rasterio" / "RGB.byte.tif"  # 791 x 718, 3 bands uint8, EPSG:32618
NAIP = SHARED_DATA / "geotiffs" / "opengeos_data" / "naip_m_4709963_se_14_1_20200831.tif"  # red, green, blue, nir
EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
TILING = ["--levels", "1", "--tile-size", "128", "--batch-size", "16"]
RGB_TILES = 27
"""RGB.byte.tif at 128 px, level 1: 7 x 6 windows, 15 of them mostly nodata (its black border)."""
S2_COMMON = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}


def env_for(tmp_path: Path, tiny_clip_dir: Path) -> dict[str, str]:
    return {"FTF_MODEL": str(tiny_clip_dir), "FTF_CONFIG": str(tmp_path / "none.toml"),
            "FTF_STORE": str(tmp_path / "store"), "FTF_STACK_DIR": str(tmp_path / "stacks")}


def item(item_id: str, assets: dict[str, dict[str, Any]], when: str | None = "2023-04-26T10:50:31Z",
         collection: str | None = "sentinel-2-l2a", **properties: Any) -> dict[str, Any]:
    """A STAC 1.0 item (EO extension) with these assets; ``when`` is its datetime."""
    d: dict[str, Any] = {
        "type": "Feature", "stac_version": "1.0.0", "stac_extensions": [EO], "id": item_id,
        "geometry": None, "properties": {"datetime": when, **properties}, "links": [], "assets": assets,
    }
    if collection is not None:
        d["collection"] = collection
    return d


def band_asset(href: str, common_name: str | None = None) -> dict[str, Any]:
    asset: dict[str, Any] = {"href": href, "type": "image/tiff; application=geotiff", "roles": ["data"]}
    if common_name is not None:
        asset["eo:bands"] = [{"name": Path(href).stem, "common_name": common_name}]
    return asset


def catalog(cat_id: str, children: Sequence[str] = (), items: Sequence[str] = (), kind: str = "Catalog") -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": kind, "stac_version": "1.0.0", "id": cat_id, "description": f"{cat_id} (test)",
        "links": [{"rel": "child", "href": c} for c in children] + [{"rel": "item", "href": i} for i in items],
    }
    if kind == "Collection":
        d.update(license="MIT", extent={"spatial": {"bbox": [[-180, -90, 180, 90]]},
                                        "temporal": {"interval": [[None, None]]}})
    return d


def write(path: Path, d: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d, indent=1))
    return path


def s2_item_dir(root: Path, place: str = "casablanca") -> Path:
    """The real Sentinel-2 bands of ``place`` copied beside an item that names them relatively,
    one asset per band with its eo:bands common name (B08 is nir: not shown)."""
    root.mkdir(parents=True, exist_ok=True)
    assets = {}
    for name, path in zip(S2_COMMON, s2_bands(place, *S2_COMMON)):
        shutil.copyfile(path, root / f"{name}.tif")
        assets[name] = band_asset(f"./{name}.tif", S2_COMMON[name])
    properties: dict[str, Any] = {"eo:cloud_cover": 1.5, "platform": "sentinel-2a", "gsd": 10,
                                  "constellation": "sentinel-2"}
    write(root / "item.json", item(f"S2_{place}", assets, **properties))
    return root / "item.json"


@pytest.fixture
def www(tmp_path: Path) -> Iterator[RangeServer]:
    root = tmp_path / "www"
    root.mkdir()
    with RangeServer(root) as server:
        yield server


# -- reading STAC (no model, no store) ------------------------------------------------------------


def test_band_assets_by_common_name_and_relative_hrefs(tmp_path: Path) -> None:
    href = s2_item_dir(tmp_path / "s2")
    [scene] = read_stac(str(href), tmp_path / "stacks")
    assert scene.scene_id == "S2_casablanca" and scene.acquired == "2023-04-26T10:50:31Z"
    assert [k for k, _ in scene.assets] == ["B04", "B03", "B02"]  # red, green, blue; B08 (nir) left out
    assert all(h == str(tmp_path / "s2" / f"{k}.tif") for k, h in scene.assets)  # against the item's place
    assert scene.properties == {"item": "S2_casablanca", "collection": "sentinel-2-l2a", "href": str(href),
                                "assets": ["B04", "B03", "B02"], "cloud_cover": 1.5, "gsd": 10,
                                "platform": "sentinel-2a", "constellation": "sentinel-2"}
    vrt = scene.raster()
    assert scene.raster() == vrt  # one VRT per distinct stack: the same scene on a re-run
    with rasterio.open(vrt) as ds:
        assert ds.count == 3 and [Path(f).name for f in ds.files[1:]] == ["B04.tif", "B03.tif", "B02.tif"]
    assert StacScene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene  # what the holder is sent


def test_stac_1_1_bands_start_datetime_and_a_visual_asset(tmp_path: Path) -> None:
    bands = split_bands(RGB, tmp_path / "bands")
    d = item("v11", {f"b{i}": {"href": str(p), "bands": [{"name": f"b{i}", "eo:common_name": c}]}
                     for i, (p, c) in enumerate(zip(bands, ("red", "green", "blue")), start=1)}, when=None,
             start_datetime="2020-01-02T03:04:05+01:00", end_datetime="2020-01-03T00:00:00Z")
    d["stac_version"], d["stac_extensions"] = "1.1.0", []
    [scene] = read_stac(str(write(tmp_path / "v11.json", d)), tmp_path / "stacks")
    assert [k for k, _ in scene.assets] == ["b1", "b2", "b3"] and scene.acquired == "2020-01-02T02:04:05Z"

    d["assets"]["visual"] = {"href": "https://example.com/tci.tif", "roles": ["visual"]}
    [scene] = read_stac(str(write(tmp_path / "v11.json", d)), tmp_path / "stacks")
    assert scene.assets == (("visual", "https://example.com/tci.tif"),)  # visual first
    [scene] = read_stac(str(tmp_path / "v11.json"), tmp_path / "stacks", assets=("b3", "b2", "b1"))
    assert [k for k, _ in scene.assets] == ["b3", "b2", "b1"]  # --assets first of all
    with pytest.raises(BadInput, match=r"^assets 'b1,b9,b3': .*has no asset 'b9' \(its assets: b1, b2, b3, visual\)"):
        read_stac(str(tmp_path / "v11.json"), tmp_path / "stacks", assets=("b1", "b9", "b3"))


def naip_asset(href: str, order: Sequence[str] = ("red", "green", "blue", "nir")) -> dict[str, Any]:
    """One four-band ``image`` asset, as NAIP items are published."""
    return {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"],
            "eo:bands": [{"name": c.title(), "common_name": c} for c in order]}


def test_one_asset_of_red_green_blue_and_nir_is_read_as_rgb(tmp_path: Path) -> None:
    """NAIP's one ``image`` asset: its red, green and blue bands by their place in eo:bands."""
    href = write(tmp_path / "naip.json", item("naip", {"image": naip_asset(str(NAIP)),
                                                       "thumbnail": {"href": "./thumb.jpg", "roles": ["thumbnail"]}}))
    [scene] = read_stac(str(href), tmp_path / "stacks")
    assert scene.error is None and scene.assets == (("image", str(NAIP)),) and scene.bands == (1, 2, 3)
    assert StacScene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene  # what the holder is sent
    write(tmp_path / "nir-first.json", item("nir-first", {"image": naip_asset(str(NAIP), ("nir", "red", "green", "blue"))}))
    [scene] = read_stac(str(tmp_path / "nir-first.json"), tmp_path / "stacks")
    assert scene.bands == (2, 3, 4)
    write(tmp_path / "rgb.json", item("rgb", {"image": naip_asset(str(RGB), ("red", "green", "blue"))}))
    [scene] = read_stac(str(tmp_path / "rgb.json"), tmp_path / "stacks")
    assert scene.bands is None  # exactly red, green, blue: the raster as it is


def test_a_naip_item_ingests_without_assets(tmp_path: Path, tiny_clip_dir: Path) -> None:
    env = env_for(tmp_path, tiny_clip_dir)
    # bands listed nir first: the scene must take bands 2, 3, 4 (the raster's own colour
    # interpretation would give 1, 2, 3)
    href = write(tmp_path / "naip.json", item("naip-nir-first", {"image": naip_asset(str(NAIP), ("nir", "red", "green", "blue"))},
                                              collection="naip"))
    proc = run("ingest", str(href), "--tile-size", "256", "--levels", "1", "--json", env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    [summary] = json.loads(proc.stdout)["scenes"]
    assert summary["state"] == "complete" and summary["tiles"] > 0 and summary["path"] == str(NAIP)
    [row] = json.loads(run("scenes", "--json", env=env).stdout)
    assert row["stac"]["assets"] == ["image"]
    from ftfsearch.store import open_store

    db = open_store(collection="tiles", store_dir=tmp_path / "store", qdrant_url=None, api_key=None, timeout=5.0,
                    read_only=True)
    try:
        record = db.get_scene("naip-nir-first")
        assert record is not None and record.tiling["bands"] == [2, 3, 4]
    finally:
        db.close()


def test_a_catalog_walk_reads_each_object_once_and_stops_at_the_limit(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write(tmp_path / "items" / f"{name}.json", item(name, {"visual": {"href": str(RGB)}}))
    write(tmp_path / "collection.json", catalog("col", items=["./items/a.json", "./items/b.json"], kind="Collection"))
    # the root links to the collection twice (through itself and a sub-catalog): a diamond, not a loop
    write(tmp_path / "sub" / "catalog.json", catalog("sub", children=["../collection.json"], items=["../items/c.json"]))
    write(tmp_path / "catalog.json", catalog("root", children=["./collection.json", "./sub/catalog.json"]))
    scenes = read_stac(str(tmp_path / "catalog.json"), tmp_path / "stacks")
    assert [s.scene_id for s in scenes] == ["a", "b", "c"]
    assert [s.scene_id for s in read_stac(str(tmp_path / "catalog.json"), tmp_path / "stacks", limit=2)] == ["a", "b"]


def test_a_link_loop_is_one_error(tmp_path: Path) -> None:
    write(tmp_path / "sub" / "catalog.json", catalog("sub", children=["../catalog.json"]))
    write(tmp_path / "catalog.json", catalog("root", children=["./sub/catalog.json"]))
    with pytest.raises(BadInput, match=r"sub/catalog.json: its child link leads back to .*catalog.json, a link loop"):
        read_stac(str(tmp_path / "catalog.json"), tmp_path / "stacks")
    write(tmp_path / "self.json", catalog("self", children=["./self.json"]))
    with pytest.raises(BadInput, match="leads back to itself, a link loop"):
        read_stac(str(tmp_path / "self.json"), tmp_path / "stacks")


def test_json_that_is_not_stac_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "text.json").write_text("not json at all")
    write(tmp_path / "other.json", {"hello": "world"})
    for name in ("text.json", "other.json"):
        with pytest.raises(BadInput, match=rf"{name}: not STAC JSON .*give a STAC item, catalog or collection"):
            read_stac(str(tmp_path / name), tmp_path / "stacks")
    with pytest.raises(BadInput, match="nope.json: no such file"):
        read_stac(str(tmp_path / "nope.json"), tmp_path / "stacks")


# -- ingest through the CLI ----------------------------------------------------------------------


def test_a_sentinel2_item_with_band_assets_is_one_timed_scene(tmp_path: Path, tiny_clip_dir: Path) -> None:
    env = env_for(tmp_path, tiny_clip_dir)
    href = s2_item_dir(tmp_path / "s2")
    proc = run("ingest", str(href), *TILING, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    [summary] = json.loads(proc.stdout)["scenes"]
    assert summary["scene_id"] == "S2_casablanca" and summary["state"] == "complete"
    assert summary["tiles"] == 12 and summary["path"].endswith("S2_casablanca.vrt")  # 511 x 339 at 128 px
    [row] = json.loads(run("scenes", "--json", env=env).stdout)
    assert row["acquired"] == "2023-04-26T10:50:31Z"
    assert row["stac"]["item"] == "S2_casablanca" and row["stac"]["cloud_cover"] == 1.5
    assert row["stac"]["collection"] == "sentinel-2-l2a" and row["stac"]["platform"] == "sentinel-2a"
    table = run("scenes", env=env).stdout
    assert "sentinel-2-l2a/S2_casablanca" in table and "cloud 1.5%" in table and "2023-04-26T10:50:31Z" in table
    settings = Settings(store_dir=tmp_path / "store", model=str(tiny_clip_dir), device="cpu")
    with TestClient(create_app(settings)) as client:  # the map page's scene list says the same
        [api_row] = client.get("/api/scenes").json()["scenes"]
    assert api_row["acquired"] == row["acquired"] and api_row["stac"] == row["stac"]

    inside = run("query", "a harbour", "--k", "3", "--after", "2023-04-26", "--before", "2023-04-27", "--json", env=env)
    assert inside.returncode == 0, inside.stderr
    hits = json.loads(inside.stdout)
    assert len(hits) == 3 and all(h["acquired"] == "2023-04-26T10:50:31Z" for h in hits)
    outside = run("query", "a harbour", "--after", "2023-05-01", "--json", env=env)
    assert outside.returncode == 0 and json.loads(outside.stdout) == []

    again = run("ingest", str(href), *TILING, "--json", env=env)  # the same item is the same scene
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["scenes"][0]["written"] == 0


def test_items_and_a_catalog_over_http(www: RangeServer, tmp_path: Path, tiny_clip_dir: Path) -> None:
    """A catalog served over HTTP: a visual-asset item and a band-asset item (a VRT of /vsicurl/
    sources), hrefs relative to the items' URLs; --limit 1 takes the first only."""
    env = env_for(tmp_path, tiny_clip_dir)
    root = www.root
    shutil.copyfile(RGB, root / "rgb.tif")
    for name, band in zip(("red", "green", "blue"), split_bands(RGB, tmp_path / "bands")):
        shutil.copyfile(band, root / f"{name}.tif")
    write(root / "items" / "visual.json", item("rgb-visual", {"visual": band_asset("../rgb.tif")},
                                               when="2021-06-01T12:00:00Z", collection=None))
    write(root / "items" / "bands.json", item("rgb-bands", {n: band_asset(f"../{n}.tif", n) for n in ("blue", "green", "red")},
                                              when="2021-06-02T12:00:00Z", collection=None))
    write(root / "catalog.json", catalog("served", items=["./items/visual.json", "./items/bands.json"]))

    first = run("ingest", f"{www.url}/catalog.json", "--limit", "1", *TILING, "--json", env=env)
    assert first.returncode == 0, first.stderr
    [visual] = json.loads(first.stdout)["scenes"]
    assert visual["scene_id"] == "rgb-visual" and visual["path"] == f"{www.url}/rgb.tif" and visual["tiles"] == RGB_TILES
    assert 0 < www.served["rgb.tif"] < 2 * RGB.stat().st_size  # read in place, about once

    both = run("ingest", f"{www.url}/catalog.json", *TILING, "--json", env=env)
    assert both.returncode == 0, both.stderr
    scenes = {s["scene_id"]: s for s in json.loads(both.stdout)["scenes"]}
    assert scenes["rgb-visual"]["written"] == 0 and scenes["rgb-bands"]["tiles"] == RGB_TILES
    vrt = Path(scenes["rgb-bands"]["path"])
    assert f"/vsicurl/{www.url}/red.tif" in vrt.read_text()
    assert all(www.served[f"{n}.tif"] > 0 for n in ("red", "green", "blue"))
    rows = {r["scene_id"]: r for r in json.loads(run("scenes", "--json", env=env).stdout)}
    assert rows["rgb-bands"]["acquired"] == "2021-06-02T12:00:00Z"
    assert rows["rgb-bands"]["stac"]["href"] == f"{www.url}/items/bands.json"
    chips = tmp_path / "chips"  # chips of a VRT over HTTP read the same stack
    q = run("query", "a river", "--k", "2", "--scene", "rgb-bands", "--chips", str(chips), "--json", env=env)
    assert q.returncode == 0, q.stderr
    assert len(list(chips.glob("*.png"))) == 2


def test_assets_name_the_rgb_bands(tmp_path: Path, tiny_clip_dir: Path) -> None:
    env = env_for(tmp_path, tiny_clip_dir)
    bands = split_bands(RGB, tmp_path / "bands")
    href = write(tmp_path / "item.json", item("plain", {k: band_asset(str(p)) for k, p in zip("rgb", bands)}))
    refused = run("ingest", str(href), *TILING, env=env)
    assert_one_line_error(refused, "--assets", "item.json", "no 'visual' asset", "(its assets: b, g, r)")
    assert not (tmp_path / "store").exists()  # refused before the store opens
    proc = run("ingest", str(href), "--assets", "r,g,b", *TILING, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["scenes"][0]["tiles"] == RGB_TILES
    bad = run("ingest", str(href), "--assets", "r,g", *TILING, env=env)
    assert_one_line_error(bad, "--assets 'r,g'", "red,green,blue")
    not_stac = run("ingest", str(RGB), "--limit", "2", env=env)
    assert_one_line_error(not_stac, "--limit", "STAC")


def test_an_invalid_datetime_is_one_line(tmp_path: Path, tiny_clip_dir: Path) -> None:
    env = env_for(tmp_path, tiny_clip_dir)
    href = write(tmp_path / "item.json", item("when", {"visual": band_asset(str(RGB))}, when="last tuesday"))
    proc = run("ingest", str(href), *TILING, env=env)
    assert_one_line_error(proc, "item.json", "datetime 'last tuesday' is not a date", "RFC 3339")
    assert not (tmp_path / "store").exists()


def test_a_catalog_loop_and_bad_items_in_a_catalog(tmp_path: Path, tiny_clip_dir: Path) -> None:
    env = env_for(tmp_path, tiny_clip_dir)
    write(tmp_path / "loop" / "sub" / "catalog.json", catalog("sub", children=["../catalog.json"]))
    write(tmp_path / "loop" / "catalog.json", catalog("root", children=["./sub/catalog.json"]))
    loop = run("ingest", str(tmp_path / "loop" / "catalog.json"), *TILING, env=env)
    assert_one_line_error(loop, "link loop", "remove that link")
    assert len(loop.stderr.strip().splitlines()) == 1 and not (tmp_path / "store").exists()

    # in a catalog, an unusable item fails alone and the others go on (exit 1)
    write(tmp_path / "cat" / "good.json", item("good", {"visual": band_asset(str(RGB))}))
    write(tmp_path / "cat" / "nothing.json", item("nothing", {"thumb": band_asset(str(RGB))}))
    write(tmp_path / "cat" / "when.json", item("when", {"visual": band_asset(str(RGB))}, when="2023-13-45"))
    write(tmp_path / "cat" / "catalog.json", catalog("cat", items=["./good.json", "./nothing.json", "./when.json"]))
    proc = run("ingest", str(tmp_path / "cat" / "catalog.json"), *TILING, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "skipped: --assets: " in proc.stderr and "nothing.json: item 'nothing' has no 'visual' asset" in proc.stderr
    assert "when.json: datetime '2023-13-45' is not a date" in proc.stderr and "Traceback" not in proc.stderr
    assert [r["scene_id"] for r in json.loads(run("scenes", "--json", env=env).stdout)] == ["good"]


def test_a_404_asset_is_one_line_and_a_rerun_resumes(www: RangeServer, tmp_path: Path, tiny_clip_dir: Path) -> None:
    env = env_for(tmp_path, tiny_clip_dir)
    write(www.root / "item.json", item("later", {"visual": band_asset("./later.tif")}))
    bands = split_bands(RGB, tmp_path / "bands")
    shutil.copyfile(bands[0], www.root / "red.tif")
    write(www.root / "bands.json", item("split", {"red": band_asset("./red.tif", "red"),
                                                  "green": band_asset("./green.tif", "green"),
                                                  "blue": band_asset("./blue.tif", "blue")}))
    for name, missing in (("item.json", "later.tif"), ("bands.json", "green.tif")):
        proc = run("ingest", f"{www.url}/{name}", *TILING, env=env)
        assert_one_line_error(proc, f"{www.url}/{name}: ", f"{www.url}/{missing}", "HTTP 404", "nothing was ingested")
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 2, proc.stderr  # skipped + summary
        assert json.loads(run("scenes", "--json", env=env).stdout) == []

    shutil.copyfile(RGB, www.root / "later.tif")  # the assets are published: a re-run ingests them
    shutil.copyfile(bands[1], www.root / "green.tif")
    shutil.copyfile(bands[2], www.root / "blue.tif")
    proc = run("ingest", f"{www.url}/item.json", f"{www.url}/bands.json", *TILING, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [(s["scene_id"], s["tiles"]) for s in json.loads(proc.stdout)["scenes"]] == [("later", RGB_TILES), ("split", RGB_TILES)]


def test_a_stac_ingest_through_the_serve_holding_the_store(tmp_path: Path, tiny_clip_dir: Path) -> None:
    env = {**os.environ, "FTF_CONFIG": str(tmp_path / "none.toml"), "FTF_STACK_DIR": str(tmp_path / "stacks"),
           "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("QDRANT_") and k not in ("FTF_STORE", "FTF_MODEL")}
    store = tmp_path / "store"
    href = s2_item_dir(tmp_path / "s2", "honolulu")
    procs = Procs()
    try:
        serve, _ = start_serve(procs, store, tiny_clip_dir, env, tmp_path / "serve.log")
        proc = cli(["ingest", str(href), "--store", str(store), "--model", str(tiny_clip_dir), *TILING, "--json"], env)
        assert proc.returncode == 0, proc.stderr
        assert "ingesting in 'ftfsearch serve'" in proc.stderr
        [summary] = json.loads(proc.stdout)["scenes"]
        assert summary["scene_id"] == "S2_honolulu" and summary["tiles"] == 12  # 424 x 316 at 128 px
        [row] = json.loads(cli(["scenes", "--json", "--store", str(store)], env).stdout)
        assert row["acquired"] == "2023-04-26T10:50:31Z" and row["stac"]["item"] == "S2_honolulu"
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=60)
    finally:
        procs.kill_all()


def test_stac_json_over_http_is_retried_like_gdal_reads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A busy server (503) is asked again, as GDAL asks again for a COG; a 404 is not."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import ingest.remote as remote

    body = json.dumps(item("busy", {"visual": {"href": "./busy.tif"}})).encode()
    answers = [503, 503, 200]
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
            pass

        def do_GET(self) -> None:  # noqa: N802
            asked.append(self.path)
            status = 404 if self.path != "/busy.json" else answers.pop(0)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body) if status == 200 else 0))
            self.end_headers()
            if status == 200:
                self.wfile.write(body)

    monkeypatch.setattr(remote, "HTTP_RETRY_DELAY_S", 0.01)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        [scene] = read_stac(f"{url}/busy.json", tmp_path / "stacks")
        assert scene.assets == (("visual", f"{url}/busy.tif"),) and asked == ["/busy.json"] * 3
        with pytest.raises(BadInput, match=r"gone.json: the server answered HTTP 404"):
            read_stac(f"{url}/gone.json", tmp_path / "stacks")
        assert asked[3:] == ["/gone.json"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def item_collection(path: Path, items: Sequence[dict[str, Any]]) -> Path:
    """A saved STAC API search: ``{"type": "FeatureCollection", "features": [items...]}``."""
    return write(path, {"type": "FeatureCollection", "features": list(items)})


def test_an_item_collection_is_one_scene_per_item(tmp_path: Path) -> None:
    shutil.copy(RGB, tmp_path / "rgb.tif")
    found = item_collection(tmp_path / "search.json", [
        item("first", {"visual": {"href": "rgb.tif"}}),  # relative: against the file
        {**item("second", {"visual": {"href": str(RGB)}}), "links": [{"rel": "self", "href": str(tmp_path / "2.json")}]},
        item("third", {"nir": {"href": str(RGB)}}),  # no RGB asset: this item alone fails
    ])
    first, second, third = read_stac(str(found), tmp_path / "stacks")
    assert first.href == f"{found}#first" and first.scene_id == "first" and first.properties["href"] == first.href
    assert first.assets == (("visual", str(tmp_path / "rgb.tif")),)
    assert second.href == str(tmp_path / "2.json") and second.assets == (("visual", str(RGB)),)
    assert third.error is not None and "third" in third.href
    assert [s.scene_id for s in read_stac(str(found), tmp_path / "stacks", limit=2)] == ["first", "second"]
    with pytest.raises(BadInput, match="feature 0 is not a STAC item"):
        read_stac(str(item_collection(tmp_path / "bad.json", [{"type": "Polygon"}])), tmp_path / "stacks")


def test_stac_items_and_an_item_collection_in_a_from_list(tmp_path: Path, tiny_clip_dir: Path) -> None:
    env = env_for(tmp_path, tiny_clip_dir)
    s2 = s2_item_dir(tmp_path / "s2")
    other, plain = RGB.parent / "rgb1.tif", RGB.parent / "world.rgb.tif"  # each raster once: one scene per file
    item_collection(tmp_path / "list" / "search.json", [
        item("rgb-a", {"visual": {"href": str(RGB)}}),
        item("rgb-b", {"visual": {"href": str(other)}}, when=None, start_datetime="2020-01-02T00:00:00Z",
             end_datetime="2020-01-03T00:00:00Z"),
    ])
    listing = tmp_path / "list" / "sources.txt"
    listing.write_text(f"{s2}\nsearch.json\n{plain}\n")
    done = run("ingest", "--from", str(listing), *TILING, "--json", env=env)
    assert done.returncode == 0, done.stderr
    summaries = {s["scene_id"]: s for s in json.loads(done.stdout)["scenes"]}
    assert set(summaries) == {"S2_casablanca", "rgb-a", "rgb-b", "world.rgb"}
    assert summaries["rgb-a"]["tiles"] == RGB_TILES
    rows = {r["scene_id"]: r for r in json.loads(run("scenes", "--json", env=env).stdout)}
    assert rows["S2_casablanca"]["acquired"] == "2023-04-26T10:50:31Z" and rows["rgb-a"]["stac"]["item"] == "rgb-a"
    assert rows["rgb-b"]["acquired"] == "2020-01-02T00:00:00Z" and rows["rgb-b"]["stac"]["href"].endswith("search.json#rgb-b")
    assert "stac" not in rows["world.rgb"]
    status = run("batch", "status", "--from", str(listing), "--json", env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["counts"]["complete"] == 4
    again = run("ingest", "--from", str(listing), *TILING, "--json", env=env)  # the same items: nothing new
    assert again.returncode == 0 and all(s["written"] == 0 for s in json.loads(again.stdout)["scenes"])
