"""Standing queries (``ftfsearch watch``) on real processes: records on both backends, a watch for
a pasted patch of real NAIP that fires on the later scene only, a webhook on loopback that is down
for the first tries (the ingest neither waits nor fails, and every hit arrives later), a watch that
fires during ``ingest --from --shard K/N`` workers on a real Qdrant server, the API with keys, and
the refusals."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _cli import InProcess, assert_one_line_error
from _data import require_shared_data
from _fork import fork_cli, wait
from _scenes import NAIP_2009, NAIP_2020, pasted_naip
from ftfsearch.find import unit
from ftfsearch.rerank import bti
from ftfsearch.store.base import CollectionMeta, Store, TileBatch
from ftfsearch.watch import KIND_HIT, Watch, WatchScorer, add_watch, list_watches, remove_watch, watch_hits

TILING = ("--tile-size", "128", "--levels", "1")
PASTED_TILE = (256, 128)
"""The window (col, row) of the tile the patch lies in."""


# -- records and scoring, both backends -----------------------------------------------------------


def _batch(rng: np.random.Generator, n: int, dim: int = 8, regions: int = 3) -> TileBatch:
    coarse = unit(rng.normal(size=(n, dim)))
    reg = unit(rng.normal(size=(n, regions, dim))).astype(np.float16)
    payloads = [{"scene_id": "s", "path": "/x.tif", "level": 1, "window": {"col": i, "row": 0, "width": 8, "height": 8},
                 "bbox": [float(i), 0.0, i + 0.9, 0.9], "acquired": "2021-01-01T00:00:00Z"} for i in range(n)]
    return TileBatch(ids=[str(uuid.uuid4()) for _ in range(n)], coarse=coarse, regions=reg, payloads=payloads)


def test_watches_and_hits_are_records_in_the_store(store: Store) -> None:
    store.ensure_collection(CollectionMeta("m", 8, 3, "grid"))
    rng = np.random.default_rng(0)
    q = unit(rng.normal(size=8))
    area = {"type": "Polygon", "coordinates": [[[-1, -1], [10.5, -1], [10.5, 2], [-1, 2], [-1, -1]]]}
    add_watch(store, Watch("everywhere", "q", q.tolist(), 0.2, "given", "m"))
    add_watch(store, Watch("west", "q", q.tolist(), 0.2, "given", "m", aoi=area, webhook="http://127.0.0.1:9/h"))
    assert [w.name for w in list_watches(store)] == ["everywhere", "west"]
    batch = _batch(rng, 40)
    boxes = [[0, 0, 1, 1], [0, 0, .5, .5], [.5, .5, 1, 1]]
    hits = WatchScorer(list_watches(store), boxes).score(batch)
    # a watch fires exactly where the two-stage (BTI) score reaches its threshold; its region is
    # the one the attention weighs most, as in a search's results
    out = bti(q[None], batch.coarse, batch.regions.astype(np.float32), tau=0.05, alpha=0.5)
    scores = out.scores[0]
    expected = {batch.ids[i] for i in np.flatnonzero(scores >= 0.2)}
    assert {h.tile_id for h in hits if h.watch == "everywhere"} == expected and expected
    west = {h.tile_id for h in hits if h.watch == "west"}
    assert west == {batch.ids[i] for i in np.flatnonzero(scores >= 0.2) if i <= 10}  # its area: bbox west of 10.5
    for h in hits:
        i = batch.ids.index(h.tile_id)
        assert h.region_index == int(out.attention[0, i].argmax()) and h.region == boxes[h.region_index]
        assert h.score == pytest.approx(float(scores[i]), abs=1e-4)
        assert h.pending == (h.watch == "west") and h.acquired == "2021-01-01T00:00:00Z"
    from ftfsearch.watch import record_hits

    record_hits(store, hits)
    record_hits(store, hits)  # a hit is keyed by watch and tile: recording it again adds nothing
    assert len(watch_hits(store, "everywhere")) == len(expected)
    assert len(store.list_records(KIND_HIT, {"delivery": "pending"})) == len(west)
    assert remove_watch(store, "west") == len(west)
    assert [w.name for w in list_watches(store)] == ["everywhere"]
    assert store.list_records(KIND_HIT, {"watch": "west"}) == []


# -- a webhook receiver on loopback ---------------------------------------------------------------


class Receiver:
    """An HTTP receiver that hangs (never answers in time) for its first ``down`` requests."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests += 1
                if outer.requests <= outer.down:
                    outer.release.wait(60)  # down: no answer within the client's timeout
                    return
                outer.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(down=2)
    yield r
    r.close()


# -- real NAIP with a pasted patch ----------------------------------------------------------------


@pytest.fixture
def naip(tmp_path: Path) -> dict[str, Any]:
    """The shipped model (a random tiny one scores every tile alike), NAIP 2009 and 2020 stored."""
    require_shared_data("geotiffs", "opengeos_data")
    pasted, example = pasted_naip(tmp_path)
    env = {"FTF_CONFIG": str(tmp_path / "none.toml"), "FTF_STORE": str(tmp_path / "store")}
    cli = InProcess(env)
    for path, when in ((NAIP_2009, "2009-08-18"), (NAIP_2020, "2020-08-31")):
        proc = cli("ingest", str(path), "--acquired", when, *TILING)
        assert proc.returncode == 0, proc.stderr
    return {"cli": cli, "pasted": pasted, "example": example, "env": env, "tmp": tmp_path}


def _hits(cli: InProcess, name: str) -> list[dict[str, Any]]:
    proc = cli("watch", "hits", name, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.usefixtures("shared_data")
def test_a_watch_for_the_pasted_patch_fires_on_the_later_scene_only(naip: dict, receiver: Receiver) -> None:
    cli = naip["cli"]
    # added once 2009 and 2020 are stored: it fires on what matches better than any of their tiles
    add = cli("watch", "add", "patch", "--like", str(naip["example"]), "--webhook", receiver.url, "--json")
    assert add.returncode == 0, add.stderr
    assert "above the best score of every stored tile" in json.loads(add.stdout)["threshold_source"]
    assert _hits(cli, "patch") == []
    t0 = time.perf_counter()
    proc = cli("ingest", str(naip["pasted"]), "--acquired", "2021-08-31", *TILING, "--json")
    took = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr  # the hook is down: the ingest does not fail ...
    assert took < 45, took  # ... nor wait for it (it hangs for 60 s)
    hits = _hits(cli, "patch")
    assert hits and {h["scene_id"] for h in hits} == {"naip_2020_pasted"}
    best = max(hits, key=lambda h: h["score"])
    assert (best["window"]["col"], best["window"]["row"]) == PASTED_TILE
    assert best["acquired"].startswith("2021-08-31") and best["region"]
    assert all(h["pending"] for h in hits)  # the hook did not answer: every hit is in the outbox
    listed = json.loads(cli("watch", "list", "--json").stdout)
    assert listed[0]["hits"] == len(hits) and listed[0]["pending"] == len(hits)
    # later (the receiver is up after its first two tries): every hit arrives, none twice
    deliver = cli("watch", "deliver", "--timeout", "2", "--tries", "3")
    assert deliver.returncode == 0, deliver.stderr
    got = [f["properties"]["hit_id"] for body in receiver.bodies for f in body["features"]]
    assert sorted(got) == sorted(f"patch/{h['tile_id']}" for h in hits)
    assert all(body["type"] == "FeatureCollection" and body["watch"] == "patch" for body in receiver.bodies)
    assert receiver.requests >= 3
    after = _hits(cli, "patch")
    assert not any(h["pending"] for h in after) and all(h["delivered_at"] for h in after)
    assert json.loads(cli("watch", "list", "--json").stdout)[0]["pending"] == 0
    out = naip["tmp"] / "hits.geojson"
    assert cli("watch", "hits", "patch", "-o", str(out)).returncode == 0
    assert len(json.loads(out.read_text())["features"]) == len(hits)
    assert _hits(cli, "patch") and json.loads(cli("watch", "hits", "patch", "--since", "2999-01-01",
                                                  "--json").stdout) == []


@pytest.mark.usefixtures("shared_data")
def test_serve_sends_the_outbox_when_the_hook_comes_back(naip: dict) -> None:
    """A hook that was down during the ingest gets its hits from a running serve, with no command run:
    the courier sends the outbox every --deliver-every seconds (once a round)."""
    import os

    from _holder import Procs, start_serve
    from ftfsearch.model.loading import DEFAULT_MODEL_DIR

    cli = naip["cli"]
    hook = Receiver(down=1)  # the ingest's one try hangs past its timeout
    procs = Procs()
    try:
        assert cli("watch", "add", "patch", "--like", str(naip["example"]), "--webhook", hook.url).returncode == 0
        proc = cli("ingest", str(naip["pasted"]), "--acquired", "2021-08-31", *TILING)
        assert proc.returncode == 0, proc.stderr
        pending = _hits(cli, "patch")
        assert pending and all(h["pending"] for h in pending) and hook.bodies == []
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("FTF_", "QDRANT_"))}, **naip["env"],
               "PYTHONUNBUFFERED": "1"}
        log = naip["tmp"] / "serve.log"
        start_serve(procs, naip["tmp"] / "store", DEFAULT_MODEL_DIR, env, log, ("--deliver-every", "1"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not hook.bodies:
            time.sleep(0.2)
        got = [f["properties"]["hit_id"] for body in hook.bodies for f in body["features"]]
        assert sorted(got) == sorted(f"patch/{h['tile_id']}" for h in pending), log.read_text()
        listed = json.loads(cli("watch", "list", "--json").stdout)  # through the serve holding the store
        assert listed[0]["pending"] == 0 and "pending hits sent" in log.read_text()
    finally:
        procs.kill_all()
        hook.close()


@pytest.mark.usefixtures("shared_data")
def test_watch_refusals_are_one_line_and_change_nothing(naip: dict) -> None:
    cli = naip["cli"]
    assert cli("watch", "add", "roofs", "buildings", "--min-score", "0.5").returncode == 0
    before = cli("watch", "list", "--json").stdout
    assert_one_line_error(cli("watch", "add", "roofs", "roads"), "name 'roofs'", "exists")
    assert_one_line_error(cli("watch", "rm", "nope"), "watch 'nope'", "roofs")
    assert_one_line_error(cli("watch", "hits", "nope"), "watch 'nope'")
    assert_one_line_error(cli("watch", "add", "ftp", "roads", "--webhook", "ftp://example.org/x"),
                          "--webhook", "not an http(s) URL")
    point = naip["tmp"] / "point.geojson"
    point.write_text(json.dumps({"type": "Point", "coordinates": [-99.0, 47.0]}))
    assert_one_line_error(cli("watch", "add", "pt", "roads", "--aoi", str(point)), "--aoi")
    assert_one_line_error(cli("watch", "add", "bad name!", "roads"), "name 'bad name!'")
    assert_one_line_error(cli("watch", "add", "empty", ""), "query")
    assert cli("watch", "list", "--json").stdout == before


@pytest.mark.usefixtures("shared_data")
def test_watch_add_takes_a_labels_files_marks_and_query(naip: dict) -> None:
    """``watch add --labels`` reads the file as query and find do: its marks are the examples, its query
    the text when none is given."""
    cli = naip["cli"]
    found = json.loads(cli("query", "buildings", "--k", "2", "--json").stdout)
    labels = naip["tmp"] / "marks.geojson"
    exported = cli("labels", "export", "roofs", "--like", found[0]["id"], "--unlike", found[1]["id"], "-o", str(labels))
    assert exported.returncode == 0, exported.stderr
    add = cli("watch", "add", "marked", "--labels", str(labels), "--json")
    assert add.returncode == 0, add.stderr
    query = json.loads(add.stdout)["query"]
    assert query.startswith("'roofs' like ") and found[0]["id"] in query and f"unlike {found[1]['id']}" in query
    again = json.loads(cli("watch", "add", "given", "buildings", "--labels", str(labels), "--json").stdout)
    assert again["query"].startswith("'buildings' like ")  # a text given wins over the file's


@pytest.mark.usefixtures("shared_data")
def test_watch_routes_need_a_writer_key_to_change_state(naip: dict) -> None:
    from fastapi.testclient import TestClient

    from ftfsearch.config import Settings
    from ftfsearch.keys import add_key
    from ftfsearch.web import create_app
    from ftfsearch.web.resources import Resources, ServeOptions

    keys = naip["tmp"] / "keys.json"
    reader, writer = add_key(keys, "reader", "read"), add_key(keys, "writer", "write")
    settings = Settings(store_dir=Path(naip["env"]["FTF_STORE"]), device="cpu")
    options = ServeOptions(keys_file=keys)
    app = create_app(settings, options, Resources.open(settings, options, writable=True))  # as the holder
    with TestClient(app) as client:
        r, w = {"Authorization": f"Bearer {reader}"}, {"Authorization": f"Bearer {writer}"}
        body = {"name": "fields", "q": "farm fields", "webhook": "https://example.org/h"}
        assert client.post("/api/watches", json=body).status_code == 401
        assert client.post("/api/watches", json=body, headers=r).status_code == 403
        added = client.post("/api/watches", json=body, headers=w)
        assert added.status_code == 200, added.text
        assert added.json()["name"] == "fields" and added.json()["webhook"] == "https://example.org/h"
        assert [x["name"] for x in client.get("/api/watches", headers=r).json()] == ["fields"]
        assert client.post("/api/watches", json=body, headers=w).status_code == 400  # the name exists
        bad = client.post("/api/watches", json={**body, "name": "x", "webhook": "file:///etc/passwd"}, headers=w)
        assert bad.status_code == 400 and "webhook" in bad.json()["error"]
        assert client.get("/api/watches/nope/hits", headers=r).status_code == 404
        hits = client.get("/api/watches/fields/hits", headers=r)
        assert hits.status_code == 200 and hits.json()["hits"] == []
        assert client.get("/api/watches/fields/hits", params={"geojson": True}, headers=r).json()["type"] == \
            "FeatureCollection"
        assert client.delete("/api/watches/fields", headers=r).status_code == 403
        assert client.delete("/api/watches/fields", headers=w).status_code == 200
        assert client.delete("/api/watches/fields", headers=w).status_code == 404
        assert client.get("/api/watches", headers=r).json() == []


# -- ingest workers across shards on a real Qdrant server ------------------------------------------


@pytest.mark.server
@pytest.mark.usefixtures("shared_data")
def test_a_watch_fires_during_sharded_ingest_on_a_server(qdrant_server: str, tmp_path: Path) -> None:
    from ftfsearch.store.server import ServerStore

    require_shared_data("geotiffs", "opengeos_data")
    pasted, example = pasted_naip(tmp_path)
    name = f"watch_{uuid.uuid4().hex[:8]}"
    env = {"QDRANT_URL": qdrant_server, "FTF_COLLECTION": name, "FTF_CONFIG": str(tmp_path / "none.toml")}
    cli = InProcess(env)
    for path in (NAIP_2009, NAIP_2020):
        assert cli("ingest", str(path), *TILING).returncode == 0
    assert cli("watch", "add", "patch", "--like", str(example)).returncode == 0
    other = Path(__file__).parent / "data" / "RGB.byte.tif"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{pasted}\n{other}\n")  # two shards: one source each (hash order, dealt round-robin)
    workers = [fork_cli(["ingest", "--from", str(listing), "--shard", f"{k}/2", *TILING], env, tmp_path / f"w{k}.log") for k in range(2)]
    assert [wait(pid, timeout=300) for pid in workers] == [0, 0], [(tmp_path / f"w{k}.log").read_text()
                                                                   for k in range(2)]
    store = ServerStore(qdrant_server, collection=name)
    try:
        assert {s.scene_id for s in store.list_scenes()} == {NAIP_2009.stem, NAIP_2020.stem, pasted.stem, other.stem}
        hits = watch_hits(store, "patch")
        assert hits and {h.scene_id for h in hits} == {pasted.stem}
        best = max(hits, key=lambda h: h.score)
        assert (best.window["col"], best.window["row"]) == PASTED_TILE
    finally:
        store.drop_collection()
        store.close()
