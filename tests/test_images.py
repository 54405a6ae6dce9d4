"""Folders of plain images (JPEG, PNG, WebP: drone and dataset chips) ingest like rasters, each
a scene without a CRS, with the same warning a single such file gets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _data import SHARED_DATA
from _cli import run

UCM = SHARED_DATA / "ucm" / "images"
RSICD = SHARED_DATA / "rsicd" / "images"


def image_folder(root: Path) -> Path:
    """Real aerial images from UCM and RSICD, as JPEG, PNG and WebP, one in a subfolder."""
    folder = root / "chips"
    (folder / "more").mkdir(parents=True)
    shutil.copyfile(UCM / "1.jpg", folder / "ucm_1.jpg")
    shutil.copyfile(UCM / "101.jpg", folder / "more" / "ucm_101.JPEG")
    rsicd = sorted(RSICD.glob("*.jpg"))[:2]
    Image.open(rsicd[0]).convert("RGB").save(folder / "rsicd_a.png")
    Image.open(rsicd[1]).convert("RGB").save(folder / "rsicd_b.webp", quality=90)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.usefixtures("shared_data")
def test_a_folder_of_images_ingests_like_rasters(tmp_path: Path, tiny_clip_dir: Path) -> None:
    env = {"FTF_MODEL": str(tiny_clip_dir), "FTF_CONFIG": str(tmp_path / "none.toml"), "FTF_STORE": str(tmp_path / "store")}
    folder = image_folder(tmp_path)
    proc = run("ingest", str(folder), "--levels", "1", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    scenes = {s["scene_id"]: s for s in json.loads(proc.stdout)["scenes"]}
    assert set(scenes) == {"ucm_1", "ucm_101", "rsicd_a", "rsicd_b"}
    assert all(s["state"] == "complete" and s["tiles"] == 1 for s in scenes.values())
    for s in scenes.values():
        assert any(w.startswith("no CRS") for w in s["warnings"]), s
    assert proc.stderr.count("warning: ") == 4 and "no CRS: footprints are in pixel coordinates" in proc.stderr

    chips = tmp_path / "out"
    q = run("query", "green trees", "--k", "4", "--json", "--chips", str(chips), env=env)
    assert q.returncode == 0, q.stderr
    results = json.loads(q.stdout)
    assert {r["scene_id"] for r in results} == set(scenes) and all(r["bbox"] is None for r in results)
    png = sorted(chips.glob("*.png"))
    assert len(png) == 4
    webp_chip = next(p for p in png if "rsicd_b" in p.name)
    original = np.asarray(Image.open(folder / "rsicd_b.webp").convert("RGB"), dtype=np.float64)
    chip = np.asarray(Image.open(webp_chip).convert("RGB"), dtype=np.float64)
    assert chip.shape == original.shape and chip.std() > 10  # the image itself, not a blank chip


def test_a_folder_without_images_is_one_line(tmp_path: Path, tiny_clip_dir: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    env = {"FTF_MODEL": str(tiny_clip_dir), "FTF_CONFIG": str(tmp_path / "none.toml"), "FTF_STORE": str(tmp_path / "store")}
    proc = run("ingest", str(tmp_path / "docs"), env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "directory holds no rasters or images (.img, .jp2, .jpeg, .jpg, .png, .tif, .tiff, .vrt, .webp)" in proc.stderr
