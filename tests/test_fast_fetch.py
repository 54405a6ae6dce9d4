"""The fast fetch path (vectors packed in the payload) against the plain one (Qdrant's named vectors).

Same fixed collection as the store suite; on both backends the fast path must return the same
candidates, the same vectors as Qdrant stores them, and the same BTI top-k as the plain path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftfsearch.rerank import bti
from ftfsearch.store import Store
from ftfsearch.store import _common
from ftfsearch.store._common import VECTORS_FIELD, pack_vectors, unit_rows, unpack_vectors

from _store_data import DATA, D, R, filled, qdrant_maxsim, reopened, texts


def _bti_order(t: np.ndarray, coarse: np.ndarray, regions: np.ndarray) -> list[int]:
    out = bti(torch.from_numpy(t), torch.from_numpy(coarse), torch.from_numpy(regions), tau=0.05, alpha=0.5)
    return torch.argsort(out.scores[0], descending=True, stable=True).tolist()


def test_pack_round_trip_is_what_qdrant_stores() -> None:
    rng = np.random.default_rng(0)
    coarse = rng.standard_normal((5, D)).astype(np.float32) * 3  # not unit: packing normalises
    regions = rng.standard_normal((5, R, D)).astype(np.float32)
    blobs = pack_vectors(coarse, regions)
    assert len(blobs) == 5 and all(isinstance(b, str) for b in blobs)
    c, r = unpack_vectors(blobs, D, R)
    assert c.dtype == np.float32 and c.shape == (5, D)
    assert r.dtype == np.float16 and r.shape == (5, R, D)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(r, unit_rows(regions).astype(np.float16))
    with pytest.raises(ValueError):
        unpack_vectors(blobs, D, R + 1)


def test_fast_path_equals_plain_path(store: Store) -> None:
    filled(store)
    queries = texts(8)
    fasts = [store.recall(t, 20, with_vectors=True) for t in queries]
    with reopened(store, payload_vectors=False) as plain_store:
        plains = [plain_store.recall(t, 20, with_vectors=True) for t in queries]
    for t, fast, plain in zip(queries, fasts, plains):
        assert fast.ids == plain.ids
        np.testing.assert_array_equal(fast.scores, plain.scores)
        assert fast.payloads == plain.payloads
        assert all(VECTORS_FIELD not in p for p in fast.payloads + plain.payloads)
        assert fast.coarse is not None and plain.coarse is not None
        assert fast.regions is not None and plain.regions is not None
        assert fast.regions.dtype == plain.regions.dtype == np.float16
        np.testing.assert_allclose(fast.coarse, plain.coarse, rtol=0, atol=1e-6)
        # float16 rounding of a float32 normalisation may differ by one unit in the last place.
        np.testing.assert_allclose(
            fast.regions.astype(np.float32), plain.regions.astype(np.float32), rtol=0, atol=1e-3
        )
        assert np.mean(fast.regions == plain.regions) > 0.99
        assert _bti_order(t, fast.coarse, fast.regions)[:10] == _bti_order(t, plain.coarse, plain.regions)[:10]


def test_packed_field_never_leaks(store: Store) -> None:
    filled(store)
    t = texts(2)[1]
    got = store.recall(t, 10, with_vectors=False)
    assert got.payloads and all(VECTORS_FIELD not in p for p in got.payloads)
    tiles = store.get_tiles(DATA.batch.ids[:4])
    assert [i for i, _ in tiles] == DATA.batch.ids[:4]
    assert tiles[0][1] == DATA.batch.payloads[0]
    with qdrant_maxsim(store) as maxsim:  # the benchmark's baseline asks Qdrant to leave it out too
        got_maxsim = maxsim(t, 5, recall_k=20)
    assert got_maxsim.payloads and all(VECTORS_FIELD not in p for p in got_maxsim.payloads)


def test_tiles_without_packed_copy_fall_back(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A collection written before the packed copy existed still reranks, from the named vectors."""
    backend = "ftfsearch.store.edge" if store.backend == "edge" else "ftfsearch.store.server"
    monkeypatch.setattr(f"{backend}.with_packed_vectors", lambda payloads, c, r: list(payloads))
    filled(store)
    t = texts(4)[3]
    fast = store.recall(t, 15, with_vectors=True)
    scanned = [b for scene in DATA.scenes for b in store.scan_tiles(scene.scene_id, page=4)]  # push's bulk read
    assert sum(len(b) for b in scanned) == len(DATA.batch)
    for b in scanned:
        np.testing.assert_allclose(b.coarse, DATA.coarse[DATA.index(b.ids)], rtol=0, atol=1e-6)
        assert all(VECTORS_FIELD not in p for p in b.payloads)
    with reopened(store, payload_vectors=False) as plain_store:
        plain = plain_store.recall(t, 15, with_vectors=True)
    assert fast.ids == plain.ids
    assert fast.coarse is not None and fast.regions is not None
    np.testing.assert_array_equal(fast.coarse, plain.coarse)
    np.testing.assert_array_equal(fast.regions, plain.regions)
    assert _common.split_packed(fast.payloads)[1] is None
