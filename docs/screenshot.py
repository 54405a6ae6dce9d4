"""Retake ``docs/screenshot.png``: the map page on the demo store, with the shipped model.

Run ``make demo`` first (it builds ``.demo/store``), then::

    python docs/screenshot.py ["a road through green farmland"] [--store .demo/store]
    python docs/screenshot.py "houses with red roofs" --up 0 --down 2 --out docs/screenshot-marks.png

Starts ``ftfsearch serve`` on loopback, searches QUERY on the page in Debian's Chromium (Playwright,
no browser download), marks the results given by ``--up``/``--down`` (each mark searches again),
selects a result, saves the page, and stops the server.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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
            page.locator(".result").nth(args.select).click()
            page.wait_for_selector("#detail:not([hidden])")
            page.wait_for_function("document.getElementById('detail-chip').complete", timeout=180_000)
            page.wait_for_timeout(1500)  # the map's fly-to animation
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


if __name__ == "__main__":
    raise SystemExit(main())
