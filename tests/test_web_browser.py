"""End to end: the installed ``ftfsearch serve`` on a real store, driven by Debian's Chromium.

The page must work offline (no request leaves the server), show the scenes and the results on
the map, list the results with their chips, and show a result in detail when clicked. A
screenshot is saved as a test artifact: under pytest's temp dir, in ``$FTF_TEST_ARTIFACTS`` when
set, and as ``docs/screenshot.png`` when ``FTF_UPDATE_SCREENSHOT=1``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from _prefix_proxy import PrefixProxy
from _web_fixtures import DemoStore, demo_store, ftfsearch_command, http_get, running_serve
from ftfsearch.keys import add_key

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
REPO = Path(__file__).resolve().parents[1]
LEAFLET = REPO / "ftfsearch" / "web" / "static" / "vendor" / "leaflet" / "leaflet.js"
QUERY = "a river next to farmland"

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must run the browser test: {CHROMIUM} is missing (apt-get install -y chromium)")
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (CI installs it)", allow_module_level=True)


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[str]
    log: Path
    demo: DemoStore


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not LEAFLET.is_file():
        pytest.fail(f"{LEAFLET} missing: Leaflet is vendored in the checkout (scripts/get-leaflet.sh refreshes it)")
    demo = demo_store(tmp_path_factory)
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "FTF_CONFIG": str(log.parent / "none.toml")}
    env.pop("FTF_BASEMAP_URL", None)
    command = [ftfsearch_command(), "serve", "--store", str(demo.store_dir), "--model", str(demo.model_dir),
               "--device", "cpu"]
    with running_serve(command, env, log, timeout=180) as (proc, url):
        yield Server(url, int(url.rsplit(":", 1)[1]), proc, log, demo)


def test_serve_listens_on_loopback_by_default(server: Server) -> None:
    assert f"serving on http://127.0.0.1:{server.port}/" in server.log.read_text()
    assert "warning" not in server.log.read_text()


def test_public_host_warns_and_a_busy_port_is_one_line(server: Server) -> None:
    proc = subprocess.run(
        [ftfsearch_command(), "serve", "--host", "0.0.0.0", "--port", str(server.port), "--insecure-no-auth",
         "--store", str(server.demo.store_dir), "--model", str(server.demo.model_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("warning: --host 0.0.0.0") and "without authentication" in proc.stderr
    assert f"--port {server.port}: cannot listen there" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "raw_path",
    [
        "/static/../../../../../../etc/passwd",
        "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/api/tiles/../../../../etc/passwd/chip.png",
        "/api/tiles/..%2f..%2f..%2fetc%2fpasswd/chip.png",
        "/api/tiles/%2e%2e/chip.png",
        "/api/scenes/..%2f..%2f..%2fetc%2fpasswd/preview.png",
    ],
)
def test_raw_traversal_paths_on_the_live_server(server: Server, raw_path: str) -> None:
    """Paths sent as they are (no client-side normalisation), as an attacker would."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("GET", raw_path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
    finally:
        conn.close()
    assert 400 <= resp.status < 500, (resp.status, body[:300])
    assert "root:" not in body and "Traceback" not in body
    if raw_path.startswith("/api"):
        assert set(json.loads(body)) == {"error"}


def test_four_concurrent_clients(server: Server) -> None:
    """Searches and chips from 4 clients at once: all answered, identical answers, p50 reported."""
    status, body = http_get(f"{server.url}/api/search?q=ships+near+a+harbor&k=8")
    assert status == 200
    reference = json.loads(body)["results"]
    chips = [r["chip_url"] for r in reference]
    times: dict[str, list[float]] = {"search": [], "chip": []}
    errors: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for j in range(6):
            t0 = time.perf_counter()
            status, body = http_get(f"{server.url}/api/search?q=ships+near+a+harbor&k=8")
            dt = time.perf_counter() - t0
            if status != 200 or [r["id"] for r in json.loads(body)["results"]] != [r["id"] for r in reference]:
                errors.append(f"search {status}")
            with lock:
                times["search"].append(dt)
            t0 = time.perf_counter()
            # a different size each time: most requests are cache misses (a real windowed read)
            status, png = http_get(f"{server.url}{chips[(i + j) % len(chips)]}&size={96 + 8 * (4 * j + i)}")
            dt = time.perf_counter() - t0
            if status != 200 or not png.startswith(b"\x89PNG"):
                errors.append(f"chip {status}")
            with lock:
                times["chip"].append(dt)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(times["search"]) == len(times["chip"]) == 24
    for name, values in times.items():
        print(f"{name}: p50 {1000 * statistics.median(values):.1f} ms, max {1000 * max(values):.1f} ms (4 clients)")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _save_screenshot(page: object, tmp_path: Path, name: str = "screenshot",
                     clip: dict[str, float] | None = None) -> Path:
    shot = tmp_path / f"ftfsearch-{name}.png"
    page.screenshot(path=str(shot), clip=clip)  # type: ignore[attr-defined]
    if os.environ.get("FTF_TEST_ARTIFACTS"):
        target = Path(os.environ["FTF_TEST_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / shot.name)
    if os.environ.get("FTF_UPDATE_SCREENSHOT") == "1":  # 256 colours: a third of the bytes in git
        from PIL import Image

        (REPO / "docs").mkdir(exist_ok=True)
        with Image.open(shot) as im:
            im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
                REPO / "docs" / f"{name}.png", optimize=True
            )
    return shot


def test_search_page_in_chromium(server: Server, browser: object, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 860})  # type: ignore[attr-defined]
    problems: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("request", lambda req: requests.append(req.url))
    page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))

    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert page.evaluate("typeof L") == "object" and page.locator("#no-leaflet").is_hidden()
    assert "2 scenes" in page.inner_text("#store-info")
    # Offline map: the scenes themselves as image overlays, with their outlines.
    page.wait_for_function(
        "[...document.querySelectorAll('img.scene-preview')].filter(i => i.complete && i.naturalWidth > 0).length == 2"
    )
    assert page.locator("path.scene-footprint").count() == 2

    page.fill("#k", "8")
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    page.wait_for_selector(".result", timeout=30_000)
    page.wait_for_function("[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)")
    api = json.loads(http_get(f"{server.url}/api/search?q={QUERY.replace(' ', '+')}&k=8")[1])["results"]
    items = page.locator(".result")
    assert items.count() == len(api) == 8
    for i, hit in enumerate(api):
        text = items.nth(i).inner_text()
        assert f"#{hit['rank']}" in text and f"{hit['score']:.4f}" in text and hit["scene_id"] in text
    assert page.locator("path.result-footprint").count() == sum(1 for h in api if h["footprint"])
    assert "8 results" in page.inner_text("#status")
    assert page.evaluate("new URL(location.href).searchParams.get('q')") == QUERY

    # Click the second result: it is selected, its footprint outlined, its chip shown large.
    items.nth(1).click()
    page.wait_for_selector("#detail:not([hidden])")
    page.wait_for_function("document.getElementById('detail-chip').complete && "
                           "document.getElementById('detail-chip').naturalWidth > 0")
    hit = api[1]
    assert "selected" in (items.nth(1).get_attribute("class") or "")
    detail = page.inner_text("#detail")
    assert hit["scene_id"] in detail and f"{hit['score']:.4f}" in detail and hit["id"] in detail
    assert "matched region" in detail and f"col {hit['region_window']['col']}" in detail
    assert page.evaluate("document.getElementById('detail-chip').naturalWidth") == min(512, hit["window"]["width"])
    assert page.locator("path.result-footprint[stroke-width='4']").count() == 1
    assert page.locator("path.region-footprint").count() == 1  # the matched region, on the map
    assert "region centre" in detail
    page.wait_for_timeout(1000)  # the map's fly-to animation
    shot = _save_screenshot(page, tmp_path)
    assert shot.stat().st_size > 50_000

    # The same page opened with ?q= searches at once.
    page.goto(f"{server.url}/?q=ships+near+a+harbor")
    page.wait_for_selector(".result", timeout=30_000)
    assert page.input_value("#q") == "ships near a harbor"
    assert not problems, problems

    # A bad request shows the server's message, not a blank page.
    page.fill("#k", "5000")
    page.press("#q", "Enter")
    page.wait_for_selector("#status.error")
    assert "k:" in page.inner_text("#status")
    assert all("422" in p for p in problems), problems  # only the browser's note of that 422

    assert requests and all(u.startswith(server.url) or u.startswith("data:") for u in requests), [
        u for u in requests if not u.startswith(server.url)
    ]
    page.close()


def _ids_on_page(page: object) -> list[str]:
    return page.evaluate("[...document.querySelectorAll('.result')].map(li => li.dataset.id)")  # type: ignore[attr-defined]


def test_marks_refine_export_and_reimport_in_chromium(server: Server, browser: object, tmp_path: Path) -> None:
    """Thumbs up on one result and down on another: each mark searches again at once, the
    marks panel lists them, the results are the API's for those examples; export the labels,
    clear, import the file back: the same marks and the same results."""
    page = browser.new_page(viewport={"width": 1400, "height": 860}, accept_downloads=True)  # type: ignore[attr-defined]
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.goto(f"{server.url}/")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    page.evaluate("sessionStorage.clear()")
    assert page.locator(".mark").count() == 0 and page.locator("#marks-export").is_disabled()
    page.fill("#k", "8")
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    page.wait_for_selector(".result", timeout=30_000)
    first = _ids_on_page(page)
    assert len(first) == 8

    liked = first[0]
    page.locator(".result").nth(0).locator("button.up").click()
    page.wait_for_function("document.getElementById('status').textContent.includes('1 liked')", timeout=30_000)
    assert page.locator(".mark.positive").count() == 1
    after_like = _ids_on_page(page)
    assert liked not in after_like and len(after_like) == 8

    unliked = after_like[0]
    page.locator(".result").nth(0).locator("button.down").click()
    page.wait_for_function("document.getElementById('status').textContent.includes('1 unliked')", timeout=30_000)
    assert page.locator(".mark").count() == 2 and page.locator(".mark.negative").count() == 1
    marked = _ids_on_page(page)
    assert liked not in marked and unliked not in marked
    q = QUERY.replace(" ", "+")
    status, body = http_get(f"{server.url}/api/search?q={q}&k=8&like={liked}&unlike={unliked}")
    api = json.loads(body)
    assert status == 200 and [h["id"] for h in api["results"]] == marked
    assert "Marks: 1" in page.inner_text("#marks-title")
    page.wait_for_function("[...document.querySelectorAll('.mark img, .result img')].every(i => i.complete && i.naturalWidth > 0)")
    _save_screenshot(page, tmp_path, "screenshot-marks")

    with page.expect_download() as download:
        page.click("#marks-export")
    labels_path = tmp_path / "labels.geojson"
    download.value.save_as(str(labels_path))
    labels = json.loads(labels_path.read_text())
    assert labels["type"] == "FeatureCollection" and labels["query"] == QUERY and labels["model_id"]
    by_id = {f["properties"]["id"]: f["properties"]["label"] for f in labels["features"]}
    assert by_id == {liked: "positive", unliked: "negative"}
    assert all(f["geometry"]["type"] == "Polygon" for f in labels["features"])

    page.click("#marks-clear")
    page.wait_for_function("document.querySelectorAll('.mark').length === 0")
    page.wait_for_function("!document.getElementById('status').textContent.includes('liked')", timeout=30_000)
    page.fill("#q", "")
    page.set_input_files("#marks-import", str(labels_path))
    page.wait_for_function("document.querySelectorAll('.mark').length === 2", timeout=30_000)
    page.wait_for_function("document.getElementById('status').textContent.includes('1 unliked')", timeout=30_000)
    assert page.input_value("#q") == QUERY  # the labels' query comes back with them
    assert _ids_on_page(page) == marked

    # A file that is not labels: one line on the page, the marks stay.
    bad = tmp_path / "not-labels.geojson"
    bad.write_text('{"type": "Feature"}')
    page.set_input_files("#marks-import", str(bad))
    page.wait_for_selector("#status.error")
    assert "not a GeoJSON FeatureCollection of labels" in page.inner_text("#status")
    assert page.locator(".mark").count() == 2
    assert all("400" in p for p in problems), problems  # only the browser's note of that 400
    page.close()


# -- serve --keys behind a reverse proxy under a path prefix ------------------------------------


@dataclass
class KeyedServer:
    url: str
    """The page's URL through the proxy (http://127.0.0.1:P/ftf/)."""
    key: str


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedServer]:
    """``serve --keys --root-path /ftf`` on a copy of the demo store, behind a proxy that serves it
    under /ftf/ as the README's Caddy and nginx snippets do."""
    demo = demo_store(tmp_path_factory)
    root = tmp_path_factory.mktemp("serve-keyed")
    shutil.copytree(demo.store_dir, root / "store")  # the other server of this module holds the demo store
    keys_file = root / "keys.json"
    key = add_key(keys_file, "analyst", "read")
    env = {**os.environ, "FTF_CONFIG": str(root / "none.toml")}
    env.pop("FTF_BASEMAP_URL", None)
    command = [ftfsearch_command(), "serve", "--store", str(root / "store"), "--model", str(demo.model_dir),
               "--device", "cpu", "--keys", str(keys_file), "--root-path", "/ftf"]
    with running_serve(command, env, root / "serve.log", timeout=600, ready=401) as (_, url):
        with PrefixProxy(url, "/ftf") as proxy:
            yield KeyedServer(proxy.url, key)


def test_the_page_asks_for_a_key_once_per_tab_behind_a_prefix_proxy(keyed: KeyedServer, browser: object) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 860})  # type: ignore[attr-defined]
    page = context.new_page()
    problems: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("request", lambda req: requests.append(req.url))

    page.goto(keyed.url)
    page.wait_for_selector("#login:not([hidden])", timeout=30_000)
    assert "API key is required" in page.inner_text("#login-msg")
    page.fill("#api-key", "ftf_not-a-key")
    page.press("#api-key", "Enter")
    page.wait_for_function("document.getElementById('login-msg').textContent.includes('refused')", timeout=30_000)
    page.fill("#api-key", keyed.key)
    page.click("#login-go")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert page.locator("#login").is_hidden() and "2 scenes" in page.inner_text("#store-info")
    page.wait_for_function(
        "[...document.querySelectorAll('img.scene-preview')].filter(i => i.complete && i.naturalWidth > 0).length == 2"
    )
    page.fill("#k", "6")
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    page.wait_for_selector(".result", timeout=30_000)
    page.wait_for_function("[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator(".result").count() == 6
    page.locator(".result").nth(0).click()
    page.wait_for_function("document.getElementById('detail-chip').complete && "
                           "document.getElementById('detail-chip').naturalWidth > 0")
    assert page.evaluate("sessionStorage.getItem('ftfsearch-key')") == keyed.key

    # The tab keeps the key: a reload asks for nothing.
    page.reload()
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert page.locator("#login").is_hidden() and "2 scenes" in page.inner_text("#store-info")
    # Another tab asks again (sessionStorage is the tab's).
    other = context.new_page()
    other.goto(keyed.url)
    other.wait_for_selector("#login:not([hidden])", timeout=30_000)
    other.close()

    origin = keyed.url[: -len("/ftf/")]
    assert requests and all(u.startswith(keyed.url) or u.startswith(("blob:" + origin + "/", "data:"))
                            for u in requests), [u for u in requests if not u.startswith(keyed.url)]
    assert not any(keyed.key in u for u in requests)  # never in a URL
    # the browser's notes of the 401s that asked for the key, nothing else
    assert all("401" in p for p in problems), problems
    context.close()


def _wait_area(page: object, condition: str) -> None:
    """Wait for ``condition`` or an error line in the area panel; fail with that line."""
    page.wait_for_function(f"({condition}) || document.getElementById('area-status').classList.contains('error')",  # type: ignore[attr-defined]
                           timeout=120_000)
    status = page.inner_text("#area-status")  # type: ignore[attr-defined]
    assert page.evaluate(condition), status  # type: ignore[attr-defined]


def test_area_classify_review_estimate_and_export_in_chromium(server: Server, browser: object,
                                                              tmp_path: Path) -> None:
    """Draw an area, find all in it, classify from marks (detections coloured by probability), answer
    five review items with the keyboard, see the running estimate, export GeoJSON and GeoParquet."""
    status, body = http_get(f"{server.url}/api/search?q={QUERY.replace(' ', '+')}&k=12")
    ranked = json.loads(body)["results"]
    marks = [{"id": r["id"], "label": "positive" if i < 4 else "negative", "region": None,
              "chip_url": r["chip_url"].split("?")[0], "scene_id": r["scene_id"]}
             for i, r in enumerate(ranked[:4] + ranked[-2:])]
    page = browser.new_page(viewport={"width": 1400, "height": 860}, accept_downloads=True)  # type: ignore[attr-defined]
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.goto(f"{server.url}/")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    page.evaluate(f"sessionStorage.clear(); sessionStorage.setItem('ftfsearch-marks', {json.dumps(json.dumps(marks))})")
    page.reload()
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    page.wait_for_function("document.querySelectorAll('.mark').length === 6", timeout=30_000)

    # draw the area over the first hit's scene: four clicks on the map, then finish
    scenes = json.loads(http_get(f"{server.url}/api/scenes")[1])["scenes"]
    w, s_, e, n_ = next(sc["preview_bounds"] for sc in scenes if sc["scene_id"] == ranked[0]["scene_id"])
    page.evaluate(f"ftfArea.map().fitBounds([[{s_}, {w}], [{n_}, {e}]], {{animate: false}})")
    page.click("#area-draw")
    box = page.locator("#map").bounding_box()
    for fx, fy in ((0.2, 0.2), (0.8, 0.22), (0.78, 0.8), (0.22, 0.78)):
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    page.click("#area-draw")
    assert page.locator("path.area-outline").count() == 1
    assert "Area set" in page.inner_text("#area-status")
    # the saved marks' results lie under the corners: drawing placed corners, it picked no result
    assert page.locator("path.result-footprint").count() > 0 and page.locator("#detail").is_hidden()

    page.fill("#q", QUERY)
    page.click("#area-find")
    _wait_area(page, "document.getElementById('area-hits').textContent.includes(' above ')")

    page.click("#area-classify")
    _wait_area(page, "document.getElementById('area-model').textContent.includes('detections of')")
    assert "precision" in page.inner_text("#area-model")

    page.click("#area-review")
    page.wait_for_selector("#review-card:not([hidden])", timeout=60_000)
    seen = []
    for n in range(5):
        page.wait_for_function("document.getElementById('review-chip').complete && "
                               "document.getElementById('review-chip').naturalWidth > 0", timeout=30_000)
        tile = page.get_attribute("#review-card", "data-id")
        assert tile and tile not in seen
        seen.append(tile)
        p = float(page.inner_text("#review-what").split("p ")[1].split(" ")[0])
        page.keyboard.press("y" if p >= 0.5 else "n")
        page.wait_for_function(f"document.getElementById('review-card').dataset.id !== {json.dumps(tile)} || "
                               "document.getElementById('review-card').hidden", timeout=60_000)
    estimate = page.inner_text("#area-estimate")
    assert "95% CI" in estimate and "reviewed" in estimate, estimate
    review = page.evaluate("JSON.parse(sessionStorage.getItem('ftfsearch-review'))")
    assert len(review["features"]) == 6 + 5 and review["review"]["draws"]

    # classify again: the answers train it, and the estimate comes with it
    page.click("#area-classify")
    _wait_area(page, "document.getElementById('area-estimate').textContent.startsWith('hit tiles ≈')")
    page.wait_for_timeout(500)
    _save_screenshot(page, tmp_path, "screenshot-area")

    with page.expect_download() as download:
        page.click("#area-geojson")
    geo = tmp_path / "detections.geojson"
    download.value.save_as(str(geo))
    collection = json.loads(geo.read_text())
    assert collection["type"] == "FeatureCollection"
    assert all(0.5 <= f["properties"]["probability"] <= 1 for f in collection["features"])
    with page.expect_download() as download:
        page.click("#area-parquet")
    parquet = tmp_path / "detections.parquet"
    download.value.save_as(str(parquet))
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    assert b"geo" in table.schema.metadata and table.num_rows == len(collection["features"])
    assert not problems, problems
    page.close()
# -- the change mode (issue 25): two dates side by side, and the watches' new hits ------------------


@pytest.fixture(scope="module")
def change_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """NAIP of 2009 and a 2021 copy with a pasted patch, a watch added between the two ingests."""
    from _data import require_shared_data
    from _scenes import NAIP_2009, pasted_naip

    require_shared_data("geotiffs", "opengeos_data")
    demo = demo_store(tmp_path_factory)
    root = tmp_path_factory.mktemp("change-page")
    pasted, _ = pasted_naip(root)
    env = {**os.environ, "FTF_CONFIG": str(root / "none.toml")}
    env.pop("FTF_BASEMAP_URL", None)
    base = ["--store", str(root / "store"), "--model", str(demo.model_dir), "--device", "cpu"]
    steps = [["ingest", str(NAIP_2009), "--acquired", "2009-08-18", "--tile-size", "128", "--levels", "1"],
             ["watch", "add", "anything", "a place", "--min-score", "-1"],
             ["ingest", str(pasted), "--acquired", "2021-08-31", "--tile-size", "128", "--levels", "1"]]
    for step in steps:
        proc = subprocess.run([ftfsearch_command(), *step, *base], capture_output=True, text=True, timeout=300,
                              env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    log = root / "serve.log"
    with running_serve([ftfsearch_command(), "serve", *base], env, log, timeout=180) as (proc, url):
        yield Server(url, int(url.rsplit(":", 1)[1]), proc, log, demo)


def test_change_view_in_chromium(change_server: Server, browser: object, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 860})  # type: ignore[attr-defined]
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
    page.goto(change_server.url + "/?change=1&before=../2015-01-01&after=2015-01-01/..")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert page.locator("#change").is_visible() and page.locator("#results").is_hidden()
    page.wait_for_selector(".change-place", timeout=60_000)
    page.wait_for_function("[...document.querySelectorAll('.change-side img')].every(i => i.complete && i.naturalWidth > 0)")
    api = json.loads(http_get(f"{change_server.url}/api/change?before=../2015-01-01&after=2015-01-01/..&k=10")[1])
    places = page.locator(".change-place")
    assert places.count() == len(api["places"]) == 10
    first = places.nth(0).inner_text()
    assert api["places"][0]["after"]["scene_id"] in first and f"{api['places'][0]['change']:.4f}" in first
    assert "2009-08-18" in first and "2021-08-31" in first  # the two dates side by side
    assert page.locator(".change-place").nth(0).locator("img").count() == 2
    # each place's footprint on the map; a click on one selects its place in the list
    page.wait_for_function("document.querySelectorAll('path.change-footprint').length === 10")
    page.evaluate("""() => { const m = document.querySelector('#map').getBoundingClientRect();
        for (const p of document.querySelectorAll('path.change-footprint')) { const b = p.getBoundingClientRect();
          if (b.width < 2 || b.height < 2 || b.right < m.left || b.left > m.right || b.bottom < m.top || b.top > m.bottom)
            throw new Error('a change footprint is not in the map view'); } }""")
    front = "[...document.querySelectorAll('img.scene-preview')].pop().alt"  # the preview drawn on top
    # the most changed place is selected at first, its after scene on top of the dates' overlapping previews
    page.wait_for_selector(".change-place.selected[data-rank='1'] .change-side.on-map[data-side='after']")
    page.wait_for_function(f"{front} === {json.dumps(api['places'][0]['after']['scene_id'])}")
    # a footprint selects its place (drawn from the least changed: the ninth is rank 2; dispatched, as
    # footprints overlap); a place's before chip selects it and puts its before scene on top
    page.locator("path.change-footprint").nth(8).dispatch_event("click")
    page.wait_for_selector(".change-place.selected[data-rank='2']")
    assert page.locator(".change-place.selected").count() == 1
    page.locator(".change-place").nth(2).locator(".change-side[data-side='before'] img").click()
    page.wait_for_selector(".change-place.selected[data-rank='3'] .change-side.on-map[data-side='before']")
    page.wait_for_function(f"{front} === {json.dumps(api['places'][2]['before']['scene_id'])}")
    # the watch added between the ingests, with its newest hits (all from the later scene)
    page.wait_for_selector(".watch-hit")
    assert "anything" in page.inner_text("#watch-list")
    assert all("naip_2020_pasted" in t for t in page.locator(".watch-hit").all_inner_texts())
    # the toggle leaves the change mode for the search list
    page.click("#change-toggle")
    assert page.locator("#change").is_hidden() and page.locator("#results").count() == 1
    assert page.locator("path.change-footprint").count() == 0  # the places leave the map with the mode
    page.click("#change-toggle")
    page.wait_for_timeout(300)
    shot = _save_screenshot(page, tmp_path, "screenshot-change", clip={"x": 0, "y": 0, "width": 1020, "height": 860})
    assert shot.stat().st_size > 20_000
    assert not problems, problems
