"""The commands sent to the ``ftfsearch serve`` that holds the embedded store: the same request
models, as JSON, to the holder's one command route (:mod:`ftfsearch.web.holder`), and the same typed
results back.

An ingest runs in the holder as a job (it survives this process): its progress streams back to
the observer, and Ctrl+C here asks (``confirm_cancel``) whether to cancel it there or leave it
running."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from pydantic import TypeAdapter

from ftfsearch.commands.base import IngestObserver
from ftfsearch.commands.dispatch import command_names, signature
from ftfsearch.commands.requests import PushRequest, Request
from ftfsearch.commands.ingest_requests import IngestOutcome, IngestRequest
from ftfsearch.config import Settings
from ftfsearch.errors import StoreUnavailable
from ftfsearch.store.holder_client import HolderClient, remote_error
from ftfsearch.store.transfer import PushSummary
from ingest.pipeline import IngestFailure, SceneSummary

_SUMMARY = TypeAdapter(SceneSummary)


class HolderCommands:
    """:class:`~ftfsearch.commands.base.Commands` run by the process holding the embedded store.

    Every command but ``ingest`` (a job) and ``push`` (this user's key) is :meth:`call`: its request
    to the holder's one route, its answer typed by the protocol (:mod:`ftfsearch.commands.dispatch`);
    a new command needs nothing here."""

    def __init__(self, client: HolderClient, settings: Settings, notify: Callable[[str], None] = lambda _: None,
                 confirm_cancel: Callable[[], bool] = lambda: False) -> None:
        self.client = client
        self.settings = settings
        self.notify = notify
        """Where a line for the user goes (the CLI: stderr)."""
        self.confirm_cancel = confirm_cancel
        """Asked on Ctrl+C during an ingest: True cancels it in the holder."""

    def __getattr__(self, name: str) -> Callable[[Request], Any]:
        if name not in command_names():  # not a command: no such attribute, as on any object
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return lambda request: self.call(name, request)

    def call(self, name: str, request: Request) -> Any:
        """Command ``name`` run by the holder: its answer, or (a streamed command) its plan and pages."""
        command = signature(name)
        if request.runs_model:
            self._check_device()
        body = request.for_another_process().model_dump(mode="json")
        if command.stream is not None:
            return self._stream(f"/api/holder/stream/{name}", body, *command.stream)
        return command.answer.validate_python(self.client.call("POST", f"/api/holder/call/{name}", body))

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

    def _stream(self, path: str, body: dict[str, Any], plan: type[Any], page: type[Any]) -> Iterator[Any]:
        """A streamed command's plan, then its pages (:mod:`ftfsearch.web.find_stream`)."""
        for item in self.client.stream("POST", path, body):
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

    def ingest(self, request: IngestRequest, observer: IngestObserver | None = None) -> IngestOutcome:
        model = request.model
        if model is not None and Path(model).exists():
            model = str(Path(model).absolute())
        sent = request.model_copy(update={"model": model})  # its sources' paths are absolute (ingest.sources)
        self._check_device()
        job = str(self.client.call("POST", "/api/holder/ingest", sent.model_dump(mode="json"))["job"])
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

    def push(self, request: PushRequest) -> PushSummary:
        # The target's key is this user's (the holder's settings may name none).
        sent = request if request.api_key is not None else request.model_copy(
            update={"api_key": self.settings.qdrant_api_key})
        return self.call("push", sent)

    def close(self) -> None:
        """The holder keeps the store; nothing to close here."""


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
