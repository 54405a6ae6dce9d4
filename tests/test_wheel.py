"""The wheel is the product: built from this checkout and installed into a clean environment, it
serves a page whose map loads (Leaflet ships in the package, no Makefile step, no CDN).

How the clean environment is made, and why it is still a fair test. Installing every dependency
(torch, transformers, ...) from the registry into a new environment would take minutes, so:

- the wheel is built from a copy of the checkout's files (``git ls-files``: tracked, plus untracked
  files git does not ignore), so no ``build/`` left in the checkout can leak into it;
- the new environment is a bare ``python -m venv --without-pip``; the wheel goes in with
  ``pip --python ENV install --no-deps --no-index``;
- the dependencies are seen through one ``.pth`` file in the new environment whose only line is
  the test environment's site-packages directory. A bare path line in a ``.pth`` only appends that
  directory to ``sys.path``: ``site`` does not process the ``.pth`` files inside it, so the editable
  install of the checkout (``__editable__.ftfsearch-*.pth``, which activates a finder) never runs, and
  the new environment's own site-packages, holding the wheel's ``ftfsearch``, comes first anyway.
  The probe below checks exactly that: the imported ``ftfsearch`` and ``ingest`` live in the new
  environment and no editable finder is loaded.

Then ``ftfsearch serve`` of that environment runs on 127.0.0.1 on an empty store with the shipped
default model (so the model files are package data too), and the page, every asset it references
(in its HTML, in the stylesheets' ``url()``, the marker images Leaflet's script names) and
Chromium's view of the map are checked. The server is stopped whatever happens.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from _web_fixtures import http_get, running_serve

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "ftfsearch" / "web" / "static"
VENDOR = STATIC / "vendor" / "leaflet"
CHROMIUM = Path("/usr/bin/chromium")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files_under(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_vendored_leaflet_is_the_pinned_release() -> None:
    """The committed copy is what scripts/get-leaflet.sh installs from the pinned tarball: same
    version and tarball digest as the script's pin, every file as its SHA256SUMS says, and the
    BSD-2-Clause licence beside it."""
    script = (REPO / "scripts" / "get-leaflet.sh").read_text()
    version = re.search(r'^VERSION="([^"]+)"', script, re.M)
    tarball = re.search(r'^SHA256="([0-9a-f]{64})"', script, re.M)
    assert version and tarball
    assert (VENDOR / "VERSION").read_text().split() == ["leaflet", f"{version[1]},", "npm", "tarball", "sha256", tarball[1]]
    sums = {}
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name] = digest
    files = _files_under(VENDOR)
    assert set(sums) == set(files) - {"SHA256SUMS"}
    assert {"leaflet.js", "leaflet.css", "LICENSE", "images/layers.png", "images/marker-icon.png"} <= set(sums)
    for name, digest in sums.items():
        assert _sha256(files[name]) == digest, f"{name} differs from the release: run scripts/get-leaflet.sh"
    assert (VENDOR / "LICENSE").read_text().startswith("BSD 2-Clause License")


@dataclass(frozen=True)
class Installed:
    env: Path
    python: Path
    ftfsearch: Path
    site: Path
    """The new environment's site-packages."""


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=cwd, env=env)
    assert proc.returncode == 0, f"{cmd[:4]} failed ({proc.returncode}): {proc.stdout[-1500:]}{proc.stderr[-1500:]}"
    return proc


def _checkout_copy(dest: Path) -> Path:
    """The files of this checkout (tracked, and untracked but not ignored) under ``dest``."""
    try:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"],
                                capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"the wheel test builds from a git checkout: git ls-files failed in {REPO} ({exc})")
    for name in filter(None, listed.decode().split("\0")):
        src = REPO / name
        if src.is_file():  # a tracked file deleted in the working tree is not part of it
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _clean_env(extra_path: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    if extra_path is not None:
        env["PATH"] = f"{extra_path}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    src = _checkout_copy(root / "src")
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(src)], cwd=root, env=_clean_env())
    (wheel,) = dist.glob("ftfsearch-*-py3-none-any.whl")
    env_dir = root / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=root, env=_clean_env())
    python = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         cwd=root, env=_clean_env())
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "ftfsearch-test-dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return Installed(env_dir, python, env_dir / "bin" / "ftfsearch", site)


PROBE = """
import importlib.metadata, json, sys
import ftfsearch, ingest
import ftfsearch.web.app as app
dist = importlib.metadata.distribution("ftfsearch")
print(json.dumps({
    "ftfsearch": ftfsearch.__file__, "ingest": ingest.__file__, "static": str(app.STATIC_DIR),
    "metadata": str(dist.locate_file("ftfsearch")), "versions": [ftfsearch.__version__, dist.version],
    "editable": sorted(m for m in sys.modules if "editable" in m)
                + [repr(f) for f in sys.meta_path if "editable" in repr(f).lower()],
}))
"""


@pytest.mark.slow
def test_installed_package_is_the_wheel_with_every_asset(installed: Installed, tmp_path: Path) -> None:
    out = json.loads(_run([str(installed.python), "-c", PROBE], cwd=tmp_path, env=_clean_env()).stdout)
    env = installed.env.resolve()
    for name in ("ftfsearch", "ingest", "static", "metadata"):
        assert Path(out[name]).resolve().is_relative_to(env), (name, out[name])
    assert out["versions"][0] == out["versions"][1]
    assert out["editable"] == []
    assert installed.ftfsearch.read_text().splitlines()[0] == f"#!{installed.python}"
    # Every file of the page in the checkout is in the installed package, byte for byte.
    checkout, shipped = _files_under(STATIC), _files_under(Path(out["static"]))
    assert set(checkout) == set(shipped) and "vendor/leaflet/leaflet.js" in shipped
    assert all(_sha256(checkout[n]) == _sha256(shipped[n]) for n in checkout)


@dataclass(frozen=True)
class Served:
    url: str
    log: Path
    static: Path


@pytest.fixture(scope="module")
def served(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``ftfsearch serve`` of the clean environment on an empty embedded store, default model."""
    root = tmp_path_factory.mktemp("serve")
    log = root / "serve.log"
    env = _clean_env(installed.python.parent)
    env["FTF_CONFIG"] = str(root / "none.toml")
    env.pop("FTF_BASEMAP_URL", None)
    command = [str(installed.ftfsearch), "serve", "--store", str(root / "store"), "--device", "cpu",
               "--host", "127.0.0.1"]
    with running_serve(command, env, log, timeout=120, cwd=root) as (_, url):
        yield Served(url, log, installed.site / "ftfsearch" / "web" / "static")


class _Refs(html.parser.HTMLParser):
    """The stylesheets and scripts a page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "link" and a.get("rel") == "stylesheet" and a.get("href"):
            self.refs.append(str(a["href"]))
        elif tag == "script" and a.get("src"):
            self.refs.append(str(a["src"]))


def _referenced_assets(base_url: str, index: str) -> set[str]:
    """Every /static path the page needs: its links and scripts, the ``url()`` of each stylesheet
    (relative to it), and the images Leaflet's script names (it finds them beside the stylesheet's
    ``images/``)."""
    parser = _Refs()
    parser.feed(index)
    # relative to the page (it may be served under a proxy's prefix), and nothing from another host
    assert all(ref.startswith("static/") for ref in parser.refs), parser.refs
    assets = {"/" + ref for ref in parser.refs}
    for ref in sorted(assets):
        body = http_get(base_url + ref)[1].decode("utf-8", "replace")
        base = ref.rsplit("/", 1)[0]
        if ref.endswith(".css"):
            for target in re.findall(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)", body):
                if not target.startswith(("data:", "#", "http:", "https:", "/")):
                    assets.add(os.path.normpath(f"{base}/{target}"))
        if ref.endswith("leaflet.js"):
            assets.update(f"{base}/images/{name}" for name in re.findall(r"['\"]([\w-]+\.png)['\"]", body))
    return assets


@pytest.mark.slow
def test_the_page_and_every_asset_it_references_are_served(served: Served) -> None:
    status, page = http_get(served.url + "/")
    assert status == 200 and b'id="map"' in page
    assets = _referenced_assets(served.url, page.decode())
    expected = {"/static/vendor/leaflet/leaflet.js", "/static/vendor/leaflet/leaflet.css", "/static/app.js",
                "/static/style.css", "/static/vendor/leaflet/images/layers.png",
                "/static/vendor/leaflet/images/layers-2x.png", "/static/vendor/leaflet/images/marker-icon.png",
                "/static/vendor/leaflet/images/marker-icon-2x.png", "/static/vendor/leaflet/images/marker-shadow.png"}
    assert expected <= assets
    for ref in sorted(assets):
        status, body = http_get(served.url + ref)
        assert status == 200, (ref, status)
        assert body == (served.static / ref.removeprefix("/static/")).read_bytes(), ref


@pytest.mark.slow
def test_the_map_initialises_in_chromium(served: Served) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {CHROMIUM} is missing (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (CI installs it)")
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    statuses: dict[str, int] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
            page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
            page.on("response", lambda resp: statuses.__setitem__(resp.url, resp.status)
                    if not resp.url.startswith("data:") else None)
            page.goto(served.url + "/")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            assert page.evaluate("typeof L") == "object" and page.locator("#no-leaflet").is_hidden()
            assert "leaflet-container" in (page.get_attribute("#map", "class") or "")
            # leaflet.css applied: panes are absolutely placed, the layers toggle shows its sprite.
            assert page.evaluate("getComputedStyle(document.querySelector('.leaflet-map-pane')).position") == "absolute"
            page.wait_for_function("[...performance.getEntriesByType('resource')].some(e => /layers(-2x)?\\.png$/.test(e.name))")
            assert page.locator(".leaflet-control-zoom-in").is_visible()
        finally:
            browser.close()
    assert not problems, problems
    assert all(url.startswith(served.url) for url in statuses), sorted(statuses)
    assert statuses and all(s == 200 for s in statuses.values()), statuses
    assert {f"{served.url}/static/vendor/leaflet/leaflet.js", f"{served.url}/static/vendor/leaflet/leaflet.css"} <= set(statuses)
