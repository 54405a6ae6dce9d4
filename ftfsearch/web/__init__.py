"""``ftfsearch serve``: the HTTP API and the map page."""

from ftfsearch.web.app import create_app
from ftfsearch.web.resources import Resources, ServeOptions

__all__ = ["Resources", "ServeOptions", "create_app"]
