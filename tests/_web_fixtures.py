"""A real store for the web tests: a tiny CLIP model and two real scenes ingested by the
installed ``ftfsearch ingest`` command. Built once per test session (the API and the browser
tests share it through a directory under pytest's session temp dir). Also a running
``ftfsearch serve`` for the tests that talk to one over HTTP."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from _data import SHARED_DATA, require_shared_data

GEOTIFFS = SHARED_DATA / "geotiffs"
SCENES = (
    GEOTIFFS / "rasterio" / "RGB.byte.tif",  # Landsat uint8 RGB, EPSG:32618, nodata corners
    GEOTIFFS / "solaris_spacenet" / "sample_geotiff_custom_proj.tif",  # int16, custom Albers, stretched
)


@dataclass(frozen=True)
class DemoStore:
    store_dir: Path
    model_dir: Path
    scene_ids: tuple[str, ...]


def ftfsearch_command() -> str:
    """The installed console script of this environment."""
    exe = Path(sys.executable).parent / "ftfsearch"
    found = str(exe) if exe.is_file() else shutil.which("ftfsearch")
    if not found:
        pytest.fail("the ftfsearch command is not installed: pip install -e .")
    return found


def demo_store(tmp_path_factory: pytest.TempPathFactory) -> DemoStore:
    """Build (or reuse, within one session) the store; its ``.complete`` marker says it is whole."""
    for scene in SCENES:
        require_shared_data(*scene.relative_to(SHARED_DATA).parts)
    root = tmp_path_factory.getbasetemp() / "web-demo"
    done = root / ".complete"
    result = DemoStore(root / "store", root / "tiny-clip", tuple(p.stem for p in SCENES))
    if done.is_file():
        return result
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    from _tiny import build_tiny_clip

    build_tiny_clip(result.model_dir)
    env = {**os.environ, "FTF_CONFIG": str(root / "no-config.toml")}
    proc = subprocess.run(
        [ftfsearch_command(), "ingest", *map(str, SCENES), "--store", str(result.store_dir),
         "--model", str(result.model_dir), "--device", "cpu", "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, f"ingest failed ({proc.returncode}): {proc.stderr[-2000:]}"
    done.write_text("ok")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """``(status, body)`` of a GET; an HTTP error status is an answer, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextmanager
def running_serve(
    command: list[str], env: dict[str, str], log: Path, timeout: float, cwd: Path | None = None,
    ready: int = 200,
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``command`` (an ``ftfsearch serve`` without ``--port``) on a free loopback port, until its
    API answers (``ready``: 401 for a server with keys); yields the process and its URL, and stops
    it (SIGINT, then kill) on exit."""
    port = free_port()
    with open(log, "w") as fh:
        proc = subprocess.Popen([*command, "--port", str(port)], stdout=fh, stderr=subprocess.STDOUT, text=True,
                                env=env, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ftfsearch serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if http_get(url + "/api/info", timeout=2)[0] == ready:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ftfsearch serve did not answer within {timeout:.0f} s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
