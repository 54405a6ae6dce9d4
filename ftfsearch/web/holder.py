"""The holder: ``ftfsearch serve`` on an embedded store does the other commands' work.

Qdrant Edge lets one process open a shard (the Python binding has no read-only follower), so the
process that holds the store serves the other ``ftfsearch`` commands of the same user: it listens
on 127.0.0.1 only, on a port of its own (never the public ``--host``), records the port and a
random secret in ``<store>/.<collection>.holder.json`` (0600), and refuses (403) every request that
does not carry the secret. An ingest runs in a thread of the holder (it survives the client's exit)
and streams its progress as NDJSON; every store call of it takes the app's lock for that one call,
so searches keep answering between batches and see the tiles written so far.
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from pydantic import TypeAdapter, ValidationError

from ftfsearch.commands.dispatch import signature
from ftfsearch.commands.requests import DropOutcome, DropRequest
from ftfsearch.commands.ingest_requests import IngestRequest
from ftfsearch.errors import BadInput, FtfError, IngestCancelled, PermissionDenied, StoreLocked
from ftfsearch.net import LOOPBACK_HOSTS, LOOPBACK_IP
from ftfsearch.store.holder_client import SECRET_HEADER
from ftfsearch.store.holder_record import HolderRecord, holder_path, identity, new_secret, remove_holder, write_holder
from ftfsearch.web.find_stream import error_body, find_response
from ftfsearch.web.http_errors import status_of
from ingest.pipeline import IngestFailure, SceneSummary

log = logging.getLogger(__name__)

_SUMMARY = TypeAdapter(SceneSummary)

HEARTBEAT_S = 2.0
"""A line at least this often on an event stream, so a client that left is noticed."""


# -- ingest jobs ---------------------------------------------------------------------------------


class IngestJob:
    """One ingest in the holder: its events (NDJSON lines) and whether to stop."""

    def __init__(self, job_id: str) -> None:
        self.id = job_id
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.cancel = threading.Event()
        self.done = False
        self.scene_ids: set[str] = set()
        self.current: str | None = None

    def emit(self, event: dict[str, Any]) -> None:
        with self.cond:
            self.events.append(event)
            if event.get("type") in ("done", "error"):
                self.done = True
            self.cond.notify_all()

    # the pipeline's Progress
    def start(self, scene_id: str, total: int, already: int) -> None:
        self.current = scene_id
        self.scene_ids.add(scene_id)
        self.emit({"type": "start", "scene_id": scene_id, "total": total, "already": already})

    def advance(self, n: int) -> None:
        if self.cancel.is_set():
            raise IngestCancelled(
                f"ingest cancelled: scene {self.current!r} stays 'ingesting'; the next ingest of it resumes"
            )
        self.emit({"type": "advance", "n": n})

    def finish(self) -> None:
        self.current = None
        self.emit({"type": "finish"})

    def scene(self, item: SceneSummary | IngestFailure) -> None:
        if isinstance(item, IngestFailure):
            self.emit({"type": "failure", "path": item.path, "message": item.message})
        else:
            self.emit({"type": "scene", "summary": _SUMMARY.dump_python(item, mode="json")})

    def lines(self, start: int = 0) -> Iterator[bytes]:
        """The events from ``start`` on, as they come, until the job ends (heartbeats between)."""
        i = start
        while True:
            with self.cond:
                if i >= len(self.events) and not self.done:
                    self.cond.wait(HEARTBEAT_S)
                new, finished = self.events[i:], self.done
            i += len(new)
            if not new and not finished:
                yield b'{"type": "tick"}\n'
            for event in new:
                yield (json.dumps(event) + "\n").encode("utf-8")
            if finished and i >= len(self.events):
                return


class Holder:
    """Serves the other commands from the process holding ``resources``' embedded store."""

    def __init__(self, resources: Any, settings: Any, store_dir: Path, collection: str) -> None:
        self.resources = resources
        self.settings = settings
        self.commands = resources.commands
        self.path = holder_path(store_dir, collection)
        self.secret = new_secret()
        self.jobs: dict[str, IngestJob] = {}
        self._ids = itertools.count(1)
        self._jobs_lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0
        resources.holder = self

    # -- lifecycle

    def start(self) -> None:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK_IP, 0))  # loopback only, whatever --host the page is served on
        sock.listen(64)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(create_holder_app(self), log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="ftf-holder", daemon=True)
        self._thread.start()
        ident = identity()
        write_holder(self.path, HolderRecord(self.port, self.secret, int(ident["pid"] or 0), ident["start"]))

    def stop(self) -> None:
        """Remove the holder file, ask running ingests to stop (their scenes stay resumable), stop
        listening."""
        import os

        remove_holder(self.path, only_if_pid=os.getpid())
        for job in list(self.jobs.values()):
            job.cancel.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        for job in list(self.jobs.values()):
            with job.cond:
                job.cond.wait_for(lambda: job.done, timeout=30)

    # -- work

    def running(self) -> IngestJob | None:
        with self._jobs_lock:
            return next((j for j in self.jobs.values() if not j.done), None)

    def start_ingest(self, request: IngestRequest) -> IngestJob:
        """Run ``request`` in a thread of this process (it outlives the client); its events go to the job."""
        held = self.settings.model
        if held is not None and Path(held).exists():
            held = str(Path(held).absolute())
        if request.model is not None and str(request.model) != str(held):
            raise BadInput(
                f"`model` {request.model}: the server holding this store runs model {self.settings.model}; ingest "
                "with that one, or stop 'ftfsearch serve' to ingest with another"
            )
        with self._jobs_lock:
            busy = next((j for j in self.jobs.values() if not j.done), None)
            if busy is not None:
                raise StoreLocked(
                    f"an ingest is already running in the server holding this store (job {busy.id}); "
                    "wait for it to finish, then ingest again"
                )
            job = IngestJob(str(next(self._ids)))
            self.jobs[job.id] = job

        def run() -> None:
            try:
                outcome = self.commands.ingest(request, observer=job)
                job.emit({"type": "done", "outcome": outcome.model_dump(mode="json")})
            except FtfError as exc:
                job.emit({"type": "error", **error_body(exc)})
            except BaseException as exc:  # a bug: logged here, one line to the client
                log.exception("ingest job %s failed", job.id)
                job.emit({"type": "error", "error": f"internal error in the server: {type(exc).__name__}: {exc}",
                          "kind": "FtfError", "exit_code": 70})

        threading.Thread(target=run, name=f"ftf-ingest-{job.id}", daemon=True).start()
        return job

    def command(self, name: str) -> Callable[[Any], Any]:
        """Command ``name`` as this holder runs it: ``drop`` checked against the running ingest first
        (:meth:`drop`), every other one the local command."""
        return self.drop if name == "drop" else getattr(self.commands, name)

    def drop(self, request: DropRequest) -> DropOutcome:
        """Drop a scene (the CLI's drop through the holder and the API's DELETE), unless an ingest
        here is writing it."""
        running = self.running()
        if running is not None and request.scene_id in running.scene_ids:
            raise StoreLocked(f"scene {request.scene_id!r} is being ingested in the server (job {running.id}); "
                              "cancel that ingest or wait for it, then drop")
        return self.commands.drop(request)


def holder_of(request: Request) -> Holder:
    return request.app.state.holder


HolderDep = Annotated[Holder, Depends(holder_of)]


async def _check_secret(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Only loopback requests that carry this holder's secret get through."""
    secret = request.app.state.holder.secret.encode("utf-8")
    given = request.headers.get(SECRET_HEADER, "").encode("utf-8")
    host = request.client.host if request.client is not None else ""
    if host not in LOOPBACK_HOSTS or not hmac.compare_digest(given, secret):
        refused = PermissionDenied(
            "forbidden: this endpoint is for the user who holds the store (the secret in its holder file)"
        )
        return JSONResponse(error_body(refused), status_code=403)
    return await call_next(request)


async def _library_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FtfError)  # registered for FtfError only
    return JSONResponse(error_body(exc), status_code=status_of(exc))


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """A body that is not the command's request model (another version of ftfsearch sent it)."""
    refused = BadInput(f"holder request: not a valid request ({str(exc).splitlines()[0][:200]})")
    return JSONResponse(error_body(refused), status_code=400)


async def _not_an_endpoint(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"error": f"{request.url.path[:200]}: not a holder endpoint", "kind": "FtfError",
                         "exit_code": 70}, status_code=exc.status_code)


async def body_of(request: Request) -> dict[str, Any]:
    """The request's JSON object (an empty body is ``{}``)."""
    try:
        data = json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput("holder request: not JSON") from exc
    if not isinstance(data, dict):
        raise BadInput("holder request: not a JSON object")
    return data


Body = Annotated[dict[str, Any], Depends(body_of)]
router = APIRouter(prefix="/api/holder")


@router.get("/ping")
def ping(holder: HolderDep) -> dict[str, Any]:
    running = holder.running()
    return {"pid": identity()["pid"], "ingest": None if running is None else running.id,
            "device": holder.commands.access.device()}


@router.post("/call/{name}")
async def call(holder: HolderDep, name: str, body: Body) -> Any:
    """Any command with one answer: its request model from the body, run here, its answer as JSON
    (the types: :mod:`ftfsearch.commands.dispatch`)."""
    command = signature(name)
    if command.stream is not None:
        raise BadInput(f"holder request: {name!r} streams its answer; use /api/holder/stream/{name}")
    out = await run_in_threadpool(holder.command(name), command.request.model_validate(body))
    return command.answer.dump_python(out, mode="json")


@router.post("/stream/{name}")
def stream(holder: HolderDep, name: str, body: Body) -> StreamingResponse:
    """A streamed command (find, classify) as NDJSON: its plan, then a line per page, then ``done``
    (or an ``error`` line)."""
    command = signature(name)
    if command.stream is None:
        raise BadInput(f"holder request: {name!r} answers once; use /api/holder/call/{name}")
    return find_response(holder.command(name)(command.request.model_validate(body)))


@router.post("/ingest")
async def ingest(holder: HolderDep, body: Body) -> dict[str, Any]:
    job = holder.start_ingest(IngestRequest.model_validate(body))
    return {"job": job.id}


def _job(holder: Holder, job_id: str) -> IngestJob:
    job = holder.jobs.get(job_id)
    if job is None:
        raise BadInput(f"job {job_id[:40]!r}: no such ingest in this server")
    return job


@router.get("/jobs/{job_id}/events")
def events(holder: HolderDep, job_id: str, start: int = 0) -> StreamingResponse:
    return StreamingResponse(_job(holder, job_id).lines(max(0, start)), media_type="application/x-ndjson")


@router.post("/jobs/{job_id}/cancel")
def cancel(holder: HolderDep, job_id: str) -> dict[str, Any]:
    job = _job(holder, job_id)
    job.cancel.set()
    return {"job": job.id, "cancelling": not job.done}


def create_holder_app(holder: Holder) -> FastAPI:
    """The holder's API (its own loopback socket; every request carries the secret)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.holder = holder
    app.middleware("http")(_check_secret)
    app.add_exception_handler(FtfError, _library_error)
    app.add_exception_handler(ValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _not_an_endpoint)
    app.include_router(router)
    return app


def open_served(settings: Any, options: Any) -> tuple[Any, str | None]:
    """What ``ftfsearch serve`` holds (:class:`~ftfsearch.web.resources.Resources`): the store, writable
    where someone may write (an embedded store, whose holder ingests and drops for this user's other
    commands; a Qdrant server's only where keys decide who writes), the model, on an embedded store
    the running :class:`Holder`, and where it writes the webhooks' courier. With it, why there is nothing to search yet (a message, its
    parameters marked), or None."""
    from ftfsearch.errors import CollectionNotFound
    from ftfsearch.web.resources import Resources

    writable = not settings.qdrant_url or options.keys_file is not None
    resources = Resources.open(settings, options, writable=writable)
    try:
        if not settings.qdrant_url:  # the embedded store is ours alone: the other commands work through us
            holder = Holder(resources, settings, settings.resolved_store_dir, settings.collection)
            holder.start()
            resources.before_close.append(holder.stop)
        if writable and options.deliver_every_s > 0:
            from ftfsearch.web.courier import Courier

            courier = Courier(resources.commands, options.deliver_every_s)
            courier.start()
            resources.before_close.append(courier.stop)
        try:
            resources.searcher()
        except CollectionNotFound as exc:
            return resources, exc.message
    except BaseException:
        resources.close()
        raise
    return resources, None

