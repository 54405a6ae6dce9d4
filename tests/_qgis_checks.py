"""Drive the QGIS plugin inside a real, headless QGIS (Debian's python3-qgis, run by the SYSTEM
``/usr/bin/python3`` with ``QT_QPA_PLATFORM=offscreen``): install it from its zip as QGIS's
installer does, start it through ``qgis.utils`` with a small host window (the parts of QGIS's
main window a plugin talks to: a real map canvas, message bar and dock area), click its buttons,
and write what QGIS shows (layer features, messages, parameters sent) as JSON for
tests/test_qgis_plugin.py to check against serve's own answers. Optionally renders the map
(the scenes under the result layers) to a PNG, for the test and for docs/qgis_screenshot.py.

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/_qgis_checks.py CONFIG.json OUT.json

Runs under QGIS's Python, not the project's venv: standard library and PyQGIS only.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List

# QGIS computes raster statistics to draw a scene; GDAL would keep them in a .aux.xml beside the
# source (tests/data, the read-only shared data). Set before GDAL loads.
os.environ["GDAL_PAM_ENABLED"] = "NO"

from qgis.core import (
    NULL,
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsGeometry,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.gui import QgsMapCanvas, QgsMessageBar
from qgis.PyQt.QtCore import QCoreApplication, QSize
from qgis.PyQt.QtGui import QColor, QImage, QPainter
from qgis.PyQt.QtWidgets import QMainWindow

UNCAUGHT: List[str] = []
"""Tracebacks that would have reached QGIS's error dialog (sys.excepthook, as QGIS installs it)."""
CRITICAL_LOG: List[str] = []


class Host:
    """The surface of QGIS's main window that a plugin uses (``qgis.utils.iface``'s methods the
    plugin calls), over real widgets: a QMainWindow with a QgsMapCanvas and a QgsMessageBar."""

    def __init__(self) -> None:
        self.window = QMainWindow()
        self.window.resize(1200, 800)
        self.canvas = QgsMapCanvas(self.window)
        self.window.setCentralWidget(self.canvas)
        self.bar = QgsMessageBar(self.window)
        self.toolbar: List[Any] = []
        self.menus: Dict[str, List[Any]] = {}
        self.active: Any = None

    def mainWindow(self) -> Any:  # noqa: N802 - QgisInterface's names
        return self.window

    def mapCanvas(self) -> Any:  # noqa: N802
        return self.canvas

    def messageBar(self) -> Any:  # noqa: N802
        return self.bar

    def activeLayer(self) -> Any:  # noqa: N802
        return self.active

    def addDockWidget(self, area: Any, dock: Any) -> None:  # noqa: N802
        self.window.addDockWidget(area, dock)

    def removeDockWidget(self, dock: Any) -> None:  # noqa: N802
        self.window.removeDockWidget(dock)

    def addToolBarIcon(self, action: Any) -> None:  # noqa: N802
        self.toolbar.append(action)

    def removeToolBarIcon(self, action: Any) -> None:  # noqa: N802
        self.toolbar.remove(action)

    def addPluginToMenu(self, name: str, action: Any) -> None:  # noqa: N802
        self.menus.setdefault(name, []).append(action)

    def removePluginMenu(self, name: str, action: Any) -> None:  # noqa: N802
        self.menus[name].remove(action)


def wait_for(done: Callable[[], bool], timeout: float, what: str) -> None:
    """Run QGIS's event loop (tasks finish through it) until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout:.0f} s")
        QCoreApplication.processEvents()
        time.sleep(0.01)


def messages(host: Host) -> List[Dict[str, Any]]:
    return [{"title": item.title(), "text": item.text(), "level": int(item.level())} for item in host.bar.items()]


def features(layer: Any) -> List[Dict[str, Any]]:
    rows = []
    for f in layer.getFeatures():
        row = {name: (None if f[name] is None or f[name] == NULL else f[name]) for name in layer.fields().names()}
        if row.get("acquired") is not None:
            row["acquired"] = row["acquired"].toString("yyyy-MM-ddTHH:mm:ss")
        row["wkt_bbox"] = f.geometry().boundingBox().toString(8) if f.hasGeometry() else None
        rows.append(row)
    return sorted(rows, key=lambda r: (r["rank"], r["tile_id"]))


def install_from_zip(zip_path: str, plugins_dir: Path) -> Dict[str, Any]:
    """What QGIS's "Install from ZIP" does: find the plugin folder by its metadata.txt, unzip with
    QGIS's own unzip, read the metadata with QGIS's installer (it marks a broken or incompatible
    plugin), then load and start the plugin through qgis.utils."""
    import zipfile

    sys.path.insert(0, "/usr/share/qgis/python")
    from pyplugin_installer.installer_data import plugins
    from pyplugin_installer.unzip import unzip

    import qgis.utils

    with zipfile.ZipFile(zip_path) as zf:
        name = os.path.split(sorted(f for f in zf.namelist() if f.endswith("metadata.txt"))[0])[0]
    plugins_dir.mkdir(parents=True, exist_ok=True)
    unzip(zip_path, str(plugins_dir))
    meta = plugins.getInstalledPlugin(name, str(plugins_dir / name), False)
    qgis.utils.plugin_paths.insert(0, str(plugins_dir))
    sys.path.insert(0, str(plugins_dir))
    qgis.utils.updateAvailablePlugins()  # as QGIS does at start and its installer after unzipping
    loaded = qgis.utils.loadPlugin(name)
    started = qgis.utils.startPlugin(name)
    return {"name": name, "available": name in qgis.utils.available_plugins, "error": meta["error"], "error_details": meta["error_details"], "version":
            meta["version_installed"], "loaded": bool(loaded), "started": bool(started)}


class Session:
    """The plugin in a running QGIS, and the steps the test asks for."""

    def __init__(self, config: Dict[str, Any]) -> None:
        self.config = config
        self.host = Host()
        import qgis.utils

        qgis.utils.iface = self.host
        self.install = install_from_zip(config["zip"], Path(config["plugins_dir"]))
        self.name = self.install["name"]
        self.plugin = qgis.utils.plugins.get(self.name)

    def settings(self, url: str, key: str, timeout: float = 60.0) -> None:
        s = QgsSettings()
        s.setValue("ftfsearch/url", url)
        s.setValue("ftfsearch/api_key", key)
        s.setValue("ftfsearch/timeout_s", timeout)

    def click(self, button: Any, timeout: float = 120.0) -> Dict[str, Any]:
        """Click a dock button and wait until its request is answered (a new answer or message)."""
        before_answer, before_message = self.plugin.last_answer, self.plugin._message
        button.click()
        wait_for(lambda: not self.plugin._tasks and (self.plugin.last_answer is not before_answer
                                                      or self.plugin._message is not before_message),
                 timeout, f"button {button.text()!r}")
        return self.observe()

    def observe(self) -> Dict[str, Any]:
        return {
            "params": self.plugin.last_params,
            "results": features(self.plugin.layers.results()),
            "regions": features(self.plugin.layers.regions()),
            "messages": messages(self.host),
            "status": self.plugin.dock.status.text(),
            "marks_label": self.plugin.dock.marks.text(),
        }

    def select(self, layer: Any, ranks: List[int]) -> None:
        layer.selectByIds([f.id() for f in layer.getFeatures() if f["rank"] in ranks])
        self.host.active = layer

    def loaded(self) -> Dict[str, Any]:
        dock = self.plugin.dock
        return {**self.install, "class": type(self.plugin).__name__, "dock": dock is not None and
                dock.objectName(), "toolbar": len(self.host.toolbar), "menus": {k: len(v) for k, v in
                self.host.menus.items()}}


def run_steps(s: Session) -> Dict[str, Any]:
    c = s.config
    out: Dict[str, Any] = {"loaded": s.loaded()}
    s.settings(c["url"], c["key"])
    if c.get("steps", True):
        out.update(search_steps(s))
        out.update(area_steps(s))
        out.update(failure_steps(s))
    if c.get("render"):
        out["render"] = render(s, c["render"])
    import qgis.utils

    out["unloaded"] = bool(qgis.utils.unloadPlugin(s.name))
    out["toolbar_after_unload"] = len(s.host.toolbar)
    return out


def search_steps(s: Session) -> Dict[str, Any]:
    """A text search, a hit on a result and a miss on a matched region (each searches again), the
    labels exported, the marks cleared."""
    c, dock, out = s.config, s.plugin.dock, {}
    dock.query.setText(c["query"])
    dock.k.setValue(c["k"])
    out["search"] = s.click(dock.search)
    s.select(s.plugin.layers.results(), [1])
    out["hit"] = s.click(dock.hit)  # marks rank 1 of the first search a hit, and searches again
    s.select(s.plugin.layers.regions(), [2])
    out["miss_region"] = s.click(dock.miss)
    path = str(Path(c["work"]) / "labels.geojson")
    s.plugin.export_labels(path)
    wait_for(lambda: not s.plugin._tasks, 60, "export labels")
    out["labels"] = json.loads(Path(path).read_text()) if Path(path).is_file() else None
    out["labels_messages"] = messages(s.host)
    dock.clear.click()
    out["cleared_marks"] = s.plugin.dock.marks.text()
    return out


def area_steps(s: Session) -> Dict[str, Any]:
    """The map extent and a polygon layer as the area; a point layer's feature as the example."""
    c, dock, out = s.config, s.plugin.dock, {}
    mercator = QgsCoordinateReferenceSystem("EPSG:3857")
    to_3857 = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), mercator, QgsProject.instance())
    west, south, east, north = c["area_lonlat"]
    s.host.canvas.setDestinationCrs(mercator)
    s.host.canvas.setExtent(to_3857.transformBoundingBox(QgsRectangle(west, south, east, north)))
    dock.query.setText(c["query"])
    dock.area.setCurrentIndex(1)
    out["extent"] = s.click(dock.search)
    polygon = QgsVectorLayer("Polygon?crs=EPSG:3857", "area", "memory")
    f = QgsFeature()
    ring = [to_3857.transform(QgsPointXY(x, y)) for x, y in ((west, south), (east, south), (east, north), (west, north))]
    f.setGeometry(QgsGeometry.fromPolygonXY([ring]))
    polygon.dataProvider().addFeatures([f])
    QgsProject.instance().addMapLayer(polygon)
    dock.area.setCurrentIndex(2)
    dock.area_layer.setLayer(polygon)
    out["polygon"] = s.click(dock.search)
    dock.area.setCurrentIndex(0)
    points = QgsVectorLayer("Point?crs=EPSG:3857", "places", "memory")
    p = QgsFeature()
    p.setGeometry(QgsGeometry.fromPointXY(to_3857.transform(QgsPointXY(*c["like_point"]))))
    points.dataProvider().addFeatures([p])
    QgsProject.instance().addMapLayer(points)
    points.selectAll()
    s.host.active = points
    out["like_point"] = s.click(dock.more_like)
    s.select(s.plugin.layers.results(), [1])
    out["like_result"] = s.click(dock.more_like)
    dock.clear.click()
    return out


def failure_steps(s: Session) -> Dict[str, Any]:
    """A wrong key, serve down, serve slow, and serve answering an error: each one message."""
    c, dock, out = s.config, s.plugin.dock, {}
    dock.query.setText(c["query"])
    for step, url, key, timeout in (("wrong_key", c["url"], "ftf_" + "x" * 43, 60.0), ("down", c["down_url"], c["key"], 60.0),
                                    ("slow", c["slow_url"], c["key"], 2.0)):
        s.settings(url, key, timeout)
        started = time.monotonic()
        out[step] = s.click(dock.search)
        out[step]["seconds"] = time.monotonic() - started
    s.settings(c["url"], c["key"])
    dock.after.setText("not a time")
    out["bad_time"] = s.click(dock.search)
    dock.after.setText("")
    return out


def render(s: Session, spec: Dict[str, Any]) -> Dict[str, Any]:
    """The scenes under the result layers, offscreen, as QGIS draws its canvas, to a PNG."""
    rasters = [QgsRasterLayer(p, Path(p).stem) for p in spec["rasters"]]
    dock = s.plugin.dock
    dock.query.setText(spec["query"])
    dock.k.setValue(spec.get("k", 10))
    dock.area.setCurrentIndex(0)
    searched = s.click(dock.search)
    settings = QgsMapSettings()
    results, regions = s.plugin.layers.results(), s.plugin.layers.regions()
    settings.setLayers([regions, results, *rasters])
    crs = rasters[0].crs() if rasters and rasters[0].crs().isValid() else QgsCoordinateReferenceSystem("EPSG:3857")
    settings.setDestinationCrs(crs)
    to_map = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), crs, QgsProject.instance())
    extent = to_map.transformBoundingBox(results.extent()) if spec.get("fit") == "results" else rasters[0].extent()
    settings.setOutputSize(QSize(*spec["size"]))
    settings.setExtent(extent.buffered(extent.width() * 0.03))
    settings.setBackgroundColor(QColor(255, 255, 255))
    settings.setFlag(QgsMapSettings.Antialiasing, True)
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    if spec.get("with_dock"):  # the dock beside the map, as it sits in QGIS's window
        grabbed = dock.grab().toImage()
        image = beside(image, grabbed.copy(0, 0, grabbed.width(), min(grabbed.height(), image.height())))
    saved = image.save(spec["out"], "PNG")
    return {"saved": bool(saved), "rasters_valid": [r.isValid() for r in rasters], "results": len(searched["results"]),
            "width": image.width(), "height": image.height()}


def beside(left: Any, right: Any) -> Any:
    out = QImage(left.width() + right.width(), max(left.height(), right.height()), QImage.Format_ARGB32)
    out.fill(QColor(255, 255, 255))
    painter = QPainter(out)
    painter.drawImage(0, 0, left)
    painter.drawImage(left.width(), 0, right)
    painter.end()
    return out


def main() -> int:
    config = json.loads(Path(sys.argv[1]).read_text())
    app = QgsApplication([], True)
    app.setPrefixPath("/usr", True)
    app.initQgis()
    sys.excepthook = lambda kind, value, tb: UNCAUGHT.append("".join(traceback.format_exception(kind, value, tb)))

    def log(message: str, tag: str, level: Any) -> None:
        if level == Qgis.Critical:
            CRITICAL_LOG.append(f"{tag}: {message}")

    QgsApplication.messageLog().messageReceived.connect(log)
    try:
        out = run_steps(Session(config))
    except Exception:  # noqa: BLE001 - the test reads the failure from the JSON
        out = {"failed": traceback.format_exc()}
    out["qgis_version"] = Qgis.QGIS_VERSION
    out["uncaught"] = UNCAUGHT
    out["critical_log"] = CRITICAL_LOG
    Path(sys.argv[2]).write_text(json.dumps(out, indent=1, default=str))
    QgsProject.instance().clear()
    app.exitQgis()
    sys.stdout.flush()
    sys.stderr.flush()
    # Python's teardown after exitQgis() deletes Qt widgets in no fixed order, which can crash a
    # headless QGIS 3.22 (SIGSEGV, no Python frame): the answer is written, leave at once
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
