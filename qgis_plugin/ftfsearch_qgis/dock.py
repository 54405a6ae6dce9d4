"""The dock: what to look for (text, or more like the selected features), when (a time range) and
where (anywhere, the map's extent, or a polygon layer), the marks, and the buttons. Widgets only:
the plugin object does the work."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsMapLayerProxyModel
from qgis.gui import QgsMapLayerComboBox
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFormLayout,
    QGridLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

AREAS = ("Anywhere", "Current map extent", "Polygon layer")
ANYWHERE, MAP_EXTENT, POLYGON_LAYER = range(3)


class SearchDock(QDockWidget):
    def __init__(self, parent: Any) -> None:
        super().__init__("ftfsearch", parent)
        self.setObjectName("ftfsearchDock")
        body = QWidget()
        self.query = QLineEdit()
        self.query.setPlaceholderText("what to look for, e.g. ships near a harbor")
        self.after = QLineEdit()
        self.after.setPlaceholderText("from, e.g. 2024-05-01 (optional)")
        self.before = QLineEdit()
        self.before.setPlaceholderText("until, before this time (optional)")
        self.area = QComboBox()
        self.area.addItems(AREAS)
        self.area_layer = QgsMapLayerComboBox()
        self.area_layer.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.area_layer.setEnabled(False)
        self.area.currentIndexChanged.connect(lambda i: self.area_layer.setEnabled(i == POLYGON_LAYER))
        self.k = QSpinBox()
        self.k.setRange(1, 1000)
        self.k.setValue(20)
        form = QFormLayout()
        form.addRow("Search", self.query)
        form.addRow("After", self.after)
        form.addRow("Before", self.before)
        form.addRow("Area", self.area)
        form.addRow("", self.area_layer)
        form.addRow("Results", self.k)
        self.search = QPushButton("Search")
        self.search.setDefault(True)
        self.more_like = QPushButton("More like selected")
        self.more_like.setToolTip("search for more like the selected results, or like the places of the selected "
                                  "features of the active layer")
        self.hit = QPushButton("Mark hit")
        self.hit.setToolTip("mark the selected results (or matched regions) as hits and search again")
        self.miss = QPushButton("Mark miss")
        self.miss.setToolTip("mark the selected results (or matched regions) as misses and search again")
        self.clear = QPushButton("Clear marks")
        self.export = QPushButton("Export labels…")
        self.export.setToolTip("save the marks as a labels GeoJSON (ftfsearch classify / labels import read it)")
        self.settings = QPushButton("Settings…")
        buttons = QGridLayout()
        for i, b in enumerate((self.search, self.more_like, self.hit, self.miss, self.clear, self.export,
                               self.settings)):
            buttons.addWidget(b, i // 2, i % 2)
        self.marks = QLabel("no marks")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.query.returnPressed.connect(self.search.click)
        column = QVBoxLayout(body)
        column.addLayout(form)
        column.addLayout(buttons)
        column.addWidget(self.marks)
        column.addWidget(self.status)
        column.addStretch(1)
        self.setWidget(body)
