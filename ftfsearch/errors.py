"""Named errors of ftfsearch.

Library code raises these; only the CLI turns them into one line on stderr and an exit code.
Each message names the file or argument at fault and what to do about it.
"""

from __future__ import annotations


REINGEST_HINT = (
    "to search it with this model, re-ingest its scenes into a new collection (ftfsearch ingest SCENE "
    "--collection NAME) or a fresh --store; to keep using it, pass the model it was built with as --model "
    "(the earlier default, ftf-small, ships as the directory ftfsearch/model/scratch of the installed package)"
)
"""What to do when a collection was filled by another model (after the shipped default changed, say)."""


class FtfError(Exception):
    """Base of every error ftfsearch raises on purpose."""

    exit_code = 1


class BadInput(FtfError):
    """A file, argument or query the user gave cannot be used as it is."""

    exit_code = 2


class StoreUnavailable(FtfError):
    """The store cannot be reached or opened (server down, timeout, wrong URL)."""

    exit_code = 3


class StoreLocked(StoreUnavailable):
    """Another process holds the embedded store."""


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


class TileNotFound(FtfError):
    """No tile with this id is in the collection (an example, a chip)."""

    exit_code = 9


class CollectionNotFound(FtfError):
    """The collection does not exist yet (nothing ingested)."""

    exit_code = 7


class DatasetError(BadInput):
    """A caption dataset file or its images cannot be used."""


class SourceUnavailable(FtfError):
    """A scene's source raster cannot be read any more (moved, deleted or changed since ingest)."""

    exit_code = 8


class IngestCancelled(FtfError):
    """An ingest was cancelled on request; its unfinished scene stays resumable."""

    exit_code = 130
