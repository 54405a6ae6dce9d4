"""Named errors of ftfsearch.

Library code raises these; only the CLI turns them into one line on stderr and an exit code, and
the HTTP API into a JSON body. Each message names the file or argument at fault and what to do.

A message names a parameter in the API's words, between backticks: ``"`bbox` '1,2': ..."``.
``str(error)`` is the message in the API's words (``bbox '1,2': ...``); the CLI renders each named
parameter as its flag (``--bbox '1,2': ...``) with :func:`render`. Only a backticked name is
rewritten, never a word of the prose. A message that reaches a user unrendered still reads well.
"""

from __future__ import annotations

import re
from typing import Callable

PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")
"""A parameter named in a message: a lower-case identifier between backticks."""

REINGEST_HINT = (
    "to search it with this model, re-ingest its scenes into a new `collection` or a fresh `store`; to keep "
    "using it, pass the model it was built with as `model` (the earlier default, ftf-small, ships as the "
    "directory ftfsearch/model/scratch of the installed package)"
)
"""What to do when a collection was filled by another model (after the shipped default changed, say)."""


def render(message: str, name: Callable[[str], str]) -> str:
    """``message`` with each backticked parameter replaced by ``name(parameter)``."""
    return PARAMETER.sub(lambda m: name(m.group(1)), message)


def in_api_words(message: str) -> str:
    """``message`` with its parameters as plain names (``bbox``), as the HTTP API shows them."""
    return render(message, str)


class FtfError(Exception):
    """Base of every error ftfsearch raises on purpose. Each class has its own exit code."""

    exit_code = 1

    @property
    def message(self) -> str:
        """The message as raised, its parameters still marked (for :func:`render`)."""
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return in_api_words(self.message)


class BadInput(FtfError):
    """A file, argument or query the user gave cannot be used as it is."""

    exit_code = 2


class StoreUnavailable(FtfError):
    """The store cannot be reached or opened (server down, timeout, wrong URL)."""

    exit_code = 3


class PermissionDenied(FtfError):
    """The server refused the operation (missing or read-only API key)."""

    exit_code = 4


class ModelMismatch(FtfError):
    """The collection was built with another model (id, dimension or regions)."""

    exit_code = 5


class ModelNotFound(FtfError):
    """A model name or path cannot be loaded offline."""

    exit_code = 6


class SceneNotFound(FtfError):
    """No scene with this id is in the collection."""

    exit_code = 7


class SourceUnavailable(FtfError):
    """A scene's source raster cannot be read any more (moved, deleted or changed since ingest)."""

    exit_code = 8


class TileNotFound(FtfError):
    """No tile with this id is in the collection (an example, a chip, a label)."""

    exit_code = 9


class CollectionNotFound(FtfError):
    """The collection does not exist yet (nothing ingested)."""

    exit_code = 10


class StoreLocked(StoreUnavailable):
    """Another process holds the embedded store."""

    exit_code = 11


class DatasetError(BadInput):
    """A caption dataset file or its images cannot be used."""

    exit_code = 12


class PushVerificationFailed(FtfError):
    """After a push the target does not hold what the source holds."""

    exit_code = 13


class WatchNotFound(FtfError):
    """No watch of that name in the collection (``ftfsearch watch list`` names them)."""

    exit_code = 14


class IngestCancelled(FtfError):
    """An ingest was cancelled on request; its unfinished scene stays resumable."""

    exit_code = 130


class RemoteError(FtfError):
    """An error the server holding the store reported that has no class here: its message and
    the exit code it gave (so it has no code of its own)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
