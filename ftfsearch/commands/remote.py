"""The commands sent to the ``ftfsearch serve`` that holds the embedded store: the same request
models, as JSON, to its holder routes (:mod:`ftfsearch.web.holder`), and the same typed results back.

An ingest runs in the holder as a job (it survives this process): its progress streams back to
the observer, and Ctrl+C here asks (``confirm_cancel``) whether to cancel it there or leave it
running."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, TypeAdapter

from ftfsearch.commands.base import IngestObserver
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
from ftfsearch.commands.ingest_requests import IngestOutcome, IngestRequest
from ftfsearch.config import Settings
from ftfsearch.errors import StoreUnavailable
from ftfsearch.store.holder_client import HolderClient, remote_error
from ftfsearch.store.transfer import PushSummary
from ingest.pipeline import IngestFailure, SceneSummary

_ROWS = TypeAdapter(list[SceneRow])
Q = TypeVar("Q", SearchRequest, FindRequest, WatchAddRequest)
P = TypeVar("P", bound=BaseModel)
G = TypeVar("G", bound=BaseModel)
_PUSH = TypeAdapter(PushSummary)
_SUMMARY = TypeAdapter(SceneSummary)
_WATCHES = TypeAdapter(list[WatchRow])


class HolderCommands:
    """:class:`~ftfsearch.commands.base.Commands` run by the process holding the embedded store."""

    def __init__(self, client: HolderClient, settings: Settings, notify: Callable[[str], None] = lambda _: None,
                 confirm_cancel: Callable[[], bool] = lambda: False) -> None:
        self.client = client
        self.settings = settings
        self.notify = notify
        """Where a line for the user goes (the CLI: stderr)."""
        self.confirm_cancel = confirm_cancel
        """Asked on Ctrl+C during an ingest: True cancels it in the holder."""

    def _check_device(self) -> None:
        """The work runs in the holder, on its device: a device asked for here (flag, FTF_DEVICE or
        config; not ``auto``) that it does not use is said, not silently replaced."""
        if self.settings.device.strip().lower() == "auto":
            return
        from ftfsearch.model.sources import describe_device

        held = str(self.client.call("GET", "/api/holder/ping").get("device") or "unknown")
        if describe_device(self.settings.device) != held:
            self.notify(f"warning: device {self.settings.device}: 'ftfsearch serve' (pid {self.client.record.pid}) "
                        f"holds the store and runs this on {held}; stop it to use {self.settings.device}")

    def _post(self, path: str, request: Any) -> Any:
        return self.client.call("POST", path, request.model_dump(mode="json"))

    def search(self, request: SearchRequest) -> SearchOutcome:
        self._check_device()
        return SearchOutcome.model_validate(self._post("/api/holder/search", _with_absolute_images(request)))

    def find(self, request: FindRequest) -> Iterator[FindPlan | FindPage]:
        return self._stream("/api/holder/find", _with_absolute_images(request), FindPlan, FindPage)

    def classify(self, request: ClassifyRequest) -> Iterator[ClassifyPlan | ClassifyPage]:
        return self._stream("/api/holder/classify", request, ClassifyPlan, ClassifyPage)

    def review(self, request: ReviewRequest) -> ReviewOutcome:
        return ReviewOutcome.model_validate(self._post("/api/holder/review", request))

    def _stream(self, path: str, request: Any, plan: type[P], page: type[G]) -> Iterator[P | G]:
        """A streamed command's plan, then its pages (:mod:`ftfsearch.web.find_stream`)."""
        for item in self.client.stream("POST", path, request.model_dump(mode="json")):
            kind = item.get("type")
            if kind == "error":
                raise remote_error(item)
            if kind == "plan":
                yield plan.model_validate(item["plan"])
            elif kind == "page":
                yield page.model_validate(item["page"])
            elif kind == "done":
                return
        raise StoreUnavailable("the server holding the store stopped during the command; run it again")

    def change(self, request: ChangeRequest) -> ChangeOutcome:
        examples = tuple(e if e.image is None else replace(e, image=e.image.absolute()) for e in request.examples)
        sent = request.model_copy(update={"examples": examples})
        return ChangeOutcome.model_validate(self._post("/api/holder/change", sent))

    def ingest(self, request: IngestRequest, observer: IngestObserver | None = None) -> IngestOutcome:
        model = request.model
        if model is not None and Path(model).exists():
            model = str(Path(model).absolute())
        sent = request.model_copy(update={"model": model})  # its sources' paths are absolute (ingest.sources)
        self._check_device()
        job = str(self._post("/api/holder/ingest", sent)["job"])
        pid = self.client.record.pid
        self.notify(f"ingesting in 'ftfsearch serve' (pid {pid}), which holds the store; Ctrl+C asks "
                    "whether to cancel it")
        seen = 0
        while True:
            try:
                for event in self.client.events(job, seen):
                    seen += 1
                    kind = event.get("type")
                    if kind == "done":
                        return IngestOutcome.model_validate(event["outcome"])
                    if kind == "error":
                        raise remote_error(event)
                    _relay(event, observer)
                raise StoreUnavailable(
                    "the server holding the store stopped during the ingest; what it wrote is kept, and "
                    "the same ingest command resumes the scene"
                )
            except KeyboardInterrupt:
                if observer is not None:
                    observer.finish()
                if not self.confirm_cancel():
                    self.notify(f"the ingest goes on in 'ftfsearch serve' (pid {pid}); 'ftfsearch scenes' shows "
                                "its progress")
                    return IngestOutcome(scenes=[], failed=[], detached=True)
                self.client.call("POST", f"/api/holder/jobs/{job}/cancel", {})
                self.notify("cancelling; the scene stays resumable")

    def scenes(self, request: ScenesRequest) -> list[SceneRow]:
        return _ROWS.validate_python(self.client.call("GET", "/api/holder/scenes"))

    def info(self, request: InfoRequest) -> dict[str, Any]:
        return dict(self.client.call("GET", "/api/holder/info"))

    def drop(self, request: DropRequest) -> DropOutcome:
        return DropOutcome.model_validate(self._post("/api/holder/drop", request))

    def push(self, request: PushRequest) -> PushSummary:
        # The target's key is this user's (the holder's settings may name none).
        sent = request if request.api_key is not None else request.model_copy(
            update={"api_key": self.settings.qdrant_api_key})
        return _PUSH.validate_python(self._post("/api/holder/push", sent))

    def watch_add(self, request: WatchAddRequest) -> WatchRow:
        return WatchRow.model_validate(self._post("/api/holder/watch/add", _with_absolute_images(request)))

    def watch_list(self, request: WatchListRequest) -> list[WatchRow]:
        return _WATCHES.validate_python(self._post("/api/holder/watch/list", request))

    def watch_rm(self, request: WatchRmRequest) -> WatchRmOutcome:
        return WatchRmOutcome.model_validate(self._post("/api/holder/watch/rm", request))

    def watch_hits(self, request: WatchHitsRequest) -> WatchHitsOutcome:
        return WatchHitsOutcome.model_validate(self._post("/api/holder/watch/hits", request))

    def watch_deliver(self, request: WatchDeliverRequest) -> WatchDeliverOutcome:
        return WatchDeliverOutcome.model_validate(self._post("/api/holder/watch/deliver", request))

    def labels(self, request: MarksRequest) -> dict[str, Any]:
        return dict(self._post("/api/holder/labels", request))

    def export_embeddings(self, request: ExportRequest) -> ExportOutcome:
        sent = request.model_copy(update={"out": request.out.absolute()})  # the holder's working directory is not ours
        return ExportOutcome.model_validate(self._post("/api/holder/export-embeddings", sent))

    def close(self) -> None:
        """The holder keeps the store; nothing to close here."""


def _with_absolute_images(request: Q) -> Q:
    """The request with its example images as the holder (another working directory) finds them."""
    examples = tuple(e if e.image is None else replace(e, image=e.image.absolute()) for e in request.examples)
    return request.model_copy(update={"examples": examples})


def _relay(event: dict[str, Any], observer: IngestObserver | None) -> None:
    """One progress event of the holder's job, to the observer."""
    if observer is None:
        return
    kind = event.get("type")
    if kind == "start":
        observer.start(str(event["scene_id"]), int(event["total"]), int(event["already"]))
    elif kind == "advance":
        observer.advance(int(event["n"]))
    elif kind == "finish":
        observer.finish()
    elif kind == "failure":
        observer.scene(IngestFailure(str(event["path"]), str(event["message"])))
    elif kind == "scene":
        observer.scene(_SUMMARY.validate_python(event["summary"]))
