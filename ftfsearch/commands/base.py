"""The command interface: what ``ftfsearch``'s commands do, whoever does it.

Two implementations: :class:`~ftfsearch.commands.local.LocalCommands` runs a command here over the
store, :class:`~ftfsearch.commands.remote.HolderCommands` sends it to the ``ftfsearch serve``
holding the embedded store (whose routes run it with a ``LocalCommands``). The CLI gets one of
them from :func:`~ftfsearch.commands.open_commands` and never asks which. A new command is one
request model (:mod:`ftfsearch.commands.requests`), one method here and one in ``LocalCommands``:
the holder's route and ``HolderCommands`` read its types from here (:mod:`ftfsearch.commands.dispatch`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from ftfsearch.commands.requests import (
    ClassifyPage,
    ClassifyPlan,
    ClassifyRequest,
    ChangeOutcome,
    ChangeRequest,
    DropOutcome,
    DropRequest,
    ExportOutcome,
    ExportRequest,
    FindPage,
    FindPlan,
    FindRequest,
    InfoRequest,
    MarksRequest,
    PushRequest,
    ReviewOutcome,
    ReviewRequest,
    SceneRow,
    ScenesRequest,
    SearchOutcome,
    SearchRequest,
    WatchAddRequest,
    WatchDeliverOutcome,
    WatchDeliverRequest,
    WatchHitsOutcome,
    WatchHitsRequest,
    WatchListRequest,
    WatchRmOutcome,
    WatchRmRequest,
    WatchRow,
)
if TYPE_CHECKING:  # the write path's types: a query process does not import the pipeline (nor numpy)
    from ftfsearch.store.transfer import PushSummary
    from ftfsearch.commands.ingest_requests import IngestOutcome, IngestRequest
    from ingest.pipeline import IngestFailure, SceneSummary


class IngestObserver(Protocol):
    """What an ingest reports as it goes: the pipeline's progress, and each scene's end."""

    def start(self, scene_id: str, total: int, already: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...

    def scene(self, item: SceneSummary | IngestFailure) -> None: ...


class Commands(Protocol):
    """The store commands: the same requests and results wherever they run."""

    def search(self, request: SearchRequest) -> SearchOutcome: ...

    def find(self, request: FindRequest) -> Iterator[FindPlan | FindPage]:
        """The plan first (checked: a find too large is refused before any hit), then page by page."""
        ...

    def classify(self, request: ClassifyRequest) -> Iterator[ClassifyPlan | ClassifyPage]:
        """The trained model's quality first (bad labels are refused before), then the detections page by page."""
        ...

    def review(self, request: ReviewRequest) -> ReviewOutcome:
        """Answers applied, the classifier retrained, the next tile proposed; the review file comes back."""
        ...

    def change(self, request: ChangeRequest) -> ChangeOutcome: ...

    def ingest(self, request: IngestRequest, observer: IngestObserver | None = None) -> IngestOutcome: ...

    def scenes(self, request: ScenesRequest) -> list[SceneRow]: ...

    def info(self, request: InfoRequest) -> dict[str, Any]: ...

    def drop(self, request: DropRequest) -> DropOutcome: ...

    def push(self, request: PushRequest) -> PushSummary: ...

    def watch_add(self, request: WatchAddRequest) -> WatchRow: ...

    def watch_list(self, request: WatchListRequest) -> list[WatchRow]: ...

    def watch_rm(self, request: WatchRmRequest) -> WatchRmOutcome: ...

    def watch_hits(self, request: WatchHitsRequest) -> WatchHitsOutcome: ...

    def watch_deliver(self, request: WatchDeliverRequest) -> WatchDeliverOutcome: ...

    def labels(self, request: MarksRequest) -> dict[str, Any]: ...

    def export_embeddings(self, request: ExportRequest) -> ExportOutcome: ...

    def close(self) -> None: ...
