"""Access control against a real Qdrant server with keys: what a read-only key may do, what it
may not and why, that no key ever shows up in output or logs, TLS, and loopback-only listeners."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _data import SHARED_DATA
from _qdrant import fast_tmp_root, qdrant_binary_or_skip
from deploy.qdrant_local import QdrantServer
from ftfsearch.cli import app
from ftfsearch.errors import PermissionDenied, StoreUnavailable
from ftfsearch.model.loading import load_encoder
from ftfsearch.store.server import ServerStore
from ingest.pipeline import IngestOptions, ingest_paths
from ingest.tiling import TilingSpec

pytestmark = pytest.mark.server

SCENE = Path(__file__).resolve().parent / "data" / "RGB.byte.tif"
OTHER = SHARED_DATA / "geotiffs" / "rasterio" / "rgb1.tif"
SPEC = TilingSpec(tile_size=64, levels=(1,))
FTF = Path(sys.executable).with_name("ftfsearch")


@dataclass
class Keyed:
    server: QdrantServer
    rw: str
    ro: str
    collection: str
    tiles: int


@pytest.fixture(scope="module")
def keyed(tiny_clip_dir) -> Iterator[Keyed]:
    """A server with a read-write and a read-only key, holding one real scene."""
    binary = qdrant_binary_or_skip()
    rw, ro = "rw-" + secrets.token_hex(16), "ro-" + secrets.token_hex(16)
    with QdrantServer(binary=binary, api_key=rw, read_only_api_key=ro, tmp_root=fast_tmp_root()) as server:
        name = "tiles"
        store = ServerStore(server.url, collection=name, api_key=rw, timeout=10.0)
        enc = load_encoder(str(tiny_clip_dir), device="cpu")
        done, failed = ingest_paths([SCENE], enc, store, IngestOptions(spec=SPEC))
        assert not failed and done[0].state == "complete"
        store.close()
        yield Keyed(server, rw, ro, name, done[0].tiles_in_store)


def _run(keyed: Keyed, key: str | None, *args: str, caplog: pytest.LogCaptureFixture) -> tuple[int, str, str]:
    """The CLI app in-process with QDRANT_URL and QDRANT_API_KEY set as a user would."""
    env = {"QDRANT_URL": keyed.server.url, "QDRANT_API_KEY": key, "NO_COLOR": "1", "FTF_DEBUG": None,
           "FTF_CONFIG": "/nonexistent/ftfsearch.toml"}
    with caplog.at_level(logging.DEBUG):
        r = CliRunner().invoke(app, ["-v", *args], env=env)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"the CLI raised {r.exception!r}") from r.exception
    logs = "\n".join(rec.getMessage() for rec in caplog.records)
    for secret in (keyed.rw, keyed.ro):
        for where, text in (("stdout", r.stdout), ("stderr", r.stderr), ("logs", logs)):
            assert secret not in text, f"an API key appeared in {where} of {args}"
    return r.exit_code, r.stdout, r.stderr


@pytest.mark.usefixtures("shared_data")
def test_read_only_key_reads_and_is_refused_writes_with_the_cause(keyed, tiny_clip_dir, caplog):
    model = ["--model", str(tiny_clip_dir)]
    code, out, err = _run(keyed, keyed.ro, "query", "ships near a harbor", "--k", "5", "--json", *model, caplog=caplog)
    assert code == 0, err
    assert len(json.loads(out)) == 5
    code, out, err = _run(keyed, keyed.ro, "scenes", "--json", caplog=caplog)
    assert code == 0, err
    assert json.loads(out) == [{"scene_id": "RGB.byte", "path": str(SCENE.resolve()), "tiles": keyed.tiles,
                                "state": "complete"}]
    code, out, err = _run(keyed, keyed.ro, "info", "--json", caplog=caplog)
    assert code == 0, err
    info = json.loads(out)
    assert info["tiles"] == keyed.tiles and info["location"] == keyed.server.url

    for args in (["ingest", str(OTHER), "--tile-size", "64", "--levels", "1", *model], ["drop", "RGB.byte"]):
        code, out, err = _run(keyed, keyed.ro, *args, caplog=caplog)
        lines = [ln for ln in err.splitlines() if ln.startswith(("error", "skipped"))]
        assert code == 4, err
        assert len(lines) == 1 and "read-only" in lines[0] and "read-write key" in lines[0], err
    # nothing changed
    admin = ServerStore(keyed.server.url, collection=keyed.collection, api_key=keyed.rw)
    assert admin.count_tiles() == keyed.tiles and [s.scene_id for s in admin.list_scenes()] == ["RGB.byte"]
    admin.close()


@pytest.mark.parametrize("key, cause", [(None, "needs an API key"), ("wrong", "not accepted")])
def test_missing_or_wrong_key_is_named(keyed, key, cause, caplog):
    for args in (["scenes"], ["info"]):
        code, out, err = _run(keyed, key, *args, caplog=caplog)
        assert code == 4 and out == "", err
        assert err.startswith("error: ") and cause in err and "QDRANT_API_KEY" in err, err


@pytest.mark.usefixtures("shared_data")
def test_installed_command_with_a_read_only_key_never_prints_it(keyed, tiny_clip_dir, tmp_path):
    """The real command, verbose, through an ingest refused for its key: one line, no key anywhere."""
    env = {**os.environ, "QDRANT_URL": keyed.server.url, "QDRANT_API_KEY": keyed.ro, "NO_COLOR": "1"}
    env.pop("FTF_DEBUG", None)
    r = subprocess.run(
        [str(FTF), "-v", "ingest", str(OTHER), "--tile-size", "64", "--levels", "1", "--model", str(tiny_clip_dir)],
        capture_output=True, env=env, timeout=300, text=True,
    )
    assert r.returncode == 4, r.stderr
    assert keyed.ro not in r.stderr + r.stdout and keyed.rw not in r.stderr + r.stdout
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "read-only" in r.stderr


def test_push_needs_a_read_write_key(keyed, tiny_clip_dir, tmp_path, caplog):
    from ftfsearch.store import open_store

    store = tmp_path / "store"
    edge = open_store(collection="tiles", store_dir=store, qdrant_url=None, api_key=None, timeout=10.0)
    done, _ = ingest_paths([SCENE], load_encoder(str(tiny_clip_dir), device="cpu"), edge, IngestOptions(spec=SPEC))
    edge.close()
    name = f"pushed_{uuid.uuid4().hex[:6]}"
    url = keyed.server.url
    code, out, err = _run(keyed, keyed.ro, "push", "--to", url, "--collection", name, "--store", str(store),
                          caplog=caplog)
    assert code == 4 and "read-only" in err, err
    code, out, err = _run(keyed, keyed.rw, "push", "--to", url, "--collection", name, "--store", str(store),
                          "--json", caplog=caplog)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["source_tiles"] == summary["target_tiles"] == done[0].tiles_in_store == keyed.tiles
    admin = ServerStore(url, collection=name, api_key=keyed.rw)
    assert admin.count_tiles() == keyed.tiles and admin.get_scene("RGB.byte").state == "complete"
    admin.drop_collection()
    admin.close()


# -- TLS and listeners ---------------------------------------------------------------------------


def _self_signed(d: Path) -> tuple[Path, Path]:
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def test_https_url_with_a_key(tmp_path, monkeypatch):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    binary = qdrant_binary_or_skip()
    cert, key = _self_signed(tmp_path)
    rw = "rw-" + secrets.token_hex(16)
    with QdrantServer(binary=binary, api_key=rw, tmp_root=fast_tmp_root(), tls_cert=cert, tls_key=key) as server:
        assert server.url.startswith("https://127.0.0.1:")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test certificate, as a user would a CA
        store = ServerStore(server.url, collection="tls_probe", api_key=rw, timeout=10.0)
        described = store.describe()
        assert described["location"] == server.url and described["exists"] is False
        store.close()
        wrong_key = "wrong-" + secrets.token_hex(8)
        wrong = ServerStore(server.url, collection="tls_probe", api_key=wrong_key, timeout=10.0)
        with pytest.raises(PermissionDenied) as info:
            wrong.meta()
        assert "not accepted" in str(info.value) and wrong_key not in str(info.value)
        wrong.close()
        plain = ServerStore(server.url.replace("https://", "http://"), collection="tls_probe", api_key=rw, timeout=5.0)
        with pytest.raises(StoreUnavailable):
            plain.meta()  # a plain-HTTP client gets no answer from the TLS port: the key is never sent in clear
        plain.close()


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket ``pid`` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        if not Path(table).exists():
            continue
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state != "0A" or inode not in inodes:
                continue
            addr_hex, port_hex = local.split(":")
            raw = bytes.fromhex(addr_hex)
            if v6:
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                addr = socket.inet_ntop(socket.AF_INET6, words)
            else:
                addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
            out.append((addr, int(port_hex, 16)))
    return out


def test_servers_listen_on_loopback_only(keyed):
    assert keyed.server.process is not None
    ports = _listening(keyed.server.process.pid)
    assert {p for _, p in ports} >= {keyed.server.http_port, keyed.server.grpc_port}
    assert all(addr in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for addr, _ in ports), ports
