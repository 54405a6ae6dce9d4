"""Crash safety and concurrency of the write path, on both backends, against real processes.

An ingest is a separate process (forked after the imports, so a kill costs no start-up) that
is SIGKILLed at random points of a real multi-thousand-tile scene; the re-run must end with
exactly the tiles of an uninterrupted run. Then: three processes writing one server
collection at once, a server that dies mid-ingest, queries against a dead or silent server,
and ``push`` from the embedded store to a server (interrupted, resumed, verified).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from _data import SHARED_DATA
from _scenes import ORTHO, upsampling_vrt
from deploy.qdrant_local import QdrantServer
from ftfsearch.errors import StoreUnavailable
from ftfsearch.model.loading import load_encoder
from ftfsearch.search import Searcher
from ftfsearch.store import open_store
from ftfsearch.store.base import Store
from ftfsearch.store.schema import TILE_INDEXES
from ftfsearch.store.server import ServerStore
from ftfsearch.store.transfer import push_store
from ingest.pipeline import IngestOptions, ingest_paths, ingest_scene, window_id
from ingest.scenes import fingerprint
from ingest.tiling import SceneReader, TilingSpec
from _qdrant import fast_tmp_root, qdrant_binary_or_skip

DATA = SHARED_DATA / "geotiffs"
SMALL = Path(__file__).resolve().parent / "data" / "RGB.byte.tif"
BIG_SPEC = TilingSpec(tile_size=16, levels=(1,))
SMALL_SPEC = TilingSpec(tile_size=32, levels=(1,))
KILLS_PER_BACKEND = 3
SEED = int(os.environ.get("FTF_CRASH_SEED", "0")) or random.SystemRandom().randrange(1, 10**6)

pytestmark = pytest.mark.server


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    # token regions: one forward pass per tile, so thousands of tiles encode in seconds
    return load_encoder(str(tiny_clip_dir), device="cpu", region_mode="tokens")


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ftf-crash-", dir=fast_tmp_root()))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def big_scene(workdir) -> Path:
    return upsampling_vrt(workdir / "ortho_x2.4.vrt", ORTHO, 2.4)


def _edge(path: Path, read_only: bool = False) -> Store:
    return open_store(collection="tiles", store_dir=path, qdrant_url=None, api_key=None, timeout=10.0,
                      read_only=read_only)


def _server(url: str, collection: str, timeout: float = 10.0) -> ServerStore:
    return ServerStore(url, collection=collection, timeout=timeout)


def _all_tiles(store: Store, encoder, n: int) -> dict[str, tuple[dict, np.ndarray]]:
    """Every tile: payload and coarse vector, by id (recall of all ``n`` with vectors)."""
    q = encoder.encode_text(["tiles"])[0].float().numpy()
    c = store.recall(q, n + 10, with_vectors=True)
    return {i: (p, v) for i, p, v in zip(c.ids, c.payloads, c.coarse)}


@pytest.fixture(scope="module")
def reference(workdir, big_scene, encoder) -> dict:
    """An uninterrupted ingest of the big scene into its own embedded store."""
    store = _edge(workdir / "reference")
    try:
        done, failed = ingest_paths([big_scene], encoder, store, IngestOptions(spec=BIG_SPEC, batch_size=64))
        assert not failed and done[0].state == "complete"
        n = done[0].tiles_in_store
        assert n >= 2000, "the crash scene must have thousands of tiles"
        tiles = _all_tiles(store, encoder, n)
        assert len(tiles) == n
        return {"summary": done[0], "tiles": tiles, "store": workdir / "reference"}
    finally:
        store.close()


# -- a killable ingest process ------------------------------------------------------------------


class _Progress:
    """Reports to the parent through a pipe: ``start <total> <already>`` then ``advance <n>``.

    A child that is to be killed also holds one batch past the parent's last kill point
    (``gate``), so a parent that read the pipe late (a loaded CI machine) still kills inside the
    ingest and leaves enough for the next kill: a CI run once saw the child finish first.
    """

    def __init__(self, fd: int, batch_size: int, hold: bool) -> None:
        self.fd = fd
        self.batch_size = batch_size
        self.hold = hold
        self.gate: int | None = None
        self.advanced = 0

    def start(self, scene_id: str, total: int, already: int) -> None:
        self.gate = _last_kill_point(total - already, self.batch_size) + self.batch_size if self.hold else None
        os.write(self.fd, f"start {total} {already}\n".encode())

    def advance(self, n: int) -> None:
        os.write(self.fd, f"advance {n}\n".encode())
        self.advanced += n
        if self.gate is not None and self.advanced >= self.gate:
            time.sleep(300)  # the parent's SIGKILL ends this; a parent that never sends one fails the test

    def finish(self) -> None:
        os.write(self.fd, b"finish\n")


def _fork_ingest(open_target, scene: Path, encoder, spec: TilingSpec, batch_size: int = 64,
                 to_be_killed: bool = False) -> tuple[int, int]:
    """Fork a process that ingests ``scene``; returns (pid, read end of its progress pipe).

    The child exits 0 after a complete ingest, 1 on an error (printed to the pipe). One
    ``to_be_killed`` waits before its last batch for the parent's SIGKILL.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            os.close(r)
            import torch

            torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork
            store = open_target()
            try:
                done, failed = ingest_paths(
                    [scene], encoder, store, IngestOptions(spec=spec, batch_size=batch_size),
                    progress=_Progress(w, batch_size, hold=to_be_killed),
                )
                os.write(w, ("result " + json.dumps([s.to_dict() for s in done]) + "\n").encode())
                code = 0 if done and done[0].state == "complete" and not failed else 1
            finally:
                store.close()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(w, f"error {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _lines(fd: int) -> Iterator[str]:
    buf = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            if buf:
                yield buf.decode()
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode()


def _last_kill_point(remaining: int, batch_size: int) -> int:
    """The most tiles a child may have reported before the parent picks its kill: half of what
    is left, so three kills that each land at the child's gate still leave tiles to kill in."""
    return min(remaining // 2, remaining - 2 * batch_size)


def _kill_at(pid: int, fd: int, rng: random.Random, first: bool, batch_size: int = 64) -> dict:
    """SIGKILL the child at a random point; what it had done by then.

    The kill lands at least two batches before the end, and the pause after the chosen
    batch is capped by the child's observed pace, so a fast machine cannot finish the
    ingest before the signal arrives (a CI run once did, with the old fixed 0.4 s pause), and
    the child holds a batch past the last kill point (a loaded CI machine once let it finish).
    """
    total = already = advanced = remaining = 0
    target: int | None = None
    started = time.perf_counter()
    for line in _lines(fd):
        kind, _, rest = line.partition(" ")
        if kind == "start":
            total, already = (int(v) for v in rest.split())
            remaining = total - already
            assert remaining > 3 * batch_size, f"too few tiles left to kill inside the ingest: {remaining}"
            started = time.perf_counter()
            # the first kill lands before or just after the first write; later ones in the first half of what is left
            target = 0 if first else rng.randint(1, max(1, _last_kill_point(remaining, batch_size)))
        elif kind == "advance":
            advanced += int(rest)
        elif kind in ("result", "error"):
            raise AssertionError(f"the ingest ended before its kill point: {line}")
        if target is not None and advanced >= target:
            elapsed = time.perf_counter() - started
            pace = advanced / elapsed if advanced and elapsed > 0 else None  # tiles/s so far
            cap = 0.4 if pace is None else min(0.4, 0.5 * (remaining - advanced) / pace)
            time.sleep(rng.uniform(0.0, cap))  # somewhere inside the next batch's encode or write
            break
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return {"windows": total, "already_before": already, "advanced_when_killed": advanced}


def _crash_and_resume(open_store_fn, big_scene: Path, encoder, reference: dict, rng: random.Random) -> list[dict]:
    kills = []
    for i in range(KILLS_PER_BACKEND):
        pid, fd = _fork_ingest(open_store_fn, big_scene, encoder, BIG_SPEC, to_be_killed=True)
        info = _kill_at(pid, fd, rng, first=i == 0)
        store = open_store_fn()
        try:
            scene = store.get_scene("ortho_x2.4")
            info["stored_after_kill"] = store.count_tiles("ortho_x2.4")
            info["state_after_kill"] = scene.state if scene else None
        finally:
            store.close()
        # never 'complete' with fewer tiles than the scene has
        assert info["state_after_kill"] != "complete" or info["stored_after_kill"] == len(reference["tiles"])
        kills.append(info)
    assert any(k["stored_after_kill"] > 0 for k in kills), kills
    store = open_store_fn()
    try:
        summary = ingest_scene(big_scene, encoder, store, IngestOptions(spec=BIG_SPEC, batch_size=64))
        n = len(reference["tiles"])
        assert summary.state == "complete"
        assert summary.already_stored == kills[-1]["stored_after_kill"]
        assert summary.tiles_in_store == n == store.count_tiles() == store.count_tiles("ortho_x2.4")
        record = store.get_scene("ortho_x2.4")
        assert record is not None and record.state == "complete" and record.expected_tiles == n
        assert [s.scene_id for s in store.list_scenes()] == ["ortho_x2.4"]
        got = _all_tiles(store, encoder, n)
        assert set(got) == set(reference["tiles"])
        for tid, (payload, vec) in got.items():
            ref_payload, ref_vec = reference["tiles"][tid]
            assert payload == ref_payload
            np.testing.assert_allclose(vec, ref_vec, atol=2e-3)
    finally:
        store.close()
    print(f"\ncrash figures (seed {SEED}): {json.dumps(kills)}")
    return kills


@pytest.mark.usefixtures("shared_data")
def test_sigkill_at_random_points_then_resume_equals_uninterrupted_edge(workdir, big_scene, encoder, reference):
    path = workdir / "edge-crash"
    _crash_and_resume(lambda: _edge(path), big_scene, encoder, reference, random.Random(SEED))


@pytest.mark.usefixtures("shared_data")
def test_sigkill_at_random_points_then_resume_equals_uninterrupted_server(
    qdrant_server, big_scene, encoder, reference
):
    name = f"crash_{uuid.uuid4().hex[:8]}"
    try:
        _crash_and_resume(lambda: _server(qdrant_server, name), big_scene, encoder, reference, random.Random(SEED + 1))
    finally:
        _server(qdrant_server, name).drop_collection()


# -- concurrency ----------------------------------------------------------------------------------


def _expected_ids(path: Path, spec: TilingSpec) -> set[str]:
    fp = fingerprint(path)
    with SceneReader(path, spec) as reader:
        return {window_id(fp, w) for w in reader.windows() if reader.read(w) is not None}


@pytest.mark.usefixtures("shared_data")
def test_concurrent_ingests_into_one_server_collection(qdrant_server, encoder, workdir):
    """Two different scenes at once, and one of them twice at once: all complete, one record each."""
    other = DATA / "rasterio" / "rgb1.tif"
    name = f"conc_{uuid.uuid4().hex[:8]}"
    jobs = [SMALL, other, other]
    children = [_fork_ingest(lambda: _server(qdrant_server, name), p, encoder, SMALL_SPEC, 16) for p in jobs]
    results = []
    for pid, fd in children:
        lines = list(_lines(fd))
        os.close(fd)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, lines[-1:]
        results.append(json.loads(next(ln for ln in lines if ln.startswith("result "))[7:])[0])
    store = _server(qdrant_server, name)
    try:
        scenes = store.list_scenes()
        assert sorted(s.scene_id for s in scenes) == ["RGB.byte", "rgb1"]
        total = 0
        for path, sid in ((SMALL, "RGB.byte"), (other, "rgb1")):
            want = _expected_ids(path, SMALL_SPEC)
            assert store.count_tiles(sid) == len(want)
            assert store.existing_ids(sorted(want)) == want
            rec = store.get_scene(sid)
            assert rec is not None and rec.state == "complete" and rec.expected_tiles == len(want)
            total += len(want)
        assert store.count_tiles() == total
        # the two writers of one scene together wrote it at least once, and neither saw it short
        twice = [r for r in results if r["scene_id"] == "rgb1"]
        assert all(r["tiles"] == len(_expected_ids(other, SMALL_SPEC)) for r in twice)
    finally:
        store.drop_collection()
        store.close()


# -- a server that dies, a server that does not answer ----------------------------------------------


def test_server_dying_mid_ingest_gives_a_clear_error_and_nothing_false(encoder, workdir):
    binary = qdrant_binary_or_skip()
    storage = workdir / "dying-server"
    server = QdrantServer(binary=binary, storage_dir=storage, tmp_root=fast_tmp_root()).start()
    try:
        want = _expected_ids(SMALL, SMALL_SPEC)
        store = _server(server.url, "tiles", timeout=5.0)
        killed_at: list[float] = []

        class KillAfterFirstBatches:
            seen = 0

            def start(self, *a: object) -> None: ...

            def advance(self, n: int) -> None:
                self.seen += n
                if self.seen >= 160 and not killed_at:  # several batches written, more queued
                    server.kill()
                    killed_at.append(time.monotonic())

            def finish(self) -> None: ...

        with pytest.raises(StoreUnavailable) as info:
            ingest_paths([SMALL], encoder, store, IngestOptions(spec=SMALL_SPEC, batch_size=16),
                         progress=KillAfterFirstBatches())
        waited = time.monotonic() - killed_at[0]
        message = str(info.value)
        assert server.url in message and "gave up after 4 attempts" in message, message
        assert waited < 20, f"the error came {waited:.1f} s after the server died"
        store.close()

        server.start()  # same storage and ports
        store = _server(server.url, "tiles")
        rec = store.get_scene("RGB.byte")
        stored = store.count_tiles("RGB.byte")
        assert rec is not None and rec.state == "ingesting", "a scene cut short must not say complete"
        assert 0 < stored < len(want)
        summary = ingest_scene(SMALL, encoder, store, IngestOptions(spec=SMALL_SPEC, batch_size=16))
        assert summary.state == "complete" and summary.already_stored == stored
        assert store.existing_ids(sorted(want)) == want and store.count_tiles() == len(want)
        store.close()
    finally:
        server.stop()


def test_queries_against_dead_or_silent_servers_fail_within_the_timeout(encoder):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections, never answers
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        for port, timeout in ((dead_port, 2.0), (silent.getsockname()[1], 2.0)):
            url = f"http://127.0.0.1:{port}"
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                store = _server(url, "tiles", timeout=timeout)
                Searcher(encoder, store).search("ships near a harbor", k=5)
            elapsed = time.monotonic() - t0
            assert url in str(info.value) and "QDRANT_URL" in str(info.value)
            assert elapsed < timeout + 1.5, f"{url}: {elapsed:.1f} s for a {timeout} s timeout"
    finally:
        stop.set()
        t.join()
        silent.close()
        for c in accepted:
            c.close()


# -- push -------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("shared_data")
def test_push_is_resumable_and_verified(qdrant_server, reference, encoder):
    name = f"push_{uuid.uuid4().hex[:8]}"
    n = len(reference["tiles"])
    source = _edge(reference["store"], read_only=True)
    target = _server(qdrant_server, name)
    try:

        class Interrupt(Exception):
            pass

        def stop_after_two_pages(scene_id: str, done: int, total: int) -> None:
            if done >= 512:
                raise Interrupt

        with pytest.raises(Interrupt):
            push_store(source, target, shards=2, progress=stop_after_two_pages)
        rec = target.get_scene("ortho_x2.4")
        assert rec is not None and rec.state == "ingesting" and target.count_tiles() == 512

        summary = push_store(source, target, shards=2)
        [scene] = summary.scenes
        assert scene.already_there == 512 and scene.copied == n - 512 and scene.target_tiles == n
        assert summary.source_tiles == summary.target_tiles == n == target.count_tiles()
        assert target.get_scene("ortho_x2.4").state == "complete"

        again = push_store(source, target)
        assert again.scenes[0].skipped and again.copied == 0

        client = QdrantClient(url=qdrant_server, check_compatibility=False)
        info = client.get_collection(name)  # collection settings as an ingest makes them
        client.close()
        assert info.config.params.shard_number == 2
        assert set(TILE_INDEXES) <= set(info.payload_schema)
        assert set(target.describe()["meta"].items()) == set(source.meta().to_payload().items())
        q = encoder.encode_text(["a parking lot next to houses"])[0].float().numpy()
        a, b = source.recall(q, 20), target.recall(q, 20)
        assert a.ids == b.ids
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        assert [p for p in a.payloads] == [p for p in b.payloads]
    finally:
        source.close()
        target.drop_collection()
        target.close()
