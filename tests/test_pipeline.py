"""The write path end to end on both backends: real scenes, a real encoder, resume, refusals."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from _data import SHARED_DATA
from ftfsearch.errors import BadInput, ModelMismatch
from ftfsearch.model.loading import load_encoder
from ftfsearch.search import Searcher
from ftfsearch.store.base import Store, TileBatch
from ingest.pipeline import IngestOptions, StageTimes, SceneSummary, ingest_paths, ingest_scene, window_id
from ingest.scenes import fingerprint
from ingest.tiling import SceneReader, TilingSpec

DATA = SHARED_DATA / "geotiffs"
SCENE = Path(__file__).resolve().parent / "data" / "RGB.byte.tif"
SPEC = TilingSpec(tile_size=256, levels=(1, 2))


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return load_encoder(str(tiny_clip_dir), device="cpu")


def _expected_ids(path: Path, spec: TilingSpec) -> set[str]:
    """Ids of the windows that hold enough valid pixels, computed from the tiling alone."""
    fp = fingerprint(path)
    with SceneReader(path, spec) as reader:
        return {window_id(fp, w) for w in reader.windows() if reader.read(w) is not None}


def _stored_ids(store: Store, ids: set[str]) -> set[str]:
    return store.existing_ids(sorted(ids))


def test_ingest_then_query_on_both_backends(store, encoder):
    done, failed = ingest_paths([SCENE], encoder, store, IngestOptions(spec=SPEC, batch_size=8))
    assert not failed and len(done) == 1
    summary = done[0]
    expected = _expected_ids(SCENE, SPEC)
    assert summary.state == "complete"
    assert summary.tiles_in_store == len(expected) == store.count_tiles("RGB.byte") == summary.written
    assert _stored_ids(store, expected) == expected
    scene = store.get_scene("RGB.byte")
    assert scene is not None and scene.state == "complete" and scene.expected_tiles == len(expected)

    with rasterio.open(SCENE) as ds:
        from rasterio.warp import transform_bounds

        west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
    searcher = Searcher(encoder, store)
    response = searcher.search("ships near a harbor", k=5, recall_k=len(expected))
    assert len(response.results) == 5
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    for r in response.results:
        w, s, e, n = r.bbox
        assert west - 1e-3 <= w < e <= east + 1e-3 and south - 1e-3 <= s < n <= north + 1e-3
        assert r.region is not None and 0 <= r.region[0] < r.region[2] <= 1
        assert r.window["width"] in (256, 512)

    coarse = searcher.search("ships near a harbor", k=5, rerank=False)
    assert [r.coarse_score for r in coarse.results] == sorted((r.coarse_score for r in coarse.results), reverse=True)
    assert all(r.region is None for r in coarse.results)

    # bbox filter: a box over the western half keeps only tiles that intersect it; a far box keeps none.
    mid = (west + east) / 2
    half = searcher.search("ships", k=100, rerank=False, bbox=(west - 1, south - 1, mid, north + 1))
    assert 0 < len(half.results) < len(expected)
    assert all(r.bbox[0] <= mid for r in half.results)
    assert searcher.search("ships", k=10, bbox=(0.0, 0.0, 1.0, 1.0)).results == []
    assert searcher.search("ships", k=10, scenes=("nope",)).results == []


class _FailingStore:
    """Delegates to a real store but dies after ``n`` upserts, like a process killed mid-ingest."""

    def __init__(self, inner: Store, n: int) -> None:
        self.inner, self.n = inner, n

    def upsert_tiles(self, batch: TileBatch) -> None:
        if self.n == 0:
            raise KeyboardInterrupt
        self.n -= 1
        self.inner.upsert_tiles(batch)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_interrupted_ingest_resumes_to_the_same_tiles(store, encoder):
    options = IngestOptions(spec=SPEC, batch_size=4, readers=2)
    from ftfsearch.collection import collection_meta

    store.ensure_collection(collection_meta(encoder))
    with pytest.raises(KeyboardInterrupt):
        ingest_scene(SCENE, encoder, _FailingStore(store, 2), options)
    partial = store.count_tiles("RGB.byte")
    assert 0 < partial < len(_expected_ids(SCENE, SPEC))
    assert store.get_scene("RGB.byte").state == "ingesting"

    summary = ingest_scene(SCENE, encoder, store, options)
    expected = _expected_ids(SCENE, SPEC)
    assert summary.state == "complete"
    assert summary.already_stored == partial
    assert summary.written == len(expected) - partial
    assert _stored_ids(store, expected) == expected and store.count_tiles() == len(expected)

    again = ingest_scene(SCENE, encoder, store, options)  # complete scene: nothing to do
    assert again.written == 0 and store.count_tiles() == len(expected)


def test_other_model_is_refused(store, encoder, tmp_path):
    from _tiny import build_tiny_clip

    ingest_paths([SCENE], encoder, store, IngestOptions(spec=TilingSpec(levels=(2,))))
    other = load_encoder(str(build_tiny_clip(tmp_path / "other", seed=1)), device="cpu")
    assert other.id != encoder.id
    with pytest.raises(ModelMismatch, match="was built with model"):
        ingest_paths([SCENE], other, store, IngestOptions(spec=TilingSpec(levels=(2,))))
    with pytest.raises(ModelMismatch):
        Searcher(other, store)


@pytest.mark.usefixtures("shared_data")
def test_scene_id_taken_by_another_file_and_changed_tiling_are_refused(store, encoder, tmp_path):
    ingest_paths([SCENE], encoder, store, IngestOptions(spec=TilingSpec(levels=(2,))))
    other = DATA / "rasterio" / "rgb1.tif"
    with pytest.raises(BadInput, match="already holds another file"):
        ingest_scene(other, encoder, store, IngestOptions(spec=TilingSpec(levels=(2,)), scene_id="RGB.byte"))
    with pytest.raises(BadInput, match="other tiling options"):
        ingest_scene(SCENE, encoder, store, IngestOptions(spec=TilingSpec(levels=(1,))))


def test_bad_files_are_reported_and_leave_the_store_as_it_was(store, encoder, tmp_path):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    nodata = tmp_path / "nodata.tif"
    profile = dict(driver="GTiff", width=300, height=300, count=3, dtype="uint8", nodata=0,
                   crs="EPSG:32618", transform=rasterio.transform.from_origin(500000, 4000000, 10, 10))
    with rasterio.open(nodata, "w", **profile) as ds:
        ds.write(np.zeros((3, 300, 300), dtype=np.uint8))
    done, failed = ingest_paths([empty, nodata], encoder, store, IngestOptions())
    assert done == [] and {Path(f.path).name for f in failed} == {"empty.tif", "nodata.tif"}
    assert all(f.path in f.message or Path(f.path).name in f.message for f in failed)
    assert store.list_scenes() == [] and store.count_tiles() == 0


@pytest.mark.slow
@pytest.mark.usefixtures("shared_data")
def test_every_shared_geotiff_ingests_or_is_refused_clearly(store_tmp, encoder):
    """All real rasters of ../shared/data/geotiffs through the whole pipeline on the embedded store."""
    from ftfsearch.store import open_store

    paths = sorted(DATA.rglob("*.tif"))
    assert len(paths) >= 17
    store = open_store(collection="tiles", store_dir=store_tmp / "all", qdrant_url=None, api_key=None, timeout=10)
    try:
        done, failed = ingest_paths(paths, encoder, store, IngestOptions(spec=TilingSpec(tile_size=256), batch_size=16))
        names = {Path(s.path).name for s in done}
        # shade.tif is 88% nodata: no 256-px tile holds half valid pixels, so it is refused clearly.
        assert {Path(f.path).name for f in failed} == {"shade.tif"}
        assert "no tile has enough valid pixels" in failed[0].message
        assert len(names) == len(paths) - 1
        for s in done:
            assert s.state == "complete" and s.tiles_in_store == store.count_tiles(s.scene_id) > 0
        assert store.count_tiles() == sum(s.tiles_in_store for s in done)
    finally:
        store.close()


def test_recall_without_payloads_carries_the_same_candidates(store, encoder):
    """The rerank recalls vectors only; ids, scores and vectors equal those of a full recall."""
    ingest_paths([SCENE], encoder, store, IngestOptions(spec=SPEC))
    text = encoder.encode_text(["a harbor with ships"])[0].numpy()
    full = store.recall(text, 20, with_vectors=True, with_payload=True)
    lean = store.recall(text, 20, with_vectors=True, with_payload=False)
    assert lean.ids == full.ids
    np.testing.assert_array_equal(lean.scores, full.scores)
    np.testing.assert_array_equal(lean.regions, full.regions)
    np.testing.assert_array_equal(lean.coarse, full.coarse)
    assert all(p == {} for p in lean.payloads) and all(p.get("scene_id") for p in full.payloads)
    results = Searcher(encoder, store).search("a harbor with ships", k=5, recall_k=20).results
    by_id = dict(zip(full.ids, full.payloads))
    assert [r.rank for r in results] == [1, 2, 3, 4, 5]
    for r in results:
        assert r.payload == by_id[r.id] and r.window == by_id[r.id]["window"] and r.bbox == by_id[r.id]["bbox"]


@pytest.fixture
def edge_store(store_tmp):
    from ftfsearch.store import open_store

    s = open_store(collection="tiles", store_dir=store_tmp / "timed", qdrant_url=None, api_key=None, timeout=10.0)
    try:
        yield s
    finally:
        s.close()


def test_stage_times_are_measured_and_fit_in_the_ingest(edge_store, encoder):
    t0 = time.perf_counter()
    summary = ingest_scene(SCENE, encoder, edge_store, IngestOptions(spec=SPEC, batch_size=4))
    wall = time.perf_counter() - t0
    st = summary.stages
    assert summary.written > 0
    assert st.read >= 0 and st.encode > 0 and st.write > 0
    # the three partition the encoding thread's loop: together within the scene's time (the rest
    # is opening the raster, the resume check and the collection)
    assert st.total <= summary.seconds <= wall
    d = summary.to_dict()
    assert d["stages"] == st.to_dict() and set(d["stages"]) == {"read", "encode", "write"}
    assert SceneSummary.from_dict(d).stages == StageTimes(**d["stages"])
    assert st.line().startswith("read ") and " · encode " in st.line() and st.line().endswith(" s")

    again = ingest_scene(SCENE, encoder, edge_store, IngestOptions(spec=SPEC, batch_size=4))
    assert again.written == 0 and again.stages.total == 0  # a complete scene runs no loop


class _SlowStore:
    """A real store whose upserts take ``delay`` seconds longer."""

    def __init__(self, inner: Store, delay: float) -> None:
        self.inner, self.delay, self.upserts = inner, delay, 0

    def upsert_tiles(self, batch: TileBatch) -> None:
        time.sleep(self.delay)
        self.upserts += 1
        self.inner.upsert_tiles(batch)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _SlowEncoder:
    """A real encoder whose image batches take ``delay`` seconds longer."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay, self.batches = inner, delay, 0

    def encode_images(self, images):
        time.sleep(self.delay)
        self.batches += 1
        return self.inner.encode_images(images)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_slow_store_shows_in_the_write_stage(edge_store, encoder):
    delay = 0.5
    slow = _SlowStore(edge_store, delay)
    summary = ingest_scene(SCENE, encoder, slow, IngestOptions(spec=SPEC, batch_size=4))
    st = summary.stages
    assert slow.upserts >= 3
    # the loop ends only when the writer thread has upserted every batch: what read and encode
    # did not overlap with it, the encoding thread waited for as write ...
    assert st.write >= slow.upserts * delay - st.read - st.encode - 0.05, st
    # ... and the last batch, handed over after its encode, is waited for whole (a plain Edge
    # store writes these batches in milliseconds)
    assert st.write >= 0.8 * delay, st


def test_a_slow_encoder_shows_in_the_encode_stage(edge_store, encoder):
    delay = 0.3
    slow = _SlowEncoder(encoder, delay)
    summary = ingest_scene(SCENE, slow, edge_store, IngestOptions(spec=SPEC, batch_size=4))
    st = summary.stages
    assert slow.batches >= 3
    assert st.encode >= slow.batches * delay, st  # all of it, and the stages do not overlap
    assert st.total <= summary.seconds
