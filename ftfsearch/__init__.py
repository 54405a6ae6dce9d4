"""ftfsearch: text search over remote-sensing scenes (fast-then-fine)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ftfsearch.api import Connection


def connect(*args: Any, **kwargs: Any) -> "Connection":
    """:func:`ftfsearch.api.connect`, imported when called (``import ftfsearch`` stays light for the CLI)."""
    from ftfsearch.api import connect as _connect

    return _connect(*args, **kwargs)
