"""The store commands, one interface for the CLI, the HTTP API and ``serve``'s holder.

:func:`open_commands` is the one place that chooses where a command runs: here over the store,
or in the ``ftfsearch serve`` that holds the embedded store.
"""

from __future__ import annotations

from typing import Callable

from ftfsearch.commands.base import Commands, IngestObserver
from ftfsearch.commands import requests
from ftfsearch.commands.requests import *  # noqa: F403 - the request and result models, as requests.__all__ names them
from ftfsearch.config import Settings


def open_commands(settings: Settings, notify: Callable[[str], None] = lambda _: None,
                  confirm_cancel: Callable[[], bool] = lambda: False) -> Commands:
    """The commands on the store ``settings`` name: through the ``ftfsearch serve`` holding it when
    one does (an embedded store opens in one process only), else here. Nothing loads or opens yet."""
    from ftfsearch.commands.local import LocalCommands

    if not settings.qdrant_url:
        from ftfsearch.store.holder_client import HolderClient

        client = HolderClient.find(settings.resolved_store_dir, settings.collection)
        if client is not None:
            from ftfsearch.commands.remote import HolderCommands

            return HolderCommands(client, settings, notify, confirm_cancel)
    return LocalCommands.from_settings(settings)


__all__ = ["Commands", "IngestObserver", "open_commands", *requests.__all__]
