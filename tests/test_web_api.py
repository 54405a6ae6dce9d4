"""The HTTP API of ``ftfsearch serve`` on a real store: every endpoint, and bad input answered
with a 4xx JSON error, never a 500 or a traceback."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image
from rasterio.warp import transform_bounds

from _web_fixtures import GEOTIFFS, DemoStore, demo_store
from ftfsearch.chips import OUTLINE_RGB
from ftfsearch.commands import INFO_COUNTS, InfoRequest, SceneRow, ScenesRequest
from ftfsearch.config import Settings
from ftfsearch.search import MAX_K
from ftfsearch.web import ServeOptions, create_app

QUERY = "ships near a harbor"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoStore:
    return demo_store(tmp_path_factory)


@pytest.fixture(scope="module")
def client(demo: DemoStore) -> Iterator[TestClient]:
    settings = Settings(store_dir=demo.store_dir, model=str(demo.model_dir), device="cpu")
    with TestClient(create_app(settings), raise_server_exceptions=True) as c:
        yield c


def png(resp) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(resp.content)))


def assert_json_error(resp, status: int | tuple[int, ...]) -> str:  # type: ignore[no-untyped-def]
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in resp.text
    return body["error"]


def outline_pixels(pixels: np.ndarray) -> int:
    return int(np.all(pixels[..., :3] == OUTLINE_RGB, axis=-1).sum())


# -- search -------------------------------------------------------------------------------------


def test_search_has_the_query_json_fields_plus_chip_url(client: TestClient) -> None:
    resp = client.get("/api/search", params={"q": QUERY, "k": 5})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["query"] == QUERY
    hits = body["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert {"encode_text", "recall", "rerank"} <= set(body["timings_ms"])
    assert "encode_text;dur=" in resp.headers["server-timing"]

    # The same records `ftfsearch query --json` prints (Result.to_dict), from the app's own searcher.
    res = client.app.state.resources  # type: ignore[attr-defined]
    with res.lock:
        expected = res.searcher().search(QUERY, k=5).results
    for hit, result in zip(hits, expected, strict=True):
        record = result.to_dict()
        assert set(hit) == set(record) | {"region_footprint", "chip_url"}  # nothing added beside the record
        for key, value in record.items():
            assert hit[key] == value, key
        assert hit["footprint"] == result.footprint and hit["footprint"][0] == hit["footprint"][-1]
        assert hit["region_index"] == result.region_index is not None
        assert hit["chip_url"] == f"/api/tiles/{hit['id']}/chip.png?region={hit['region_index']}"


def test_a_query_json_record_names_its_region_for_like_region(client: TestClient) -> None:
    """`query --json` printed no region_index (the API did), though --like-region asks for "a
    result's region_index": the record now carries it, and the tile's footprint, as the API's does."""
    from ftfsearch.export import results_to_json

    res = client.app.state.resources  # type: ignore[attr-defined]
    with res.lock:
        results = res.searcher().search(QUERY, k=3).results
    record = results_to_json(results)[0]
    assert record["region_index"] == results[0].region_index is not None
    assert record["footprint"] == results[0].footprint
    ref = f"{record['id']}:{record['region_index']}"
    hits = client.get("/api/search", params={"like_region": ref, "k": 3}).json()["results"]
    assert len(hits) == 3 and record["id"] not in {h["id"] for h in hits}  # the example itself is left out


def test_search_by_image_takes_the_same_parameters_as_get(client: TestClient) -> None:
    """One declaration of the search parameters: POST documents and checks them as GET does."""
    paths = client.get("/openapi.json").json()["paths"]["/api/search"]
    get = {p["name"]: p for p in paths["get"]["parameters"]}
    post = {p["name"]: p for p in paths["post"]["parameters"]}
    assert set(post) == set(get) | {"negative", "region"}
    for name, param in get.items():
        assert post[name] == param, name
        assert param.get("description"), name
    hit = client.get("/api/search", params={"q": QUERY, "k": 1}).json()["results"][0]
    chip = client.get(hit["chip_url"].split("?")[0]).content
    for bad, names in (({"k": "0"}, "k"), ({"bbox": "1,2,3"}, "bbox"), ({"rerank": "perhaps"}, "rerank")):
        resp = client.post("/api/search", params=bad, content=chip, headers={"Content-Type": "image/png"})
        assert names in assert_json_error(resp, (400, 422))


def test_region_footprint_is_where_the_region_lies_on_earth(client: TestClient) -> None:
    """Checked against the scene's own geotransform, reprojected independently."""
    from rasterio.warp import transform as warp

    hits = client.get("/api/search", params={"q": QUERY, "k": 50}).json()["results"]
    assert hits and all(h["region_footprint"] for h in hits)
    for hit in hits:
        ring = hit["region_footprint"]
        assert ring[0] == ring[-1]
        rw = hit["region_window"]
        with rasterio.open(hit["path"]) as ds:
            cols = [rw["col"], rw["col"] + rw["width"], rw["col"] + rw["width"], rw["col"]]
            rows = [rw["row"], rw["row"], rw["row"] + rw["height"], rw["row"] + rw["height"]]
            xs, ys = zip(*(ds.transform @ (c, r) for c, r in zip(cols, rows)))
            lon, lat = warp(ds.crs, "EPSG:4326", list(xs), list(ys))
            pixel_deg = abs(ds.res[0] / 111_000)
        # corners agree to about a pixel (region_window rounds to whole pixels)
        for x, y in zip(lon, lat):
            assert min(abs(x - px) + abs(y - py) for px, py in ring) < 3 * pixel_deg, hit["id"]
        w, s_, e, n = hit["bbox"]
        assert all(w - 1e-9 <= x <= e + 1e-9 and s_ - 1e-9 <= y <= n + 1e-9 for x, y in ring)
    no_rerank = client.get("/api/search", params={"q": QUERY, "k": 3, "rerank": "false"}).json()["results"]
    assert all(h["region_footprint"] is None for h in no_rerank)


def test_search_without_rerank_keeps_recall_order_and_draws_no_region(client: TestClient) -> None:
    hits = client.get("/api/search", params={"q": QUERY, "k": 4, "rerank": "false"}).json()["results"]
    assert len(hits) == 4
    assert all(h["region"] is None and h["region_index"] is None and h["fine_score"] is None for h in hits)
    assert [h["score"] for h in hits] == [h["coarse_score"] for h in hits]
    assert all(h["chip_url"].endswith("/chip.png") for h in hits)


def test_search_filters_by_bbox_and_scene(client: TestClient, demo: DemoStore) -> None:
    rgb, other = demo.scene_ids
    with rasterio.open(GEOTIFFS / "rasterio" / "RGB.byte.tif") as ds:
        w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    box = f"{w:.4f},{s:.4f},{e:.4f},{n:.4f}"
    hits = client.get("/api/search", params={"q": QUERY, "k": 50, "bbox": box}).json()["results"]
    assert hits and {h["scene_id"] for h in hits} == {rgb}
    # Nothing was ingested in the Gulf of Guinea.
    resp = client.get("/api/search", params={"q": QUERY, "bbox": "0,0,1,1"})
    assert resp.status_code == 200 and resp.json()["results"] == []
    hits = client.get("/api/search", params=[("q", QUERY), ("k", "50"), ("scene", other)]).json()["results"]
    assert hits and {h["scene_id"] for h in hits} == {other}
    both = client.get("/api/search", params=[("q", QUERY), ("k", "50"), ("scene", rgb), ("scene", other)])
    assert {h["scene_id"] for h in both.json()["results"]} == {rgb, other}


@pytest.mark.parametrize(
    ("params", "status", "names"),
    [
        ({}, 400, "q:"),
        ({"q": ""}, 400, "query"),
        ({"q": " \t\n "}, 400, "query"),
        ({"q": QUERY, "k": "0"}, 422, "k"),
        ({"q": QUERY, "k": str(MAX_K + 1)}, 422, "k"),
        ({"q": QUERY, "k": "ten"}, 422, "k"),
        ({"q": QUERY, "k": "-3"}, 422, "k"),
        ({"q": QUERY, "recall_k": "0"}, 422, "recall_k"),
        ({"q": QUERY, "recall_k": "99999999"}, 422, "recall_k"),
        ({"q": QUERY, "rerank": "perhaps"}, 422, "rerank"),
        ({"q": QUERY, "bbox": "1,2,3"}, 400, "bbox"),
        ({"q": QUERY, "bbox": "a,b,c,d"}, 400, "bbox"),
        ({"q": QUERY, "bbox": "10,0,5,1"}, 400, "bbox"),
        ({"q": QUERY, "bbox": "0,10,1,5"}, 400, "bbox"),
        ({"q": QUERY, "bbox": "-200,0,0,1"}, 400, "bbox"),
        ({"q": QUERY, "bbox": "nan,0,1,1"}, 400, "bbox"),
        ({"q": "x" * 9000}, 422, "q"),
    ],
)
def test_search_rejects_bad_parameters_with_json(client: TestClient, params: dict, status: int, names: str) -> None:
    message = assert_json_error(client.get("/api/search", params=params), status)
    assert names in message


def test_search_with_unknown_scene_is_empty_not_an_error(client: TestClient) -> None:
    resp = client.get("/api/search", params={"q": QUERY, "scene": "no-such-scene"})
    assert resp.status_code == 200 and resp.json()["results"] == []


# -- chips --------------------------------------------------------------------------------------


def test_chip_is_the_tile_with_its_region_outlined(client: TestClient) -> None:
    hits = client.get("/api/search", params={"q": QUERY, "k": 20}).json()["results"]
    level1 = next(h for h in hits if h["level"] == 1)
    with_region = png(client.get(level1["chip_url"]))
    assert with_region.shape == (level1["window"]["height"], level1["window"]["width"], 3)
    plain = png(client.get(level1["chip_url"].split("?")[0]))
    assert outline_pixels(plain) == 0 < outline_pixels(with_region)
    # Only the outline differs: the pixels are the same read.
    differ = np.any(plain != with_region, axis=-1)
    x0, y0, x1, y1 = level1["region"]
    h, w = plain.shape[:2]
    ys, xs = np.nonzero(differ)
    assert xs.min() >= round(x0 * w) - 4 and xs.max() <= round(x1 * w) + 3
    assert ys.min() >= round(y0 * h) - 4 and ys.max() <= round(y1 * h) + 3
    assert not differ[round((y0 + y1) / 2 * h), round((x0 + x1) / 2 * w)]  # the inside is untouched

    level2 = next(h for h in hits if h["level"] == 2)
    assert png(client.get(level2["chip_url"])).shape[:2] == (256, 256)  # a level-2 tile at tile size
    big = png(client.get(level2["chip_url"] + "&size=512"))
    assert big.shape[:2] == (512, 512)  # at the window's full resolution, on request


def test_chip_is_cached(client: TestClient) -> None:
    hit = client.get("/api/search", params={"q": QUERY, "k": 1}).json()["results"][0]
    cache = client.app.state.resources.renderer.chips  # type: ignore[attr-defined]
    first = client.get(hit["chip_url"] + "&size=200")
    hits_before = cache.hits
    second = client.get(hit["chip_url"] + "&size=200")
    assert first.content == second.content and cache.hits == hits_before + 1
    assert "max-age" in second.headers["cache-control"]


def test_chips_of_returned_results_do_not_wait_for_a_running_search(client: TestClient) -> None:
    """The page asks for the chips right after a search: those never queue behind the next one."""
    res = client.app.state.resources  # type: ignore[attr-defined]
    hit = client.get("/api/search", params={"q": QUERY, "k": 2}).json()["results"][1]
    import threading
    import time

    held = threading.Event()

    def hold() -> None:  # as if a long search were running
        with res.lock:
            held.set()
            time.sleep(3.0)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    t0 = time.perf_counter()
    resp = client.get(hit["chip_url"] + "&size=77")
    elapsed = time.perf_counter() - t0
    holder.join()
    assert 77 in png(resp).shape[:2] and elapsed < 2.0


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/tiles/00000000-0000-0000-0000-000000000000/chip.png", 404),
        ("/api/tiles/not-a-uuid/chip.png", 400),
        ("/api/tiles/%2e%2e/chip.png", 400),
        ("/api/tiles/..%2f..%2f..%2fetc%2fpasswd/chip.png", (400, 404)),
        ("/api/tiles/%2e%2e%2f%2e%2e%2fetc%2fpasswd/chip.png", (400, 404)),
        ("/api/tiles/..%5c..%5cwindows/chip.png", 400),
        ("/api/tiles/%00/chip.png", 400),
        ("/api/tiles/" + "a" * 5000 + "/chip.png", 400),
        ("/api/tiles/1%27%20OR%20%271%27=%271/chip.png", 400),
        ("/static/..%2f..%2fpyproject.toml", 404),
        ("/static/%2e%2e/%2e%2e/pyproject.toml", 404),
    ],
)
def test_bad_or_malicious_tile_ids_get_json_4xx(client: TestClient, path: str, status: int | tuple[int, ...]) -> None:
    resp = client.get(path)
    assert "root:" not in resp.text and "[project]" not in resp.text
    if path.startswith("/static"):
        assert resp.status_code == 404
    else:
        assert_json_error(resp, status)


def test_chip_rejects_bad_region_and_size(client: TestClient) -> None:
    hit = client.get("/api/search", params={"q": QUERY, "k": 1}).json()["results"][0]
    base = hit["chip_url"].split("?")[0]
    assert "region 14" in assert_json_error(client.get(base, params={"region": 14}), 400)
    for bad in ({"region": -1}, {"region": "x"}, {"size": 8}, {"size": 5000}, {"size": "big"}):
        assert_json_error(client.get(base, params=bad), 422)


# -- scenes, previews, info, schema, page -------------------------------------------------------


def test_scenes_list_footprints_counts_and_previews(client: TestClient, demo: DemoStore) -> None:
    scenes = {s["scene_id"]: s for s in client.get("/api/scenes").json()["scenes"]}
    assert set(scenes) == set(demo.scene_ids)
    info = client.get("/api/info").json()
    assert sum(s["tiles"] for s in scenes.values()) == info["tiles"] > 0
    for s in scenes.values():
        assert s["state"] == "complete" and s["crs"]
        w, so, e, n = s["preview_bounds"]
        bw, bs, be, bn = s["bbox"]
        assert abs(w - bw) < 0.01 and abs(so - bs) < 0.01 and abs(e - be) < 0.01 and abs(n - bn) < 0.01
        pixels = png(client.get(s["preview_url"]))
        assert pixels.ndim == 3 and pixels.shape[2] == 4 and max(pixels.shape[:2]) <= 1024
        alpha = pixels[..., 3]
        assert alpha[alpha.shape[0] // 2, alpha.shape[1] // 2] == 255  # the scene is drawn
    # RGB.byte is rotated in Web Mercator: its preview's corners lie outside the scene.
    corners = png(client.get(scenes["RGB.byte"]["preview_url"]))[[0, 0, -1, -1], [0, -1, 0, -1], 3]
    assert (corners == 0).all()


def test_preview_of_unknown_scene_is_404(client: TestClient) -> None:
    assert "nope" in assert_json_error(client.get("/api/scenes/nope/preview.png"), 404)
    assert_json_error(client.get("/api/scenes/..%2f..%2fetc/preview.png"), 404)
    assert_json_error(client.get("/api/scenes/%2e%2e/preview.png"), 404)


def test_info_describes_store_model_and_limits(client: TestClient, demo: DemoStore) -> None:
    info = client.get("/api/info").json()
    res = client.app.state.resources  # type: ignore[attr-defined]
    assert info["model"]["model_id"] == info["encoder"]["id"] == res.encoder.id
    assert info["scenes"] == 2 and info["store"]["backend"] == "edge"
    assert info["limits"]["max_k"] == MAX_K and info["basemap"] is None
    assert "api_key" not in str(info).lower().replace("'api_key': none", "")


def test_scenes_and_info_are_the_commands_answers(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """/api/scenes and /api/info run the scenes and info commands (what the CLI and the holder run) and
    answer their fields, each scene with its preview, the store's description under ``store``."""
    res = client.app.state.resources  # type: ignore[attr-defined]
    real, asked = res.commands, []

    class Recorded:  # the app's own commands, each call noted
        def __getattr__(self, name: str) -> object:
            asked.append(name)
            return getattr(real, name)

    monkeypatch.setattr(res, "commands", Recorded())
    listed = client.get("/api/scenes").json()["scenes"]
    info = client.get("/api/info").json()
    assert asked == ["scenes", "info"]
    rows = [row.model_dump(mode="json") for row in real.scenes(ScenesRequest())]
    assert [{k: s[k] for k in SceneRow.model_fields} for s in listed] == rows and len(rows) == 2
    assert all(row["footprint"] and row["bbox"] and row["crs"] for row in rows)
    answered = real.info(InfoRequest())
    assert info["store"] == {k: v for k, v in answered.items() if k not in INFO_COUNTS}
    assert {k: info[k] for k in ("tiles", "scenes", "device")} == {k: answered[k] for k in ("tiles", "scenes", "device")}
    assert info["model"] == answered["meta"] and info["collection"] == answered["collection"]


def test_openapi_documents_every_endpoint(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/api/search", "/api/scenes", "/api/info", "/api/tiles/{tile_id}/chip.png",
                 "/api/scenes/{scene_id}/preview.png"):
        assert "get" in paths[path], path
    params = {p["name"]: p for p in paths["/api/search"]["get"]["parameters"]}
    assert not params["q"].get("required") and params["k"]["schema"]["maximum"] == MAX_K
    assert {"like", "unlike", "like_region", "unlike_region"} <= set(params)
    assert "post" in paths["/api/search"] and "image/png" in paths["/api/search"]["post"]["requestBody"]["content"]
    assert "post" in paths["/api/labels/export"] and "post" in paths["/api/labels/import"]
    assert "chip_url" in schema["components"]["schemas"]["SearchHit"]["properties"]


def test_page_and_static_assets(client: TestClient) -> None:
    for url in ("/", "/?q=ships+near+a+harbor"):
        resp = client.get(url)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
        # relative, so the page works under a proxy's path prefix
        assert 'src="static/vendor/leaflet/leaflet.js"' in resp.text and 'src="static/app.js"' in resp.text
        assert "unpkg" not in resp.text and "cdn" not in resp.text.lower()
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_unknown_routes_and_methods_are_json(client: TestClient) -> None:
    assert_json_error(client.get("/api/nothing"), 404)
    assert_json_error(client.post("/api/scenes"), 405)
    assert_json_error(client.get("/docs"), 404)  # Swagger UI needs a CDN: off, /openapi.json stays


def test_cors_is_off_by_default(client: TestClient) -> None:
    resp = client.get("/api/info", headers={"Origin": "http://evil.example"})
    assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers


# -- a store whose source raster went away; CORS when configured --------------------------------


def test_moved_source_raster_and_cors(tmp_path: Path, client: TestClient, demo: DemoStore) -> None:
    """In-process ingest of a copy, then the copy is removed: chips and previews say so in a 404."""
    from ftfsearch.store import open_store
    from ingest.pipeline import IngestOptions, ingest_paths
    from ingest.tiling import TilingSpec

    res = client.app.state.resources  # type: ignore[attr-defined]
    src = tmp_path / "landsat-cut.tif"
    shutil.copy(GEOTIFFS / "rasterio" / "rgb1.tif", src)
    store_dir = tmp_path / "store"
    db = open_store(collection="tiles", store_dir=store_dir, qdrant_url=None, api_key=None, timeout=10.0)
    try:
        done, failed = ingest_paths([src], res.encoder, db, IngestOptions(spec=TilingSpec(tile_size=256)))
    finally:
        db.close()
    assert done and not failed
    options = ServeOptions(cors_origins=("http://gis.example",))
    app = create_app(Settings(store_dir=store_dir, model=str(demo.model_dir), device="cpu"), options)
    with TestClient(app) as other:
        hit = other.get("/api/search", params={"q": QUERY, "k": 1}).json()["results"][0]
        assert png(other.get(hit["chip_url"])).shape[2] == 3
        scene = other.get("/api/scenes").json()["scenes"][0]
        assert scene["preview_url"]
        src.unlink()
        message = assert_json_error(other.get(hit["chip_url"] + "&size=100"), 404)
        assert str(src) in message and "re-ingest" in message
        assert_json_error(other.get(scene["preview_url"]), 404)
        listed = other.get("/api/scenes").json()["scenes"][0]
        assert listed["preview_url"] is None and listed["tiles"] > 0  # the list still works
        resp = other.get("/api/info", headers={"Origin": "http://gis.example"})
        assert resp.headers["access-control-allow-origin"] == "http://gis.example"
        resp = other.get("/api/info", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in resp.headers


@pytest.mark.server
def test_api_on_a_qdrant_server(qdrant_server: str, client: TestClient, demo: DemoStore) -> None:
    """The same endpoints over the server backend (read-only, as `serve` opens it)."""
    import uuid

    from ftfsearch.store import open_store
    from ingest.pipeline import IngestOptions, ingest_paths
    from ingest.tiling import TilingSpec

    res = client.app.state.resources  # type: ignore[attr-defined]
    collection = f"web_{uuid.uuid4().hex[:10]}"
    db = open_store(collection=collection, store_dir=None, qdrant_url=qdrant_server, api_key=None, timeout=10.0)
    try:
        done, _ = ingest_paths([GEOTIFFS / "rasterio" / "rgb1.tif"], res.encoder, db,
                               IngestOptions(spec=TilingSpec(tile_size=128)))
        assert done
        settings = Settings(qdrant_url=qdrant_server, collection=collection, model=str(demo.model_dir), device="cpu")
        with TestClient(create_app(settings)) as other:
            info = other.get("/api/info").json()
            assert info["store"]["backend"] == "server" and info["tiles"] == done[0].tiles_in_store
            hits = other.get("/api/search", params={"q": QUERY, "k": 3}).json()["results"]
            assert len(hits) == 3 and all(h["scene_id"] == "rgb1" for h in hits)
            assert outline_pixels(png(other.get(hits[0]["chip_url"]))) > 0
            scenes = other.get("/api/scenes").json()["scenes"]
            assert [s["scene_id"] for s in scenes] == ["rgb1"]
            assert png(other.get(scenes[0]["preview_url"])).shape[2] == 4
            assert_json_error(other.get("/api/tiles/00000000-0000-0000-0000-000000000000/chip.png"), 404)
            liked = other.get("/api/search", params={"like": hits[0]["id"], "unlike": hits[1]["id"], "k": 3}).json()
            assert len(liked["results"]) == 3 and not {hits[0]["id"], hits[1]["id"]} & {h["id"] for h in liked["results"]}
            posted = other.post("/api/search", params={"k": 1}, content=other.get(hits[0]["chip_url"].split("?")[0]).content,
                                headers={"Content-Type": "image/png"}).json()
            assert posted["results"][0]["id"] == hits[0]["id"]
    finally:
        db.drop_collection()
        db.close()


# -- search by example and labels -------------------------------------------------------------


def test_search_by_example_tile_point_and_posted_image(client: TestClient) -> None:
    hits = client.get("/api/search", params={"q": QUERY, "k": 6}).json()["results"]
    a, b = hits[0]["id"], hits[1]["id"]
    body = client.get("/api/search", params=[("like", a), ("unlike", b), ("k", "5")]).json()
    assert body["like"] == [a] and body["unlike"] == [b] and body["query"] == ""
    ids = [h["id"] for h in body["results"]]
    assert len(ids) == 5 and a not in ids and b not in ids
    assert {"examples", "recall", "rerank"} <= set(body["timings_ms"])
    # The app's searcher gives the same, from the same refs.
    from ftfsearch.examples import parse_ref

    res = client.app.state.resources  # type: ignore[attr-defined]
    with res.lock:
        want = res.searcher().search(None, k=5, examples=[parse_ref(a), parse_ref(b, "unlike")]).results
    assert ids == [r.id for r in want]
    # A point inside the first hit resolves to a stored tile; text and examples combine.
    w, s, e, n = hits[0]["bbox"]
    mixed = client.get("/api/search", params={"q": QUERY, "like": f"{(w + e) / 2},{(s + n) / 2}", "k": 4})
    assert mixed.status_code == 200 and len(mixed.json()["results"]) == 4
    region = client.get("/api/search", params={"like_region": f"{a}:{hits[0]['region_index']}", "k": 3}).json()
    assert len(region["results"]) == 3
    # POST the first hit's own chip: that tile comes first (an image is not a stored example).
    chip = client.get(f"/api/tiles/{a}/chip.png").content
    posted = client.post("/api/search", params={"k": 3}, content=chip, headers={"Content-Type": "image/png"})
    assert posted.status_code == 200, posted.text
    assert posted.json()["results"][0]["id"] == a and posted.json()["like"] == ["posted image"]
    negative = client.post("/api/search", params={"q": QUERY, "negative": "true", "k": 3}, content=chip,
                           headers={"Content-Type": "image/png"})
    assert negative.status_code == 200 and negative.json()["unlike"] == ["posted image"]


@pytest.mark.parametrize(
    "params, status, needle",
    [
        ({"like": "00000000-0000-0000-0000-000000000000"}, 404, "like '00000000"),
        ({"like": "0.5,0.5"}, 400, "no stored tile contains this point"),
        ({"like": "/etc/passwd"}, 400, "POST an image"),
        ({"like": "999,0"}, 400, "WGS84"),
        ({"like_region": "x"}, 400, "REF:N"),
        ({"unlike": "TILE"}, 400, "unlike: needs a text"),
        ({"like": "TILE", "unlike": "TILE"}, 400, "either liked or unliked"),
        ({"like_region": "TILE:99"}, 400, "out of range"),
    ],
)
def test_bad_examples_are_4xx_json_naming_the_parameter(client: TestClient, params: dict, status: int, needle: str) -> None:
    tile = client.get("/api/search", params={"q": QUERY, "k": 1}).json()["results"][0]["id"]
    params = {k: v.replace("TILE", tile) for k, v in params.items()}
    message = assert_json_error(client.get("/api/search", params=params), status)
    assert needle in message and "--" not in message


def test_posted_images_that_cannot_be_used_are_400(client: TestClient) -> None:
    for content, needle in [(b"", "is empty"), (b"not an image at all", "not an image"),
                            (_png((8, 8)), "32 to 8192 pixels"), (_png((40, 200)), "roughly square")]:
        message = assert_json_error(client.post("/api/search", content=content, headers={"Content-Type": "image/png"}), 400)
        assert needle in message and "--" not in message


def _png(shape: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (shape[1], shape[0]), (90, 120, 60)).save(buf, format="PNG")
    return buf.getvalue()


def test_labels_export_then_import(client: TestClient) -> None:
    hits = client.get("/api/search", params={"q": QUERY, "k": 3}).json()["results"]
    marks = [{"id": hits[0]["id"], "label": "positive"}, {"id": hits[1]["id"], "label": "negative"},
             {"id": hits[2]["id"], "label": "positive", "region": 3}]
    resp = client.post("/api/labels/export", json={"query": QUERY, "marks": marks})
    assert resp.status_code == 200 and "labels.geojson" in resp.headers["content-disposition"]
    fc = resp.json()
    assert fc["type"] == "FeatureCollection" and fc["query"] == QUERY and fc["model_id"]
    assert [f["properties"]["label"] for f in fc["features"]] == ["positive", "negative", "positive"]
    assert fc["features"][0]["geometry"]["coordinates"][0][0] == fc["features"][0]["geometry"]["coordinates"][0][-1]
    back = client.post("/api/labels/import", content=resp.content).json()
    assert back["query"] == QUERY and [(m["id"], m["label"], m["region"]) for m in back["marks"]] == [
        (m["id"], m["label"], m.get("region")) for m in marks
    ]
    assert back["marks"][2]["chip_url"].endswith("?region=3")
    for content, status, needle in [
        (b"{nope", 400, "not a JSON document"),
        (b'{"type": "FeatureCollection", "features": [{"properties": {"id": "x", "label": "positive"}}]}', 400, "not a tile id"),
        (b'{"type": "FeatureCollection", "features": [{"properties": {"id": "00000000-0000-0000-0000-000000000000",'
         b' "label": "negative"}}]}', 404, "not in collection"),
    ]:
        message = assert_json_error(client.post("/api/labels/import", content=content), status)
        assert needle in message and "--" not in message
    bad = {"query": QUERY, "marks": [{"id": hits[0]["id"], "label": "maybe"}]}
    assert "positive or negative" in assert_json_error(client.post("/api/labels/export", json=bad), 400)
