"""``serve --keys``: every route of the app called with no key, a read key, a write key and a
revoked key on a real ``ftfsearch serve`` process; revocation without a restart; the audit line of
a write; 413, 429, a slow client; keys stored hashed, compared in constant time, never logged or
echoed; and a public bind refused without keys."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import ftfsearch.keys as keys_module
from _web_fixtures import DemoStore, demo_store, free_port, ftfsearch_command, running_serve
from ftfsearch.config import Settings
from ftfsearch.errors import PermissionDenied
from ftfsearch.keys import KeyRing, add_key, read_keys, remove_key
from ftfsearch.store.holder_client import ServeClient
from ftfsearch.web import ServeOptions, create_app
from ftfsearch.web.auth import (
    MAX_BODY_BYTES,
    ROUTE_ACCESS,
    access_of,
    app_routes,
    check_routes,
    route_methods,
    unclassified,
)

KINDS = ("none", "read", "write", "revoked")


def _app(tmp_path: Path) -> object:
    """The app as serve builds it (its routes; the lifespan is not run)."""
    return create_app(Settings(store_dir=tmp_path / "store", device="cpu"))


# -- the table, without a server ---------------------------------------------------------------


def test_every_route_has_one_access_decision_and_the_table_no_stale_entry(tmp_path: Path) -> None:
    app = _app(tmp_path)
    assert unclassified(app.routes) == []  # type: ignore[attr-defined]
    served = {pair for route in app_routes(app.routes) for pair in route_methods(route)}  # type: ignore[attr-defined]
    assert set(ROUTE_ACCESS) == served
    # the OpenAPI schema (public FastAPI) lists the same API routes as the walk above
    schema = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}  # type: ignore[attr-defined]
    assert schema and schema <= served
    assert ROUTE_ACCESS[("DELETE", "/api/scenes/{scene_id}")] == "write"


def test_an_app_with_a_route_without_a_decision_is_not_built(tmp_path: Path) -> None:
    app = _app(tmp_path)

    @app.get("/api/new-thing")  # type: ignore[attr-defined,misc]
    def new_thing() -> dict[str, str]:
        return {"secret": "data"}

    assert unclassified(app.routes) == [("GET", "/api/new-thing")]  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="new-thing"):
        check_routes(app.routes)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("method", "path", "root", "want"), [
    ("GET", "/api/search", "", ("/api/search", "read")),
    ("HEAD", "/api/info", "", ("/api/info", "read")),
    ("DELETE", "/api/scenes/abc", "", ("/api/scenes/{scene_id}", "write")),
    ("DELETE", "/ftf/api/scenes/abc", "/ftf", ("/api/scenes/{scene_id}", "write")),
    ("GET", "/api/scenes/abc/preview.png", "", ("/api/scenes/{scene_id}/preview.png", "read")),
    ("GET", "/static/vendor/leaflet/leaflet.js", "", ("/static/{path:path}", "public")),
    ("GET", "/", "", ("/", "public")),
    ("GET", "/ftf", "/ftf", ("/", "public")),
    ("DELETE", "/api/scenes/a/b", "", ("", "read")),  # no route: a key, then the app's 404
    ("PUT", "/api/scenes/abc", "", ("", "read")),
])
def test_requests_match_the_table(method: str, path: str, root: str, want: tuple[str, str]) -> None:
    assert access_of({"method": method, "path": path, "root_path": root}) == want


# -- the keys file -------------------------------------------------------------------------------


def test_keys_are_stored_hashed_and_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = add_key(path, "alice", "write")
    text = path.read_text()
    assert key not in text and key.startswith("ftf_") and len(key) > 40
    assert path.stat().st_mode & 0o777 == 0o600
    (entry,) = read_keys(path)
    assert entry.sha256 == hashlib.sha256(bytes.fromhex(entry.salt) + key.encode()).hexdigest()
    other = add_key(path, "bob", "read")
    assert read_keys(path)[1].salt != entry.salt and other != key


def test_keys_are_compared_in_constant_time_against_every_entry(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every check goes through hmac.compare_digest, once per entry, also after a match."""
    path = tmp_path / "keys.json"
    first = add_key(path, "a", "read")
    for name in ("b", "c"):
        add_key(path, name, "write")
    ring = KeyRing(path)
    calls: list[tuple[bytes, bytes]] = []
    real = keys_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    caller = ring.caller(first)
    assert caller is not None and (caller.name, caller.role) == ("a", "read")
    assert len(calls) == 3  # the match was the first entry; the other two were compared all the same
    calls.clear()
    assert ring.caller("ftf_" + "x" * 43) is None and len(calls) == 3


def test_the_ring_follows_the_file_and_a_broken_file_admits_no_one(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_module, "RELOAD_EVERY_S", 0.0)
    path = tmp_path / "keys.json"
    key = add_key(path, "a", "read")
    ring = KeyRing(path)
    assert ring.caller(key) is not None
    later = add_key(path, "b", "write")
    assert ring.caller(later) is not None
    remove_key(path, "a")
    assert ring.caller(key) is None and ring.caller(later) is not None
    path.write_text("{not json")
    assert ring.caller(later) is None
    path.unlink()
    assert ring.caller(later) is None


# -- a real serve with keys ----------------------------------------------------------------------


@dataclass
class Live:
    url: str
    keys_file: Path
    keys: dict[str, str]  # kind -> key (none: absent)
    log: Path
    demo: DemoStore
    store: Path
    env: dict[str, str]


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ftfsearch_command(), *args], capture_output=True, text=True, env=env, timeout=600)


def _new_key(name: str, role: str, keys_file: Path, env: dict[str, str]) -> str:
    proc = _cli(["keys", "add", name, "--role", role, "--keys", str(keys_file)], env)
    assert proc.returncode == 0, proc.stderr
    key = proc.stdout.strip().splitlines()[-1]
    assert proc.stdout.strip() == key and key.startswith("ftf_")  # alone on the last line, shown once
    return key


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    demo = demo_store(tmp_path_factory)
    root = tmp_path_factory.mktemp("serve-keys")
    store = root / "store"
    shutil.copytree(demo.store_dir, store)  # this module drops a scene
    env = {**os.environ, "FTF_CONFIG": str(root / "none.toml")}
    env.pop("FTF_KEYS_FILE", None)
    keys_file = root / "keys.json"
    keys = {kind: _new_key(f"{kind}-user", "write" if kind == "write" else "read", keys_file, env)
            for kind in ("read", "write", "revoked")}
    log = root / "serve.log"
    command = [ftfsearch_command(), "-v", "serve", "--store", str(store), "--model", str(demo.model_dir),
               "--device", "cpu"]
    with running_serve(command, {**env, "FTF_KEYS_FILE": str(keys_file)}, log, timeout=600, ready=401) as (_, url):
        assert _status(url, "GET", "/api/info", keys["revoked"])[0] == 200
        proc = _cli(["keys", "rm", "revoked-user", "--keys", str(keys_file)], env)
        assert proc.returncode == 0, proc.stderr
        deadline = time.monotonic() + 5
        while _status(url, "GET", "/api/info", keys["revoked"])[0] != 401:
            assert time.monotonic() < deadline, "the revoked key still works"
            time.sleep(0.2)
        keys["none"] = ""
        yield Live(url, keys_file, keys, log, demo, store, env)


def _status(url: str, method: str, path: str, key: str | None, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url + path, data=body, method=method, headers=dict(headers or {}))
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=120) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def _samples(live: Live) -> dict[tuple[str, str], tuple[str, bytes | None, dict[str, str], int]]:
    """One real request per route: (path, body, headers, the status with a key that may call it).
    A route without a sample fails the test below: a new route needs one."""
    writer = live.keys["write"]
    status, body, _ = _status(live.url, "GET", "/api/search?q=ships+near+a+harbor&k=3", writer)
    assert status == 200
    hit = json.loads(body)["results"][0]
    tile, scene = hit["id"], hit["scene_id"]
    chip = _status(live.url, "GET", hit["chip_url"].split("?")[0], writer)[1]
    marks = json.dumps({"marks": [{"id": tile, "label": "positive"}]}).encode()
    labels = _status(live.url, "POST", "/api/labels/export", writer, marks, {"Content-Type": "application/json"})[1]
    as_json = {"Content-Type": "application/json"}
    return {
        ("GET", "/"): ("/", None, {}, 200),
        ("GET", "/static/{path:path}"): ("/static/app.js", None, {}, 200),
        ("GET", "/openapi.json"): ("/openapi.json", None, {}, 200),
        ("GET", "/api/search"): ("/api/search?q=a+river&k=2", None, {}, 200),
        ("POST", "/api/search"): ("/api/search?k=2", chip, {"Content-Type": "image/png"}, 200),
        ("POST", "/api/labels/export"): ("/api/labels/export", marks, as_json, 200),
        ("POST", "/api/labels/import"): ("/api/labels/import", labels, as_json, 200),
        ("GET", "/api/scenes"): ("/api/scenes", None, {}, 200),
        ("GET", "/api/info"): ("/api/info", None, {}, 200),
        ("GET", "/api/tiles/{tile_id}/chip.png"): (f"/api/tiles/{tile}/chip.png?size=64", None, {}, 200),
        ("GET", "/api/scenes/{scene_id}/preview.png"): (f"/api/scenes/{scene}/preview.png", None, {}, 200),
        ("POST", "/api/find"): ("/api/find", json.dumps({"q": "a river", "min_score": 0.99}).encode(), as_json, 200),
        # one hit is too few to train on: refused after the key is let through
        ("POST", "/api/classify"): ("/api/classify", json.dumps({"labels": json.loads(labels)}).encode(), as_json, 400),
        # the same for a review (it stores nothing, so a read key may start one)
        ("POST", "/api/review"): ("/api/review", json.dumps({"labels": json.loads(labels)}).encode(), as_json, 400),
        # the demo scene has no acquisition time: no place is covered in both ranges
        ("GET", "/api/change"): ("/api/change?before=2000-01-01/2001-01-01&after=2001-01-01/..", None, {}, 400),
        # a scene that is not there: the key is let through, the store stays as it is (a real drop below)
        ("DELETE", "/api/scenes/{scene_id}"): ("/api/scenes/no-such-scene", None, {}, 404),
        # watches: a webhook that is not http(s) is refused before anything is stored, so every key
        # that is let through meets the same 400; the other routes name a watch that is not there
        ("GET", "/api/watches"): ("/api/watches", None, {}, 200),
        ("POST", "/api/watches"): ("/api/watches", json.dumps({"name": "w", "q": "a river", "min_score": 0.5,
                                                               "webhook": "ftp://example.org/x"}).encode(), as_json, 400),
        ("DELETE", "/api/watches/{name}"): ("/api/watches/no-such-watch", None, {}, 404),
        ("GET", "/api/watches/{name}/hits"): ("/api/watches/no-such-watch/hits", None, {}, 404),
    }


def _expected(access: str, kind: str, allowed: int) -> int:
    if access == "public":
        return allowed
    if kind in ("none", "revoked"):
        return 401
    if access == "write" and kind == "read":
        return 403
    return allowed


def test_every_route_with_no_key_a_read_key_a_write_key_and_a_revoked_key(live: Live, tmp_path: Path) -> None:
    routes = [pair for route in app_routes(_app(tmp_path).routes) for pair in route_methods(route)]  # type: ignore[attr-defined]
    samples = _samples(live)
    assert sorted(set(routes) - set(samples)) == [], "a route without a sample request: add one to _samples"
    seen = []
    for pair in routes:
        path, body, headers, allowed = samples[pair]
        for kind in KINDS:
            status, answer, got_headers = _status(live.url, pair[0], path, live.keys[kind], body, headers)
            want = _expected(ROUTE_ACCESS[pair], kind, allowed)
            seen.append((pair, kind, status))
            assert status == want, (pair, kind, status, answer[:300])
            if status in (401, 403):
                assert json.loads(answer).keys() == {"error"}
                assert not any(k and k.encode() in answer for k in live.keys.values())
                assert b"-user" not in answer  # no key's name either
            if status == 401:
                assert got_headers.get("www-authenticate", got_headers.get("WWW-Authenticate")) == "Bearer"
    assert len(seen) == 4 * len(routes) and len(routes) >= 12
    # the same refusal for a missing and a wrong key: nothing tells which keys exist
    assert _status(live.url, "GET", "/api/info", None)[1] == _status(live.url, "GET", "/api/info", "ftf_wrong")[1]


def test_x_api_key_header_and_the_client_take_the_key(live: Live) -> None:
    status, body, _ = _status(live.url, "GET", "/api/info", None, headers={"X-API-Key": live.keys["read"]})
    assert status == 200 and json.loads(body)["tiles"] > 0
    assert _status(live.url, "GET", "/api/info", None, headers={"Authorization": f"Basic {live.keys['read']}"})[0] == 401
    reader = ServeClient(live.url, api_key=live.keys["read"])
    assert len(reader.search("ships near a harbor", k=4)["results"]) == 4
    assert {s["scene_id"] for s in reader.scenes()} >= set(live.demo.scene_ids[1:])
    with pytest.raises(PermissionDenied, match="write role"):
        reader.drop(live.demo.scene_ids[0])
    with pytest.raises(PermissionDenied, match="API key is required"):
        ServeClient(live.url).info()


def test_a_write_is_audited_and_changes_the_store(live: Live) -> None:
    scene = live.demo.scene_ids[0]
    writer = ServeClient(live.url, api_key=live.keys["write"])
    before = {s["scene_id"]: s["tiles"] for s in writer.scenes()}
    removed = writer.drop(scene)
    assert removed == before[scene] > 0
    assert scene not in {s["scene_id"] for s in writer.scenes()}
    deadline = time.monotonic() + 10
    line = f"audit: key write-user: DELETE /api/scenes/{{scene_id}} -> 200: scene {scene!r} dropped, {removed} tiles removed"
    while line not in live.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = live.log.read_text()
    assert line in log
    assert "audit: key read-user: DELETE /api/scenes/{scene_id} -> 403: refused" in log


def test_a_revoked_key_is_refused_within_seconds_without_a_restart(live: Live) -> None:
    key = _new_key("temp-user", "read", live.keys_file, live.env)
    deadline = time.monotonic() + 10
    while _status(live.url, "GET", "/api/info", key)[0] != 200:
        assert time.monotonic() < deadline, "a new key was not honoured within 10 s"
        time.sleep(0.2)
    proc = _cli(["keys", "list", "--keys", str(live.keys_file)], live.env)
    assert "temp-user" in proc.stdout and "ftf_" not in proc.stdout
    t0 = time.monotonic()
    assert _cli(["keys", "rm", "temp-user", "--keys", str(live.keys_file)], live.env).returncode == 0
    while _status(live.url, "GET", "/api/info", key)[0] != 401:
        assert time.monotonic() - t0 < 5, "a revoked key still worked after 5 s"
        time.sleep(0.1)
    print(f"revocation honoured after {time.monotonic() - t0:.2f} s")


def _raw_post(live: Live, head: str, body: list[bytes]) -> tuple[int, dict[str, str]]:
    """POST through a plain socket: the headers, then ``body`` piece by piece, then the answer
    (a client that stops sending where the server is expected to answer)."""
    port = int(live.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall((f"POST /api/search?k=2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {live.keys['read']}\r\n"
                      f"Content-Type: image/png\r\n{head}\r\n").encode())
        for piece in body:
            sock.sendall(piece)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, json.loads(resp.read())


def test_an_oversized_body_is_refused_with_413(live: Live) -> None:
    # a Content-Length past the cap: refused before a byte of the body is read
    status, body = _raw_post(live, f"Content-Length: {MAX_BODY_BYTES + 1}\r\n", [])
    assert status == 413 and body["error"] == f"request body: {MAX_BODY_BYTES + 1} bytes; at most 32 MB"
    # no length (chunked): cut off once the cap is passed
    mib = b"\0" * (1 << 20)
    chunks = [b"100000\r\n" + mib + b"\r\n"] * (MAX_BODY_BYTES >> 20) + [b"1\r\n\0\r\n"]
    status, body = _raw_post(live, "Transfer-Encoding: chunked\r\n", chunks)
    assert status == 413 and body["error"] == "request body: more; at most 32 MB"
    # the server answers on as before
    assert _status(live.url, "GET", "/api/info", live.keys["read"])[0] == 200


def test_a_slow_client_does_not_hold_the_store(live: Live) -> None:
    """A client that sends half an upload and stalls: searches go on."""
    port = int(live.url.rsplit(":", 1)[1])
    key = live.keys["read"]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
        slow.sendall((f"POST /api/search?k=2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                      "Content-Type: image/png\r\nContent-Length: 1000000\r\n\r\n").encode() + b"\x89PNG" * 100)
        t0 = time.monotonic()
        for _ in range(3):
            assert _status(live.url, "GET", "/api/search?q=a+river&k=3", key)[0] == 200
        elapsed = time.monotonic() - t0
    assert elapsed < 20, f"searches waited {elapsed:.1f} s behind a stalled upload"


def test_keys_never_appear_in_the_server_log(live: Live) -> None:
    log = live.log.read_text()
    assert "GET /api/info" in log  # -v: the access log is on
    for kind, key in live.keys.items():
        assert not key or key not in log, f"the {kind} key is in the server log"


# -- in-process: the rate limit; the CLI's refusals ----------------------------------------------


def test_each_key_has_its_own_rate_limit_with_retry_after(live: Live, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    a, b = add_key(keys_file, "a", "read"), add_key(keys_file, "b", "read")
    settings = Settings(store_dir=live.demo.store_dir, model=str(live.demo.model_dir), device="cpu")
    app = create_app(settings, ServeOptions(keys_file=keys_file, rate_limit="3/minute"))
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/api/info", headers={"X-API-Key": a}).status_code == 200
        refused = client.get("/api/info", headers={"X-API-Key": a})
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
        assert "too many requests" in refused.json()["error"] and a not in refused.text
        assert client.get("/api/info", headers={"X-API-Key": b}).status_code == 200  # another key: its own count
        assert client.get("/").status_code == 200  # the page is not counted


def test_serve_refuses_a_public_host_without_keys_and_a_missing_keys_file(live: Live, tmp_path: Path) -> None:
    base = ["serve", "--store", str(live.store), "--model", str(live.demo.model_dir), "--port", str(free_port())]
    proc = _cli([*base, "--host", "0.0.0.0"], live.env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0: without --keys the server has no authentication and binds loopback only; make "
        "keys with 'ftfsearch keys add' and pass --keys, or say --insecure-no-auth"
    ]
    missing = tmp_path / "nope.json"
    proc = _cli([*base, "--keys", str(missing)], live.env)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --keys {missing}: no such file; make a key with 'ftfsearch keys add NAME --keys {missing}'"
    ]
    proc = _cli([*base, "--keys", str(live.keys_file), "--rate-limit", "lots"], live.env)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --rate-limit 'lots': not a rate")


def test_search_parameters_stay_capped_with_a_key(live: Live) -> None:
    status, body, _ = _status(live.url, "GET", "/api/search?q=x&k=100000", live.keys["read"])
    assert status == 422 and "k:" in json.loads(body)["error"]
    status, body, _ = _status(live.url, "GET", "/api/search?q=x&recall_k=10000000", live.keys["read"])
    assert status == 422 and "recall_k:" in json.loads(body)["error"]


def test_a_path_prefix_gives_prefixed_urls(live: Live, tmp_path: Path) -> None:
    """--root-path: what a proxy under /ftf sees (chip and preview URLs carry the prefix, no host)."""
    from _prefix_proxy import PrefixProxy

    store = tmp_path / "store"
    shutil.copytree(live.demo.store_dir, store)  # the module's server holds its own copy
    command = [ftfsearch_command(), "serve", "--store", str(store), "--model", str(live.demo.model_dir),
               "--device", "cpu", "--root-path", "/ftf", "--keys", str(live.keys_file)]
    with running_serve(command, live.env, tmp_path / "prefixed.log", timeout=600, ready=401) as (_, url):
        with PrefixProxy(url, "/ftf") as proxy:
            client = ServeClient(proxy.url.rstrip("/"), api_key=live.keys["read"])
            hit = client.search("a river", k=1)["results"][0]
            assert hit["chip_url"].startswith(f"/ftf/api/tiles/{hit['id']}/chip.png")
            origin = proxy.url[: -len("/ftf/")]
            chip = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(urllib.request.Request(
                origin + hit["chip_url"], headers={"X-API-Key": live.keys["read"]}), timeout=60).read()
            assert chip.startswith(b"\x89PNG")
            scenes = client.scenes()
            assert all(s["preview_url"].startswith("/ftf/api/scenes/") for s in scenes if s["preview_url"])
            page = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(proxy.url, timeout=60).read()
            assert b'src="static/app.js"' in page and b'"/static' not in page
            assert "/api/search" in " ".join(proxy.forwarded)
            assert urllib.parse.urlsplit(proxy.url).path == "/ftf/"


def test_a_json_body_with_an_unknown_field_is_422_not_500(live: Live) -> None:
    body = json.dumps({"text": "a river"}).encode()  # the query is `q`
    status, answer, _ = _status(live.url, "POST", "/api/find", live.keys["read"], body, {"Content-Type": "application/json"})
    assert status == 422 and b"text" in answer and b"internal error" not in answer
