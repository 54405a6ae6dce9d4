"""The ingest command's request and outcome, apart from :mod:`ftfsearch.commands.requests` because
they are made of the write path's types (sources, tiling, scene summaries): a query process, which
imports the other requests, must not import the ingest pipeline (rasterio, pyproj, pystac) for them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, PlainSerializer, PlainValidator, field_validator, model_validator

from ftfsearch.commands.requests import Request
from ftfsearch.errors import BadInput
from ingest.pipeline import IngestFailure, IngestOptions, SceneSummary
from ingest.sources import Source, as_source
from ingest.tiling import TilingSpec

IngestSource = Annotated[Source, PlainValidator(as_source), PlainSerializer(lambda s: s.to_json())]
"""What one ingest reads (:class:`ingest.sources.Source`), as JSON its :meth:`~ingest.sources.Source.to_json`."""


class IngestRequest(Request):
    """``ingest``: the sources (resolved by :mod:`ingest.sources`) and how to tile and encode them."""

    sources: tuple[IngestSource, ...]
    tiling: TilingSpec = Field(default_factory=TilingSpec)
    batch_size: int = 32
    readers: int = 2
    scene_id: str | None = None
    acquired: str | None = None
    shards: int | None = None
    replication_factor: int | None = None
    model: str | None = None
    """The model the caller named (None: the configured one); the holder refuses another than its own."""

    @field_validator("tiling", mode="before")
    @classmethod
    def _tiling(cls, value: Any) -> Any:
        return TilingSpec.from_dict({**TilingSpec().to_dict(), **value}) if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _check(self) -> "IngestRequest":
        self.options()  # batch size, readers, acquired: the pipeline's own checks, before any load
        if self.scene_id and len(self.sources) > 1:
            raise BadInput("`scene_id` names one scene: give exactly one raster with it")
        return self

    def options(self) -> IngestOptions:
        return IngestOptions(spec=self.tiling, batch_size=self.batch_size, readers=self.readers,
                             scene_id=self.scene_id, shards=self.shards,
                             replication_factor=self.replication_factor, acquired=self.acquired)


class IngestOutcome(BaseModel):
    scenes: list[SceneSummary]
    failed: list[IngestFailure]
    detached: bool = False
    """The caller left and the ingest goes on in the holder (Ctrl+C answered "no")."""
