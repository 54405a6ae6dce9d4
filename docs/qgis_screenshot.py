"""Retake ``docs/qgis-screenshot.png``: the QGIS plugin's results over the demo scene, rendered by a
headless QGIS (Debian's python3-qgis) the way QGIS draws its map canvas, with the plugin's dock beside it.

Run ``make demo`` first (it builds ``.demo/store`` with the shipped model), then::

    python docs/qgis_screenshot.py ["houses with red roofs"] [--store .demo/store]

Builds the plugin zip, starts ``ftfsearch serve`` on loopback, and runs tests/_qgis_checks.py (the
plugin test's QGIS driver) under ``/usr/bin/python3`` with only its render step: the plugin is
installed from the zip, searches, and the scene with the result layers is saved.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENE = REPO / "tests" / "data" / "pix4d_alpha_nodata.tif"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("query", nargs="?", default="houses with red roofs")
    ap.add_argument("--store", type=Path, default=REPO / ".demo" / "store")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "qgis-screenshot.png")
    ap.add_argument("--k", type=int, default=8)
    args = ap.parse_args()
    if not args.store.is_dir():
        raise SystemExit(f"{args.store}: no store; run make demo first")
    sys.path.insert(0, str(REPO))
    from scripts.build_qgis_plugin import build_zip

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "ftfsearch"
    server = subprocess.Popen([str(exe), "serve", "--store", str(args.store), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/api/info", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"ftfsearch serve exited: {server.stderr.read() if server.stderr else ''}")
                time.sleep(0.5)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            raw = root / "raw.png"
            config = {"zip": str(build_zip(root / "ftfsearch_qgis.zip")), "plugins_dir": str(root / "plugins"),
                      "work": tmp, "url": url, "key": "", "steps": False,
                      "render": {"rasters": [str(SCENE)], "query": args.query, "k": args.k, "size": [720, 470],
                                 "out": str(raw), "fit": "scene", "with_dock": True}}
            (root / "config.json").write_text(json.dumps(config))
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
            (root / "run").mkdir(mode=0o700)
            env.update(QT_QPA_PLATFORM="offscreen", HOME=tmp, XDG_RUNTIME_DIR=str(root / "run"))
            subprocess.run(["/usr/bin/python3", str(REPO / "tests" / "_qgis_checks.py"), str(root / "config.json"),
                            str(root / "out.json")], env=env, check=True, timeout=600)
            out = json.loads((root / "out.json").read_text())
            if "failed" in out or not out.get("render", {}).get("saved"):
                raise SystemExit(f"QGIS did not render: {out.get('failed') or out}")
            from PIL import Image

            with Image.open(raw) as im:  # 256 colours: a third of the bytes in git
                im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
                    args.out, optimize=True)
        print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
