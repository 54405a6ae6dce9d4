"""Start the real Qdrant server on loopback, for development and the integration tests.

The binary is the pinned Qdrant 1.16.3 (``scripts/get-qdrant.sh`` installs it); its sha256 is
checked before it runs, so a swapped or truncated file is refused instead of executed.
Each ``QdrantServer`` gets free HTTP and gRPC ports and, unless told otherwise, its own
temporary storage that disappears with it. ``python -m deploy.qdrant_local`` runs one in the
foreground for development.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from ftfsearch.errors import StoreUnavailable

log = logging.getLogger(__name__)

QDRANT_VERSION = "1.16.3"
QDRANT_SHA256 = "8019db3c315d27fe663d639a6cdc6f60dff2ae903312daea492b159b553ad66f"
REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_PATH = REPO_ROOT / "qdrant.yaml"
INSTALLED_BINARY = REPO_ROOT / ".qdrant" / "bin" / "qdrant"


class QdrantLaunchError(StoreUnavailable):
    """The local Qdrant server could not be started."""


class QdrantBinaryNotFound(QdrantLaunchError):
    """No Qdrant binary is installed where the launcher looks."""


_verified: dict[tuple[str, int, int], bool] = {}


def verify_binary(path: Path) -> None:
    """Refuse a binary whose sha256 is not the pinned one (checked once per file version)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _verified.get(key):
        return
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    got = digest.hexdigest()
    if got != QDRANT_SHA256:
        raise QdrantLaunchError(
            f"{path}: sha256 {got} is not that of Qdrant {QDRANT_VERSION} ({QDRANT_SHA256}); "
            "reinstall it with scripts/get-qdrant.sh or point QDRANT_BIN at the right binary"
        )
    _verified[key] = True


def find_qdrant_binary(verify: bool = True) -> Path:
    """The Qdrant binary: $QDRANT_BIN, then <repo>/.qdrant/bin/qdrant, then PATH."""
    candidates: list[Path] = []
    env = os.environ.get("QDRANT_BIN")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise QdrantBinaryNotFound(f"QDRANT_BIN={env} is not a file; unset it or fix the path")
        candidates.append(p)
    else:
        if INSTALLED_BINARY.is_file():
            candidates.append(INSTALLED_BINARY)
        on_path = shutil.which("qdrant")
        if on_path:
            candidates.append(Path(on_path))
    if not candidates:
        raise QdrantBinaryNotFound(
            f"no Qdrant binary found (looked at $QDRANT_BIN, {INSTALLED_BINARY}, PATH); "
            "install it with scripts/get-qdrant.sh"
        )
    binary = candidates[0]
    if verify:
        verify_binary(binary)
    return binary


def free_port() -> int:
    """A TCP port free on loopback right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Child-side: get SIGTERM when the launching process dies, so no server outlives it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class QdrantServer:
    """A Qdrant server process on 127.0.0.1; a context manager that leaves nothing behind.

    Storage is ``storage_dir`` when given (kept), else a temp dir under ``tmp_root`` (removed
    on stop); tests pass a tmpfs ``tmp_root`` because every collection change is fsynced.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        read_only_api_key: str | None = None,
        storage_dir: Path | None = None,
        http_port: int | None = None,
        grpc_port: int | None = None,
        binary: Path | None = None,
        config_path: Path = CONFIG_PATH,
        startup_timeout: float = 30.0,
        tmp_root: Path | None = None,
        extra_args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        self.api_key = api_key
        self.read_only_api_key = read_only_api_key
        self.storage_dir = storage_dir
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.binary = binary
        self.config_path = config_path
        self.startup_timeout = startup_timeout
        self.tmp_root = tmp_root
        if (tls_cert is None) != (tls_key is None):
            raise QdrantLaunchError("TLS needs both a certificate and its key")
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.extra_args = list(extra_args or [])
        self.extra_env = dict(extra_env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def url(self) -> str:
        """The REST URL, e.g. ``http://127.0.0.1:40123``."""
        if self.http_port is None:
            raise QdrantLaunchError("the Qdrant server is not started; call start() first")
        scheme = "https" if self.tls_cert is not None else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path | None:
        return self._workdir / "qdrant.log" if self._workdir else None

    def _env(self, storage: Path) -> dict[str, str]:
        # Inherited QDRANT__* settings (a developer's API key, say) must not leak into a
        # server whose configuration the caller spelled out.
        env = {k: v for k, v in os.environ.items() if not k.startswith("QDRANT__")}
        assert self.http_port is not None and self.grpc_port is not None
        env.update(
            {
                "QDRANT__SERVICE__HOST": "127.0.0.1",
                "QDRANT__SERVICE__HTTP_PORT": str(self.http_port),
                "QDRANT__SERVICE__GRPC_PORT": str(self.grpc_port),
                "QDRANT__STORAGE__STORAGE_PATH": str(storage / "storage"),
                "QDRANT__STORAGE__SNAPSHOTS_PATH": str(storage / "snapshots"),
                "QDRANT__TELEMETRY_DISABLED": "true",
            }
        )
        if self.api_key:
            env["QDRANT__SERVICE__API_KEY"] = self.api_key
        if self.read_only_api_key:
            env["QDRANT__SERVICE__READ_ONLY_API_KEY"] = self.read_only_api_key
        if self.tls_cert is not None and self.tls_key is not None:
            env["QDRANT__SERVICE__ENABLE_TLS"] = "true"
            env["QDRANT__TLS__CERT"] = str(self.tls_cert)
            env["QDRANT__TLS__KEY"] = str(self.tls_key)
        env.update(self.extra_env)
        return env

    def start(self) -> "QdrantServer":
        """Start the server and wait until it answers /readyz."""
        if self.process is not None:
            return self
        binary = self.binary or find_qdrant_binary()
        if self.binary is not None:
            verify_binary(binary)
        if not self.config_path.is_file():
            raise QdrantLaunchError(f"{self.config_path}: Qdrant config file missing")
        pick_ports = self.http_port is None and self.grpc_port is None
        attempts = 3 if pick_ports else 1
        last_error: QdrantLaunchError | None = None
        for _ in range(attempts):
            if pick_ports:
                self.http_port, self.grpc_port = free_port(), free_port()
                while self.grpc_port == self.http_port:
                    self.grpc_port = free_port()
            elif self.http_port is None or self.grpc_port is None:
                self.http_port = self.http_port or free_port()
                self.grpc_port = self.grpc_port or free_port()
            try:
                self._spawn(binary)
                self._wait_ready()
                return self
            except QdrantLaunchError as exc:
                last_error = exc
                self.stop()
                if pick_ports:
                    self.http_port = self.grpc_port = None
        assert last_error is not None
        raise last_error

    def _spawn(self, binary: Path) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="ftf-qdrant-", dir=self.tmp_root))
        storage = self.storage_dir if self.storage_dir is not None else self._workdir
        storage.mkdir(parents=True, exist_ok=True)
        logfile = (self._workdir / "qdrant.log").open("wb")
        try:
            self.process = subprocess.Popen(
                [str(binary), "--config-path", str(self.config_path), "--disable-telemetry", *self.extra_args],
                cwd=self._workdir,  # Qdrant writes .qdrant-initialized into its cwd
                env=self._env(storage),
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        finally:
            logfile.close()
        log.debug("started qdrant pid %s on %s", self.process.pid, self.url)

    def _log_tail(self, n: int = 20) -> str:
        path = self.log_path
        if path is None or not path.is_file():
            return ""
        lines = path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        probe = f"{self.url}/readyz"
        context = None
        if self.tls_cert is not None:
            import ssl

            context = ssl.create_default_context(cafile=str(self.tls_cert))
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise QdrantLaunchError(
                    f"Qdrant exited with code {code} while starting on {self.url}:\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(probe, timeout=1.0, context=context) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.05)
        raise QdrantLaunchError(
            f"Qdrant did not become ready on {self.url} within {self.startup_timeout:.0f} s:\n"
            f"{self._log_tail()}"
        )

    def stop(self, grace: float = 10.0) -> None:
        """Terminate the server (kill it after ``grace`` seconds) and remove its temp dir."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=grace)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: no shutdown, storage left as it is.

        Its temp dir (log, working directory) is removed; a ``storage_dir`` is kept, so
        ``start()`` brings the same node back on the same ports.
        """
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> "QdrantServer":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class QdrantCluster:
    """A Qdrant cluster of ``size`` nodes on 127.0.0.1, for tests of sharding and failover.

    Each node has its own HTTP, gRPC and peer-to-peer ports and its own storage directory
    under ``root`` (kept across ``kill``/``restart`` of a node, removed on ``stop`` when the
    cluster made it). The first node starts with ``--uri`` (it founds the cluster); the
    others with ``--bootstrap <first node's p2p URI> --uri <their own>``.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        api_key: str | None = None,
        read_only_api_key: str | None = None,
        root: Path | None = None,
        tmp_root: Path | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.size = size
        self.api_key = api_key
        self.read_only_api_key = read_only_api_key
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="ftf-cluster-", dir=tmp_root))
        self.tmp_root = tmp_root
        self.startup_timeout = startup_timeout
        self.nodes: list[QdrantServer] = []
        self.p2p_ports: list[int] = []

    def _p2p_uri(self, i: int) -> str:
        return f"http://127.0.0.1:{self.p2p_ports[i]}"

    def start(self) -> "QdrantCluster":
        """Start every node (the first alone, then the others joining it) and wait for all."""
        if self.nodes:
            return self
        binary = find_qdrant_binary()
        ports: set[int] = set()
        while len(ports) < 3 * self.size:
            ports.add(free_port())
        it = iter(sorted(ports))
        try:
            for i in range(self.size):
                http, grpc, p2p = next(it), next(it), next(it)
                self.p2p_ports.append(p2p)
                args = ["--uri", self._p2p_uri(i)]
                if i > 0:
                    args = ["--bootstrap", self._p2p_uri(0), *args]
                node = QdrantServer(
                    api_key=self.api_key,
                    read_only_api_key=self.read_only_api_key,
                    storage_dir=self.root / f"node{i}",
                    http_port=http,
                    grpc_port=grpc,
                    binary=binary,
                    startup_timeout=self.startup_timeout,
                    tmp_root=self.tmp_root,
                    extra_args=args,
                    extra_env={
                        "QDRANT__CLUSTER__ENABLED": "true",
                        "QDRANT__CLUSTER__P2P__PORT": str(p2p),
                    },
                )
                self.nodes.append(node)
                node.start()
            self.wait_for_peers()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def _get(self, node: int, path: str) -> dict[str, Any]:
        import json

        req = urllib.request.Request(self.nodes[node].url + path)
        if self.api_key:
            req.add_header("api-key", self.api_key)
        with urllib.request.urlopen(req, timeout=5.0) as resp:
            body: dict[str, Any] = json.loads(resp.read())
        return body

    def wait_for_peers(self, timeout: float | None = None) -> None:
        """Wait until every running node sees all ``size`` peers and a raft leader."""
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        last = ""
        while time.monotonic() < deadline:
            try:
                ok = True
                for i, node in enumerate(self.nodes):
                    if not node.running:
                        continue
                    info = self._get(i, "/cluster")["result"]
                    if len(info.get("peers", {})) < self.size or not info.get("raft_info", {}).get("leader"):
                        ok, last = False, f"node {i} sees {len(info.get('peers', {}))} peers"
                if ok:
                    return
            except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise QdrantLaunchError(f"the Qdrant cluster under {self.root} did not form: {last}")

    def collection_cluster(self, collection: str, node: int = 0) -> dict[str, Any]:
        """Qdrant's ``GET /collections/{collection}/cluster`` result on ``node``: its peer id, the
        shards it holds (``local_shards``, with their point counts) and where the others are."""
        result: dict[str, Any] = self._get(node, f"/collections/{collection}/cluster")["result"]
        return result

    def replica_states(self, collection: str, node: int = 0) -> list[tuple[int, int, str]]:
        """``(shard, peer, state)`` of every replica of ``collection`` as ``node`` sees them."""
        info = self.collection_cluster(collection, node)
        peer = int(info["peer_id"])
        out = [(int(s["shard_id"]), peer, str(s["state"])) for s in info.get("local_shards", [])]
        out += [(int(s["shard_id"]), int(s["peer_id"]), str(s["state"])) for s in info.get("remote_shards", [])]
        return sorted(out)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (its storage stays)."""
        self.nodes[i].kill()

    def restart(self, i: int) -> None:
        """Start node ``i`` again on its ports and storage; it rejoins and its replicas recover."""
        self.nodes[i].start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "QdrantCluster":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run a development server in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.qdrant_local",
        description="Run Qdrant on 127.0.0.1 for development. API keys come from "
        "QDRANT__SERVICE__API_KEY / QDRANT__SERVICE__READ_ONLY_API_KEY in the environment.",
    )
    parser.add_argument("--http-port", type=int, default=6333)
    parser.add_argument("--grpc-port", type=int, default=6334)
    parser.add_argument(
        "--storage", type=Path, default=REPO_ROOT / ".qdrant" / "storage",
        help="storage directory, kept between runs (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C, and a plain `kill`, both end in server.stop() below (a background job starts
    # with SIGINT ignored, so set both handlers explicitly).
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = QdrantServer(
        api_key=os.environ.get("QDRANT__SERVICE__API_KEY") or None,
        read_only_api_key=os.environ.get("QDRANT__SERVICE__READ_ONLY_API_KEY") or None,
        storage_dir=args.storage,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
    )
    try:
        server.start()
    except QdrantLaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(f"Qdrant {QDRANT_VERSION} on {server.url} (storage {args.storage}); Ctrl-C stops it",
          file=sys.stderr)
    print(f"export QDRANT_URL={server.url}")
    try:
        assert server.process is not None
        server.process.wait()
        print(f"Qdrant exited; log:\n{server._log_tail()}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
