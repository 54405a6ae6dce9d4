"""Retake ``docs/screenshot.png``: the map page on the demo store, with the shipped model.

Run ``make demo`` first (it builds ``.demo/store``), then::

    python docs/screenshot.py ["a road through green farmland"] [--store .demo/store]
    python docs/screenshot.py "houses with red roofs" --up 0 --down 2 --out docs/screenshot-marks.png
    python docs/screenshot.py "farm buildings" --store .cache/shots/store --up 0 --up 1 --up 2 \
        --down 5 --down 6 --area 5 --out docs/screenshot-area.png
    python docs/screenshot.py "a pond" --store .cache/shots/change/store \
        --change ../2010-01-01 2020-01-01/2021-01-01 --out docs/screenshot-change.png

Starts ``ftfsearch serve`` on loopback, searches QUERY on the page in Debian's Chromium (Playwright,
no browser download), marks the results given by ``--up``/``--down`` (each mark searches again),
selects a result, saves the page, and stops the server. With ``--area N`` it then draws an area over
the first result's scene, finds all, classifies from the marks, answers N review items as the
classifier leans (y when p >= 0.5) and classifies again, so the estimate shows. With ``--change
BEFORE AFTER`` it opens the change mode instead: what QUERY shows more of in AFTER than in BEFORE.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("query", nargs="?", default="a road through green farmland")
    ap.add_argument("--store", type=Path, default=REPO / ".demo" / "store")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot.png")
    ap.add_argument("--select", type=int, default=0, help="result to open in detail (0 = best)")
    ap.add_argument("--k", type=int, default=6, help="results to list")
    ap.add_argument("--up", type=int, action="append", default=[], help="mark this result (0 = best) a hit")
    ap.add_argument("--down", type=int, action="append", default=[], help="mark this result a miss")
    ap.add_argument("--change", nargs=2, metavar=("BEFORE", "AFTER"), default=None,
                    help="the change mode between two ISO 8601 ranges, QUERY as what appeared")
    ap.add_argument("--area", type=int, default=None, metavar="N",
                    help="the area panel: draw, find all, classify, answer N review items, classify again")
    args = ap.parse_args()
    if not args.store.is_dir():
        raise SystemExit(f"{args.store}: no store; run make demo first")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "ftfsearch"
    server = subprocess.Popen([str(exe), "serve", "--store", str(args.store), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/api/info", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"ftfsearch serve exited: {server.stderr.read() if server.stderr else ''}")
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            if args.change:
                change_mode(page, url, args.query, *args.change)
            else:
                search_page(page, url, args)
            raw = args.out.with_suffix(".raw.png")
            page.screenshot(path=str(raw))
            browser.close()
        from PIL import Image

        with Image.open(raw) as im:  # 256 colours: a third of the bytes in git
            im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
                args.out, optimize=True)
        raw.unlink()
        print(f"wrote {args.out}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


def search_page(page: Any, url: str, args: argparse.Namespace) -> None:
    """Search, mark, then open a result or drive the area panel."""
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    page.fill("#k", str(args.k))  # the list's chips load lazily: keep them all in view
    page.fill("#q", args.query)
    page.press("#q", "Enter")
    page.wait_for_selector(".result", timeout=60_000)
    page.evaluate("sessionStorage.clear()")
    loaded = "[...document.querySelectorAll('.result img, .mark img')].every(i => i.complete && i.naturalWidth > 0)"
    page.wait_for_function(loaded, timeout=180_000)
    marks = [("up", i) for i in args.up] + [("down", i) for i in args.down]
    for n, (button, i) in enumerate(marks, start=1):
        page.locator(".result").nth(i).locator(f"button.{button}").click()
        page.wait_for_function(f"document.querySelectorAll('.mark').length === {n} && "
                               "!document.getElementById('go').disabled", timeout=60_000)
        page.wait_for_function(loaded, timeout=180_000)
    if args.area is not None:
        area_panel(page, url, args.area)
        return
    page.locator(".result").nth(args.select).click()
    page.wait_for_selector("#detail:not([hidden])")
    page.wait_for_function("document.getElementById('detail-chip').complete", timeout=180_000)
    page.wait_for_timeout(1500)  # the map's fly-to animation


def change_mode(page: Any, url: str, query: str, before: str, after: str) -> None:
    """The change mode opened by its link: the places where ``query`` rose most, both dates side by side."""
    from urllib.parse import urlencode

    page.goto(url + "/?" + urlencode({"change": "1", "before": before, "after": after, "cq": query}))
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    page.wait_for_selector(".change-place", timeout=120_000)
    page.wait_for_function("[...document.querySelectorAll('.change-side img')].every(i => i.complete && i.naturalWidth > 0)",
                           timeout=180_000)
    page.locator(".change-place").first.click()
    page.wait_for_timeout(1500)  # the map's fly-to animation


def _wait_area(page: Any, condition: str) -> None:
    page.wait_for_function(f"({condition}) || document.getElementById('area-status').classList.contains('error')",
                           timeout=600_000)
    if not page.evaluate(condition):
        raise SystemExit(f"area panel: {page.inner_text('#area-status')}")


def area_panel(page: Any, url: str, answers: int) -> None:
    """Draw an area over the best result's scene, find all, classify, review, classify again."""
    import json

    best = page.locator(".result").first.get_attribute("data-id")
    scenes = json.loads(urllib.request.urlopen(url + "/api/scenes", timeout=30).read())["scenes"]
    scene_id = page.evaluate(f"(document.querySelector('.result[data-id=\"{best}\"] .scene') || {{}}).textContent")
    bounds = next((sc["preview_bounds"] for sc in scenes if sc["scene_id"] == scene_id), scenes[0]["preview_bounds"])
    w, s_, e, n_ = bounds
    page.evaluate(f"ftfArea.map().fitBounds([[{s_}, {w}], [{n_}, {e}]], {{animate: false}})")
    page.click("#area-draw")
    box = page.locator("#map").bounding_box()
    for fx, fy in ((0.25, 0.12), (0.75, 0.15), (0.72, 0.85), (0.28, 0.82)):
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    page.click("#area-draw")
    page.click("#area-find")
    _wait_area(page, "document.getElementById('area-hits').textContent.includes(' above ')")
    page.click("#area-classify")
    _wait_area(page, "document.getElementById('area-model').textContent.includes('detections of')")
    page.click("#area-review")
    for _ in range(answers):
        page.wait_for_selector("#review-card:not([hidden])", timeout=120_000)
        page.wait_for_function("document.getElementById('review-chip').complete", timeout=120_000)
        tile = page.get_attribute("#review-card", "data-id")
        p = float(page.inner_text("#review-what").split("p ")[1].split(" ")[0])
        page.keyboard.press("y" if p >= 0.5 else "n")
        page.wait_for_function(f"document.getElementById('review-card').dataset.id !== {json.dumps(tile)} || "
                               "document.getElementById('review-card').hidden", timeout=120_000)
    page.click("#area-classify")
    _wait_area(page, "document.getElementById('area-estimate').textContent.startsWith('hit tiles ≈')")
    page.wait_for_timeout(1500)


if __name__ == "__main__":
    raise SystemExit(main())
