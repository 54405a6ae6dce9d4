"""A real store for the web tests: a tiny CLIP model and two real scenes ingested by the
installed ``ftfsearch ingest`` command. Built once per test session (the API and the browser
tests share it through a directory under pytest's session temp dir)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
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
    from ftfsearch.model.tiny import build_tiny_clip

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
