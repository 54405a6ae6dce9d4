"""``ftfsearch serve``: the HTTP API and the map page."""

from ftfsearch.web.app import Resources, ServeOptions, create_app

__all__ = ["Resources", "ServeOptions", "create_app"]
