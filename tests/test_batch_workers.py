"""Parallel ingest workers (``ftfsearch ingest --from LIST --shard K/N``) against real Qdrant servers.

Each worker is the real CLI in its own process, forked after the imports (a fresh interpreter
costs ~5 s here): three run at once into one collection and must equal a single-process ingest
of the same list; one is SIGKILLed mid-scene and rerun; and the same batch runs on a 3-node
cluster that loses a node while the workers write.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from _data import SHARED_DATA
from _qdrant import fast_tmp_root, qdrant_binary_or_skip
from deploy.qdrant_local import QdrantCluster
from ftfsearch.store._common import VECTORS_FIELD
from ftfsearch.store.server import ServerStore
from ingest.batch import Shard, expand_list, partition
from _cli import InProcess
from _fork import fork_cli as _fork_cli, wait as _wait
from _scenes import ORTHO, upsampling_vrt

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.usefixtures("shared_data")]

TESTS = Path(__file__).resolve().parent
DATA = SHARED_DATA / "geotiffs"
SCENES = [
    TESTS / "data" / "RGB.byte.tif",
    TESTS / "data" / "pix4d_alpha_nodata.tif",
    DATA / "rasterio" / "rgb1.tif",
    DATA / "rasterio" / "world.rgb.tif",
    DATA / "rio-tiler" / "cog_rgb.tif",
    DATA / "opengeos_data" / "naip_m_4709963_se_14_1_20090818.tif",
    DATA / "solaris_spacenet" / "sample_geotiff.tif",  # 16-bit grey: stretched
    DATA / "rasterio" / "shade.tif",
]
BIG = "ortho_x6"  # an upsampled real ortho: ~800 tiles, so a kill lands inside it
TILING = ["--tile-size", "64", "--levels", "1", "--batch-size", "8"]
WORKERS = 3


@pytest.fixture(scope="module")
def batch_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ftf-batch-", dir=fast_tmp_root()))
    (d / "scenes").mkdir()
    upsampling_vrt(d / "scenes" / f"{BIG}.vrt", ORTHO, 6.0)
    lines = ["# the test batch: shared rasters by absolute path, the big one relative to this list", ""]
    lines += [str(p) for p in SCENES] + [f"scenes/{BIG}.vrt"]
    (d / "list.txt").write_text("\n".join(lines) + "\n")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def model_dir(tiny_clip_dir, batch_dir) -> Path:
    """The tiny CLIP with token regions (one forward pass per tile), as a user's model directory."""
    d = batch_dir / "tiny-tokens"
    shutil.copytree(tiny_clip_dir, d)
    (d / "ftf_region_mode.json").write_text('{"region_mode": "tokens"}\n')
    return d


def _env(url: str, collection: str, model_dir: Path, batch_dir: Path) -> dict[str, str]:
    return {"QDRANT_URL": url, "FTF_COLLECTION": collection, "FTF_MODEL": str(model_dir),
            "FTF_CONFIG": str(batch_dir / "none.toml")}


def _workers(batch_dir: Path, env: dict[str, str], tag: str, extra: list[str] = ()) -> list[tuple[int, Path]]:
    """Start the WORKERS shards of the list at once: ``(pid, log)`` per shard."""
    out = []
    for k in range(WORKERS):
        log = batch_dir / f"{tag}-{k}.log"
        args = ["ingest", "--from", str(batch_dir / "list.txt"), "--shard", f"{k}/{WORKERS}", "--json",
                *TILING, *extra]
        out.append((_fork_cli(args, env, log), log))
    return out


def _summary(log: Path) -> dict:
    """The worker's JSON summary (stdout) out of its log, which also holds stderr lines."""
    text = log.read_text()
    start = text.index("{\n")
    depth = 0
    for i, ch in enumerate(text[start:], start):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return json.loads(text[start : i + 1])
    raise AssertionError(f"no JSON summary in {log}:\n{text}")


def _content(store: ServerStore) -> tuple[dict[str, dict], dict[str, tuple]]:
    """Every tile (id -> payload without the packed vectors) and every scene record."""
    tiles: dict[str, dict] = {}
    offset = None
    client = QdrantClient(url=store.url, check_compatibility=False)
    while True:
        recs, offset = client.scroll(store.collection, limit=1024, offset=offset, with_payload=True,
                                     with_vectors=False)
        for r in recs:
            payload = dict(r.payload or {})
            payload.pop(VECTORS_FIELD, None)
            tiles[str(r.id)] = payload
        if offset is None:
            break
    client.close()
    scenes = {s.scene_id: (s.path, s.fingerprint, s.state, s.expected_tiles, s.tiling, s.last_error)
              for s in store.list_scenes()}
    return tiles, scenes


def _assert_equal_to_reference(store: ServerStore, reference: dict) -> None:
    tiles, scenes = _content(store)
    assert store.count_tiles() == len(reference["tiles"])
    assert set(tiles) == set(reference["tiles"])
    assert tiles == reference["tiles"]
    assert scenes == reference["scenes"]
    assert all(s[2] == "complete" and s[5] is None for s in scenes.values())
    assert store.list_failures() == []


def _status(env: dict[str, str], batch_dir: Path) -> tuple[int, dict]:
    proc = InProcess(env)("batch", "status", "--from", str(batch_dir / "list.txt"), "--json")
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def reference(qdrant_server, model_dir, batch_dir) -> Iterator[dict]:
    """A single-process ingest of the whole list (no --shard), through the same CLI."""
    name = f"ref_{uuid.uuid4().hex[:8]}"
    env = _env(qdrant_server, name, model_dir, batch_dir)
    proc = InProcess(env)("ingest", "--from", str(batch_dir / "list.txt"), *TILING)
    assert proc.returncode == 0, proc.stderr
    store = ServerStore(qdrant_server, collection=name)
    tiles, scenes = _content(store)
    assert len(scenes) == len(SCENES) + 1 and all(s[2] == "complete" for s in scenes.values())
    assert scenes[BIG][3] > 500
    yield {"tiles": tiles, "scenes": scenes}
    store.drop_collection()
    store.close()


def test_three_shards_at_once_equal_one_process(qdrant_server, model_dir, batch_dir, reference):
    name = f"shards_{uuid.uuid4().hex[:8]}"
    env = _env(qdrant_server, name, model_dir, batch_dir)
    started = time.monotonic()
    workers = _workers(batch_dir, env, "three")
    codes = [_wait(pid) for pid, _ in workers]
    seconds = time.monotonic() - started
    assert codes == [0] * WORKERS, [log.read_text()[-2000:] for _, log in workers]
    store = ServerStore(qdrant_server, collection=name)
    try:
        _assert_equal_to_reference(store, reference)
        # each source went to exactly one shard, the one the partition gives, and was written there once
        sources = expand_list(batch_dir / "list.txt")
        by_worker = [{s["scene_id"]: s for s in _summary(log)["scenes"]} for _, log in workers]
        for k, done in enumerate(by_worker):
            assert set(done) == {s.scene_id for s in partition(sources, Shard(k, WORKERS))}
            assert all(s["written"] == s["tiles"] == reference["scenes"][sid][3] for sid, s in done.items())
        ids = [set(d) for d in by_worker]
        assert sum(len(i) for i in ids) == len(set().union(*ids)) == len(reference["scenes"])
        code, status = _status(env, batch_dir)
        assert code == 0 and status["counts"]["complete"] == len(sources)
    finally:
        store.drop_collection()
        store.close()
    print(f"\nthree workers: {len(reference['tiles'])} tiles in {seconds:.1f} s")


def _kill_mid_scene(store: ServerStore, pid: int, scene_id: str, timeout: float = 60.0) -> int:
    """SIGKILL ``pid`` once ``scene_id`` is recorded ingesting with some tiles stored; tiles then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.get_scene(scene_id)
        if record is not None and record.state == "ingesting" and store.count_tiles(scene_id) > 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return store.count_tiles(scene_id)
        assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the worker ended before the kill"
        time.sleep(0.01)
    raise AssertionError(f"{scene_id} never started")


def test_a_worker_killed_mid_scene_resumes_on_rerun(qdrant_server, model_dir, batch_dir, reference):
    name = f"kill_{uuid.uuid4().hex[:8]}"
    env = _env(qdrant_server, name, model_dir, batch_dir)
    sources = expand_list(batch_dir / "list.txt")
    victim = next(k for k in range(WORKERS) if BIG in {s.scene_id for s in partition(sources, Shard(k, WORKERS))})
    workers = _workers(batch_dir, env, "kill")
    store = ServerStore(qdrant_server, collection=name)
    try:
        stored = _kill_mid_scene(store, workers[victim][0], BIG)
        others = [_wait(pid) for k, (pid, _) in enumerate(workers) if k != victim]
        assert others == [0] * (WORKERS - 1)
        assert 0 < stored < reference["scenes"][BIG][3]

        code, status = _status(env, batch_dir)
        assert code == 1 and not status["complete"]
        states = {s["scene_id"]: s["state"] for s in status["sources"]}
        assert states[BIG] == "ingesting"
        assert set(states.values()) <= {"complete", "ingesting", "not_started"}
        victim_part = {s.scene_id for s in partition(sources, Shard(victim, WORKERS))}
        assert {sid for sid, st in states.items() if st != "complete"} <= victim_part

        log = batch_dir / "kill-rerun.log"
        rerun = _fork_cli(["ingest", "--from", str(batch_dir / "list.txt"), "--shard", f"{victim}/{WORKERS}",
                           "--json", *TILING], env, log)
        assert _wait(rerun) == 0, log.read_text()[-2000:]
        resumed = {s["scene_id"]: s for s in _summary(log)["scenes"]}[BIG]
        assert resumed["already_stored"] >= stored and resumed["written"] == resumed["tiles"] - resumed["already_stored"]

        code, status = _status(env, batch_dir)
        assert code == 0 and {s["state"] for s in status["sources"]} == {"complete"}
        _assert_equal_to_reference(store, reference)
    finally:
        for pid, _ in workers:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        store.drop_collection()
        store.close()


def test_three_shards_on_a_cluster_that_loses_a_node(model_dir, batch_dir, reference):
    qdrant_binary_or_skip()
    total = len(reference["tiles"])
    with QdrantCluster(3, tmp_root=fast_tmp_root()) as cluster:
        name = f"clb_{uuid.uuid4().hex[:8]}"
        env = _env(cluster.urls[0], name, model_dir, batch_dir)
        workers = _workers(batch_dir, env, "cluster", ["--shards", "3", "--replication-factor", "2"])
        store = ServerStore(cluster.urls[0], collection=name)
        try:
            # Node 2 dies once every worker is writing (each has a scene recorded) and a third of the
            # batch is stored.
            parts = [{s.scene_id for s in partition(expand_list(batch_dir / "list.txt"), Shard(k, WORKERS))}
                     for k in range(WORKERS)]
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                try:
                    recorded = {s.scene_id for s in store.list_scenes()}
                    if all(p & recorded for p in parts) and store.count_tiles() >= total // 3:
                        break
                except Exception:  # noqa: BLE001 - the collection is being created
                    pass
                time.sleep(0.05)
            at_kill = store.count_tiles()
            cluster.kill(2)
            assert total // 3 <= at_kill < total, "the node must die while the workers write"
            codes = [_wait(pid, timeout=180) for pid, _ in workers]
            assert codes == [0] * WORKERS, [log.read_text()[-2000:] for _, log in workers]
            assert not cluster.nodes[2].running
            states = cluster.replica_states(name)
            assert any(state != "Active" for _, _, state in states), states  # writes went on without it
            _assert_equal_to_reference(store, reference)
            code, status = _status(env, batch_dir)
            assert code == 0 and status["counts"]["complete"] == len(SCENES) + 1
        finally:
            for pid, _ in workers:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
            store.close()
