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
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ftfsearch.errors import BadInput, FtfError, IngestCancelled, PermissionDenied, SceneNotFound, StoreLocked
from ftfsearch.store.base import Store
from ftfsearch.store.holder_record import HolderRecord, holder_path, identity, new_secret, remove_holder, write_holder

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Ftfsearch-Holder-Secret"
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
    return [
        {"scene_id": s.scene_id, "path": s.path, "tiles": db.count_tiles(s.scene_id), "state": s.state}
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
        sock.bind(("127.0.0.1", 0))  # loopback only, whatever --host the page is served on
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
        files = [Path(p) for p in body.get("paths") or []]
        spec = TilingSpec.from_dict(body.get("tiling") or {})
        o = body.get("options") or {}
        options = IngestOptions(spec=spec, batch_size=int(o.get("batch_size", 32)), readers=int(o.get("readers", 2)),
                                scene_id=o.get("scene_id"))
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
                point=tuple(r["point"]) if r.get("point") else None,  # type: ignore[arg-type]
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
        results = []
        for r in out.results:
            d = asdict(r)
            results.append(d)
        return {"results": results, "timings_ms": out.timings_ms, "warnings": out.warnings,
                "bands": {k: (list(v) if v else None) for k, v in bands.items()}}

    def push(self, body: dict[str, Any]) -> dict[str, Any]:
        from ftfsearch.store.server import ServerStore
        from ftfsearch.store.transfer import push_store

        target = ServerStore(str(body["to"]), collection=str(body["collection"]), api_key=body.get("api_key"),
                             timeout=float(body.get("timeout") or self.settings.timeout))
        try:
            summary = push_store(self.store, target, shards=body.get("shards"),  # type: ignore[arg-type]
                                 replication_factor=body.get("replication_factor"))
        finally:
            target.close()
        return summary.to_dict()


def create_holder_app(holder: Holder) -> FastAPI:
    """The holder's API (its own loopback socket; every request carries the secret)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    secret = holder.secret.encode("utf-8")

    @app.middleware("http")
    async def _check_secret(request: Request, call_next: Callable[[Request], Any]) -> Any:
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8")
        host = request.client.host if request.client is not None else ""
        if host not in ("127.0.0.1", "::1") or not hmac.compare_digest(given, secret):
            refused = PermissionDenied(
                "forbidden: this endpoint is for the user who holds the store (the secret in its holder file)"
            )
            return JSONResponse(error_body(refused), status_code=403)
        return await call_next(request)

    @app.exception_handler(FtfError)
    async def _ftf_error(request: Request, exc: FtfError) -> JSONResponse:
        from ftfsearch.web.app import status_of

        return JSONResponse(error_body(exc), status_code=status_of(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": f"{request.url.path[:200]}: not a holder endpoint", "kind": "FtfError",
                             "exit_code": 70}, status_code=exc.status_code)

    async def body_of(request: Request) -> dict[str, Any]:
        try:
            data = json.loads(await request.body() or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadInput("holder request: not JSON") from exc
        if not isinstance(data, dict):
            raise BadInput("holder request: not a JSON object")
        return data

    res = holder.resources

    @app.get("/api/holder/ping")
    def ping() -> dict[str, Any]:
        running = holder.running()
        return {"pid": identity()["pid"], "ingest": None if running is None else running.id}

    @app.get("/api/holder/scenes")
    def scenes() -> list[dict[str, Any]]:
        with res.lock:
            return scenes_rows(res.store)

    @app.get("/api/holder/info")
    def info() -> dict[str, Any]:
        with res.lock:
            return info_data(res.store)

    @app.post("/api/holder/search")
    async def search(request: Request) -> dict[str, Any]:
        from starlette.concurrency import run_in_threadpool

        body = await body_of(request)
        return await run_in_threadpool(holder.search, body)

    @app.post("/api/holder/drop")
    async def drop(request: Request) -> dict[str, Any]:
        from starlette.concurrency import run_in_threadpool

        body = await body_of(request)
        scene_id = str(body.get("scene_id", ""))
        running = holder.running()
        if running is not None and scene_id in running.scene_ids:
            raise StoreLocked(f"scene {scene_id!r} is being ingested in the server (job {running.id}); "
                              "cancel that ingest or wait for it, then drop")

        def work() -> dict[str, Any]:
            with res.lock:
                return {"removed": drop_scene(res.store, scene_id)}

        return await run_in_threadpool(work)

    @app.post("/api/holder/push")
    async def push(request: Request) -> dict[str, Any]:
        from starlette.concurrency import run_in_threadpool

        body = await body_of(request)
        return await run_in_threadpool(holder.push, body)

    @app.post("/api/holder/ingest")
    async def ingest(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        job = holder.start_ingest(body)
        return {"job": job.id}

    @app.get("/api/holder/jobs/{job_id}/events")
    def events(job_id: str, start: int = 0) -> StreamingResponse:
        job = holder.jobs.get(job_id)
        if job is None:
            raise BadInput(f"job {job_id[:40]!r}: no such ingest in this server")
        return StreamingResponse(job.lines(max(0, start)), media_type="application/x-ndjson")

    @app.post("/api/holder/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, Any]:
        job = holder.jobs.get(job_id)
        if job is None:
            raise BadInput(f"job {job_id[:40]!r}: no such ingest in this server")
        job.cancel.set()
        return {"job": job.id, "cancelling": not job.done}

    return app

