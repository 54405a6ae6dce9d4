"""One store suite, run on the embedded backend (Qdrant Edge) and on a real Qdrant server.

Results are checked against numpy brute force on the vectors as stored (unit-normalised;
regions in float16), and the two backends against each other (congruence).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from deploy.qdrant_local import QdrantLaunchError, QdrantServer, find_qdrant_binary, free_port
from ftfsearch.errors import (
    BadInput,
    CollectionNotFound,
    ModelMismatch,
    PermissionDenied,
    StoreLocked,
    StoreUnavailable,
)
from ftfsearch.store import Store, open_store
from ftfsearch.store.base import QueryFilter, TileBatch
from ftfsearch.store.edge import EdgeStore
from ftfsearch.store.schema import tile_point_id
from ftfsearch.store.server import ServerStore
from ftfsearch.store.transfer import push_store

from _qdrant import fast_tmp_root, qdrant_binary_or_skip
from _store_data import DATA, META, D, Data, R, filled, qdrant_maxsim, texts, unit


def allowed(data: Data, flt: QueryFilter | None) -> np.ndarray:
    """Mask of the tiles that ``flt`` admits, computed from the payloads."""
    mask = np.ones(len(data.batch), dtype=bool)
    if flt is None:
        return mask
    for i, p in enumerate(data.batch.payloads):
        if flt.scene_ids and p["scene_id"] not in flt.scene_ids:
            mask[i] = False
        if flt.bbox is not None:
            w, s, e, n = flt.bbox
            if "west" not in p or not (p["west"] <= e and p["east"] >= w and p["south"] <= n and p["north"] >= s):
                mask[i] = False
        if flt.after is not None or flt.before is not None:
            when = datetime.fromisoformat(p["acquired"]) if "acquired" in p else None
            if when is None or (flt.after is not None and when < flt.after) or (
                flt.before is not None and when >= flt.before
            ):
                mask[i] = False
    return mask


def brute_force(text: np.ndarray, k: int, flt: QueryFilter | None = None) -> tuple[list[str], np.ndarray]:
    scores = DATA.coarse @ unit(text)
    scores[~allowed(DATA, flt)] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    order = order[np.isfinite(scores[order])]
    return [DATA.batch.ids[i] for i in order], scores[order]


def maxsim_reference(text: np.ndarray, k: int, recall_k: int, flt: QueryFilter | None = None) -> tuple[list[str], np.ndarray]:
    pre_ids, _ = brute_force(text, recall_k, flt)
    idx = DATA.index(pre_ids)
    sims = DATA.regions[idx].astype(np.float32) @ unit(text)  # [K, R]
    ms = sims.max(axis=1)
    order = np.argsort(-ms, kind="stable")[:k]
    return [pre_ids[i] for i in order], ms[order]


# --- collection and model record -------------------------------------------------------------


def test_create_meta_and_refuse_other_models(store: Store) -> None:
    assert store.meta() is None
    assert store.describe()["exists"] is False
    store.ensure_collection(META)
    assert store.meta() == META
    store.ensure_collection(META)  # same model: a no-op
    others = [
        replace(META, model_id="other/clip-b32"),
        replace(META, dim=64),
        replace(META, num_regions=5),
        replace(META, region_layout="grid-2"),
        replace(META, schema_version=META.schema_version + 1),
    ]
    for other in others:
        with pytest.raises(ModelMismatch) as err:
            store.ensure_collection(other)
        msg = str(err.value)
        assert META.model_id in msg and other.model_id in msg and "into a new collection" in msg
    assert store.meta() == META


def test_missing_collection_reads_empty(store: Store) -> None:
    assert store.count_tiles() == 0
    assert store.list_scenes() == []
    assert store.get_scene("scene-a") is None
    assert store.existing_ids(DATA.batch.ids[:3]) == set()
    assert store.get_tiles(DATA.batch.ids[:3]) == []
    with pytest.raises(CollectionNotFound, match=store.collection):
        store.recall(texts()[0], 5)
    with pytest.raises(CollectionNotFound, match=store.collection):
        next(store.scan_tiles("scene-a"))


def test_upsert_is_idempotent_and_existing_ids(store: Store) -> None:
    filled(store)
    n = len(DATA.batch)
    assert store.count_tiles() == n
    store.upsert_tiles(DATA.batch)  # same ids: rewrites, never duplicates
    assert store.count_tiles() == n
    unknown = [tile_point_id("fp-nowhere", 1, 0, 0, 256, 256)]
    probe = DATA.batch.ids[::5] + unknown
    assert store.existing_ids(probe) == set(DATA.batch.ids[::5])
    got = store.get_tiles([DATA.batch.ids[3], "not-a-uuid", unknown[0], DATA.batch.ids[1]])
    assert [g[0] for g in got] == [DATA.batch.ids[3], DATA.batch.ids[1]]
    assert got[0][1] == DATA.batch.payloads[3]


def test_batch_checks(store: Store) -> None:
    store.ensure_collection(META)
    b = DATA.batch
    with pytest.raises(BadInput, match="aligned"):
        store.upsert_tiles(TileBatch(ids=b.ids[:3], coarse=b.coarse[:2], regions=b.regions[:3], payloads=b.payloads[:3]))
    with pytest.raises(ModelMismatch, match="D=16"):
        store.upsert_tiles(TileBatch(ids=b.ids[:2], coarse=b.coarse[:2, :16], regions=b.regions[:2, :, :16], payloads=b.payloads[:2]))
    with pytest.raises(ModelMismatch, match="D=16"):
        filled(store).recall(texts()[0][:16], 3)
    with pytest.raises(BadInput, match="k=0"):
        store.recall(texts()[0], 0)


# --- recall ----------------------------------------------------------------------------------


def test_recall_matches_brute_force(store: Store) -> None:
    filled(store)
    for t in texts():
        want_ids, want_scores = brute_force(t, 10)
        got = store.recall(t, 10, with_vectors=True)
        assert got.ids == want_ids
        assert got.scores.dtype == np.float32 and got.scores.shape == (10,)
        np.testing.assert_allclose(got.scores, want_scores, atol=1e-5)
        idx = DATA.index(got.ids)
        assert got.coarse is not None and got.regions is not None
        assert got.coarse.dtype == np.float32 and got.coarse.shape == (10, D)
        assert got.regions.dtype == np.float16 and got.regions.shape == (10, R, D)
        np.testing.assert_allclose(got.coarse, DATA.coarse[idx], atol=1e-6)
        np.testing.assert_allclose(got.regions.astype(np.float32), DATA.regions[idx].astype(np.float32), atol=2e-3)
        assert got.payloads == [DATA.batch.payloads[i] for i in idx]  # stored verbatim
    # A noisy copy of a stored tile finds that tile first.
    i = 7
    near = unit(DATA.coarse[i] + 0.05 * unit(np.random.default_rng(3).standard_normal(D)))
    assert store.recall(near, 1, with_vectors=False).ids == [DATA.batch.ids[i]]


def test_recall_without_vectors(store: Store) -> None:
    filled(store)
    t = texts()[0]
    got = store.recall(t, 5, with_vectors=False)
    assert got.coarse is None and got.regions is None
    assert got.ids == brute_force(t, 5)[0]
    assert len(store.recall(t, 1000, with_vectors=False)) == len(DATA.batch)


BBOXES = [
    (10.3, 45.1, 10.6, 45.4),  # inside scene-a, touching scene-b
    (10.75, 45.0, 11.0, 45.1),  # starts exactly on tile edges: touching counts as intersecting
    (11.3, 45.0, 12.5, 46.0),  # right part of scene-b only
    (0.0, 0.0, 1.0, 1.0),  # nothing there
]


@pytest.mark.parametrize("bbox", BBOXES)
def test_bbox_filter_is_intersection(store: Store, bbox: tuple[float, float, float, float]) -> None:
    filled(store)
    flt = QueryFilter(bbox=bbox)
    want = {DATA.batch.ids[i] for i in np.flatnonzero(allowed(DATA, flt))}
    got = store.recall(texts()[0], len(DATA.batch), flt=flt, with_vectors=False)
    assert set(got.ids) == want
    assert all(p["scene_id"] != "scene-c" for p in got.payloads)  # no bbox fields: never matched
    t = texts()[1]
    assert store.recall(t, 3, flt=flt, with_vectors=False).ids == brute_force(t, 3, flt)[0]


def test_bbox_examples_are_what_they_claim() -> None:
    counts = [int(allowed(DATA, QueryFilter(bbox=b)).sum()) for b in BBOXES]
    assert counts[0] > 0 and counts[1] > 0 and counts[2] > 0 and counts[3] == 0
    # the edge-touching box includes tiles whose east edge is exactly 10.75
    touching = [p for p, m in zip(DATA.batch.payloads, allowed(DATA, QueryFilter(bbox=BBOXES[1]))) if m]
    assert any(p.get("east") == 10.75 for p in touching)


def test_scene_filter(store: Store) -> None:
    filled(store)
    t = texts()[2]
    for scene_ids in [("scene-c",), ("scene-a", "scene-b")]:
        flt = QueryFilter(scene_ids=scene_ids)
        got = store.recall(t, 8, flt=flt, with_vectors=False)
        assert {p["scene_id"] for p in got.payloads} <= set(scene_ids)
        assert got.ids == brute_force(t, 8, flt)[0]
    flt = QueryFilter(bbox=BBOXES[0], scene_ids=("scene-b",))
    got = store.recall(t, 50, flt=flt, with_vectors=False)
    assert set(got.ids) == {DATA.batch.ids[i] for i in np.flatnonzero(allowed(DATA, flt))}
    assert got.ids and all(p["scene_id"] == "scene-b" for p in got.payloads)
    with pytest.raises(BadInput, match="bbox"):
        store.recall(t, 5, flt=QueryFilter(bbox=(11.0, 45.0, 10.0, 46.0)))


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "after, before, expected",
    [
        # rows of scene-a/b were acquired on 1, 2 and 3 June 2021 at 10:30 UTC; scene-c has no time
        ("2021-06-02", None, 2 * 4 * 2),
        (None, "2021-06-02", 1 * 4 * 2),
        ("2021-06-02T10:30", "2021-06-03T10:30", 1 * 4 * 2),  # after inclusive, before exclusive
        ("2021-06-01T10:30:01", "2021-06-02T10:29:59", 0),
        ("2000-01-01", "2100-01-01", 3 * 4 * 2),  # everything with a time, never scene-c
    ],
)
def test_time_filter(store: Store, after: str | None, before: str | None, expected: int) -> None:
    filled(store)
    flt = QueryFilter(after=after and _utc(after), before=before and _utc(before))
    assert int(allowed(DATA, flt).sum()) == expected
    t = texts()[3]
    got = store.recall(t, 50, flt=flt, with_vectors=False)
    assert sorted(got.ids) == sorted(brute_force(t, 50, flt)[0])
    assert len(got.ids) == expected
    assert all(p["scene_id"] != "scene-c" for p in got.payloads)
    both = QueryFilter(after=_utc("2021-06-02"), scene_ids=("scene-b",), bbox=BBOXES[0])
    got = store.recall(t, 50, flt=both, with_vectors=False)
    assert set(got.ids) == {DATA.batch.ids[i] for i in np.flatnonzero(allowed(DATA, both))}


def test_time_filter_refusals(store: Store) -> None:
    filled(store)
    t = texts()[0]
    with pytest.raises(BadInput, match="^after 2021-06-03T00:00:00Z: must be earlier than before"):
        store.recall(t, 5, flt=QueryFilter(after=_utc("2021-06-03"), before=_utc("2021-06-02")))
    with pytest.raises(BadInput, match="^before 'June': not a date"):
        store.recall(t, 5, flt=QueryFilter(before="June"))  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", ["average_vector", "sum_scores"])
def test_recommend_matches_numpy(store: Store, strategy: str) -> None:
    """average_vector: nearest to 2 avg(p) - avg(n) (Qdrant's own on a server, the same arithmetic
    on Edge); sum_scores: sum of cosines to the positives minus those to the negatives.
    exclude_ids keeps the examples themselves out."""
    filled(store)
    pos = np.stack([DATA.coarse[3], DATA.coarse[5]])
    neg = np.stack([DATA.coarse[20]])
    if strategy == "average_vector":
        q = 2 * pos.mean(axis=0) - neg.mean(axis=0)
        want = DATA.coarse @ (q / np.linalg.norm(q))
    else:
        want = (DATA.coarse @ pos.T).sum(axis=1) - (DATA.coarse @ neg.T).sum(axis=1)
    examples = (DATA.batch.ids[3], DATA.batch.ids[5], DATA.batch.ids[20])
    want[DATA.index(list(examples))] = -np.inf
    order = np.argsort(-want, kind="stable")[:8]
    got = store.recommend(pos, neg, 8, flt=QueryFilter(exclude_ids=examples), with_vectors=True, strategy=strategy)
    assert got.ids == [DATA.batch.ids[i] for i in order]
    np.testing.assert_allclose(got.scores, want[order], atol=1e-4)
    assert got.coarse is not None and got.regions is not None and got.regions.shape == (8, R, D)
    # No negatives, and a scene filter combined with the exclusion.
    flt = QueryFilter(scene_ids=("scene-b",), exclude_ids=(DATA.batch.ids[13],))
    got = store.recommend(DATA.coarse[13:14], np.zeros((0, D), np.float32), 5, flt=flt, with_vectors=False,
                          strategy=strategy)
    assert got.ids and DATA.batch.ids[13] not in got.ids
    assert all(p["scene_id"] == "scene-b" for p in got.payloads)


def test_recommend_strategies_and_refusals(store: Store) -> None:
    filled(store)
    pos, neg = DATA.coarse[3:5], DATA.coarse[20:21]
    assert len(store.recommend(pos, neg, 3, strategy="best_score", with_vectors=False)) == 3
    default = store.recommend(pos, neg, 5, with_vectors=False)
    assert default.ids == store.recommend(pos, neg, 5, strategy="average_vector", with_vectors=False).ids
    with pytest.raises(BadInput, match="strategy"):
        store.recommend(pos, neg, 3, strategy="average")
    with pytest.raises(BadInput, match="positive"):
        store.recommend(np.zeros((0, D), np.float32), neg, 3)


def test_exclude_ids_in_recall(store: Store) -> None:
    filled(store)
    t = texts()[4]
    top = store.recall(t, 3, with_vectors=False).ids
    got = store.recall(t, 3, flt=QueryFilter(exclude_ids=(top[0], "not-a-uuid")), with_vectors=False)
    assert got.ids == top[1:] + [brute_force(t, 4)[0][3]]


def test_find_tiles_under_a_point(store: Store) -> None:
    filled(store)
    lon, lat = 10.3, 45.1  # inside scene-a (one tile) only
    found = store.find_tiles(QueryFilter(bbox=(lon, lat, lon, lat)))
    want = {DATA.batch.ids[i] for i in np.flatnonzero(allowed(DATA, QueryFilter(bbox=(lon, lat, lon, lat))))}
    assert {i for i, _ in found} == want and len(want) == 1
    assert all("_ftf_vectors" not in p and p["west"] <= lon <= p["east"] for _, p in found)
    assert store.find_tiles(QueryFilter(bbox=(0.0, 0.0, 0.0, 0.0))) == []


def test_qdrant_maxsim_baseline_matches_numpy(store: Store) -> None:
    """The benchmark's baseline reads the collection as the store wrote it: Qdrant's MaxSim over
    the ``regions`` multivector of the coarse top ``recall_k``; payloads without the packed copy."""
    filled(store)
    with qdrant_maxsim(store) as maxsim:
        for t in texts():
            want_ids, want_scores = maxsim_reference(t, 5, 15)
            got = maxsim(t, 5, recall_k=15)
            assert got.ids == want_ids
            np.testing.assert_allclose(got.scores, want_scores, atol=2e-3)
            assert got.payloads == [DATA.batch.payloads[i] for i in DATA.index(got.ids)]


def test_scan_tiles_reads_every_tile_of_a_scene(store: Store) -> None:
    filled(store)
    for scene in DATA.scenes:
        batches = list(store.scan_tiles(scene.scene_id, page=5))
        assert batches and all(1 <= len(b) <= 5 for b in batches)
        ids = [i for b in batches for i in b.ids]
        want = [i for i, p in zip(DATA.batch.ids, DATA.batch.payloads) if p["scene_id"] == scene.scene_id]
        assert sorted(ids) == sorted(want) and len(set(ids)) == len(ids)
        idx = DATA.index(ids)
        coarse = np.concatenate([b.coarse for b in batches])
        regions = np.concatenate([b.regions for b in batches])
        assert coarse.dtype == np.float32 and regions.shape == (len(ids), R, D)
        np.testing.assert_allclose(coarse, DATA.coarse[idx], atol=1e-6)
        np.testing.assert_allclose(regions.astype(np.float32), DATA.regions[idx].astype(np.float32), atol=2e-3)
        assert [p for b in batches for p in b.payloads] == [DATA.batch.payloads[i] for i in idx]
    assert list(store.scan_tiles("scene-zz")) == []


def test_scan_coarse_reads_coarse_vectors_and_the_fields_asked_for(store: Store) -> None:
    filled(store)
    scene = DATA.scenes[0].scene_id
    batches = list(store.scan_coarse(QueryFilter(scene_ids=(scene,)), ["scene_id", "bbox"], page=5))
    assert batches and all(1 <= len(b) <= 5 for b in batches)
    ids = [i for b in batches for i in b.ids]
    want = [i for i, p in zip(DATA.batch.ids, DATA.batch.payloads) if p["scene_id"] == scene]
    assert sorted(ids) == sorted(want) and len(set(ids)) == len(ids)
    idx = DATA.index(ids)
    coarse = np.concatenate([b.coarse for b in batches])
    assert coarse.dtype == np.float32 and coarse.shape == (len(ids), D)
    np.testing.assert_allclose(coarse, DATA.coarse[idx], atol=1e-6)
    assert [p for b in batches for p in b.payloads] == [
        {f: DATA.batch.payloads[i][f] for f in ("scene_id", "bbox") if f in DATA.batch.payloads[i]} for i in idx]


# --- counts, deletion, scenes registry ------------------------------------------------------


def test_count_and_delete_scene(store: Store) -> None:
    filled(store)
    per_scene = {s.scene_id: s.expected_tiles for s in DATA.scenes}
    for sid, n in per_scene.items():
        assert store.count_tiles(sid) == n
    assert store.count_tiles("scene-zz") == 0
    assert store.delete_scene("scene-a") == per_scene["scene-a"]
    assert store.count_tiles("scene-a") == 0
    assert store.get_scene("scene-a") is None
    assert store.count_tiles() == len(DATA.batch) - per_scene["scene-a"]
    assert store.count_tiles("scene-b") == per_scene["scene-b"]
    got = store.recall(texts()[0], 100, with_vectors=False)
    assert all(p["scene_id"] != "scene-a" for p in got.payloads)
    assert store.delete_scene("scene-a") == 0  # already gone: nothing removed, no error


def test_scene_registry(store: Store) -> None:
    store.ensure_collection(META)
    for s in reversed(DATA.scenes):
        store.put_scene(s)
    listed = store.list_scenes()
    assert [s.scene_id for s in listed] == ["scene-a", "scene-b", "scene-c"]  # sorted, meta excluded
    assert store.get_scene("scene-c") == DATA.scenes[2]
    updated = replace(DATA.scenes[0], state="ingesting", expected_tiles=3, extra={"note": "resumed"})
    store.put_scene(updated)
    assert store.get_scene("scene-a") == updated
    assert len(store.list_scenes()) == 3
    assert store.get_scene("scene-zz") is None
    assert store.meta() == META


def test_describe_names_location_and_counts(store: Store) -> None:
    filled(store)
    d = store.describe()
    assert d["backend"] == store.backend and d["collection"] == store.collection
    assert d["exists"] is True and d["meta"] == META.to_payload()
    assert d["points"] == len(DATA.batch)
    if store.backend == "edge":
        assert d["location"] == str(Path(d["location"]))
    else:
        assert d["location"].startswith("http://127.0.0.1:")


# --- congruence: the same data in both backends ----------------------------------------------


def test_backends_agree(qdrant_server: str, store_tmp: Path) -> None:
    edge = filled(EdgeStore(store_tmp / "store", collection="cong"))
    name = f"cong_{uuid.uuid4().hex[:8]}"
    server = filled(ServerStore(qdrant_server, collection=name, timeout=10.0))
    try:
        filters = [None, QueryFilter(bbox=BBOXES[0]), QueryFilter(scene_ids=("scene-b", "scene-c")),
                   QueryFilter(after=datetime(2021, 6, 2, tzinfo=timezone.utc))]
        for t in texts(8, seed=5):
            for flt in filters:
                a = edge.recall(t, 12, flt=flt, with_vectors=True)
                b = server.recall(t, 12, flt=flt, with_vectors=True)
                assert a.ids == b.ids
                np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
                assert a.payloads == b.payloads
                assert a.coarse is not None and b.coarse is not None
                np.testing.assert_allclose(a.coarse, b.coarse, atol=1e-6)
                assert a.regions is not None and b.regions is not None
                np.testing.assert_array_equal(a.regions, b.regions)
        assert edge.list_scenes() == server.list_scenes()
        assert edge.count_tiles() == server.count_tiles() == len(DATA.batch)
        with qdrant_maxsim(edge) as on_edge, qdrant_maxsim(server) as on_server:
            for t in texts(8, seed=5):
                a2, b2 = on_edge(t, 6, recall_k=20), on_server(t, 6, recall_k=20)
                assert a2.ids == b2.ids
                np.testing.assert_allclose(a2.scores, b2.scores, atol=1e-4)
    finally:
        edge.close()
        server.drop_collection()
        server.close()


# --- push: from any backend to any other -----------------------------------------------------


@pytest.mark.server
@pytest.mark.parametrize("route", ["server-server", "edge-server", "server-edge"])
def test_push_between_backends(route: str, qdrant_server: str, store_tmp: Path) -> None:
    """push copies a collection through the protocol alone (``scan_tiles`` out, ``upsert_tiles``
    in), so the target answers as the source, whatever the two backends; a second push copies nothing."""

    def open_backend(kind: str, tag: str) -> Store:
        if kind == "edge":
            return EdgeStore(store_tmp / tag)
        return ServerStore(qdrant_server, collection=f"push_{tag}_{uuid.uuid4().hex[:8]}", timeout=10.0)

    source_kind, target_kind = route.split("-")
    source = filled(open_backend(source_kind, "src"))
    target = open_backend(target_kind, "dst")
    try:
        summary = push_store(source, target, page=7)
        assert summary.copied == summary.source_tiles == summary.target_tiles == len(DATA.batch)
        assert target.count_tiles() == len(DATA.batch) and target.meta() == META
        assert target.list_scenes() == source.list_scenes()
        for t in texts(4, seed=9):
            a, b = source.recall(t, 12), target.recall(t, 12)
            assert a.ids == b.ids and a.payloads == b.payloads
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
            assert a.regions is not None and b.regions is not None
            np.testing.assert_array_equal(a.regions, b.regions)
        again = push_store(source, target)
        assert again.copied == 0 and all(s.skipped for s in again.scenes)
    finally:
        for s in (source, target):
            if isinstance(s, ServerStore):
                s.drop_collection()
            s.close()


# --- embedded store: persistence, lock, read-only -------------------------------------------


def test_edge_persists_across_reopen(store_tmp: Path) -> None:
    t = texts()[3]
    with EdgeStore(store_tmp / "s") as first:
        filled(first)
        before = first.recall(t, 10)
    again = EdgeStore(store_tmp / "s")
    try:
        assert again.meta() == META
        assert again.count_tiles() == len(DATA.batch)
        after = again.recall(t, 10)
        assert after.ids == before.ids
        np.testing.assert_array_equal(after.regions, before.regions)
        assert [s.scene_id for s in again.list_scenes()] == ["scene-a", "scene-b", "scene-c"]
    finally:
        again.close()
        again.close()  # idempotent
    with pytest.raises(StoreUnavailable, match="closed"):
        again.count_tiles()


_OPEN_IN_CHILD = """
import sys
from pathlib import Path
from ftfsearch.errors import StoreLocked
from ftfsearch.store.edge import EdgeStore
try:
    EdgeStore(Path(sys.argv[1])).close()
except StoreLocked as exc:
    print(exc)
    sys.exit(17)
"""


def test_edge_second_process_gets_store_locked(store_tmp: Path) -> None:
    store_dir = store_tmp / "locked"
    holder = EdgeStore(store_dir)
    holder.ensure_collection(META)
    try:
        child = subprocess.run(
            [sys.executable, "-c", _OPEN_IN_CHILD, str(store_dir)], capture_output=True, text=True, timeout=60
        )
        assert child.returncode == 17, child.stderr
        assert str(store_dir) in child.stdout and "another process" in child.stdout
        with pytest.raises(StoreLocked):  # a second open in this process is refused too
            EdgeStore(store_dir)
    finally:
        holder.close()
    child = subprocess.run(
        [sys.executable, "-c", _OPEN_IN_CHILD, str(store_dir)], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stdout + child.stderr


_WRITE_AND_DIE = """
import os, sys
sys.path[:0] = [sys.argv[2], sys.argv[3]]
from pathlib import Path
from _store_data import filled
from ftfsearch.store.edge import EdgeStore
filled(EdgeStore(Path(sys.argv[1])))
os._exit(0)  # no close, no flush: a crash right after the writes
"""


def test_edge_writes_survive_a_crash(store_tmp: Path) -> None:
    store_dir = store_tmp / "crashed"
    tests_dir = Path(__file__).resolve().parent
    child = subprocess.run(
        [sys.executable, "-c", _WRITE_AND_DIE, str(store_dir), str(tests_dir), str(tests_dir.parent)],
        capture_output=True, text=True, timeout=60,
    )
    assert child.returncode == 0, child.stderr
    with EdgeStore(store_dir) as again:  # the dead process's lock is gone; the WAL replays
        assert again.meta() == META
        assert again.count_tiles() == len(DATA.batch)
        assert [s.scene_id for s in again.list_scenes()] == ["scene-a", "scene-b", "scene-c"]


def test_edge_read_only(store_tmp: Path) -> None:
    missing = store_tmp / "nothing-here"
    ro = open_store(collection="tiles", store_dir=missing, qdrant_url=None, api_key=None, timeout=5, read_only=True)
    assert ro.meta() is None and ro.list_scenes() == [] and ro.count_tiles() == 0
    with pytest.raises(PermissionDenied, match="read-only"):
        ro.ensure_collection(META)
    ro.close()
    assert not missing.exists()  # reading creates nothing
    with EdgeStore(store_tmp / "s") as rw:
        filled(rw)
    ro = open_store(collection="tiles", store_dir=store_tmp / "s", qdrant_url=None, api_key=None, timeout=5, read_only=True)
    try:
        assert len(ro.recall(texts()[0], 4)) == 4
        with pytest.raises(PermissionDenied, match="read-only"):
            ro.upsert_tiles(DATA.batch)
        with pytest.raises(PermissionDenied):
            ro.delete_scene("scene-a")
    finally:
        ro.close()


def test_bad_collection_name(store_tmp: Path) -> None:
    with pytest.raises(BadInput, match="^collection "):
        EdgeStore(store_tmp, collection="../escape")
    with pytest.raises(BadInput, match="reserved"):
        EdgeStore(store_tmp, collection="tiles_scenes")
    with pytest.raises(BadInput, match="^collection "):
        ServerStore("http://127.0.0.1:6333", collection="a/b")
    with pytest.raises(BadInput, match="QDRANT_URL"):
        ServerStore("localhost:6333")
    with pytest.raises(BadInput, match="QDRANT_API_KEY") as err:
        ServerStore("http://user:hunter2@127.0.0.1:6333")
    assert "hunter2" not in str(err.value)


@pytest.mark.server
def test_server_sharding_applies_on_creation(qdrant_server: str) -> None:
    name = f"shard_{uuid.uuid4().hex[:8]}"
    s = ServerStore(qdrant_server, collection=name, timeout=10.0)
    client = QdrantClient(url=qdrant_server, check_compatibility=False)
    try:
        s.ensure_collection(META, shards=3, replication_factor=2)
        params = client.get_collection(name).config.params
        assert (params.shard_number, params.replication_factor, params.write_consistency_factor) == (3, 2, 1)
        s.ensure_collection(META, shards=1, replication_factor=1)  # existing: left as created
        assert client.get_collection(name).config.params.shard_number == 3
        filled(s)
        assert s.count_tiles() == len(DATA.batch)
        t = texts()[2]
        assert s.recall(t, 10, with_vectors=False).ids == brute_force(t, 10)[0]
    finally:
        client.close()
        s.drop_collection()
        s.close()


# --- server: reachability and API keys ------------------------------------------------------


def test_server_unreachable_is_store_unavailable() -> None:
    port = free_port()  # nobody listens here
    key = "k-" + secrets.token_hex(8)
    store = ServerStore(f"http://127.0.0.1:{port}", api_key=key, timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        store.meta()
    assert time.monotonic() - t0 < 2.0
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "QDRANT_URL" in msg and key not in msg
    store.close()


def test_server_silent_is_store_unavailable_after_timeout() -> None:
    import socket

    with socket.socket() as sock:  # accepts connections (backlog) but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        port = sock.getsockname()[1]
        store = ServerStore(f"http://127.0.0.1:{port}", timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match="within 1 s"):
            store.count_tiles()
        assert time.monotonic() - t0 < 5.0
        store.close()


@dataclass
class Secured:
    server: QdrantServer
    rw: str
    ro: str


@pytest.fixture(scope="module")
def secured() -> Iterator[Secured]:
    binary = qdrant_binary_or_skip()
    rw, ro = "rw-" + secrets.token_hex(12), "ro-" + secrets.token_hex(12)
    with QdrantServer(binary=binary, api_key=rw, read_only_api_key=ro, tmp_root=fast_tmp_root()) as server:
        yield Secured(server, rw, ro)


@pytest.mark.server
def test_server_api_keys(secured: Secured) -> None:
    url = secured.server.url
    name = f"auth_{uuid.uuid4().hex[:8]}"
    admin = filled(ServerStore(url, collection=name, api_key=secured.rw, timeout=10.0))
    try:
        for key in (None, "wrong-" + secrets.token_hex(8)):
            with pytest.raises((PermissionDenied, StoreUnavailable)) as err:
                ServerStore(url, collection=name, api_key=key, timeout=5.0).meta()
            assert isinstance(err.value, PermissionDenied)
            msg = str(err.value)
            assert "QDRANT_API_KEY" in msg
            for secret in (secured.rw, secured.ro, key or secured.rw):
                assert secret not in msg
        for payload_vectors in (True, False):  # the query path's own REST, and qdrant-client's
            ro = ServerStore(url, collection=name, api_key=secured.ro, timeout=5.0, payload_vectors=payload_vectors)
            t = texts()[0]
            got = ro.recall(t, 5, with_vectors=True)
            idx = DATA.index(got.ids)
            assert got.ids == brute_force(t, 5)[0]
            assert got.regions is not None and got.coarse is not None
            np.testing.assert_allclose(got.coarse, DATA.coarse[idx], atol=1e-6)
            np.testing.assert_allclose(got.regions.astype(np.float32), DATA.regions[idx].astype(np.float32), atol=2e-3)
            assert ro.meta() == META
            with pytest.raises(PermissionDenied) as err:
                ro.upsert_tiles(DATA.batch)
            assert "read-only" in str(err.value) and secured.ro not in str(err.value)
            with pytest.raises(PermissionDenied, match="read-only"):
                ro.delete_scene("scene-a")
            ro.close()
        assert admin.count_tiles("scene-a") == 12
    finally:
        admin.drop_collection()
        admin.close()


# --- the local server launcher ---------------------------------------------------------------


def test_launcher_refuses_a_binary_with_another_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "qdrant"
    fake.write_bytes(b"#!/bin/sh\necho not qdrant\n")
    fake.chmod(0o755)
    monkeypatch.setenv("QDRANT_BIN", str(fake))
    with pytest.raises(QdrantLaunchError, match="sha256"):
        find_qdrant_binary()
    with pytest.raises(QdrantLaunchError, match="sha256"):
        QdrantServer(binary=fake).start()


def test_launcher_leaves_no_process_behind() -> None:
    binary = qdrant_binary_or_skip()
    with QdrantServer(binary=binary, tmp_root=fast_tmp_root()) as server:
        assert server.process is not None
        pid, workdir = server.process.pid, server.log_path.parent if server.log_path else None
        assert server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert workdir is not None and not workdir.exists()
