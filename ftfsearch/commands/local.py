"""The commands run here, over a store: what the CLI does without a holder, and what the holder's
routes do for the other commands (over the store it holds, :class:`StoreAccess`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Protocol, TypeVar

from ftfsearch.commands.base import IngestObserver
from ftfsearch.commands.requests import (
    ClassifyPage,
    ClassifyPlan,
    ClassifyRequest,
    CountEstimate,
    ChangeOutcome,
    ChangeRequest,
    DropOutcome,
    DropRequest,
    ExportOutcome,
    ExportRequest,
    FindPage,
    FindPlan,
    FindRequest,
    INFO_COUNTS,
    InfoRequest,
    MarksRequest,
    PushRequest,
    ReviewOutcome,
    ReviewRequest,
    Scope,
    Detection,
    ReviewItem,
    StratumRow,
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
from ftfsearch.config import Settings
from ftfsearch.errors import BadInput, SceneNotFound
from ftfsearch.find import Hit
from ftfsearch.model.base import Encoder
from ftfsearch.model.sources import encoder_device_label
from ftfsearch.search import Result
from ftfsearch.area import Area
from ftfsearch.store.base import QueryFilter, Store
from ftfsearch.store.transfer import PushSummary

if TYPE_CHECKING:  # the write path's types: a query process does not import the pipeline
    from ftfsearch.commands.ingest_requests import IngestOutcome, IngestRequest


class StoreAccess(Protocol):
    """How the commands reach the store and the model: opened for one command (the CLI), or
    held for the life of ``serve`` and taken under its lock (the holder)."""

    settings: Settings

    def store(self, read_only: bool) -> ContextManager[Store]: ...

    def encoder(self) -> Encoder: ...

    def device(self) -> str:
        """Where this access encodes (``cpu``, ``cuda:0``): shown by ``info`` and the holder."""
        ...

    def searcher(self) -> ContextManager[tuple[Any, Store]]: ...


class OpenedAccess:
    """One command's access: the store opened for the call and closed after; the model loaded on
    first use (never for a command that needs none, nor before a bad argument is refused)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._encoder: Encoder | None = None

    @contextmanager
    def store(self, read_only: bool) -> Iterator[Store]:
        db = self.settings.open_store(read_only=read_only)
        try:
            yield db
        finally:
            db.close()

    def encoder(self, device: str | None = None) -> Encoder:
        if self._encoder is None:
            from ftfsearch.model.loading import load_encoder

            self._encoder = load_encoder(self.settings.model, device=device or self.settings.device)
        return self._encoder

    def device(self) -> str:
        from ftfsearch.model.sources import describe_device

        return describe_device(self.settings.device)

    @contextmanager
    def searcher(self) -> Iterator[tuple[Any, Store]]:
        from ftfsearch.search import Searcher

        # One query encodes one text and reranks ~100 candidates (milliseconds on a CPU core):
        # `auto` does not pay CUDA's start-up and the model's copy to the GPU for that.
        device = "cpu" if self.settings.device.strip().lower() == "auto" else self.settings.device
        with self.store(read_only=True) as db:
            # one query: nothing to reuse; its encoder encodes text without importing torch
            yield Searcher(self.query_encoder(device), db, vector_cache_bytes=0), db

    def query_encoder(self, device: str) -> Encoder:
        """The encoder of a one-off search (:func:`~ftfsearch.model.loading.load_query_encoder`):
        the full one when this command loaded it already, else the torch-free one."""
        if self._encoder is None:
            from ftfsearch.model.loading import load_query_encoder

            self._encoder = load_query_encoder(self.settings.model, device=device)
        return self._encoder


def open_target(to: str, collection: str, api_key: str | None, timeout: float) -> Store:
    """A push's target: a Qdrant server (an http(s) URL) or an embedded store directory."""
    from ftfsearch.store import open_store

    url = to if to.startswith(("http://", "https://")) else None
    return open_store(collection=collection, store_dir=None if url else Path(to).expanduser(), qdrant_url=url,
                      api_key=api_key, timeout=timeout)


def scope_filter(request: Scope, area: Area | None, db: Store) -> QueryFilter:
    """The store filter of a command's scope (an area: its prefilter, :func:`ftfsearch.area.store_filter`)."""
    from ftfsearch.area import store_filter

    bbox, center_in = store_filter(area, request.bbox, db) if area is not None else (request.bbox, ())
    return QueryFilter(bbox=bbox, scene_ids=request.scenes, after=request.after, before=request.before,
                       center_in=center_in)


def found_result(hit: Hit, rank: int, region: list[float]) -> Result:
    """A found tile as a search result (rank: the order found in, not by score)."""
    p = hit.payload
    return Result(rank=rank, score=hit.score, coarse_score=hit.score, id=hit.id, scene_id=p.get("scene_id", ""),
                  path=p.get("path", ""), level=int(p.get("level", 1)), window=dict(p.get("window") or {}),
                  bbox=p.get("bbox"), footprint=p.get("footprint"), region=region, region_index=hit.region_index,
                  payload={k: v for k, v in p.items() if k in ("acquired", "tile_size")})


S = TypeVar("S", bound=Scope)
SCOPE_FIELDS = {"bbox", "aoi", "scenes", "after", "before"}


def review_in(labels: dict[str, Any], param: str) -> Any:
    """The review of a labels file's content; BadInput naming ``param`` when it has none."""
    from ftfsearch.review import review_of

    review = review_of(labels)
    if review is None:
        raise BadInput(f"`{param}`: `labels` holds no review answers; run 'ftfsearch review' on the file first "
                       "(it proposes tiles to check and records the answers there)")
    return review


def in_review_scope(request: S, scope: dict[str, Any], param: str) -> S:
    """``request`` in a review's scope: a request that gives none takes the review's; one that gives
    another is refused (an estimate holds for the scope its draws came from)."""
    given = request.model_dump(mode="json", include=SCOPE_FIELDS)
    if given == Scope().model_dump(mode="json", include=SCOPE_FIELDS):
        return request.model_copy(update=Scope.model_validate(scope).model_dump(include=SCOPE_FIELDS))
    if given != scope:
        raise BadInput(f"`{param}`: the review in `labels` was drawn in another scope (aoi, bbox, scene, after, "
                       "before); give the review's scope or none (it is recorded in the file)")
    return request


class LocalCommands:
    """:class:`~ftfsearch.commands.base.Commands` over a store reached through ``access``."""

    def __init__(self, access: StoreAccess) -> None:
        self.access = access

    @classmethod
    def from_settings(cls, settings: Settings) -> "LocalCommands":
        return cls(OpenedAccess(settings))

    def search(self, request: SearchRequest) -> SearchOutcome:
        with self.access.searcher() as (searcher, db):
            out = searcher.search(
                request.text, k=request.k, recall_k=request.recall_k, rerank=request.rerank, bbox=request.bbox,
                scenes=request.scenes, examples=request.examples, after=request.after, before=request.before,
                area=request.area(),
            )
            bands: dict[str, tuple[int, ...] | None] = {}
            if request.with_bands:
                from ftfsearch.chips import scene_bands

                bands = scene_bands(db, [r.scene_id for r in out.results])
        return SearchOutcome(results=out.results, timings_ms=out.timings_ms, warnings=out.warnings, bands=bands,
                             device=encoder_device_label(searcher.encoder))

    def find(self, request: FindRequest) -> Iterator[FindPlan | FindPage]:
        from ftfsearch.find import find_pages, plan, query_vector

        from ftfsearch.search import check_model

        encoder = self.access.encoder()
        with self.access.store(read_only=True) as db:  # held per store call: a long find blocks no search
            check_model(db, encoder)
            area = request.area()
            flt = scope_filter(request, area, db)
            query, warnings = query_vector(encoder, db, request.text, request.examples)
            chosen = plan(db, query, flt, area, request.min_score, request.max_hits)
            yield FindPlan(threshold=chosen.threshold, threshold_source=chosen.threshold_source, scope=chosen.scope,
                           sampled=chosen.sampled, estimated=chosen.estimated, warnings=warnings)
            boxes = encoder.region_boxes
            rank = 0
            for hits in find_pages(db, query, chosen.threshold, flt, area, request.page):
                results = []
                for h in hits:
                    rank += 1
                    results.append(found_result(h, rank, [float(v) for v in boxes[h.region_index]]))
                yield FindPage(results=results)

    def classify(self, request: ClassifyRequest) -> Iterator[ClassifyPlan | ClassifyPage]:
        from ftfsearch.classify import fit, score_pages
        from ftfsearch.labels import parse_labels

        labels = parse_labels(request.labels, "`labels`")
        counted = None
        if request.estimate:
            from ftfsearch.review import estimate

            review = review_in(request.labels, "estimate")
            request = in_review_scope(request, review.scope, "estimate")
            counted = CountEstimate.of(estimate(review, labels))
        with self.access.store(read_only=True) as db:
            area = request.area()
            flt = scope_filter(request, area, db)
            model = fit(db, labels, flt, area)
            q = model.quality
            yield ClassifyPlan(precision=q.precision, recall=q.recall, folds=q.folds, positives=q.positives,
                               negatives=q.negatives, background=q.background, train_ms=q.train_ms,
                               scope=db.count_tiles(within=flt), estimate=counted)
            for page in score_pages(db, model, flt, area, request.min_probability):
                yield ClassifyPage(detections=[
                    Detection(id=d.id, probability=d.probability, scene_id=d.payload.get("scene_id", ""),
                              level=int(d.payload.get("level", 1)), window=dict(d.payload.get("window") or {}),
                              bbox=d.payload.get("bbox"), footprint=d.payload.get("footprint"))
                    for d in page])
    def review(self, request: ReviewRequest) -> ReviewOutcome:
        import time

        from ftfsearch.labels import labels_to_geojson, parse_labels
        from ftfsearch.review import answer, estimate, propose, retrain, review_of, start, strata_counts

        t0 = time.perf_counter()
        labels = parse_labels(request.labels, "`labels`")
        current = review_of(request.labels)
        if current is None and request.answers:
            raise BadInput("`answer`: `labels` holds no review yet; run the review once without answers to start it")
        with self.access.store(read_only=True) as db:
            meta = db.meta()
            if labels.model_id is None and meta is not None:
                labels.model_id = meta.model_id
            if current is None:
                area = request.area()
                flt = scope_filter(request, area, db)
                current, model = start(db, labels, flt, area, request.scope_json(), request.seed)
            else:
                scoped = in_review_scope(request, current.scope, "labels")
                area = scoped.area()
                flt = scope_filter(scoped, area, db)
                labels = answer(labels, current, [(a.id, a.hit) for a in request.answers])
                model = retrain(db, current, labels, flt, area, request.cross_validate)
            t1 = time.perf_counter()
            item = propose(db, current, labels, model)
            document = {**labels_to_geojson(labels, db), "review": current.to_json()}
        q, v = model.quality, current.validated
        assert v is not None  # start and retrain keep one
        quality = ClassifyPlan(precision=v.precision, recall=v.recall, folds=v.folds, positives=q.positives,
                               negatives=q.negatives, background=q.background, train_ms=q.train_ms,
                               scope=sum(s.size for s in current.strata), validated_marks=v.marks)
        strata = [StratumRow(low=plan.low, high=plan.high, size=s.size, reviewed=s.reviewed, positive=s.positive)
                  for plan, s in zip(current.strata, strata_counts(current, {m.tile_id: m.label == "positive"
                                                                              for m in labels.labels}))]
        return ReviewOutcome(
            labels=document, estimate=CountEstimate.of(estimate(current, labels)), strata=strata, quality=quality,
            item=None if item is None else ReviewItem(
                id=item.id, kind=item.kind, stratum=item.stratum, probability=item.probability,
                scene_id=item.payload.get("scene_id", ""), level=int(item.payload.get("level", 1)),
                window=dict(item.payload.get("window") or {}), bbox=item.payload.get("bbox"),
                footprint=item.payload.get("footprint")),
            timings_ms={"train": q.train_ms, "retrain_and_score": (t1 - t0) * 1000,
                        "total": (time.perf_counter() - t0) * 1000})

    def change(self, request: ChangeRequest) -> ChangeOutcome:
        from ftfsearch.change import change_search

        before, after = request.ranges()
        with self.access.searcher() as (searcher, _):
            out = change_search(searcher, before, after, text=request.text, examples=request.examples, k=request.k,
                                bbox=request.bbox, disappeared=request.disappeared, area=request.area())
        return ChangeOutcome(hits=out.hits, timings_ms=out.timings_ms, warnings=out.warnings)

    def ingest(self, request: IngestRequest, observer: IngestObserver | None = None) -> IngestOutcome:
        from ingest.pipeline import ingest_paths

        encoder = self.access.encoder()  # before the store opens: a bad model leaves no store behind
        with self.access.store(read_only=False) as db:
            done, failed = ingest_paths(list(request.sources), encoder, db, request.options(), progress=observer,
                                        on_scene=None if observer is None else observer.scene)
        from ftfsearch.commands.ingest_requests import IngestOutcome

        return IngestOutcome(scenes=done, failed=failed)

    def scenes(self, request: ScenesRequest) -> list[SceneRow]:
        with self.access.store(read_only=True) as db:
            return [
                SceneRow(scene_id=s.scene_id, path=s.path, tiles=db.count_tiles(s.scene_id), state=s.state,
                         acquired=s.extra.get("acquired") or None, stac=s.extra.get("stac") or None,
                         crs=s.crs, bbox=s.bbox, footprint=s.footprint)
                for s in db.list_scenes()
            ]

    def info(self, request: InfoRequest) -> dict[str, Any]:
        with self.access.store(read_only=True) as db:
            described = db.describe()
            meta = db.meta()
            scene_list = db.list_scenes() if meta is not None else []
            counts = dict(zip(INFO_COUNTS, (db.count_tiles() if meta is not None else 0, len(scene_list),
                                            sum(s.state == "complete" for s in scene_list), self.access.device())))
            return {**described, **counts}

    def drop(self, request: DropRequest) -> DropOutcome:
        with self.access.store(read_only=False) as db:
            if db.get_scene(request.scene_id) is None:
                raise SceneNotFound(f"scene {request.scene_id!r}: not in collection {db.collection!r}; "
                                    "'ftfsearch scenes' lists them")
            return DropOutcome(scene_id=request.scene_id, removed=int(db.delete_scene(request.scene_id)))

    def push(self, request: PushRequest) -> PushSummary:
        from ftfsearch.store.transfer import push_store

        settings = self.access.settings
        with self.access.store(read_only=True) as source:
            target = open_target(request.to, request.collection or source.collection,
                                 request.api_key if request.api_key is not None else settings.qdrant_api_key,
                                 request.timeout or settings.timeout)
            try:
                return push_store(source, target, shards=request.shards,
                                  replication_factor=request.replication_factor)
            finally:
                target.close()

    def watch_add(self, request: WatchAddRequest) -> WatchRow:

        from ftfsearch.area import store_filter
        from ftfsearch.collection import collection_meta
        from ftfsearch.errors import BadInput
        from ftfsearch.find import query_vector
        from ftfsearch.watch import KIND_WATCH, Watch, add_watch, default_threshold

        encoder = self.access.encoder()
        with self.access.store(read_only=False) as db:
            if db.list_records(KIND_WATCH, {"name": request.name}):
                add_watch(db, Watch(request.name, "", [], 0.0, "", ""))  # refused: the name is taken
            stored = db.meta() is not None and db.count_tiles() > 0
            if request.min_score is None and not stored:
                raise BadInput("`min_score`: no tile is stored yet to choose the threshold from; give one "
                               "(a two-stage score, as 'ftfsearch query' prints), or add the watch after a first ingest")
            query, _ = query_vector(encoder, db, request.text, request.examples)
            params = encoder.rerank_params
            rerank = {"tau": params.tau, "alpha": params.alpha, "balanced": params.balanced}
            if request.min_score is None:
                area = request.area()
                bbox, center_in = store_filter(area, None, db) if area is not None else (None, ())
                flt = QueryFilter(bbox=bbox, center_in=center_in) if bbox or center_in else None
                threshold, source = default_threshold(db, query, rerank, flt, area)
            else:
                threshold, source = float(request.min_score), "given (--min-score)"
            db.ensure_collection(collection_meta(encoder))  # a watch may come before the first scene
            watch = Watch(name=request.name, query=request.described(), vector=[float(v) for v in query],
                          min_score=threshold, threshold_source=source, model_id=encoder.id, aoi=request.aoi,
                          webhook=request.webhook, rerank=rerank)
            add_watch(db, watch)
            return _watch_row(db, watch)

    def watch_list(self, request: WatchListRequest) -> list[WatchRow]:
        from ftfsearch.watch import list_watches

        with self.access.store(read_only=True) as db:
            return [_watch_row(db, w) for w in list_watches(db)]

    def watch_rm(self, request: WatchRmRequest) -> WatchRmOutcome:
        from ftfsearch.watch import remove_watch

        with self.access.store(read_only=False) as db:
            return WatchRmOutcome(name=request.name, hits_removed=remove_watch(db, request.name))

    def watch_hits(self, request: WatchHitsRequest) -> WatchHitsOutcome:
        from ftfsearch.watch import get_watch, watch_hits

        with self.access.store(read_only=True) as db:
            hits = watch_hits(db, request.name, request.since)
            return WatchHitsOutcome(watch=_watch_row(db, get_watch(db, request.name)), hits=hits)

    def watch_deliver(self, request: WatchDeliverRequest) -> WatchDeliverOutcome:
        from ftfsearch.watch import deliver

        with self.access.store(read_only=False) as db:
            report = deliver(db, request.name, timeout=request.timeout, tries=request.tries)
        return WatchDeliverOutcome(delivered=report.delivered, failed=report.failed, errors=report.errors)

    def labels(self, request: MarksRequest) -> dict[str, Any]:
        from dataclasses import replace

        from ftfsearch.examples import tile_at
        from ftfsearch.labels import LabelSet, labels_from_refs, labels_to_geojson

        with self.access.store(read_only=True) as db:
            meta = db.meta()
            refs = [replace(r, tile_id=tile_at(db, r), point=None) if r.point is not None else r
                    for r in request.examples]
            marks = LabelSet(labels_from_refs(refs), query=request.query,
                             model_id=None if meta is None else meta.model_id)
            return labels_to_geojson(marks, db)  # TileNotFound for a tile this store does not hold

    def export_embeddings(self, request: ExportRequest) -> ExportOutcome:
        from ftfsearch.embeddings_export import export_embeddings

        with self.access.store(read_only=True) as db:
            return ExportOutcome(out=request.out, tiles=export_embeddings(db, request.out))

    def close(self) -> None:
        """Nothing held between commands."""


def _watch_row(db: Store, watch: Any) -> WatchRow:
    """A watch with the count of its hits and of those its webhook is still owed."""
    from ftfsearch.watch import KIND_HIT

    hits = db.list_records(KIND_HIT, {"watch": watch.name})
    return WatchRow(**watch.summary(), hits=len(hits), pending=sum(bool(h.get("pending")) for h in hits))
