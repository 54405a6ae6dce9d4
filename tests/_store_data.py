"""Known store contents for the store tests: tiles of three scenes with random unit vectors, their
scene records, and query vectors whose answers numpy can work out."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from bench.baselines import QdrantMaxSim
from ftfsearch.store import Store
from ftfsearch.store.edge import EdgeStore
from ftfsearch.store.server import ServerStore
from ftfsearch.store.base import CollectionMeta, SceneRecord, TileBatch
from ftfsearch.store.schema import tile_point_id

D, R = 32, 14
META = CollectionMeta(model_id="test/random-d32", dim=D, num_regions=R, region_layout="grid-1-2-3")


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class Data:
    """Tiles of three scenes (two georeferenced, one without CRS) and their records."""

    batch: TileBatch
    scenes: list[SceneRecord]
    coarse: np.ndarray
    """``[N, D]`` unit float32, as stored."""
    regions: np.ndarray
    """``[N, R, D]`` unit, rounded to float16, as stored."""

    def index(self, ids: list[str]) -> np.ndarray:
        pos = {pid: i for i, pid in enumerate(self.batch.ids)}
        return np.array([pos[i] for i in ids], dtype=np.int64)


def make_data(seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    ids: list[str] = []
    payloads: list[dict] = []
    scenes: list[SceneRecord] = []
    # scene-a: 4x3 tiles of 0.25 deg from (10.0, 45.0); scene-b overlaps it, shifted by 0.5 deg;
    # scene-c has no CRS, so no bbox fields at all.
    layout = {"scene-a": (10.0, 45.0, 4, 3), "scene-b": (10.5, 45.25, 4, 3), "scene-c": (None, None, 3, 2)}
    for sid, (lon0, lat0, ncol, nrow) in layout.items():
        fp = f"fp-{sid}"
        for row in range(nrow):
            for col in range(ncol):
                ids.append(tile_point_id(fp, 1, col * 256, row * 256, 256, 256))
                p: dict = {
                    "scene_id": sid,
                    "path": f"/data/{sid}.tif",
                    "fingerprint": fp,
                    "level": 1,
                    "window": {"col": col * 256, "row": row * 256, "width": 256, "height": 256},
                    "layout": META.region_layout,
                }
                if lon0 is not None and lat0 is not None:
                    west, south = lon0 + 0.25 * col, lat0 + 0.25 * row
                    east, north = west + 0.25, south + 0.25
                    p.update(bbox=[west, south, east, north], west=west, south=south, east=east, north=north)
                    p["center"] = {"lon": (west + east) / 2, "lat": (south + north) / 2}
                    p["acquired"] = "2021-06-0%dT10:30:00Z" % (1 + row)
                payloads.append(p)
        scenes.append(
            SceneRecord(
                scene_id=sid, path=f"/data/{sid}.tif", fingerprint=fp, state="complete",
                model_id=META.model_id, tiling={"tile": 256, "levels": [1]}, expected_tiles=ncol * nrow,
                bbox=None if lon0 is None or lat0 is None else [lon0, lat0, lon0 + 0.25 * ncol, lat0 + 0.25 * nrow],
                crs=None if lon0 is None else "EPSG:4326",
            )
        )
    n = len(ids)
    coarse = unit(rng.standard_normal((n, D)))
    # Regions near their tile's coarse vector, as a real encoder's would be.
    regions = unit(coarse[:, None, :] + 0.9 * unit(rng.standard_normal((n, R, D))))
    batch = TileBatch(ids=ids, coarse=coarse, regions=regions.astype(np.float16), payloads=payloads)
    return Data(batch=batch, scenes=scenes, coarse=coarse, regions=unit(regions).astype(np.float16))


DATA = make_data()


def texts(n: int = 6, seed: int = 1) -> list[np.ndarray]:
    """Query vectors: random ones and noisy copies of stored tiles (whose top hit is known)."""
    rng = np.random.default_rng(seed)
    out = [unit(rng.standard_normal(D)) for _ in range(n // 2)]
    for i in rng.choice(len(DATA.batch), n - n // 2, replace=False):
        out.append(unit(DATA.coarse[i] + 0.2 * unit(rng.standard_normal(D))))
    return out


def filled(store: Store, data: Data = DATA) -> Store:
    store.ensure_collection(META)
    store.upsert_tiles(data.batch)
    for s in data.scenes:
        store.put_scene(s)
    return store


@contextmanager
def reopened(store: Store, payload_vectors: bool) -> Iterator[Store]:
    """The same collection opened again with ``payload_vectors``. An embedded store is closed
    first (it has one opener at a time); a server store stays open beside the new one."""
    if isinstance(store, EdgeStore):
        store.close()
        again: Store = EdgeStore(store.store_dir, collection=store.collection, payload_vectors=payload_vectors)
    else:
        assert isinstance(store, ServerStore)
        again = ServerStore(store.url, collection=store.collection, timeout=10.0, payload_vectors=payload_vectors)
    try:
        yield again
    finally:
        again.close()


@contextmanager
def qdrant_maxsim(store: Store) -> Iterator[QdrantMaxSim]:
    """The benchmark's Qdrant MaxSim baseline on the store's collection (an embedded store is
    closed first: the baseline opens its shard)."""
    if isinstance(store, EdgeStore):
        store.close()
        baseline = QdrantMaxSim.on_edge(store.store_dir, store.collection)
    else:
        assert isinstance(store, ServerStore)
        baseline = QdrantMaxSim.on_server(store.url, store.collection, timeout=10.0)
    with baseline:
        yield baseline
