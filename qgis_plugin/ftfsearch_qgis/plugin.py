"""The plugin: a dock that searches a running ``ftfsearch serve`` over HTTP and shows the results as
QGIS layers. Every call runs in a QgsTask (QGIS never waits on the network), and every failure is
one message in the message bar: a user never sees a Python traceback from here."""

from __future__ import annotations

import json
import os
import traceback
from typing import Any, Callable, Dict, List, Optional, Set

from qgis.core import (
    NULL,
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsMessageLog,
    QgsProject,
    QgsTask,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QFileDialog

from .client import ServeError
from .dock import MAP_EXTENT, POLYGON_LAYER, SearchDock
from .layers import MarkKey, ResultLayers
from .settings import ServeSettings, SettingsDialog

TITLE = "ftfsearch"
WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")
Done = Callable[[Any, Optional[str]], None]


class CallTask(QgsTask):
    """One call to serve in QGIS's task manager: ``call`` in the task's thread, ``done(value, error)``
    back on the main thread (an error is the message to show)."""

    def __init__(self, description: str, call: Callable[[], Any], done: Done) -> None:
        super().__init__(description, QgsTask.CanCancel)
        self._call, self._done = call, done
        self.value: Any = None
        self.error: Optional[str] = None

    def run(self) -> bool:
        try:
            self.value = self._call()
        except ServeError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a task's thread has nobody else to tell
            QgsMessageLog.logMessage(traceback.format_exc(), TITLE, Qgis.Critical)
            self.error = f"ftfsearch: the request failed ({type(exc).__name__}: {exc}); details in the log panel"
        return self.error is None

    def finished(self, ok: bool) -> None:
        if self.isCanceled():
            return
        self._done(self.value, self.error)


def _int_or_none(value: Any) -> Optional[int]:
    return None if value is None or value == NULL else int(value)


class FtfSearchPlugin:
    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.layers = ResultLayers()
        self.marks: Dict[MarkKey, str] = {}
        self.text = ""
        self.points: List[str] = []  # "lon,lat" examples of a "more like" on another layer's features
        self.last_params: Optional[Dict[str, Any]] = None
        self.last_answer: Optional[Dict[str, Any]] = None
        self.dock: Optional[SearchDock] = None
        self.action: Optional[QAction] = None
        self._tasks: Set[CallTask] = set()
        self._seq = 0
        self._message: Any = None

    # -- QGIS's plugin interface -----------------------------------------------------------------

    def initGui(self) -> None:  # noqa: N802 - QGIS's name
        icon = QIcon(os.path.join(os.path.dirname(__file__), "icon.svg"))
        self.action = QAction(icon, "ftfsearch: search your rasters by text", self.iface.mainWindow())
        self.action.setCheckable(True)
        self.dock = SearchDock(self.iface.mainWindow())
        self.dock.hide()
        self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
        self.action.toggled.connect(self.dock.setVisible)
        self.dock.visibilityChanged.connect(self.action.setChecked)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToMenu(TITLE, self.action)
        d = self.dock
        for button, slot in ((d.search, self.search), (d.more_like, self.more_like_selected),
                             (d.hit, lambda: self.mark_selected("positive")),
                             (d.miss, lambda: self.mark_selected("negative")), (d.clear, self.clear_marks),
                             (d.export, lambda: self.export_labels()), (d.settings, self.open_settings)):
            button.clicked.connect(self._guarded(slot))

    def unload(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.action is not None:
            self.iface.removePluginMenu(TITLE, self.action)
            self.iface.removeToolBarIcon(self.action)
        if self.dock is not None:
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
        self.dock = self.action = None

    # -- what the dock's buttons do ----------------------------------------------------------------

    def search(self) -> None:
        """A new search by the dock's text (point examples of an earlier "more like" are dropped)."""
        assert self.dock is not None
        self.text, self.points = self.dock.query.text().strip(), []
        self._search()

    def more_like_selected(self) -> None:
        """More like the selected results (they become the only hits), or like the places of the
        selected features of another active layer."""
        layer = self.iface.activeLayer()
        chosen = self._selected_marks()
        if chosen:
            self.marks = {key: "positive" for key in chosen}
            self.text, self.points = "", []
        elif isinstance(layer, QgsVectorLayer) and layer.selectedFeatureCount():
            self.text, self.points = "", self._points_of(layer)
        else:
            self.notify("select results (or features of the active layer) first", Qgis.Info)
            return
        assert self.dock is not None
        self.dock.query.setText("")
        self._search()

    def mark_selected(self, label: str) -> None:
        """Mark the selected results (whole tiles) and matched regions hit or miss, then search again."""
        chosen = self._selected_marks()
        if not chosen:
            self.notify("select results or matched regions on the ftfsearch layers first", Qgis.Info)
            return
        for key in chosen:
            self.marks[key] = label
        self._marks_changed()
        if self.text or self.points or "positive" in self.marks.values():
            self._search()

    def clear_marks(self) -> None:
        self.marks = {}
        self._marks_changed()

    def export_labels(self, path: Optional[str] = None) -> None:
        """The marks as a labels GeoJSON (serve writes it: footprints from the store), saved to ``path``."""
        if not self.marks:
            self.notify("no marks to export: mark results hit or miss first", Qgis.Info)
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self.iface.mainWindow(), "Export labels", "labels.geojson",
                                                  "GeoJSON (*.geojson *.json)")
            if not path:
                return
        marks = [{"id": tile, "label": label, "region": region} for (tile, region), label in sorted(
            self.marks.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1]))]

        def done(labels: Any, error: Optional[str]) -> None:
            if error is not None:
                self.notify(error, Qgis.Warning)
                return
            try:
                with open(path, "w", encoding="utf-8") as fh:
                    json.dump(labels, fh)
            except OSError as exc:
                self.notify(f"labels file {path}: {exc.strerror or exc}", Qgis.Warning)
                return
            self.notify(f"{len(marks)} marks saved to {path}", Qgis.Success)

        client = self._client()
        if client is not None:
            self.run("ftfsearch: export labels", lambda: client.export_labels(self.text or None, marks), done)

    def open_settings(self) -> None:
        dialog = SettingsDialog(self.iface.mainWindow(), ServeSettings.load(), self.run)
        if dialog.exec_():
            dialog.settings().save()

    # -- the work ----------------------------------------------------------------------------------

    def search_params(self) -> Dict[str, Any]:
        """The search's JSON body: text, examples and marks, area, times and k, as serve takes them."""
        assert self.dock is not None
        params: Dict[str, Any] = {"k": self.dock.k.value()}
        if self.text:
            params["q"] = self.text
        lists: Dict[str, List[str]] = {"like": list(self.points), "unlike": [], "like_region": [], "unlike_region": []}
        for (tile, region), label in sorted(self.marks.items(), key=lambda kv: (kv[0][0], kv[0][1] or -1)):
            name = ("like" if label == "positive" else "unlike") + ("" if region is None else "_region")
            lists[name].append(tile if region is None else f"{tile}:{region}")
        params.update({name: values for name, values in lists.items() if values})
        for name, box in (("after", self.dock.after), ("before", self.dock.before)):
            if box.text().strip():
                params[name] = box.text().strip()
        params.update(self._area())
        return params

    def _search(self) -> None:
        assert self.dock is not None
        params = self.search_params()
        if "q" not in params and "like" not in params and "like_region" not in params:
            self.notify("type what to look for, or select features and use 'More like selected'", Qgis.Info)
            return
        client = self._client()
        if client is None:
            return
        self._seq += 1
        seq = self._seq
        base = client.url
        self.dock.status.setText("searching…")

        def done(answer: Any, error: Optional[str]) -> None:
            if seq != self._seq or self.dock is None:
                return  # a later search (or an unload) came first: this answer is stale
            if error is not None:
                self.dock.status.setText("")
                self.notify(error, Qgis.Warning)
                return
            self.last_params, self.last_answer = params, answer
            self._show(answer, base)

        self.run(f"ftfsearch: search {self.text!r}", lambda: client.search(params), done)

    def _show(self, answer: Dict[str, Any], base: str) -> None:
        assert self.dock is not None
        hits = answer.get("results") or []
        self.layers.fill(hits, base, self.marks)
        self.dock.area_layer.setExceptedLayerList([self.layers.results(), self.layers.regions()])
        what = repr(self.text) if self.text else "the examples"
        self.dock.status.setText(f"{len(hits)} results for {what}")
        warnings = answer.get("warnings") or []
        if warnings:
            self.notify("; ".join(str(w) for w in warnings), Qgis.Warning)
        else:
            self.notify(f"{len(hits)} results for {what}", Qgis.Success, duration=4)
        if hits and self.dock.area.currentIndex() != MAP_EXTENT:
            self._zoom_to(self.layers.results())

    def _zoom_to(self, layer: QgsVectorLayer) -> None:
        canvas = self.iface.mapCanvas()
        to_map = QgsCoordinateTransform(WGS84, canvas.mapSettings().destinationCrs(), QgsProject.instance())
        extent = to_map.transformBoundingBox(layer.extent())
        if not extent.isEmpty():
            canvas.setExtent(extent.buffered(extent.width() * 0.1))
            canvas.refresh()

    def _area(self) -> Dict[str, Any]:
        """``bbox`` of the map's extent, ``aoi`` of a polygon layer (its selection, else all of it)."""
        assert self.dock is not None
        mode = self.dock.area.currentIndex()
        if mode == MAP_EXTENT:
            canvas = self.iface.mapCanvas()
            to_wgs84 = QgsCoordinateTransform(canvas.mapSettings().destinationCrs(), WGS84, QgsProject.instance())
            box = to_wgs84.transformBoundingBox(canvas.extent())
            return {"bbox": ",".join(f"{v:.8f}" for v in (box.xMinimum(), box.yMinimum(), box.xMaximum(),
                                                           box.yMaximum()))}
        layer = self.dock.area_layer.currentLayer()
        if mode != POLYGON_LAYER or layer is None:
            return {}
        to_wgs84 = QgsCoordinateTransform(layer.crs(), WGS84, QgsProject.instance())
        features = layer.selectedFeatures() if layer.selectedFeatureCount() else layer.getFeatures()
        parts = []
        for f in features:
            g = QgsGeometry(f.geometry())
            if not g.isEmpty():
                g.transform(to_wgs84)
                parts.append(g)
        if not parts:
            raise ServeError(f"area layer {layer.name()!r} has no polygons: choose another area")
        return {"aoi": json.loads(QgsGeometry.unaryUnion(parts).asJson(8))}

    def _points_of(self, layer: QgsVectorLayer) -> List[str]:
        to_wgs84 = QgsCoordinateTransform(layer.crs(), WGS84, QgsProject.instance())
        points = []
        for f in layer.selectedFeatures():
            if f.hasGeometry():
                p = to_wgs84.transform(f.geometry().pointOnSurface().asPoint())
                points.append(f"{p.x():.7f},{p.y():.7f}")
        return points

    def _selected_marks(self) -> List[MarkKey]:
        chosen: List[MarkKey] = [(f["tile_id"], None) for f in self.layers.results().selectedFeatures()]
        chosen += [(f["tile_id"], _int_or_none(f["region_index"])) for f in self.layers.regions().selectedFeatures()]
        return chosen

    def _marks_changed(self) -> None:
        hits = sum(1 for v in self.marks.values() if v == "positive")
        if self.dock is not None:
            self.dock.marks.setText(f"{hits} hits, {len(self.marks) - hits} misses" if self.marks else "no marks")
        self.layers.show_marks(self.marks)

    # -- plumbing ----------------------------------------------------------------------------------

    def _client(self) -> Any:
        try:
            return ServeSettings.load().client()
        except ServeError as exc:
            self.notify(str(exc), Qgis.Warning)
            return None

    def run(self, description: str, call: Callable[[], Any], done: Done) -> None:
        """``call`` in a task; ``done(value, error)`` on the main thread, its own failures shown too."""
        def finish(value: Any, error: Optional[str]) -> None:
            self._tasks.discard(task)
            self._guarded(lambda: done(value, error))()

        task = CallTask(description, call, finish)
        self._tasks.add(task)
        QgsApplication.taskManager().addTask(task)

    def _guarded(self, slot: Callable[[], None]) -> Callable[..., None]:
        """A slot whose failure is a message in the bar (details in the log), not a traceback dialog."""
        def guarded(*_: Any) -> None:
            try:
                slot()
            except ServeError as exc:
                self.notify(str(exc), Qgis.Warning)
            except Exception as exc:  # noqa: BLE001 - the last line before QGIS's traceback dialog
                QgsMessageLog.logMessage(traceback.format_exc(), TITLE, Qgis.Critical)
                self.notify(f"ftfsearch: {type(exc).__name__}: {exc} (details in the log panel)", Qgis.Critical)
        return guarded

    def notify(self, text: str, level: Any, duration: int = 10) -> None:
        """One message at a time in the bar: a new one replaces this plugin's last."""
        QgsMessageLog.logMessage(text, TITLE, level)
        bar = self.iface.messageBar()
        if self._message is not None:
            try:
                bar.popWidget(self._message)
            except RuntimeError:  # the bar already deleted it (timed out or closed)
                pass
        self._message = bar.pushWidget(bar.createMessage(TITLE, text), level, duration)
