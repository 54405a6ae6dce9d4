"""The searcher's tile cache: LRU bounds, staleness caught by the point version and by the
recalled score, and a cached Searcher that returns exactly what the uncached one returns, on
both backends, also after a tile is written again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ftfsearch.model.loading import load_encoder
from ftfsearch.search import Searcher
from ftfsearch.store import Store
from ftfsearch.store.base import TileBatch
from ftfsearch.vector_cache import PAYLOAD_BYTES, VectorCache
from ingest.pipeline import IngestOptions, ingest_paths
from ingest.tiling import TilingSpec

from _store_data import D, R, filled, reopened, texts, unit

SCENE = Path(__file__).resolve().parent / "data" / "RGB.byte.tif"
QUERIES = ["ships near a harbor", "green farmland next to a river", "a white sandy beach", "dense forest", "clouds"]


def _tiles(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, list[dict]]:
    rng = np.random.default_rng(seed)
    ids = [f"00000000-0000-0000-{seed:04d}-{i:012d}" for i in range(n)]
    payloads = [{"path": f"/scenes/{seed}.tif", "n": i} for i in range(n)]
    return ids, unit(rng.standard_normal((n, D))), unit(rng.standard_normal((n, R, D))).astype(np.float16), payloads


V1 = np.ones(6, dtype=np.int64)


def test_hits_misses_and_lru_eviction() -> None:
    ids, coarse, regions, payloads = _tiles(6)
    entry = D * 4 + R * D * 2 + PAYLOAD_BYTES
    cache = VectorCache(D, R, 4 * entry)
    assert cache.capacity == 4
    t = unit(np.ones(D))
    cache.put(ids[:4], V1[:4], coarse[:4], regions[:4], payloads[:4])
    c, r, p, found = cache.lookup(ids[:2], V1[:2], coarse[:2] @ t, t)  # ids 0, 1 become most recent
    assert found.tolist() == [True, True]
    np.testing.assert_array_equal(c, coarse[:2])
    np.testing.assert_array_equal(r, regions[:2])
    assert p == payloads[:2]
    cache.put(ids[4:6], V1[4:6], coarse[4:6], regions[4:6], payloads[4:6])  # evicts 2 and 3, the least recently used
    assert len(cache) == 4
    _, _, p, found = cache.lookup(ids, V1, coarse @ t, t)
    assert found.tolist() == [True, True, False, False, True, True]
    assert p == [payloads[0], payloads[1], None, None, payloads[4], payloads[5]]
    assert (cache.stats.hits, cache.stats.misses, cache.stats.stale) == (6, 2, 0)


def test_entry_that_does_not_reproduce_the_recalled_score_is_stale() -> None:
    ids, coarse, regions, payloads = _tiles(3)
    cache = VectorCache(D, R, 1 << 20)
    cache.put(ids, V1[:3], coarse, regions, payloads)
    t = unit(np.arange(D, dtype=np.float32))
    scores = coarse @ t
    scores[1] += 1e-3  # the store now holds another vector under id 1 at the same version
    _, _, p, found = cache.lookup(ids, V1[:3], scores, t)
    assert found.tolist() == [True, False, True] and p[1] is None
    assert cache.stats.stale == 1 and len(cache) == 2
    _, _, _, found = cache.lookup(ids, V1[:3], coarse @ t, t)  # the stale entry was dropped, not kept
    assert found.tolist() == [True, False, True]
    new_ids, new_c, new_r, new_p = _tiles(1, seed=5)
    cache.put(new_ids, V1[:1], new_c, new_r, new_p)  # reuses the freed slot without disturbing the others
    c, _, p, found = cache.lookup([ids[0], ids[2], new_ids[0]], V1[:3], np.r_[coarse[[0, 2]] @ t, new_c @ t], t)
    assert found.all() and p == [payloads[0], payloads[2], new_p[0]]
    np.testing.assert_array_equal(c, np.r_[coarse[[0, 2]], new_c])


def test_entry_at_another_version_is_stale_even_with_the_same_vectors() -> None:
    ids, coarse, regions, payloads = _tiles(3)
    cache = VectorCache(D, R, 1 << 20)
    cache.put(ids, np.array([4, 4, 4]), coarse, regions, payloads)
    t = unit(np.ones(D))
    # id 0 written again (a new path, same pixels); id 2's store gave no version
    _, _, p, found = cache.lookup(ids, np.array([9, 4, -1]), coarse @ t, t)
    assert found.tolist() == [False, True, False] and p == [None, payloads[1], None]
    assert cache.stats.stale == 2 and len(cache) == 1


def test_zero_capacity_keeps_nothing() -> None:
    ids, coarse, regions, payloads = _tiles(2)
    cache = VectorCache(D, R, 0)
    cache.put(ids, V1[:2], coarse, regions, payloads)
    assert len(cache) == 0 and not cache.lookup(ids, V1[:2], coarse[:, 0], coarse[0])[3].any()


def test_get_vectors_equals_recalled_vectors(store: Store) -> None:
    filled(store)
    t = texts(2)[1]
    full = store.recall(t, 12, with_vectors=True)
    unknown = "11111111-2222-3333-4444-555555555555"
    wanted = full.ids[::-1][:6] + [unknown, "not-a-uuid"]
    ids, coarse, regions, payloads = store.get_vectors(wanted)
    assert ids == full.ids[::-1][:6] and payloads == [{}] * 6
    pos = [full.ids.index(i) for i in ids]
    assert coarse.dtype == np.float32 and regions.dtype == np.float16
    np.testing.assert_array_equal(coarse, full.coarse[pos])
    np.testing.assert_array_equal(regions, full.regions[pos])
    assert full.versions is not None and full.versions.dtype == np.int64 and (full.versions >= 0).all()
    _, _, _, payloads = store.get_vectors(wanted, with_payload=True)
    assert payloads == [full.payloads[i] for i in pos]
    with reopened(store, payload_vectors=False) as plain_store:
        for with_payload in (False, True):
            plain_ids, plain_c, plain_r, plain_p = plain_store.get_vectors(wanted, with_payload=with_payload)
            assert plain_ids == ids and plain_p == ([full.payloads[i] for i in pos] if with_payload else [{}] * 6)
            np.testing.assert_allclose(plain_c, coarse, rtol=0, atol=1e-6)
            np.testing.assert_allclose(plain_r.astype(np.float32), regions.astype(np.float32), rtol=0, atol=1e-3)


def test_writing_a_point_again_raises_its_version(store: Store) -> None:
    filled(store)
    t = texts(2)[0]
    before = store.recall(t, 5, with_vectors=False, with_payload=True)
    batch = _rewrite(store, before.ids[:2], lambda p: {**p, "path": "/moved/" + p.get("path", "x")})
    after = store.recall(t, 5, with_vectors=False, with_payload=True)
    assert after.ids == before.ids
    assert (after.versions[:2] > before.versions[:2]).all()
    assert (after.versions[2:] == before.versions[2:]).all()
    assert after.payloads[:2] == batch.payloads


def _rewrite(store: Store, ids: list[str], change) -> TileBatch:
    """Write ``ids`` again with their own vectors and a changed payload (a re-ingest from a new path)."""
    got, coarse, regions, payloads = store.get_vectors(ids, with_payload=True)
    assert got == ids
    batch = TileBatch(ids=got, coarse=coarse, regions=regions, payloads=[change(p) for p in payloads])
    store.upsert_tiles(batch)
    return batch


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return load_encoder(str(tiny_clip_dir), device="cpu")


def _answer(searcher: Searcher, q: str, recall_k: int) -> list[tuple]:
    res = searcher.search(q, k=8, recall_k=recall_k).results
    return [(r.id, r.score, r.coarse_score, r.fine_score, r.region_index, r.rank, r.payload) for r in res]


def test_cached_search_returns_what_the_uncached_one_does(store: Store, encoder) -> None:
    spec = TilingSpec(tile_size=128, levels=(1, 2))
    done, failed = ingest_paths([SCENE], encoder, store, IngestOptions(spec=spec, batch_size=16))
    assert not failed and done[0].tiles_in_store > 30
    plain = Searcher(encoder, store, vector_cache_bytes=0)
    cached = Searcher(encoder, store)
    small = Searcher(encoder, store, vector_cache_bytes=20 * (encoder.dim * 4 + encoder.num_regions * encoder.dim * 2))
    assert plain.vector_cache is None and cached.vector_cache is not None and small.vector_cache is not None
    for round_ in range(2):  # cold, then warm
        for q in QUERIES:
            want = _answer(plain, q, 24)
            assert len(want) == 8
            assert _answer(cached, q, 24) == want
            assert _answer(small, q, 24) == want  # evicting between and within queries
    assert cached.vector_cache.stats.hits > 0 and cached.vector_cache.stats.stale == 0
    assert small.vector_cache.stats.misses > cached.vector_cache.stats.misses

    # A cached entry that no longer matches the store is caught by the recalled score and refetched.
    top = plain.search(QUERIES[0], k=1, recall_k=24).results[0]
    version = store.recall(encoder.encode_text([QUERIES[0]])[0].numpy(), 1, with_vectors=False).versions
    ids, coarse, regions, payloads = store.get_vectors([top.id], with_payload=True)
    rng = np.random.default_rng(3)
    cached.vector_cache.put(ids, version, unit(rng.standard_normal((1, encoder.dim))), regions[:, ::-1], payloads)
    assert _answer(cached, QUERIES[0], 24) == _answer(plain, QUERIES[0], 24)
    assert cached.vector_cache.stats.stale == 1

    # Tiles written again from another path (same ids, same vectors) are answered with the new path.
    winners = [r.id for r in cached.search(QUERIES[1], k=8, recall_k=24).results]
    _rewrite(store, winners[:3], lambda p: {**p, "path": "/elsewhere/RGB.byte.tif"})
    moved = cached.search(QUERIES[1], k=8, recall_k=24).results
    assert [r.path for r in moved if r.id in winners[:3]] == ["/elsewhere/RGB.byte.tif"] * 3
    assert _answer(cached, QUERIES[1], 24) == _answer(plain, QUERIES[1], 24)

    # Tiles deleted after they were cached are not returned.
    store.delete_scene(done[0].scene_id)
    assert cached.search(QUERIES[0], k=5, recall_k=24).results == []
