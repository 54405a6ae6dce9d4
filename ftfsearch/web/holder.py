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
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ftfsearch.errors import BadInput, FtfError, IngestCancelled, PermissionDenied, SceneNotFound, StoreLocked
from ftfsearch.net import LOOPBACK_HOSTS, LOOPBACK_IP
from ftfsearch.store.base import Store
from ftfsearch.store.holder_client import SECRET_HEADER
from ftfsearch.store.holder_record import HolderRecord, holder_path, identity, new_secret, remove_holder, write_holder
from ftfsearch.web.http_errors import status_of

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
"""A line at least this often on an event stream, so a client that left is noticed."""


class LockedStore:
    """A store whose every call takes ``lock`` for that call only (iterators: for each item)."""

    def __init__(self, store: Store, lock: threading.Lock) -> None:
        self._store = store
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._store, name)
        if not callable(value):
            return value
        lock = self._lock

        def call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                result = value(*args, **kwargs)
            if isinstance(result, Iterator):
                return _locked_iter(result, lock)
            return result

        return call


def _locked_iter(it: Iterator[Any], lock: threading.Lock) -> Iterator[Any]:
    while True:
        with lock:
            try:
                item = next(it)
            except StopIteration:
                return
        yield item


# -- what the commands compute: shared by the CLI (local store) and the holder -----------------


def scenes_rows(db: Any) -> list[dict[str, Any]]:
    """``ftfsearch scenes``' rows; the acquisition time and the STAC item's id, collection and
    properties where a scene has them."""
    return [
        {"scene_id": s.scene_id, "path": s.path, "tiles": db.count_tiles(s.scene_id), "state": s.state,
         **{k: s.extra[k] for k in ("acquired", "stac") if s.extra.get(k)}}
        for s in db.list_scenes()
    ]


def info_data(db: Any) -> dict[str, Any]:
    described = db.describe()
    meta = db.meta()
    scene_list = db.list_scenes() if meta is not None else []
    return {
        **described,
        "tiles": db.count_tiles() if meta is not None else 0,
        "scenes": len(scene_list),
        "scenes_complete": sum(s.state == "complete" for s in scene_list),
    }


def drop_scene(db: Any, scene_id: str) -> int:
    if db.get_scene(scene_id) is None:
        raise SceneNotFound(f"scene {scene_id!r}: not in collection {db.collection!r}; 'ftfsearch scenes' lists them")
    return int(db.delete_scene(scene_id))


def error_body(exc: FtfError) -> dict[str, Any]:
    """An error as JSON: ``error`` in the API's words, ``message`` with its parameters still
    marked (the CLI that sent the request names them as its flags), its class and exit code."""
    return {"error": str(exc), "message": exc.message, "kind": type(exc).__name__, "exit_code": exc.exit_code}


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
        self.store = LockedStore(resources.store, resources.lock)
        self.path = holder_path(store_dir, collection)
        self.secret = new_secret()
        self.jobs: dict[str, IngestJob] = {}
        self._ids = itertools.count(1)
        self._jobs_lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

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

    def start_ingest(self, body: dict[str, Any]) -> IngestJob:
        from ingest.pipeline import IngestOptions, ingest_paths
        from ingest.tiling import TilingSpec

        model = body.get("model")
        held = self.settings.model
        if held is not None and Path(held).exists():
            held = str(Path(held).absolute())
        if model is not None and str(model) != str(held):
            raise BadInput(
                f"`model` {model}: the server holding this store runs model {self.settings.model}; ingest "
                "with that one, or stop 'ftfsearch serve' to ingest with another"
            )
        from ftfsearch.raster import is_url
        from ingest.stac import StacScene

        # files as paths, URLs as they are, STAC items as their data (ftfsearch ingest sends them)
        files: list[Path | str | StacScene] = [StacScene.from_dict(p) if isinstance(p, dict) else (p if is_url(p) else Path(p))
                 for p in body.get("paths") or []]
        spec = TilingSpec.from_dict(body.get("tiling") or {})
        o = body.get("options") or {}
        options = IngestOptions(spec=spec, batch_size=int(o.get("batch_size", 32)), readers=int(o.get("readers", 2)),
                                scene_id=o.get("scene_id"), acquired=o.get("acquired"))
        with self._jobs_lock:
            busy = next((j for j in self.jobs.values() if not j.done), None)
            if busy is not None:
                raise StoreLocked(
                    f"an ingest is already running in the server holding this store (job {busy.id}); "
                    "wait for it to finish, then ingest again"
                )
            job = IngestJob(str(next(self._ids)))
            self.jobs[job.id] = job
        res = self.resources

        def on_scene(item: Any) -> None:
            if hasattr(item, "message"):
                job.emit({"type": "failure", "path": item.path, "message": item.message})
            else:
                job.emit({"type": "scene", "summary": item.to_dict()})

        def run() -> None:
            try:
                done, failed = ingest_paths(files, res.encoder, self.store, options, progress=job, on_scene=on_scene)
                job.emit({"type": "done", "scenes": [s.to_dict() for s in done],
                          "failed": [f.__dict__ for f in failed]})
            except FtfError as exc:
                job.emit({"type": "error", **error_body(exc)})
            except BaseException as exc:  # a bug: logged here, one line to the client
                log.exception("ingest job %s failed", job.id)
                job.emit({"type": "error", "error": f"internal error in the server: {type(exc).__name__}: {exc}",
                          "kind": "FtfError", "exit_code": 70})

        threading.Thread(target=run, name=f"ftf-ingest-{job.id}", daemon=True).start()
        return job

    def search(self, body: dict[str, Any]) -> dict[str, Any]:
        from ftfsearch.chips import scene_bands
        from ftfsearch.examples import ExampleRef

        refs = []
        for r in body.get("examples") or []:
            refs.append(ExampleRef(
                param=str(r["param"]), text=str(r["text"]), tile_id=r.get("tile_id"),
                point=tuple(r["point"]) if r.get("point") else None,
                image=Path(r["image"]) if r.get("image") else None, region=r.get("region"),
            ))
        bbox = tuple(body["bbox"]) if body.get("bbox") else None
        res = self.resources
        with res.lock:
            out = res.searcher().search(
                body.get("text"), k=int(body.get("k", 10)), recall_k=int(body.get("recall_k", 100)),
                rerank=bool(body.get("rerank", True)), bbox=bbox, scenes=tuple(body.get("scenes") or ()),
                examples=refs, after=body.get("after"), before=body.get("before"),
            )
            bands = scene_bands(res.store, [r.scene_id for r in out.results])
        # The Results whole (payload too): the client rebuilds them, for its chips and GeoJSON.
        return {"results": [asdict(r) for r in out.results], "timings_ms": out.timings_ms, "warnings": out.warnings,
                "bands": {k: (list(v) if v else None) for k, v in bands.items()}}

    def push(self, body: dict[str, Any]) -> dict[str, Any]:
        from ftfsearch.store.server import ServerStore
        from ftfsearch.store.transfer import push_store

        target = ServerStore(str(body["to"]), collection=str(body["collection"]), api_key=body.get("api_key"),
                             timeout=float(body.get("timeout") or self.settings.timeout))
        try:
            summary = push_store(self.store, target, shards=body.get("shards"),
                                 replication_factor=body.get("replication_factor"))
        finally:
            target.close()
        return summary.to_dict()


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
    return {"pid": identity()["pid"], "ingest": None if running is None else running.id}


@router.get("/scenes")
def scenes(holder: HolderDep) -> list[dict[str, Any]]:
    res = holder.resources
    with res.lock:
        return scenes_rows(res.store)


@router.get("/info")
def info(holder: HolderDep) -> dict[str, Any]:
    res = holder.resources
    with res.lock:
        return info_data(res.store)


@router.post("/search")
async def search(holder: HolderDep, body: Body) -> dict[str, Any]:
    return await run_in_threadpool(holder.search, body)


@router.post("/drop")
async def drop(holder: HolderDep, body: Body) -> dict[str, Any]:
    scene_id = str(body.get("scene_id", ""))
    running = holder.running()
    if running is not None and scene_id in running.scene_ids:
        raise StoreLocked(f"scene {scene_id!r} is being ingested in the server (job {running.id}); "
                          "cancel that ingest or wait for it, then drop")
    res = holder.resources

    def work() -> dict[str, Any]:
        with res.lock:
            return {"removed": drop_scene(res.store, scene_id)}

    return await run_in_threadpool(work)


@router.post("/push")
async def push(holder: HolderDep, body: Body) -> dict[str, Any]:
    return await run_in_threadpool(holder.push, body)


@router.post("/ingest")
async def ingest(holder: HolderDep, body: Body) -> dict[str, Any]:
    job = holder.start_ingest(body)
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
    app.add_exception_handler(StarletteHTTPException, _not_an_endpoint)
    app.include_router(router)
    return app
