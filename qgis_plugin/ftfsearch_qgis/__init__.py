"""ftfsearch for QGIS: search your own rasters by text through a running ``ftfsearch serve``.

A thin client: the standard library's HTTP and PyQGIS only, no torch and no model inside QGIS
(serve holds the model and the store). QGIS calls :func:`classFactory` when it loads the plugin."""

from __future__ import annotations

from typing import Any


def classFactory(iface: Any) -> Any:  # noqa: N802 - QGIS's name
    from .plugin import FtfSearchPlugin

    return FtfSearchPlugin(iface)
