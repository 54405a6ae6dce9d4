"""One embedded store, many clients (issue 16): real ``serve`` and CLI processes on a real store.

``serve`` holds the embedded store; ``ingest``, ``query``, ``scenes``, ``info`` and ``drop`` from
other processes go through it. Every test kills what it started.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _holder import Procs, cli, get_json, start_serve
from _web_fixtures import GEOTIFFS, ftfsearch_command
from ftfsearch.errors import StoreLocked

SCENE = GEOTIFFS / "rasterio" / "RGB.byte.tif"
TILING = ["--tile-size", "64", "--levels", "1", "--batch-size", "8"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _tiny import build_tiny_clip

    if not SCENE.is_file():
        pytest.fail(f"real test data missing: {SCENE}")
    path = tmp_path_factory.mktemp("holder-model") / "tiny-clip"
    build_tiny_clip(path)
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "FTF_CONFIG": str(tmp_path / "no-config.toml"), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.kill_all()


def ingest_args(store: Path, model: Path) -> list[str]:
    return ["ingest", str(SCENE), "--store", str(store), "--model", str(model), "--device", "cpu", *TILING]


def summary_of(store: Path, model: Path, env: dict[str, str]) -> tuple[list[object], list[str]]:
    """(scenes rows, ids of a fixed query's results): what must equal between two stores."""
    scenes = cli(["scenes", "--json", "--store", str(store)], env)
    assert scenes.returncode == 0, scenes.stderr
    q = cli(["query", "river", "--k", "20", "--json", "--store", str(store), "--model", str(model), "--device", "cpu"],
            env)
    assert q.returncode == 0, q.stderr
    rows = [{k: v for k, v in r.items() if k != "path"} for r in json.loads(scenes.stdout)]
    return rows, [r["id"] for r in json.loads(q.stdout)]


@pytest.fixture(scope="module")
def plain(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[object], list[str]]:
    """The same scene ingested with no server running: the reference."""
    root = tmp_path_factory.mktemp("holder-plain")
    env = {**os.environ, "FTF_CONFIG": str(root / "no-config.toml")}
    done = cli(ingest_args(root / "store", model_dir), env)
    assert done.returncode == 0, done.stderr
    return summary_of(root / "store", model_dir, env)


def test_a_dead_holders_lock_is_taken_over_with_one_warning(tmp_path: Path, env: dict[str, str], procs: Procs) -> None:
    store = tmp_path / "store"
    child = procs.start([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from ftfsearch.store.edge import EdgeStore; "
        "s = EdgeStore(Path(sys.argv[1])); print('ready', flush=True); time.sleep(600)"), str(store)], env)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    held = cli(["info", "--store", str(store)], env)
    assert held.returncode == StoreLocked.exit_code and f"pid {child.pid}" in held.stderr  # alive: refused, named
    record = json.loads((store / ".tiles.lock").read_text())
    assert record["pid"] == child.pid and isinstance(record["start"], int)
    (store / ".tiles.holder.json").write_text(json.dumps({"port": 1, "secret": "x", "pid": child.pid,
                                                          "start": record["start"]}))
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    after = cli(["info", "--store", str(store)], env)
    assert after.returncode == 0, after.stderr
    lines = [ln for ln in after.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"took over the store {store}" in lines[0] and f"pid {child.pid}, which is gone" in lines[0]
    assert not (store / ".tiles.holder.json").exists()  # the dead holder's address is gone too
    again = cli(["info", "--store", str(store)], env)  # a clean close leaves nothing to warn about
    assert again.returncode == 0 and again.stderr.strip() == "", again.stderr


def test_serve_with_a_concurrent_ingest_and_queries(
    tmp_path: Path, env: dict[str, str], procs: Procs, model_dir: Path, plain: tuple[list[object], list[str]]
) -> None:
    store = tmp_path / "store"
    serve, url = start_serve(procs, store, model_dir, env, tmp_path / "serve.log")
    holder_file = store / ".tiles.holder.json"
    assert stat.S_IMODE(holder_file.stat().st_mode) == 0o600
    record = json.loads(holder_file.read_text())
    assert record["host"] == "127.0.0.1" and record["pid"] == serve.pid

    # Without the secret, or with a wrong one, the holder refuses (a second local user's process).
    holder_url = f"http://127.0.0.1:{record['port']}/api/holder/ping"
    assert get_json(holder_url)[0] == 403
    assert get_json(holder_url, {"X-Ftfsearch-Holder-Secret": "guess"})[0] == 403
    assert get_json(holder_url, {"X-Ftfsearch-Holder-Secret": record["secret"]})[0] == 200

    ingest = procs.start([ftfsearch_command(), *ingest_args(store, model_dir), "--json"], env)
    counts: list[int] = []
    states: set[str] = set()
    answered = 0
    while ingest.poll() is None:
        status, body = get_json(url + "/api/info")
        assert status == 200, body
        counts.append(int(body["tiles"]))  # type: ignore[index]
        status, scenes = get_json(url + "/api/scenes")
        assert status == 200
        states |= {s["state"] for s in scenes["scenes"]}  # type: ignore[index]
        if counts[-1]:
            status, found = get_json(url + "/api/search?q=river&k=5")
            assert status == 200, found
            q = cli(["query", "river", "--k", "5", "--json", "--store", str(store)], env)
            assert q.returncode == 0, q.stderr
            assert len(json.loads(q.stdout)) == min(5, counts[-1])
            answered += 1
        time.sleep(0.1)
    out, errs = ingest.communicate(timeout=60)
    assert ingest.returncode == 0, errs
    assert json.loads(out)["scenes"][0]["state"] == "complete"
    assert counts == sorted(counts), counts  # counts only grow
    assert answered >= 1 and "ingesting" in states, (answered, states)
    assert summary_of(store, model_dir, env) == plain  # the same store as a plain ingest
    info = cli(["info", "--json", "--store", str(store)], env)
    assert info.returncode == 0 and json.loads(info.stdout)["tiles"] == plain[0][0]["tiles"]  # type: ignore[index]
    assert json.loads(info.stdout)["device"] == "cpu" and get_json(url + "/api/info")[1]["device"] == "cpu"  # type: ignore[index]
    # A device that the holder does not use is said, not silently replaced (serve runs on the CPU;
    # cuda is either missing here or another device).
    elsewhere = cli(["query", "river", "--k", "5", "--store", str(store), "--device", "cuda"], env)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert "warning: device cuda: 'ftfsearch serve'" in elsewhere.stderr and " on cpu" in elsewhere.stderr

    dropped = cli(["drop", "RGB.byte", "--store", str(store)], env)
    assert dropped.returncode == 0 and "tiles removed" in dropped.stderr, dropped.stderr
    assert cli(["scenes", "--json", "--store", str(store)], env).stdout.strip() == "[]"

    serve.send_signal(signal.SIGINT)  # a clean exit removes the holder file and frees the lock
    serve.wait(timeout=60)
    assert not holder_file.exists()
    assert cli(["info", "--store", str(store)], env).returncode == 0


def test_holder_killed_mid_ingest_then_a_rerun_is_exact(
    tmp_path: Path, env: dict[str, str], procs: Procs, model_dir: Path, plain: tuple[list[object], list[str]]
) -> None:
    store = tmp_path / "store"
    serve, url = start_serve(procs, store, model_dir, env, tmp_path / "serve.log")
    ingest = procs.start([ftfsearch_command(), *ingest_args(store, model_dir), "--json"], env)
    deadline = time.monotonic() + 120
    seen = 0
    while time.monotonic() < deadline and seen < 16:
        seen = int(get_json(url + "/api/info")[1]["tiles"])  # type: ignore[index]
        time.sleep(0.05)
    serve.send_signal(signal.SIGKILL)
    serve.wait(timeout=30)
    _, errs = ingest.communicate(timeout=60)
    assert ingest.returncode != 0 and "Traceback" not in errs
    assert "error:" in errs and len([ln for ln in errs.splitlines() if ln.startswith("error:")]) == 1, errs
    after = cli(["info", "--json", "--store", str(store)], env)
    assert after.returncode == 0, after.stderr
    assert f"pid {serve.pid}, which is gone" in after.stderr  # taken over, one warning
    assert json.loads(after.stdout)["tiles"] >= seen  # nothing a search had seen is lost
    assert not (store / ".tiles.holder.json").exists()
    rerun = cli(ingest_args(store, model_dir), env)
    assert rerun.returncode == 0, rerun.stderr
    assert summary_of(store, model_dir, env) == plain


def test_ctrl_c_of_the_client_cancels_on_request_and_the_scene_resumes(
    tmp_path: Path, env: dict[str, str], procs: Procs, model_dir: Path, plain: tuple[list[object], list[str]]
) -> None:
    store = tmp_path / "store"
    serve, url = start_serve(procs, store, model_dir, env, tmp_path / "serve.log")
    client = procs.start([ftfsearch_command(), *ingest_args(store, model_dir), "--json"], env, stdin=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and int(get_json(url + "/api/info")[1]["tiles"]) < 8:  # type: ignore[index]
        time.sleep(0.05)
    client.send_signal(signal.SIGINT)
    _, errs = client.communicate("y\n", timeout=120)
    assert client.returncode == 130 and "cancelled" in errs and "Traceback" not in errs, errs
    rows = json.loads(cli(["scenes", "--json", "--store", str(store)], env).stdout)
    assert rows[0]["state"] == "ingesting" and 0 < rows[0]["tiles"] < plain[0][0]["tiles"]  # type: ignore[index]

    # Ctrl+C answered "no": the client leaves, the ingest finishes in the server.
    before = rows[0]["tiles"]
    client = procs.start([ftfsearch_command(), *ingest_args(store, model_dir), "--json"], env, stdin=subprocess.PIPE)
    deadline = time.monotonic() + 120  # until the server is ingesting for it
    while time.monotonic() < deadline and int(get_json(url + "/api/info")[1]["tiles"]) <= before:  # type: ignore[index]
        time.sleep(0.05)
    client.send_signal(signal.SIGINT)
    _, errs = client.communicate("n\n", timeout=120)
    assert client.returncode == 0 and "goes on" in errs, errs
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        rows = json.loads(cli(["scenes", "--json", "--store", str(store)], env).stdout)
        if rows[0]["state"] == "complete":
            break
        time.sleep(0.5)
    assert summary_of(store, model_dir, env) == plain
    assert serve.poll() is None
    listing = tmp_path / "list.txt"
    listing.write_text(f"{SCENE}\n")
    batch = cli(["ingest", "--from", str(listing), "--store", str(store), "--model", str(model_dir), "--device", "cpu"],
                env)
    assert batch.returncode == StoreLocked.exit_code and f"pid {serve.pid}" in batch.stderr and "does not go through it" in batch.stderr


@pytest.mark.server
def test_push_through_the_holder(
    tmp_path: Path, env: dict[str, str], procs: Procs, model_dir: Path, qdrant_server: str,
    plain: tuple[list[object], list[str]],
) -> None:
    import uuid

    from ftfsearch.store.server import ServerStore

    store = tmp_path / "store"
    start_serve(procs, store, model_dir, env, tmp_path / "serve.log")
    done = cli(ingest_args(store, model_dir), env)
    assert done.returncode == 0, done.stderr
    name = f"holder_push_{uuid.uuid4().hex[:8]}"
    pushed = cli(["push", "--to", qdrant_server, "--collection", name, "--store", str(store), "--json"], env)
    try:
        assert pushed.returncode == 0, pushed.stderr
        summary = json.loads(pushed.stdout)
        assert summary["source_tiles"] == summary["target_tiles"] == plain[0][0]["tiles"]  # type: ignore[index]
    finally:
        target = ServerStore(qdrant_server, collection=name, api_key=None, timeout=30)
        try:
            target.drop_collection()
        finally:
            target.close()
