"""The two result layers: tile footprints (rank, score, date, mark) and the matched regions inside
them, WGS84 memory layers that each search refills, so their place, style and any edits the user
made to the style stay. Styled by score on a viridis ramp, as serve's page colours them."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (
    QgsClassificationEqualInterval,
    QgsFeature,
    QgsField,
    QgsFillSymbol,
    QgsGeometry,
    QgsGradientColorRamp,
    QgsGraduatedSymbolRenderer,
    QgsPalLayerSettings,
    QgsPointXY,
    QgsProject,
    QgsStyle,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtCore import QDateTime, Qt, QVariant
from qgis.PyQt.QtGui import QColor

RESULTS_NAME = "ftfsearch results"
REGIONS_NAME = "ftfsearch matched regions"
MARK_TEXT = {"positive": "hit", "negative": "miss"}
"""A mark's label in the API (labels GeoJSON) and as the layers show it."""

RESULT_FIELDS = (("rank", QVariant.Int), ("score", QVariant.Double), ("coarse_score", QVariant.Double),
                 ("fine_score", QVariant.Double), ("acquired", QVariant.DateTime), ("tile_id", QVariant.String),
                 ("scene_id", QVariant.String), ("level", QVariant.Int), ("region_index", QVariant.Int),
                 ("mark", QVariant.String), ("chip_url", QVariant.String))
REGION_FIELDS = (("rank", QVariant.Int), ("score", QVariant.Double), ("tile_id", QVariant.String),
                 ("region_index", QVariant.Int), ("mark", QVariant.String))
MarkKey = Tuple[str, Optional[int]]
"""(tile id, region index): None marks the whole tile, as the API's marks do."""


def _ring_geometry(ring: Optional[List[List[float]]]) -> Optional[QgsGeometry]:
    if not ring or len(ring) < 4:
        return None
    return QgsGeometry.fromPolygonXY([[QgsPointXY(float(x), float(y)) for x, y in ring]])


def _acquired(text: Optional[str]) -> Any:
    if not text:
        return None
    when = QDateTime.fromString(text.replace("Z", "+00:00"), Qt.ISODate)
    return when if when.isValid() else None


def _new_layer(name: str, fields: Tuple[Tuple[str, Any], ...]) -> QgsVectorLayer:
    layer = QgsVectorLayer("Polygon?crs=EPSG:4326", name, "memory")
    layer.dataProvider().addAttributes([QgsField(n, t) for n, t in fields])
    layer.updateFields()
    return layer


def _viridis() -> Any:
    ramp = QgsStyle.defaultStyle().colorRamp("Viridis")
    return ramp if ramp is not None else QgsGradientColorRamp(QColor(68, 1, 84), QColor(253, 231, 37))


def style_by_score(layer: QgsVectorLayer, outline_only: bool) -> None:
    """A graduated renderer on ``score`` (five equal intervals of this search's scores)."""
    if outline_only:
        symbol = QgsFillSymbol.createSimple({"style": "no", "outline_width": "0.9"})
    else:  # footprints overlap (tiles at half overlap, several levels): a light fill keeps the scene visible
        symbol = QgsFillSymbol.createSimple({"outline_width": "0.5"})
    renderer = QgsGraduatedSymbolRenderer("score")
    renderer.setClassificationMethod(QgsClassificationEqualInterval())
    renderer.setSourceSymbol(symbol)
    renderer.setSourceColorRamp(_viridis())
    renderer.updateClasses(layer, 5)
    for i, cls in enumerate(renderer.ranges()):  # the outline carries the class colour
        colour = cls.symbol().color()
        styled = cls.symbol().clone()
        styled.symbolLayer(0).setStrokeColor(colour)
        if not outline_only:
            fill = QColor(colour)
            fill.setAlpha(50)
            styled.symbolLayer(0).setFillColor(fill)
        renderer.updateRangeSymbol(i, styled)
    layer.setRenderer(renderer)


def label_by_rank(layer: QgsVectorLayer) -> None:
    """Each footprint shows its rank, and a mark as ✓ (hit) or ✗ (miss)."""
    settings = QgsPalLayerSettings()
    text = QgsTextFormat()
    text.setSize(9)
    text.setColor(QColor(20, 20, 20))
    text.buffer().setEnabled(True)
    text.buffer().setColor(QColor(255, 255, 255))
    settings.setFormat(text)
    settings.isExpression = True
    settings.fieldName = "\"rank\" || CASE WHEN \"mark\" = 'hit' THEN ' ✓' WHEN \"mark\" = 'miss' THEN ' ✗' ELSE '' END"
    layer.setLabeling(QgsVectorLayerSimpleLabeling(settings))
    layer.setLabelsEnabled(True)


class ResultLayers:
    """The results and regions layers of this plugin in the current project (made when missing)."""

    def __init__(self) -> None:
        self._ids: Dict[str, str] = {}

    def layer(self, name: str, fields: Tuple[Tuple[str, Any], ...]) -> QgsVectorLayer:
        found = QgsProject.instance().mapLayer(self._ids.get(name, ""))
        if isinstance(found, QgsVectorLayer) and found.isValid():
            return found
        layer = _new_layer(name, fields)
        QgsProject.instance().addMapLayer(layer)
        self._ids[name] = layer.id()
        return layer

    def results(self) -> QgsVectorLayer:
        return self.layer(RESULTS_NAME, RESULT_FIELDS)

    def regions(self) -> QgsVectorLayer:
        return self.layer(REGIONS_NAME, REGION_FIELDS)

    def owns(self, layer: Any) -> bool:
        return layer is not None and layer.id() in self._ids.values()

    def fill(self, hits: List[Dict[str, Any]], base_url: str, marks: Dict[MarkKey, str]) -> None:
        """Replace both layers' features by a search's hits, in rank order, and restyle by score."""
        results, regions = self.results(), self.regions()
        tiles, parts = [], []
        for hit in hits:
            tile = QgsFeature(results.fields())
            tile.setAttributes([
                hit["rank"], hit["score"], hit.get("coarse_score"), hit.get("fine_score"), _acquired(hit.get("acquired")),
                hit["id"], hit.get("scene_id"), hit.get("level"), hit.get("region_index"),
                MARK_TEXT.get(marks.get((hit["id"], None), ""), ""), base_url + hit.get("chip_url", ""),
            ])
            geometry = _ring_geometry(hit.get("footprint"))
            if geometry is not None:
                tile.setGeometry(geometry)
            tiles.append(tile)
            ring = _ring_geometry(hit.get("region_footprint"))
            if ring is not None:
                part = QgsFeature(regions.fields())
                region = hit.get("region_index")
                part.setAttributes([hit["rank"], hit["score"], hit["id"], region,
                                    MARK_TEXT.get(marks.get((hit["id"], region), ""), "")])
                part.setGeometry(ring)
                parts.append(part)
        for layer, features, outline_only in ((results, tiles, False), (regions, parts, True)):
            layer.dataProvider().truncate()
            layer.dataProvider().addFeatures(features)
            layer.updateExtents()
            style_by_score(layer, outline_only)
            layer.triggerRepaint()
        label_by_rank(results)

    def show_marks(self, marks: Dict[MarkKey, str]) -> None:
        """Write the marks into the layers' ``mark`` field (the labels show them)."""
        for layer, whole in ((self.results(), True), (self.regions(), False)):
            index = layer.fields().indexOf("mark")
            changes = {}
            for f in layer.getFeatures():
                key = (f["tile_id"], None if whole else f["region_index"])
                changes[f.id()] = {index: MARK_TEXT.get(marks.get(key, ""), "")}
            layer.dataProvider().changeAttributeValues(changes)
            layer.triggerRepaint()
