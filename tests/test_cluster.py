"""A real 3-node Qdrant cluster on loopback: sharded, replicated collections survive a node loss.

Three nodes run from the pinned binary (the first with ``--uri``, the others with
``--bootstrap``, each with its own ports and directory). Real scenes are ingested into a
collection of 3 shards with 2 replicas each; one node is SIGKILLed during the ingest and
another during a stream of queries. The ingest must complete, every query must answer with
all tiles present, and a restarted node's replicas must catch up. The figures are printed
(``pytest -s``) for the project's note.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from _data import SHARED_DATA
from _qdrant import fast_tmp_root, qdrant_binary_or_skip
from deploy.qdrant_local import QdrantCluster
from ftfsearch.model.loading import load_encoder
from ftfsearch.search import Searcher
from ftfsearch.store.server import ServerStore
from ingest.pipeline import IngestOptions, ingest_paths, window_id
from ingest.scenes import fingerprint
from ingest.tiling import SceneReader, TilingSpec

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.usefixtures("shared_data")]

DATA = SHARED_DATA / "geotiffs"
SCENES = [
    Path(__file__).resolve().parent / "data" / "RGB.byte.tif",
    DATA / "opengeos_data" / "naip_m_4709963_se_14_1_20090818.tif",
]
SPEC = TilingSpec(tile_size=32, levels=(1,))
SHARDS, REPLICAS = 3, 2


def _expected_ids(path: Path) -> set[str]:
    fp = fingerprint(path)
    with SceneReader(path, SPEC) as reader:
        return {window_id(fp, w) for w in reader.windows() if reader.read(w) is not None}


def _wait_all_active(cluster: QdrantCluster, collection: str, timeout: float = 120.0) -> float:
    """Seconds until every replica of ``collection`` is Active, as node 0 sees them."""
    t0 = time.monotonic()
    states: list = []
    while time.monotonic() - t0 < timeout:
        states = cluster.replica_states(collection)
        if len(states) == SHARDS * REPLICAS and all(s == "Active" for _, _, s in states):
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"replicas of {collection} did not all become Active: {states}")


def _local_counts(cluster: QdrantCluster, collection: str) -> dict[int, list[int]]:
    """Points held by each replica of each shard, read from the node that holds it."""
    counts: dict[int, list[int]] = {}
    for i, node in enumerate(cluster.nodes):
        if not node.running:
            continue
        info = cluster.collection_cluster(collection, i)
        for s in info.get("local_shards", []):
            counts.setdefault(int(s["shard_id"]), []).append(int(s["points_count"]))
    return counts


def test_cluster_survives_a_node_loss_during_ingest_and_queries(tiny_clip_dir, caplog):
    qdrant_binary_or_skip()
    encoder = load_encoder(str(tiny_clip_dir), device="cpu", region_mode="tokens")
    want = {p: _expected_ids(p) for p in SCENES}
    total = sum(len(v) for v in want.values())
    figures: dict = {"tiles": total, "shards": SHARDS, "replication_factor": REPLICAS}
    with QdrantCluster(3, tmp_root=fast_tmp_root()) as cluster:
        name = f"cl_{uuid.uuid4().hex[:8]}"
        store = ServerStore(cluster.urls[0], collection=name, timeout=10.0)

        # -- node 2 dies during the ingest ------------------------------------------------------
        killed: dict[str, float] = {}

        class KillNode2(object):
            seen = 0

            def start(self, *a: object) -> None: ...

            def advance(self, n: int) -> None:
                self.seen += n
                if self.seen >= total // 3 and "at" not in killed:
                    cluster.kill(2)
                    killed["at"] = time.monotonic()
                    killed["tiles_seen"] = self.seen

            def finish(self) -> None: ...

        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="ftfsearch.store.server"):
            done, failed = ingest_paths(
                SCENES, encoder, store,
                IngestOptions(spec=SPEC, batch_size=32, shards=SHARDS, replication_factor=REPLICAS),
                progress=KillNode2(),
            )
        figures["ingest_s"] = round(time.monotonic() - t0, 2)
        figures["write_retries_during_ingest"] = sum("retrying" in r.getMessage() for r in caplog.records)
        assert "at" in killed and not failed
        assert [s.state for s in done] == ["complete", "complete"]
        assert store.count_tiles() == total
        for path, ids in want.items():
            assert store.existing_ids(sorted(ids)) == ids
        states = cluster.replica_states(name)
        figures["replicas_dead_after_kill"] = sum(s != "Active" for _, _, s in states)
        assert figures["replicas_dead_after_kill"] >= 1, states

        # every query, through either survivor, sees all tiles while node 2 is down
        q = encoder.encode_text(["a river through farmland"])[0].float().numpy()
        for url in cluster.urls[:2]:
            other = ServerStore(url, collection=name, timeout=10.0)
            assert other.count_tiles() == total
            assert len(other.recall(q, total + 5, with_vectors=False)) == total
            other.close()

        # -- node 2 comes back and catches up ------------------------------------------------------
        t_restart = time.monotonic()
        figures["node_down_s"] = round(t_restart - killed["at"], 2)
        cluster.restart(2)  # returns when the node answers /readyz
        figures["restart_ready_s"] = round(time.monotonic() - t_restart, 2)
        _wait_all_active(cluster, name)
        figures["restart_to_all_replicas_active_s"] = round(time.monotonic() - t_restart, 2)
        counts = _local_counts(cluster, name)
        assert sorted(counts) == list(range(SHARDS)) and all(len(c) == REPLICAS for c in counts.values()), counts
        assert all(len(set(c)) == 1 for c in counts.values()), f"replicas differ after catch-up: {counts}"
        assert sum(c[0] for c in counts.values()) == total
        back = ServerStore(cluster.urls[2], collection=name, timeout=10.0)
        assert back.count_tiles() == total
        back.close()

        # -- node 1 dies during a stream of queries ------------------------------------------------
        searcher = Searcher(encoder, store)
        reference = searcher.search("a river through farmland", k=10, recall_k=100)
        results: list[tuple[float, int, list[str]]] = []
        errors: list[str] = []
        stop = threading.Event()

        def query_loop() -> None:
            while not stop.is_set():
                t = time.monotonic()
                try:
                    r = searcher.search("a river through farmland", k=10, recall_k=100)
                    n = store.count_tiles()
                    results.append((time.monotonic() - t, n, [x.id for x in r.results]))
                except Exception as exc:  # noqa: BLE001 - every failure is a finding
                    errors.append(f"{type(exc).__name__}: {exc}")

        worker = threading.Thread(target=query_loop)
        worker.start()
        time.sleep(1.0)
        before = len(results)
        cluster.kill(1)
        time.sleep(4.0)
        stop.set()
        worker.join(timeout=60)
        after_kill = results[before:]
        figures["queries_during_node_loss"] = len(after_kill)
        figures["query_errors"] = len(errors)
        figures["max_query_s_during_loss"] = round(max((r[0] for r in after_kill), default=0.0), 3)
        figures["median_query_s_during_loss"] = round(float(np.median([r[0] for r in after_kill])), 3) if after_kill else None
        assert not errors, errors[:3]
        assert after_kill, "no query answered after the kill"
        assert all(n == total for _, n, _ in results), "a query saw fewer tiles than stored"
        ref_ids = [x.id for x in reference.results]
        assert all(ids == ref_ids for _, _, ids in results), "results changed while a node was down"

        # reads do not mark replicas dead (only failed writes do): the node is simply gone
        assert not cluster.nodes[1].running
        t_restart = time.monotonic()
        cluster.restart(1)
        _wait_all_active(cluster, name)
        figures["restart_to_all_replicas_active_after_query_kill_s"] = round(time.monotonic() - t_restart, 2)
        counts = _local_counts(cluster, name)
        assert all(len(c) == REPLICAS and len(set(c)) == 1 for c in counts.values()), counts
        store.drop_collection()
        store.close()
    print("\ncluster failover figures: " + json.dumps(figures))
